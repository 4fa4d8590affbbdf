//! Caffe's Deconvolution (transposed convolution): in q7 a [`QOp::Deconv`] in the convolution's
//! weight layout run by the gather kernel `kernels::deconv_hwc_q7`, per-layer formats only (one
//! shift per layer).

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{self, ArrayCtx, Call};
use crate::fixed::graph::{hwc_of, Frac, LayerFormat, QConv, QOp};
use crate::fixed::headroom::{self, Headroom};
use crate::fixed::kernels::{self, KResult};
use crate::fixed::validate::check_dense_shifts;
use crate::fixed::QFormat;
use crate::float::{deconv, Kernel};
use crate::ir::shape::deconv_out;
use crate::ir::{ConvParams, Hw, Node, Tensor};
use anyhow::{bail, ensure, Context as _, Result};

/// `stride·(in - 1) + dilation·(k - 1) + 1 - 2·pad` per axis.
pub fn shape(node: &Node, c: &ConvParams, first: &[usize]) -> Result<Vec<usize>> {
    let (h, w) = super::conv::grouped_input(node, c, first)?;
    Ok(vec![
        c.num_output,
        deconv_out(h, c.kernel.h, c.stride.h, c.pad.h, c.dilation.h)?,
        deconv_out(w, c.kernel.w, c.stride.w, c.pad.w, c.dilation.w)?,
    ])
}

pub fn float<'g>(
    p: &ConvParams,
    input: &[usize],
    output: &[usize],
    w: &'g [Tensor],
) -> Result<Kernel<'g>> {
    Ok(Kernel::Deconv(deconv::Deconv::new(p, input, output, w)?))
}

/// `lf`: the layer's entry of the formats file, `out_frac` its output format.
pub fn lower(x: &Lower, c: &ConvParams, lf: &LayerFormat, out_frac: i32) -> Result<Lowered> {
    let (n, in0) = (x.node, x.in0());
    ensure!(
        in0.shape.len() == 3 && hwc_of(&in0.shape) == Some(in0.layout),
        "{}: deconvolution needs a C×H×W feature map as input; '{}' is {:?} stored as {}×{}×{}",
        x.ctx(),
        n.inputs[0],
        in0.shape,
        in0.layout.h,
        in0.layout.w,
        in0.layout.c
    );
    let out_dims = hwc_of(x.out_shape).context("deconvolution output is not C×H×W")?;
    let w = &n
        .weights
        .first()
        .with_context(|| format!("{}: no weights attached", x.ctx()))?
        .data;
    // Deconvolution takes per-layer formats (its kernel has one shift per layer).
    let Frac::Layer(wf) = lf.weight_frac_bits else {
        bail!(
            "{}: Deconvolution takes one weight format per layer, not a per-channel list",
            x.ctx()
        );
    };
    let weights = weights(
        w,
        in0.layout.c,
        c.num_output,
        c.group,
        c.kernel,
        QFormat::new(wf),
    )
    .with_context(|| format!("{}: {} weights do not match its shape", x.ctx(), w.len()))?;
    let (bias, pc) = crate::fixed::graph::shifts(n, lf, in0.frac_bits, out_frac, c.num_output)?;
    ensure!(
        pc.uniform(),
        "{}: Deconvolution takes one bias format per layer, not a per-channel list",
        x.ctx()
    );
    let (weight_frac_bits, bias_frac_bits, bias_lshift, out_rshift, _) = pc.into_fields();
    // Each output sums a subset of its weights: the bound over all of them holds.
    headroom::dense(
        &n.name,
        &weights,
        c.num_output,
        &bias,
        bias_lshift,
        out_rshift,
    )?;
    let op = QOp::Deconv(QConv {
        in_dims: in0.layout,
        out_dims,
        kernel: c.kernel,
        pad: c.pad,
        stride: c.stride,
        dilation: c.dilation,
        groups: c.group,
        weights,
        bias,
        weight_frac_bits,
        bias_frac_bits,
        bias_lshift,
        out_rshift,
        per_channel: None,
    });
    Ok((op, out_frac, out_dims))
}

/// Caffe's Deconvolution weights `[in][out/g][kh][kw]` quantized into the kernels' layout
/// `[out][kh][kw][in/g]`; `None` when their number does not match the geometry.
pub fn weights(
    w: &[f32],
    in_c: usize,
    out_c: usize,
    groups: usize,
    kernel: Hw,
    q: QFormat,
) -> Option<Vec<i8>> {
    let (kh, kw) = (kernel.h, kernel.w);
    if groups == 0 || !in_c.is_multiple_of(groups) || !out_c.is_multiple_of(groups) {
        return None;
    }
    let (cin_g, cout_g) = (in_c / groups, out_c / groups);
    if w.len() != in_c * cout_g * kh * kw {
        return None;
    }
    let mut out = vec![0i8; w.len()];
    for i in 0..in_c {
        let (grp, ii) = (i / cin_g, i % cin_g);
        for oo in 0..cout_g {
            let o = grp * cout_g + oo;
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((i * cout_g + oo) * kh + y) * kw + x;
                    out[((o * kh + y) * kw + x) * cin_g + ii] = q.quantize(w[src]);
                }
            }
        }
    }
    Some(out)
}

