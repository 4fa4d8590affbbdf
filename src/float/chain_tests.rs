//! The NHWC fast path against the general NCHW kernels on synthetic chains that exercise what
//! the ARM model does not: odd channel counts (partial SIMD blocks), strides, rectangular kernels
//! and pads, pooling with padding and Caffe's clip, leaky ReLU after pooling and after an inner
//! product, a transposed inner product, batches that do not fill the last chunk.

use super::{Engine, Isa, Keep};
use crate::ir::{
    ConvParams, Graph, Hw, InnerProductParams, Input, Node, Op, PoolMethod, PoolParams, RoundMode,
    Tensor,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn tensor(&mut self, shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|_| self.next()).collect())
    }
}

fn node(name: &str, op: Op, input: &str, weights: Vec<Tensor>) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: vec![input.into()],
        outputs: vec![name.into()],
        weights,
    }
}

fn conv(o: usize, k: Hw, s: Hw, p: Hw, d: Hw) -> Op {
    Op::Convolution(ConvParams {
        num_output: o,
        kernel: k,
        stride: s,
        pad: p,
        dilation: d,
        group: 1,
        bias_term: true,
    })
}

fn pool(method: PoolMethod, k: usize, s: usize, p: usize) -> Op {
    Op::Pooling(PoolParams {
        method,
        kernel: Hw::square(k),
        stride: Hw::square(s),
        pad: Hw::square(p),
        global: false,
        round: RoundMode::Ceil,
    })
}

fn relu(slope: f32) -> Op {
    Op::ReLU {
        negative_slope: slope,
    }
}

fn graph(nodes: Vec<Node>, input: Vec<usize>) -> Graph {
    let out = nodes.last().unwrap().outputs[0].clone();
    let mut g = Graph {
        name: "chain".into(),
        input: Input {
            blob: "data".into(),
            shape: Some(input),
            preprocess: Default::default(),
            data_layer: None,
            label_blob: None,
        },
        nodes,
        outputs: vec![out],
        shapes: Default::default(),
        keep_output_softmax: false,
    };
    crate::ir::shape::infer(&mut g).unwrap();
    g
}

/// data 5×11×9 → conv 20 k3×2 s2×1 p1×2 → leaky ReLU → MAX k3 s2 p1 → conv 40 k2×3 → AVE k3 s2
/// p1 → ReLU → IP 7 (transposed) → leaky ReLU → IP 3.
fn odd_chain(r: &mut Rng) -> Graph {
    let ip = |n, transpose| {
        Op::InnerProduct(InnerProductParams {
            num_output: n,
            bias_term: true,
            axis: 1,
            transpose,
        })
    };
    let one = Hw::square(1);
    let mut nodes = vec![node(
        "conv1",
        conv(
            20,
            Hw { h: 3, w: 2 },
            Hw { h: 2, w: 1 },
            Hw { h: 1, w: 2 },
            one,
        ),
        "data",
        vec![r.tensor(vec![20, 5, 3, 2]), r.tensor(vec![20])],
    )];
    nodes.push(node("relu1", relu(0.1), "conv1", vec![]));
    nodes.push(node(
        "pool1",
        pool(PoolMethod::Max, 3, 2, 1),
        "relu1",
        vec![],
    ));
    nodes.push(node(
        "conv2",
        conv(40, Hw { h: 2, w: 3 }, one, Hw::square(0), one),
        "pool1",
        vec![r.tensor(vec![40, 20, 2, 3]), r.tensor(vec![40])],
    ));
    nodes.push(node(
        "pool2",
        pool(PoolMethod::Ave, 3, 2, 1),
        "conv2",
        vec![],
    ));
    nodes.push(node("relu2", relu(0.0), "pool2", vec![]));
    let g0 = graph(nodes.clone(), vec![5, 11, 9]);
    let k: usize = g0.shape("relu2").iter().product();
    nodes.push(node(
        "ip1",
        ip(7, true),
        "relu2",
        vec![r.tensor(vec![k, 7]), r.tensor(vec![7])],
    ));
    nodes.push(node("relu3", relu(0.25), "ip1", vec![]));
    nodes.push(node(
        "ip2",
        ip(3, false),
        "relu3",
        vec![r.tensor(vec![3, 7]), r.tensor(vec![3])],
    ));
    graph(nodes, vec![5, 11, 9])
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "[{i}] {a} vs {b}");
    }
}

