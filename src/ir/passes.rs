//! Graph rewrites that keep the function of the network and make it cheaper or simpler to
//! quantize.

use super::{Dense, Graph, Op, Tensor};
use anyhow::{ensure, Context, Result};

/// Per-channel affine map `y = a·x + b` described by a BatchNorm, Scale or Bias node, if the node
/// acts per channel (axis 1) with learned parameters.
pub fn channel_affine(
    op: &Op,
    weights: &[Tensor],
    channels: usize,
) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    Ok(match op {
        Op::BatchNorm { eps } => {
            ensure!(
                weights.len() >= 3,
                "BatchNorm needs mean, variance and scale-factor blobs"
            );
            let sf = *weights[2]
                .data
                .first()
                .context("BatchNorm scale-factor blob is empty")?;
            let (mean, var) = (&weights[0].data, &weights[1].data);
            ensure!(
                mean.len() == channels && var.len() == channels,
                "BatchNorm statistics do not match {channels} channels"
            );
            // Caffe: a zero scale factor means the statistics are used unscaled by 0 (i.e. zero).
            let inv_sf = if sf == 0.0 { 0.0 } else { 1.0 / sf };
            let a: Vec<f32> = var
                .iter()
                .map(|v| 1.0 / (v * inv_sf + eps).sqrt())
                .collect();
            let b = mean.iter().zip(&a).map(|(m, a)| -m * inv_sf * a).collect();
            Some((a, b))
        }
        Op::Scale { axis: 1, bias_term } if weights.first().map(Tensor::len) == Some(channels) => {
            ensure!(
                !*bias_term || weights.len() >= 2,
                "Scale with bias_term has no bias blob"
            );
            let b = if *bias_term {
                weights[1].data.clone()
            } else {
                vec![0.0; channels]
            };
            Some((weights[0].data.clone(), b))
        }
        Op::Bias { axis: 1 } if weights.first().map(Tensor::len) == Some(channels) => {
            Some((vec![1.0; channels], weights[0].data.clone()))
        }
        Op::Convolution(_)
        | Op::InnerProduct(_)
        | Op::Deconvolution(_)
        | Op::Pooling(_)
        | Op::ReLU { .. }
        | Op::PReLU { .. }
        | Op::Softmax { .. }
        | Op::Sigmoid
        | Op::TanH
        | Op::Lrn(_)
        | Op::Scale { .. }
        | Op::Bias { .. }
        | Op::Eltwise { .. }
        | Op::Concat { .. }
        | Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. } => None,
    })
}