/// A Deconvolution: the convolution's checks with Caffe's transposed size rule (kept apart
/// from `conv::check` so that each rule reads on its own; the layout and group checks are
/// shared, `conv::check_io`).
pub fn check(chk: &Check, c: &QConv) -> Result<Headroom> {
    let (layer, input, output) = super::conv::check_io(chk, c, "deconvolution")?;
    ensure!(
        c.kernel.h > 0
            && c.kernel.w > 0
            && c.stride.h > 0
            && c.stride.w > 0
            && c.dilation.h > 0
            && c.dilation.w > 0,
        "layer '{layer}': kernel, stride and dilation must be positive"
    );
    for (axis, i, k, s, p, d, o) in super::conv::conv_axes(c) {
        let want =
            deconv_out(i, k, s, p, d).with_context(|| format!("layer '{layer}': axis {axis}"))?;
        ensure!(
            o == want,
            "layer '{layer}': out_dims.{axis} is {o}, but a deconvolution of input {i} with kernel {k}, stride {s}, pad {p}, dilation {d} gives {want}"
        );
    }
    let want = (c.kernel.h * c.kernel.w)
        .checked_mul(c.in_dims.c / c.groups)
        .and_then(|k| k.checked_mul(c.out_dims.c))
        .context("weights size overflows")?;
    ensure!(
        c.weights.len() == want && c.bias.len() == c.out_dims.c,
        "layer '{layer}': {} weights and {} biases, but out_c {} × kernel {}×{} × in_c/groups {} = {want} and {} biases",
        c.weights.len(),
        c.bias.len(),
        c.out_dims.c,
        c.kernel.h,
        c.kernel.w,
        c.in_dims.c / c.groups,
        c.out_dims.c
    );
    check_dense_shifts(
        layer,
        c.weight_frac_bits,
        c.bias_frac_bits,
        c.bias_lshift,
        c.out_rshift,
        input.frac_bits,
        output.frac_bits,
    )?;
    headroom::dense(
        layer,
        &c.weights,
        c.out_dims.c,
        &c.bias,
        c.bias_lshift,
        c.out_rshift,
    )
}

pub fn run(r: &Run, c: &QConv, y: &mut [i8]) -> KResult {
    kernels::deconv_hwc_q7(
        r.ins[0],
        c.in_dims.dims(),
        &c.weights,
        crate::fixed::graph::pair(c.kernel),
        crate::fixed::graph::pair(c.pad),
        crate::fixed::graph::pair(c.stride),
        crate::fixed::graph::pair(c.dilation),
        c.groups,
        &c.bias,
        c.bias_lshift,
        c.out_rshift,
        y,
        c.out_dims.dims(),
    )
}

pub fn emit(e: &mut Emit, c: &QConv) -> (Call, String) {
    e.param("IN", "Dims", codegen::dims(c.in_dims));
    e.param("OUT", "Dims", codegen::dims(c.out_dims));
    e.param("KERNEL", "Pair", codegen::pair(c.kernel));
    e.param("PAD", "Pair", codegen::pair(c.pad));
    e.param("STRIDE", "Pair", codegen::pair(c.stride));
    e.param("DILATION", "Pair", codegen::pair(c.dilation));
    e.param("GROUPS", "usize", c.groups.to_string());
    e.param("BIAS_LSHIFT", "i32", c.bias_lshift.to_string());
    e.param("OUT_RSHIFT", "i32", c.out_rshift.to_string());
    e.param("WEIGHT_FRAC_BITS", "i32", c.weight_frac_bits.to_string());
    e.param("BIAS_FRAC_BITS", "i32", c.bias_frac_bits.to_string());
    e.arrays.push(ArrayCtx::i8(
            format!("{}_WEIGHTS", e.p),
            format!(
                "`{}` deconvolution weights [{}][{}][{}][{}] (out, ky, kx, in/group), {} fraction bits.",
                e.l.name,
                c.out_dims.c,
                c.kernel.h,
                c.kernel.w,
                c.in_dims.c / c.groups.max(1),
                c.weight_frac_bits
            ),
            &c.weights,
        ));
    e.bias(&c.bias, c.bias_frac_bits);
    (
        Call::Deconv,
        format!(
            "{}: deconvolution {}x{} x{} pad {}, {} -> {}",
            e.l.name,
            c.kernel.h,
            c.kernel.w,
            c.stride.h,
            c.pad.h,
            e.in_name(0),
            e.l.output
        ),
    )
}
