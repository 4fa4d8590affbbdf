//! Caffe's shape rules, exactly: convolution rounds down, pooling rounds up by default (with
//! Caffe's clipping of a last window that would start in the padding), inner product flattens.
//! Every product is checked so that absurd dimensions are refused before anything is allocated.

use super::{Graph, Hw, Node, Op, PoolParams, RoundMode, MAX_ELEMENTS};
use crate::ops;
use anyhow::{bail, ensure, Context, Result};

/// Number of elements of a shape, refusing overflow and absurd sizes.
pub fn checked_count(shape: &[usize]) -> Result<usize> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .filter(|&n| n <= MAX_ELEMENTS)
            .with_context(|| {
                format!(
                    "shape {shape:?} has more than {MAX_ELEMENTS} elements; refusing to allocate it"
                )
            })?;
    }
    Ok(n)
}

/// Output size of a convolution along one axis (Caffe: floor).
/// Caffe's Deconvolution output size: `stride·(in - 1) + dilation·(kernel - 1) + 1 - 2·pad`
/// (checked: an absurd prototxt is an error, not an overflow).
pub fn deconv_out(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Result<usize> {
    ensure!(input > 0, "deconvolution of an empty input");
    ensure!(kernel > 0, "kernel_size must be positive");
    let full = stride
        .checked_mul(input - 1)
        .and_then(|v| v.checked_add(dilation.checked_mul(kernel - 1)?))
        .and_then(|v| v.checked_add(1))
        .context("deconvolution output size overflows")?;
    let cut = pad.checked_mul(2).context("pad overflows")?;
    ensure!(
        full > cut,
        "deconvolution output {full} minus twice the pad {pad} leaves nothing"
    );
    Ok(full - cut)
}

pub fn conv_out(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Result<usize> {
    let extent = dilation
        .checked_mul(kernel.saturating_sub(1))
        .and_then(|v| v.checked_add(1))
        .context("kernel extent overflows")?;
    let padded = input
        .checked_add(pad.checked_mul(2).context("pad overflows")?)
        .context("padded size overflows")?;
    ensure!(stride > 0, "stride must be positive");
    ensure!(
        padded >= extent,
        "kernel extent {extent} is larger than the padded input {padded}"
    );
    Ok((padded - extent) / stride + 1)
}

/// Output size of a pooling along one axis (Caffe: ceil by default, floor with `round_mode`),
/// including Caffe's rule that the last window must start inside the image or its left padding.
pub fn pool_out(
    input: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    round: RoundMode,
) -> Result<usize> {
    ensure!(stride > 0, "stride must be positive");
    ensure!(kernel > 0, "kernel size must be positive");
    ensure!(
        pad < kernel,
        "pad {pad} must be smaller than the kernel {kernel}"
    );
    let padded = input
        .checked_add(2 * pad)
        .context("padded size overflows")?;
    ensure!(
        padded >= kernel,
        "kernel {kernel} is larger than the padded input {padded}"
    );
    let span = padded - kernel;
    let mut out = match round {
        RoundMode::Ceil => span.div_ceil(stride) + 1,
        RoundMode::Floor => span / stride + 1,
    };
    if pad > 0 && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    Ok(out)
}

/// Effective kernel/stride/pad of a pooling on an `h × w` input (global pooling covers it all).
pub fn pool_geometry(p: &PoolParams, h: usize, w: usize) -> (Hw, Hw, Hw) {
    if p.global {
        (Hw { h, w }, Hw::square(1), Hw::square(0))
    } else {
        (p.kernel, p.stride, p.pad)
    }
}

pub(crate) fn expect_chw(node: &Node, shape: &[usize]) -> Result<(usize, usize, usize)> {
    match shape {
        [c, h, w] => Ok((*c, *h, *w)),
        _ => bail!(
            "layer '{}' ({}) needs a C×H×W input, got shape {:?}",
            node.name,
            node.op.type_name(),
            shape
        ),
    }
}

/// Normalise a Caffe axis (may be negative, counts the batch axis) against a rank that includes
/// the batch axis.
pub(crate) fn canonical_axis(axis: i64, rank_with_batch: usize) -> Result<usize> {
    let r = rank_with_batch as i64;
    let a = if axis < 0 { axis + r } else { axis };
    ensure!(
        (0..r).contains(&a),
        "axis {axis} is out of range for a blob of rank {r}"
    );
    Ok(a as usize)
}

/// Output shapes of one node given its input shapes.
pub fn node_output_shapes(node: &Node, inputs: &[&[usize]]) -> Result<Vec<Vec<usize>>> {
    let first = inputs.first().copied().context("layer has no input")?;
    let out: Vec<usize> = match &node.op {
        Op::Convolution(c) => ops::conv::shape(node, c, first)?,
        Op::Deconvolution(c) => ops::deconv::shape(node, c, first)?,
        Op::Pooling(p) => ops::pool::shape(node, p, first)?,
        Op::InnerProduct(p) => ops::inner_product::shape(p, first)?,
        Op::ReLU { .. }
        | Op::PReLU { .. }
        | Op::Softmax { .. }
        | Op::Sigmoid
        | Op::TanH
        | Op::Lrn(_)
        | Op::BatchNorm { .. }
        | Op::Scale { .. }
        | Op::Bias { .. } => first.to_vec(),
        Op::Eltwise { coeffs, .. } => ops::eltwise::shape(coeffs, inputs)?,
        Op::Concat { axis } => ops::concat::shape(*axis, inputs)?,
        Op::Flatten { axis, end_axis } => ops::reshape::flatten_shape(first, *axis, *end_axis)?,
        Op::Reshape {
            dims,
            axis,
            num_axes,
        } => ops::reshape::reshape_shape(first, dims, *axis, *num_axes)?,
        Op::Permute { order } => ops::reshape::permute_shape(first, order)?,
    };
    checked_count(&out)?;
    let n = node.outputs.len().max(1);
    Ok(vec![out; n])
}

/// Fill `g.shapes` for every blob, walking the nodes in order.
pub fn infer(g: &mut Graph) -> Result<()> {
    let input_shape = g
        .input
        .shape
        .clone()
        .context("the input shape is unknown (give an Input layer, input_shape, or data)")?;
    checked_count(&input_shape).context("input shape")?;
    g.shapes.clear();
    g.shapes.insert(g.input.blob.clone(), input_shape);
    for node in &g.nodes {
        let ins: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|b| {
                g.shapes.get(b).map(Vec::as_slice).with_context(|| {
                    format!("layer '{}': input blob '{b}' has no shape", node.name)
                })
            })
            .collect::<Result<_>>()?;
        let outs = node_output_shapes(node, &ins)
            .with_context(|| format!("layer '{}' ({})", node.name, node.op.type_name()))?;
        for (b, s) in node.outputs.iter().zip(outs) {
            g.shapes.insert(b.clone(), s);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_uses_caffe_ceil_rule() {
        // ARM's CIFAR-10 model: 32 -> 16 with k3 s2 p0 (floor would give 15).
        assert_eq!(pool_out(32, 3, 2, 0, RoundMode::Ceil).unwrap(), 16);
        assert_eq!(pool_out(32, 3, 2, 0, RoundMode::Floor).unwrap(), 15);
        assert_eq!(pool_out(16, 3, 2, 0, RoundMode::Ceil).unwrap(), 8);
        assert_eq!(pool_out(8, 3, 2, 0, RoundMode::Ceil).unwrap(), 4);
    }

    #[test]
    fn pooling_clips_a_last_window_starting_in_the_padding() {
        // in 5, k2 s2 p1: ceil((5+2-2)/2)+1 = 4, but window 3 would start at 6-1 = 5 >= 5+1? (3*2=6 >= 6) -> 3.
        assert_eq!(pool_out(5, 2, 2, 1, RoundMode::Ceil).unwrap(), 3);
        assert_eq!(pool_out(6, 3, 2, 1, RoundMode::Ceil).unwrap(), 4);
    }

    #[test]
    fn convolution_rounds_down() {
        assert_eq!(conv_out(32, 5, 1, 2, 1).unwrap(), 32);
        assert_eq!(conv_out(7, 3, 2, 0, 1).unwrap(), 3);
        assert_eq!(conv_out(7, 3, 1, 0, 2).unwrap(), 3);
        assert!(conv_out(2, 5, 1, 0, 1).is_err());
    }

    #[test]
    fn absurd_shapes_are_refused() {
        assert!(checked_count(&[1 << 20, 1 << 20, 1 << 20]).is_err());
        assert!(checked_count(&[usize::MAX, 2]).is_err());
        assert_eq!(checked_count(&[3, 32, 32]).unwrap(), 3072);
    }

    #[test]
    fn reshape_follows_caffe_rules() {
        assert_eq!(
            ops::reshape::reshape_shape(&[2, 8], &[0, 4, 4], 0, -1).unwrap(),
            vec![4, 4]
        );
        assert!(ops::reshape::reshape_shape(&[2, 8], &[0, 2, 4], 0, -1).is_err());
        assert_eq!(
            ops::reshape::reshape_shape(&[16, 4, 4], &[0, -1], 0, -1).unwrap(),
            vec![256]
        );
        assert_eq!(
            ops::reshape::reshape_shape(&[16, 4, 4], &[-1, 4], 1, -1).unwrap(),
            vec![64, 4]
        );
    }
}
