//! Caffe's Convolution (grouped, depthwise, dilated): in q7 a [`QOp::Conv`] with HWC weights
//! `[out][ky][kx][in/group]`, per-layer or per-channel shifts, run by `kernels::conv_hwc_q7_pc`.
//!
//! The simulator's faster paths for it (the SIMD direct convolutions, the depthwise path, the
//! i16 GEMM) are prepared in `fixed::sim` (`conv_prep`), beside the kernels they feed; this
//! module holds the reference call they are all proptested against. The firmware step may fuse
//! the ReLU and pooling that follow (`codegen::steps`); [`emit`] names the fused call.

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{self, steps::StepKind, ArrayCtx, Call};
use crate::fixed::graph::{hwc_of, pair, LayerFormat, QBlob, QConv, QOp};
use crate::fixed::headroom::{self, Headroom};
use crate::fixed::kernels::{self, KResult};
use crate::fixed::validate::{check_channel_shifts, same_layout};
use crate::fixed::QFormat;
use crate::float::{conv, Kernel};
use crate::ir::shape::{conv_out, expect_chw};
use crate::ir::{ConvParams, Node, Tensor};
use anyhow::{ensure, Context as _, Result};

/// The input's `(h, w)` after the checks a convolution and a deconvolution share: a C×H×W
/// input whose channels, like `num_output`, the group count divides.
pub(crate) fn grouped_input(
    node: &Node,
    c: &ConvParams,
    first: &[usize],
) -> Result<(usize, usize)> {
    let (ch, h, w) = expect_chw(node, first)?;
    ensure!(
        c.group > 0 && ch.is_multiple_of(c.group) && c.num_output.is_multiple_of(c.group),
        "group {} must divide both the input channels {} and num_output {}",
        c.group,
        ch,
        c.num_output
    );
    ensure!(c.num_output > 0, "num_output must be positive");
    Ok((h, w))
}

/// `(in + 2·pad - dilation·(k - 1) - 1) / stride + 1` per axis, rounded down.
pub fn shape(node: &Node, c: &ConvParams, first: &[usize]) -> Result<Vec<usize>> {
    let (h, w) = grouped_input(node, c, first)?;
    Ok(vec![
        c.num_output,
        conv_out(h, c.kernel.h, c.stride.h, c.pad.h, c.dilation.h)?,
        conv_out(w, c.kernel.w, c.stride.w, c.pad.w, c.dilation.w)?,
    ])
}

pub fn float<'g>(
    p: &ConvParams,
    input: &[usize],
    output: &[usize],
    w: &'g [Tensor],
) -> Result<Kernel<'g>> {
    Ok(Kernel::Conv(conv::Conv::new(p, input, output, w)?))
}

/// `lf`: the layer's entry of the formats file, `out_frac` its output format.
pub fn lower(x: &Lower, c: &ConvParams, lf: &LayerFormat, out_frac: i32) -> Result<Lowered> {
    let (n, in0) = (x.node, x.in0());
    let in_dims = in0.layout;
    ensure!(in0.shape.len() == 3 && hwc_of(&in0.shape) == Some(in0.layout), "{}: convolution needs a C×H×W feature map as input; '{}' is {:?} stored as {}×{}×{} (after a Permute or Reshape)", x.ctx(), n.inputs[0], in0.shape, in0.layout.h, in0.layout.w, in0.layout.c);
    let out_dims = hwc_of(x.out_shape).context("conv output is not C×H×W")?;
    let cin_g = in_dims.c / c.group;
    let (kh, kw) = (c.kernel.h, c.kernel.w);
    let w = &n
        .weights
        .first()
        .with_context(|| format!("{}: no weights attached", x.ctx()))?
        .data;
    lf.weight_frac_bits
        .check_len(&format!("layers.{}.weight_frac_bits", n.name), c.num_output)?;
    let mut weights = vec![0i8; w.len()];
    // Caffe [O][I/g][KH][KW] -> kernels [O][KH][KW][I/g].
    for o in 0..c.num_output {
        let wq = QFormat::new(lf.weight_frac_bits.channel(o));
        for i in 0..cin_g {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((o * cin_g + i) * kh + y) * kw + x;
                    let dst = ((o * kh + y) * kw + x) * cin_g + i;
                    weights[dst] = wq.quantize(w[src]);
                }
            }
        }
    }
    let (bias, pc) = crate::fixed::graph::shifts(n, lf, in0.frac_bits, out_frac, c.num_output)?;
    headroom::dense_channels(
        &n.name,
        &weights,
        c.num_output,
        &bias,
        &pc.bias_lshift,
        &pc.out_rshift,
    )?;
    let (weight_frac_bits, bias_frac_bits, bias_lshift, out_rshift, per_channel) = pc.into_fields();
    let op = QOp::Conv(QConv {
        in_dims,
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
        per_channel,
    });
    Ok((op, out_frac, out_dims))
}

