//! The graph quantizer on small hand-made graphs: name mapping, forced formats, shift checks,
//! HWC permutation of inner-product weights.

use nnquant::fixed::{run_reference, Formats, QGraph, QOp};
use nnquant::ir::{
    self, ConvParams, Graph, Hw, InnerProductParams, Input, Node, Op, PoolMethod, PoolParams,
    RoundMode, Tensor,
};

/// data(2×2×2) -> conv1 (1×1, 2->2) -> relu1 (in place on conv1) -> pool1 (MAX k2) -> ip1 (2)
fn tiny() -> Graph {
    let conv = Node {
        name: "conv1".into(),
        op: Op::Convolution(ConvParams {
            num_output: 2,
            kernel: Hw::square(1),
            stride: Hw::square(1),
            pad: Hw::square(0),
            dilation: Hw::square(1),
            group: 1,
            bias_term: true,
        }),
        inputs: vec!["data".into()],
        outputs: vec!["conv1".into()],
        weights: vec![
            Tensor::new(vec![2, 2, 1, 1], vec![0.5, 0.25, -0.5, 1.0]),
            Tensor::new(vec![2], vec![0.5, -0.5]),
        ],
    };
    let relu = Node {
        name: "relu1".into(),
        op: Op::ReLU {
            negative_slope: 0.0,
        },
        inputs: vec!["conv1".into()],
        outputs: vec!["relu1".into()],
        weights: vec![],
    };
    let pool = Node {
        name: "pool1".into(),
        op: Op::Pooling(PoolParams {
            method: PoolMethod::Max,
            kernel: Hw::square(1),
            stride: Hw::square(1),
            pad: Hw::square(0),
            global: false,
            round: RoundMode::Ceil,
        }),
        inputs: vec!["relu1".into()],
        outputs: vec!["pool1".into()],
        weights: vec![],
    };
    // ip weights [2][8] over Caffe's C-major flattening: output 0 picks (c=1, y=0, x=1).
    let mut w = vec![0.0f32; 16];
    w[4 + 1] = 1.0; // c=1, y=0, x=1 -> logical 1*4 + 0*2 + 1 = 5
    w[8 + 2] = 1.0; // output 1 picks c=0, y=1, x=0 -> logical 2
    let ip = Node {
        name: "ip1".into(),
        op: Op::InnerProduct(InnerProductParams {
            num_output: 2,
            bias_term: false,
            axis: 1,
            transpose: false,
        }),
        inputs: vec!["pool1".into()],
        outputs: vec!["ip1".into()],
        weights: vec![Tensor::new(vec![2, 8], w)],
    };
    let mut g = Graph {
        name: "tiny".into(),
        input: Input {
            blob: "data".into(),
            shape: Some(vec![2, 2, 2]),
            preprocess: Default::default(),
            data_layer: None,
            label_blob: None,
        },
        nodes: vec![conv, relu, pool, ip],
        outputs: vec!["ip1".into()],
        shapes: Default::default(),
        keep_output_softmax: false,
    };
    ir::shape::infer(&mut g).unwrap();
    g
}

fn formats(extra: &str) -> Formats {
    Formats::from_json_str(&format!(
        r#"{{"about": "x", "activations_frac_bits": {{"data": 0, "conv1": 0, "ip1": 0 {extra}}},
            "layers": {{"conv1": {{"weight_frac_bits": 2, "bias_frac_bits": 1, "bias_lshift": 1, "out_rshift": 2}},
                        "ip1": {{"weight_frac_bits": 0}}}}}}"#
    ))
    .unwrap()
}

#[test]
fn quantizes_with_arm_schema_and_inherited_formats() {
    let q = QGraph::quantize(&tiny(), &formats("")).unwrap();
    assert_eq!(q.frac_bits("relu1"), Some(0));
    assert_eq!(q.frac_bits("pool1"), Some(0));
    let QOp::Conv(c) = &q.layers[0].op else {
        panic!()
    };
    // [O][I][1][1] -> [O][1][1][I]; 0.5·4 = 2, 0.25·4 = 1, -0.5·4 = -2, 1·4 = 4
    assert_eq!(c.weights, vec![2, 1, -2, 4]);
    assert_eq!(c.bias, vec![1, -1]);
    assert_eq!((c.bias_lshift, c.out_rshift), (1, 2));
    // IP: HWC physical index of (c=1,y=0,x=1) = (0*2+1)*2+1 = 3; of (c=0,y=1,x=0) = (1*2+0)*2 = 4.
    let QOp::Fc(f) = &q.layers[3].op else {
        panic!()
    };
    let mut want = vec![0i8; 16];
    want[3] = 1;
    want[8 + 4] = 1;
    assert_eq!(f.weights, want);
    // Run it: the fc picks HWC elements 3 and 4 of pool1.
    let input: Vec<i8> = vec![10, 20, 30, 40, 50, 60, 70, 80];
    let a = run_reference(&q, &input, 1).unwrap();
    let p = a.get("pool1").unwrap();
    assert_eq!(a.get("ip1").unwrap(), &[p[3], p[4]]);
}

#[test]
fn rejects_negative_shifts_naming_the_layer() {
    let mut f = formats("");
    f.layers.get_mut("conv1").unwrap().bias_frac_bits = Some(5.into()); // 2 + 0 - 5 < 0
    f.layers.get_mut("conv1").unwrap().bias_lshift = None;
    let e = format!("{:#}", QGraph::quantize(&tiny(), &f).unwrap_err());
    assert!(e.contains("conv1") && e.contains("bias_lshift"), "{e}");
    let mut f = formats("");
    *f.activations_frac_bits.get_mut("conv1").unwrap() = 3; // out_rshift = 2 - 3 < 0
    f.layers.get_mut("conv1").unwrap().out_rshift = None;
    let e = format!("{:#}", QGraph::quantize(&tiny(), &f).unwrap_err());
    assert!(e.contains("conv1") && e.contains("out_rshift"), "{e}");
}

#[test]
fn checks_given_shifts_and_unknown_names() {
    let mut f = formats("");
    f.layers.get_mut("conv1").unwrap().out_rshift = Some(3);
    assert!(format!("{:#}", QGraph::quantize(&tiny(), &f).unwrap_err()).contains("out_rshift 3"));
    let e = format!(
        "{:#}",
        QGraph::quantize(&tiny(), &formats(r#", "nosuch": 1"#)).unwrap_err()
    );
    assert!(e.contains("nosuch") && e.contains("known blobs"), "{e}");
    // A forced format that disagrees with the input's.
    let e = format!(
        "{:#}",
        QGraph::quantize(&tiny(), &formats(r#", "pool1": 2"#)).unwrap_err()
    );
    assert!(e.contains("pool1"), "{e}");
    // Missing activation format.
    let mut f = formats("");
    f.activations_frac_bits.remove("ip1");
    assert!(QGraph::quantize(&tiny(), &f).is_err());
}