#[test]
fn every_isa_matches_the_general_kernels_on_an_odd_chain() {
    let mut r = Rng(7);
    let g = odd_chain(&mut r);
    assert_eq!(g.shape("pool1"), &[20, 4, 7], "MAX pool ceil geometry");
    let n = 5;
    let x: Vec<f32> = (0..n * 5 * 11 * 9).map(|_| r.next() * 8.0).collect();
    let mut e = Engine::new(&g).unwrap();
    e.chunk_images = 2;
    let default = Some(Isa::detect()).filter(|&i| i != Isa::Portable);
    assert_eq!(e.fast_path(), default);
    e.set_fast_path(None).unwrap();
    let want = e.forward(&x, n, Keep::Outputs).unwrap();
    let mut tried = 0;
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        if !isa.available() {
            assert!(e.set_fast_path(Some(isa)).is_err());
            continue;
        }
        e.set_fast_path(Some(isa)).unwrap();
        assert_eq!(e.fast_path(), Some(isa));
        let got = e.forward(&x, n, Keep::Outputs).unwrap();
        assert_eq!(got.blobs.keys().collect::<Vec<_>>(), ["ip2"]);
        assert_close(&got.blobs["ip2"], &want.blobs["ip2"]);
        tried += 1;
    }
    assert!(tried >= 1);
}

/// 8 input channels at stride 1 is a pixel stride the SIMD tiles take as a constant; 26 output
/// columns give full tiles and tails on every ISA; 9 output channels a partial block. The output
/// is a 3-D blob, returned in CHW order.
#[test]
fn constant_stride_tiles_and_a_3d_output_on_every_isa() {
    let mut r = Rng(11);
    let one = Hw::square(1);
    let g = graph(
        vec![
            node(
                "conv1",
                conv(9, Hw::square(3), one, one, one),
                "data",
                vec![r.tensor(vec![9, 8, 3, 3]), r.tensor(vec![9])],
            ),
            node("relu1", relu(0.0), "conv1", vec![]),
            node("pool1", pool(PoolMethod::Ave, 2, 2, 0), "relu1", vec![]),
        ],
        vec![8, 5, 26],
    );
    let x: Vec<f32> = (0..3 * 8 * 5 * 26).map(|_| r.next()).collect();
    let mut e = Engine::new(&g).unwrap();
    e.set_fast_path(None).unwrap();
    let want = e.forward(&x, 3, Keep::Outputs).unwrap();
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        if isa.available() {
            e.set_fast_path(Some(isa)).unwrap();
            let got = e.forward(&x, 3, Keep::Outputs).unwrap();
            assert_close(&got.blobs["pool1"], &want.blobs["pool1"]);
        }
    }
}

#[test]
fn graphs_that_are_not_plain_chains_use_the_general_kernels() {
    let mut r = Rng(3);
    let one = Hw::square(1);
    // Dilation is not handled by the direct kernels.
    let dilated = graph(
        vec![node(
            "conv1",
            conv(4, Hw::square(3), one, one, Hw::square(2)),
            "data",
            vec![r.tensor(vec![4, 3, 3, 3]), r.tensor(vec![4])],
        )],
        vec![3, 8, 8],
    );
    assert_eq!(Engine::new(&dilated).unwrap().fast_path(), None);
    // Softmax is not a chain op.
    let soft = graph(
        vec![
            node(
                "conv1",
                conv(4, Hw::square(3), one, one, one),
                "data",
                vec![r.tensor(vec![4, 3, 3, 3]), r.tensor(vec![4])],
            ),
            node("prob", Op::Softmax { axis: 1 }, "conv1", vec![]),
        ],
        vec![3, 8, 8],
    );
    let e = Engine::new(&soft).unwrap();
    assert_eq!(e.fast_path(), None);
    // Keep::All still returns every blob.
    let x = vec![0.5; 2 * 3 * 64];
    assert_eq!(e.forward(&x, 2, Keep::All).unwrap().blobs.len(), 3);
}