/// Per axis of a convolution or deconvolution: `(name, input, kernel, stride, pad, dilation,
/// output)`, what its shape rule is checked on.
pub(crate) fn conv_axes(
    c: &QConv,
) -> [(&'static str, usize, usize, usize, usize, usize, usize); 2] {
    [
        (
            "h",
            c.in_dims.h,
            c.kernel.h,
            c.stride.h,
            c.pad.h,
            c.dilation.h,
            c.out_dims.h,
        ),
        (
            "w",
            c.in_dims.w,
            c.kernel.w,
            c.stride.w,
            c.pad.w,
            c.dilation.w,
            c.out_dims.w,
        ),
    ]
}

/// The checks a convolution and a deconvolution share (`what` names the op): one C×H×W input
/// and the output with the layouts `in_dims`/`out_dims` say, a group count dividing both
/// channel counts. Returns the layer's name and its input and output blobs.
pub(crate) fn check_io<'a>(
    chk: &Check<'a>,
    c: &QConv,
    what: &str,
) -> Result<(&'a str, &'a QBlob, &'a QBlob)> {
    chk.arity(1)?;
    let (in_name, input) = chk.in0()?;
    let (layer, output, out_name) = (chk.name(), chk.out, chk.l.output.as_str());
    same_layout(layer, "in_dims", c.in_dims, in_name, input)?;
    same_layout(layer, "out_dims", c.out_dims, out_name, output)?;
    ensure!(
        input.shape.len() == 3,
        "layer '{layer}': a {what} needs a C×H×W input, '{in_name}' is {:?}",
        input.shape
    );
    ensure!(
        c.groups > 0
            && c.in_dims.c.is_multiple_of(c.groups)
            && c.out_dims.c.is_multiple_of(c.groups),
        "layer '{layer}': groups {} must divide the input channels {} and the output channels {}",
        c.groups,
        c.in_dims.c,
        c.out_dims.c
    );
    Ok((layer, input, output))
}

/// A model file's convolution: dimensions against its blobs and Caffe's size rule, weight and
/// bias lengths, shifts against the formats, the overflow proof.
pub fn check(chk: &Check, c: &QConv) -> Result<Headroom> {
    let (layer, input, output) = check_io(chk, c, "convolution")?;
    ensure!(
        c.kernel.h > 0 && c.kernel.w > 0 && c.stride.h > 0 && c.stride.w > 0,
        "layer '{layer}': kernel {}×{} and stride {}×{} must be positive",
        c.kernel.h,
        c.kernel.w,
        c.stride.h,
        c.stride.w
    );
    ensure!(
        c.dilation.h > 0 && c.dilation.w > 0,
        "layer '{layer}': dilation {}×{} must be positive",
        c.dilation.h,
        c.dilation.w
    );
    for (axis, i, k, s, p, d, o) in conv_axes(c) {
        let want =
            conv_out(i, k, s, p, d).with_context(|| format!("layer '{layer}': axis {axis}"))?;
        ensure!(
            o == want,
            "layer '{layer}': out_dims.{axis} is {o}, but input {i}, kernel {k}, stride {s}, pad {p}, dilation {d} give {want}"
        );
    }
    let k = c.kernel.h * c.kernel.w * (c.in_dims.c / c.groups);
    let want = c
        .out_dims
        .c
        .checked_mul(k)
        .context("weights size overflows")?;
    ensure!(
        c.weights.len() == want,
        "layer '{layer}': weights has {} values, but out_c {} × kernel {}×{} × in_c/groups {} = {want}",
        c.weights.len(),
        c.out_dims.c,
        c.kernel.h,
        c.kernel.w,
        c.in_dims.c / c.groups
    );
    ensure!(
        c.bias.len() == c.out_dims.c,
        "layer '{layer}': bias has {} values for {} output channels",
        c.bias.len(),
        c.out_dims.c
    );
    check_channel_shifts(
        layer,
        &c.per_channel,
        (
            c.weight_frac_bits,
            c.bias_frac_bits,
            c.bias_lshift,
            c.out_rshift,
        ),
        c.out_dims.c,
        input.frac_bits,
        output.frac_bits,
    )?;
    let (bls, ors) = c.shifts();
    headroom::dense_channels(layer, &c.weights, c.out_dims.c, &c.bias, bls, ors)
}

pub fn run(r: &Run, c: &QConv, y: &mut [i8]) -> KResult {
    reference(r.ins[0], c, y)
}

/// One conv through `kernels.rs`: the reference path, and the simulator's path for dilated
/// layers that are not depthwise.
pub fn reference(x: &[i8], c: &QConv, y: &mut [i8]) -> KResult {
    let (bias_lshift, out_rshift) = c.shifts();
    kernels::conv_hwc_q7_pc(
        x,
        c.in_dims.dims(),
        &c.weights,
        pair(c.kernel),
        pair(c.pad),
        pair(c.stride),
        pair(c.dilation),
        c.groups,
        &c.bias,
        bias_lshift,
        out_rshift,
        y,
        c.out_dims.dims(),
    )
}

