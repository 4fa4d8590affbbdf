//! Graph rewrites that keep the function of the network and make it cheaper or simpler to
//! quantize.

use super::{Graph, Op, Tensor};
use anyhow::{ensure, Result};

/// Per-channel affine map `y = a·x + b` described by a BatchNorm, Scale or Bias node, if the node
/// acts per channel (axis 1) with learned parameters.
fn channel_affine(
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
            let (mean, var, sf) = (&weights[0].data, &weights[1].data, weights[2].data[0]);
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
        Op::Scale { axis: 1, bias_term } if weights[0].len() == channels => {
            let b = if *bias_term {
                weights[1].data.clone()
            } else {
                vec![0.0; channels]
            };
            Some((weights[0].data.clone(), b))
        }
        Op::Bias { axis: 1 } if weights[0].len() == channels => {
            Some((vec![1.0; channels], weights[0].data.clone()))
        }
        _ => None,
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
            let channels = match &prev.op {
                Op::Convolution(c) => c.num_output,
                Op::InnerProduct(ip) if !ip.transpose && ip.axis == 1 => ip.num_output,
                _ => continue,
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
            _ => unreachable!("only conv and inner product are folded into"),
        }
        let old = std::mem::replace(&mut prev.outputs[0], out);
        g.shapes.remove(&old);
        g.nodes.remove(i);
        removed.push(name);
    }
    Ok(removed)
}