/// Fold BatchNorm, Scale and Bias nodes that directly follow a Convolution or InnerProduct (whose
/// output has no other consumer) into that layer's weights and bias, creating a bias where the
/// layer had none. Returns the names of the removed nodes.
pub fn fold_batchnorm(g: &mut Graph) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    loop {
        let consumers = g.consumer_counts();
        let producers = g.producers();
        let mut found = None;
        for (i, n) in g.nodes.iter().enumerate() {
            let Some(&p) = producers.get(n.inputs[0].as_str()) else {
                continue;
            };
            if n.inputs.len() != 1
                || consumers.get(n.inputs[0].as_str()) != Some(&1)
                || g.outputs.contains(&n.inputs[0])
            {
                continue;
            }
            let prev = &g.nodes[p];
            let channels = match prev.op.dense() {
                Some(Dense::Convolution(c)) => c.num_output,
                Some(Dense::InnerProduct(ip)) if !ip.transpose && ip.axis == 1 => ip.num_output,
                Some(Dense::InnerProduct(_) | Dense::Deconvolution(_)) | None => continue,
            };
            if let Some(ab) = channel_affine(&n.op, &n.weights, channels)? {
                found = Some((p, i, ab));
                break;
            }
        }
        let Some((p, i, (a, b))) = found else { break };
        let out = g.nodes[i].outputs[0].clone();
        let name = g.nodes[i].name.clone();
        let prev = &mut g.nodes[p];
        let channels = a.len();
        // A layer loaded without weights has nothing to fold into: say so instead of panicking.
        ensure!(
            prev.weights
                .first()
                .is_some_and(|w| w.len() % channels == 0)
                && prev.weights.get(1).is_none_or(|b| b.len() == channels),
            "layer '{}' has no weights matching its {channels} outputs to fold '{name}' into",
            prev.name
        );
        let per = prev.weights[0].len() / channels;
        for (o, chunk) in prev.weights[0].data.chunks_mut(per).enumerate() {
            chunk.iter_mut().for_each(|w| *w *= a[o]);
        }
        let bias: Vec<f32> = match prev.weights.get(1) {
            Some(t) => t
                .data
                .iter()
                .enumerate()
                .map(|(o, v)| v * a[o] + b[o])
                .collect(),
            None => b,
        };
        prev.weights.truncate(1);
        prev.weights.push(Tensor::new(vec![channels], bias));
        match &mut prev.op {
            Op::Convolution(c) => c.bias_term = true,
            Op::InnerProduct(ip) => ip.bias_term = true,
            Op::Deconvolution(_)
            | Op::Pooling(_)
            | Op::ReLU { .. }
            | Op::PReLU { .. }
            | Op::Softmax { .. }
            | Op::Sigmoid
            | Op::TanH
            | Op::Lrn(_)
            | Op::BatchNorm { .. }
            | Op::Scale { .. }
            | Op::Bias { .. }
            | Op::Eltwise { .. }
            | Op::Concat { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. } => unreachable!("only conv and inner product are folded into"),
        }
        let old = std::mem::replace(&mut prev.outputs[0], out);
        g.shapes.remove(&old);
        g.nodes.remove(i);
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::{Engine, Keep};
    use crate::ir::{ConvParams, Hw, InnerProductParams, Input, Node};

    /// Deterministic uniform values in `[lo, hi)` (xorshift; no test-only crate needed).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, lo: f32, hi: f32) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
        }
        fn tensor(&mut self, shape: Vec<usize>, lo: f32, hi: f32) -> Tensor {
            let data = (0..shape.iter().product())
                .map(|_| self.next(lo, hi))
                .collect();
            Tensor::new(shape, data)
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

    fn batchnorm_stats(r: &mut Rng, c: usize) -> Vec<Tensor> {
        // Caffe stores running sums scaled by the moving-average counter sf (here 0.75).
        vec![
            r.tensor(vec![c], -0.5, 0.5),
            r.tensor(vec![c], 0.3, 1.5),
            Tensor::new(vec![1], vec![0.75]),
        ]
    }

    /// conv → BatchNorm → Scale(bias) → ReLU → InnerProduct (no bias) → BatchNorm.
    fn bn_graph(r: &mut Rng) -> Graph {
        let conv = ConvParams {
            num_output: 4,
            kernel: Hw::square(3),
            stride: Hw::square(1),
            pad: Hw::square(1),
            dilation: Hw::square(1),
            group: 1,
            bias_term: true,
        };
        let ip = InnerProductParams {
            num_output: 5,
            bias_term: false,
            axis: 1,
            transpose: false,
        };
        let nodes = vec![
            node(
                "conv1",
                Op::Convolution(conv),
                "data",
                vec![
                    r.tensor(vec![4, 3, 3, 3], -0.5, 0.5),
                    r.tensor(vec![4], -0.2, 0.2),
                ],
            ),
            node(
                "bn1",
                Op::BatchNorm { eps: 1e-5 },
                "conv1",
                batchnorm_stats(r, 4),
            ),
            node(
                "sc1",
                Op::Scale {
                    axis: 1,
                    bias_term: true,
                },
                "bn1",
                vec![r.tensor(vec![4], 0.5, 1.5), r.tensor(vec![4], -0.3, 0.3)],
            ),
            node(
                "relu1",
                Op::ReLU {
                    negative_slope: 0.0,
                },
                "sc1",
                vec![],
            ),
            node(
                "ip1",
                Op::InnerProduct(ip),
                "relu1",
                vec![r.tensor(vec![5, 4 * 5 * 5], -0.2, 0.2)],
            ),
            node(
                "bn2",
                Op::BatchNorm { eps: 1e-5 },
                "ip1",
                batchnorm_stats(r, 5),
            ),
        ];
        let input = Input {
            blob: "data".into(),
            shape: Some(vec![3, 5, 5]),
            preprocess: Default::default(),
            data_layer: None,
            label_blob: None,
        };
        let mut g = Graph {
            name: "bn".into(),
            input,
            nodes,
            outputs: vec!["bn2".into()],
            shapes: Default::default(),
            keep_output_softmax: false,
        };
        crate::ir::shape::infer(&mut g).unwrap();
        g
    }

    #[test]
    fn folding_batchnorm_and_scale_keeps_the_outputs() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let g = bn_graph(&mut r);
        let mut folded = g.clone();
        let removed = fold_batchnorm(&mut folded).unwrap();
        assert_eq!(removed, ["bn1", "sc1", "bn2"]);
        let names: Vec<&str> = folded.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["conv1", "relu1", "ip1"]);
        assert_eq!(folded.nodes[2].outputs, ["bn2"]);
        assert_eq!(
            folded.nodes[2].weights[1].shape,
            [5],
            "a bias is created for the inner product"
        );

        let batch = 6;
        let input: Vec<f32> = (0..batch * 75).map(|_| r.next(-2.0, 2.0)).collect();
        let want = Engine::new(&g)
            .unwrap()
            .forward(&input, batch, Keep::Outputs)
            .unwrap();
        let got = Engine::new(&folded)
            .unwrap()
            .forward(&input, batch, Keep::Outputs)
            .unwrap();
        let (want, got) = (&want.blobs["bn2"], &got.blobs["bn2"]);
        assert_eq!(want.len(), batch * 5);
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "folded {a} vs unfolded {b}"
            );
        }
    }

    #[test]
    fn a_shared_conv_output_is_not_folded() {
        let mut r = Rng(7);
        let mut g = bn_graph(&mut r);
        // A second reader of conv1's output: folding BN into conv1 would change what it sees.
        let mut extra = node(
            "relu_side",
            Op::ReLU {
                negative_slope: 0.0,
            },
            "conv1",
            vec![],
        );
        extra.outputs = vec!["side".into()];
        g.nodes.insert(1, extra);
        g.outputs.push("side".into());
        crate::ir::shape::infer(&mut g).unwrap();
        let removed = fold_batchnorm(&mut g).unwrap();
        assert_eq!(removed, ["bn2"]);
    }

    #[test]
    fn folding_a_graph_without_weights_is_an_error_not_a_panic() {
        let mut r = Rng(11);
        let mut g = bn_graph(&mut r);
        // The BatchNorm and Scale nodes keep their blobs; the layers to fold into have none.
        for n in g
            .nodes
            .iter_mut()
            .filter(|n| n.name == "conv1" || n.name == "ip1")
        {
            n.weights.clear();
        }
        assert!(fold_batchnorm(&mut g).is_err());
    }
}