/// Whether a conv's firmware weights are pre-widened on DSP targets: all but dilated layers
/// that are not depthwise (they run the kernels' direct path, which reads the i8 weights).
pub fn widened(c: &QConv) -> bool {
    kernels::is_depthwise(c.in_dims.c, c.out_dims.c, c.groups)
        || (c.dilation.h == 1 && c.dilation.w == 1)
}

/// The step's constants and arrays: `kind` says whether the ReLU and pooling after it are fused
/// into the call (the pooling's constants are the caller's), `dsp` whether the target gets the
/// weights pre-widened; `step`/`output` name the step and its output blob in the comment.
pub fn emit(
    e: &mut Emit,
    c: &QConv,
    kind: StepKind,
    dsp: bool,
    step: &str,
    output: &str,
) -> Result<(Call, String)> {
    let (p, name) = (e.p.to_string(), e.l.name.clone());
    e.param("IN", "Dims", codegen::dims(c.in_dims));
    e.param("OUT", "Dims", codegen::dims(c.out_dims));
    e.param("KERNEL", "Pair", codegen::pair(c.kernel));
    e.param("PAD", "Pair", codegen::pair(c.pad));
    e.param("STRIDE", "Pair", codegen::pair(c.stride));
    e.param("DILATION", "Pair", codegen::pair(c.dilation));
    e.param("GROUPS", "usize", c.groups.to_string());
    e.dense_shifts(
        &c.per_channel,
        (
            c.weight_frac_bits,
            c.bias_frac_bits,
            c.bias_lshift,
            c.out_rshift,
        ),
    );
    let doc = format!(
        "`{}` weights [{}][{}][{}][{}] (out, ky, kx, in/group), {} fraction bits",
        name,
        c.out_dims.c,
        c.kernel.h,
        c.kernel.w,
        c.in_dims.c / c.groups,
        c.weight_frac_bits
    );
    let depthwise = kernels::is_depthwise(c.in_dims.c, c.out_dims.c, c.groups);
    // Dilated layers that are not depthwise run the kernels' direct path, which
    // reads the i8 weights: they keep those (no pre-widened copy).
    if dsp && widened(c) {
        // DSP targets get the weights pre-widened to i16 pairs in the layout of
        // their kernel (`kernels::widen_conv_weights`: the patches' layout, or the
        // channel quads of the depthwise path): no SXTB16 on weights in the loop.
        let (ic, oc) = (c.in_dims.c, c.out_dims.c);
        let ksize = c.kernel.h * c.kernel.w * (ic / c.groups.max(1));
        let mut wq = vec![0u32; kernels::conv_widened_len(ic, oc, c.groups, ksize)];
        let (bls, ors) = c.shifts();
        kernels::widen_conv_weights(
            &c.weights, &c.bias, bls, ors, ic, oc, c.groups, ksize, &mut wq,
        )
        .map_err(|err| anyhow::anyhow!("layer '{}': cannot widen weights: {err:?}", name))?;
        let layout = if depthwise {
            "SMLABB/SMLATT (`kernels::widen_conv_weights`, depthwise: per quad of channels and tap, words (c0, c2), (c1, c3) of two i16, then per quad its output stage: four accumulator starts and the packed shifts)"
        } else {
            "SMLAD (`kernels::widen_weights`: per channel pair and 4 elements, words of two i16)"
        };
        e.arrays.push(ArrayCtx::u32_hex(
            format!("{p}_WEIGHTS_Q15"),
            format!("{doc}, pre-widened for {layout}."),
            &wq,
        ));
    } else {
        e.arrays.push(ArrayCtx::i8(
            format!("{p}_WEIGHTS"),
            format!("{doc}."),
            &c.weights,
        ));
    }
    e.bias(&c.bias, c.bias_frac_bits);
    Ok((
        if matches!(kind, StepKind::ConvPool { .. }) {
            Call::ConvPool
        } else {
            Call::Conv
        },
        format!(
            "{}: {}convolution {}x{} /{} pad {}{}{}, {} -> {}",
            step,
            if depthwise { "depthwise " } else { "" },
            c.kernel.h,
            c.kernel.w,
            c.stride.h,
            c.pad.h,
            if c.dilation.h != 1 || c.dilation.w != 1 {
                format!(" dilation {}", c.dilation)
            } else {
                String::new()
            },
            match kind {
                StepKind::Layer => "",
                StepKind::ConvRelu => " + ReLU",
                StepKind::ConvPool { .. } => " fused with its pool (row ring)",
            },
            e.in_name(0),
            output
        ),
    ))
}
