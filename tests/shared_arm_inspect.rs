//! ARM's real CIFAR-10 model from ../shared: both weight files give the same graph, the expected
//! shapes and parameter counts.

use nnquant::caffe::{self, LoadOptions};
use nnquant::ir::summary;

#[test]
#[ignore = "needs ../shared"]
fn arm_model_loads_identically_from_both_weight_files() {
    let m = nnquant::shared_dir().join("models/arm-cifar10-m4");
    let proto = m.join("cifar10_m4_train_test.prototxt");
    let load = |w: &str| {
        caffe::load_model(
            &proto,
            &LoadOptions {
                weights: Some(&m.join(w)),
                input_shape: Some(vec![3, 32, 32]),
            },
        )
        .unwrap()
    };
    let h5 = load("cifar10_m4_iter_70000.caffemodel.h5");
    let pb = load("quantized_cifar10_m4_iter_70000.caffemodel");
    // Same layers and blob shapes (the binary file is ARM's re-rounded copy: values differ).
    assert_eq!(h5.shapes, pb.shapes);
    assert_eq!(
        h5.nodes
            .iter()
            .map(|n| (&n.name, &n.op, &n.inputs, &n.outputs))
            .collect::<Vec<_>>(),
        pb.nodes
            .iter()
            .map(|n| (&n.name, &n.op, &n.inputs, &n.outputs))
            .collect::<Vec<_>>()
    );
    assert_eq!(h5.shape("pool1"), &[32, 16, 16]);
    assert_eq!(h5.shape("pool3"), &[32, 4, 4]);
    let s = summary::summarize(&h5);
    assert_eq!(s.totals.weights, 33_120);
    assert_eq!(s.totals.biases, 90);
    assert_eq!(s.totals.macs, 6_558_720);
    // ARM's quantized copy puts every weight on its Q grid: each h5 weight rounds to it.
    let (a, b) = (
        &h5.node("conv1").unwrap().weights[0].data,
        &pb.node("conv1").unwrap().weights[0].data,
    );
    let max_diff = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff <= 0.5 / 256.0 + 1e-7,
        "conv1 weights differ by {max_diff}"
    );
}
