//! A standalone Scale / Bias / BatchNorm: what `ir::passes::fold_batchnorm` could not fold into a
//! convolution (after a ReLU or a pooling, a second reader). In q7 a per-channel multiply-add
//! `y = s·x + b` over the innermost channels (`kernels::scale_q7`).

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{ArrayCtx, Call};
use crate::fixed::graph::{QOp, QScaleBias};
use crate::fixed::kernels::{self, KResult};
use crate::fixed::QFormat;
use crate::float::{elementwise, norm, Kernel};
use crate::ir::Tensor;
use anyhow::{ensure, Context as _, Result};

/// Caffe's Scale (scale, optional bias along `axis`).
pub fn float_scale<'g>(
    input: &[usize],
    axis: usize,
    bias_term: bool,
    w: &'g [Tensor],
) -> Result<Kernel<'g>> {
    Ok(Kernel::Affine(elementwise::Affine::new(
        input,
        axis,
        Some(&w[0].data),
        bias_term.then(|| w[1].data.as_slice()),
    )?))
}

/// Caffe's Bias (a bias along `axis`).
pub fn float_bias<'g>(input: &[usize], axis: usize, w: &'g [Tensor]) -> Result<Kernel<'g>> {
    Ok(Kernel::Affine(elementwise::Affine::new(
        input,
        axis,
        None,
        Some(&w[0].data),
    )?))
}

/// Caffe's BatchNorm (moving averages scaled by the stored factor).
pub fn float_batchnorm(eps: f32, input: &[usize], w: &[Tensor]) -> Result<Kernel<'static>> {
    Ok(Kernel::BatchNorm(norm::BatchNorm::new(eps, input, w)?))
}

/// Scale, Bias and BatchNorm alike: their per-channel affine map (`ir::passes::channel_affine`)
/// quantized; the output format is the given one, else the input's.
pub fn lower(x: &Lower) -> Result<Lowered> {
    let n = x.node;
    let in0 = x.in0();
    let l = in0.layout;
    // Caffe's channels (axis 1) must be the innermost bytes, as for PReLU.
    ensure!(
        x.channels_innermost(),
        "{}: {} over {:?} stored {}×{}×{} has no q7 kernel (channels must be the innermost axis)",
        x.ctx(),
        n.op.type_name(),
        in0.shape,
        l.h,
        l.w,
        l.c
    );
    let (s, b) = crate::ir::passes::channel_affine(&n.op, &n.weights, l.c)
        .with_context(|| x.ctx())?
        .with_context(|| {
            format!(
                "{}: a q7 {} scales the channels (axis 1, one value per channel) only",
                x.ctx(),
                n.op.type_name()
            )
        })?;
    let out_frac = x.given.unwrap_or(in0.frac_bits);
    Ok((
        quantize(&n.name, &s, &b, in0.frac_bits, out_frac)?,
        out_frac,
        l,
    ))
}

/// A standalone Scale/Bias/BatchNorm in q7 (`y = s·x + b` per channel): scales with as many
/// fraction bits as their largest value allows (0 to 15), biases at their own max-abs format,
/// coarsened so that `bias_lshift` stays within [`kernels::SCALE_MAX_BIAS_LSHIFT`] and
/// never above the accumulator's format.
fn quantize(layer: &str, s: &[f32], b: &[f32], in_frac: i32, out_frac: i32) -> Result<QOp> {
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale_frac = QFormat::from_max_abs(max_abs(s))?.frac_bits.clamp(0, 15);
    let scales = QFormat::new(scale_frac).quantize_slice(s);
    let acc_frac = in_frac + scale_frac;
    let bias_frac = QFormat::from_max_abs(max_abs(b))?
        .frac_bits
        .min(acc_frac)
        .max(acc_frac - kernels::SCALE_MAX_BIAS_LSHIFT);
    let bias = QFormat::new(bias_frac).quantize_slice(b);
    let bias_lshift = acc_frac - bias_frac;
    let out_rshift = acc_frac - out_frac;
    crate::fixed::graph::check_shift(
        layer,
        "bias_lshift",
        bias_lshift,
        &format!("input_frac {in_frac} + scale_frac {scale_frac} - bias_frac {bias_frac}"),
    )?;
    crate::fixed::graph::check_shift(
        layer,
        "out_rshift",
        out_rshift,
        &format!("input_frac {in_frac} + scale_frac {scale_frac} - output_frac {out_frac}"),
    )?;
    Ok(QOp::ScaleBias(QScaleBias {
        scales,
        scale_frac,
        bias,
        bias_frac,
        bias_lshift,
        out_rshift,
    }))
}

pub fn check(c: &Check, s: &QScaleBias) -> Result<()> {
    let name = c.name();
    let inp = c.unary_same_layout()?;
    let (bias_lshift, out_rshift, scale_frac, bias_frac) =
        (s.bias_lshift, s.out_rshift, s.scale_frac, s.bias_frac);
    ensure!(
        s.scales.len() == inp.layout.c && s.bias.len() == inp.layout.c,
        "layer '{name}': {} scales and {} biases for {} channels",
        s.scales.len(),
        s.bias.len(),
        inp.layout.c
    );
    c.shift("bias_lshift", bias_lshift)?;
    c.shift("out_rshift", out_rshift)?;
    let acc = inp.frac_bits + scale_frac;
    ensure!(
        bias_lshift <= kernels::SCALE_MAX_BIAS_LSHIFT
            && bias_lshift == acc - bias_frac
            && out_rshift == acc - c.out.frac_bits,
        "layer '{name}': shifts bias_lshift {bias_lshift} (at most {}) and out_rshift {out_rshift} do not follow from the formats (input {}, scale {scale_frac}, bias {bias_frac}, output {})",
        kernels::SCALE_MAX_BIAS_LSHIFT,
        inp.frac_bits,
        c.out.frac_bits
    );
    Ok(())
}

pub fn run(r: &Run, s: &QScaleBias, y: &mut [i8]) -> KResult {
    kernels::scale_q7(r.ins[0], &s.scales, &s.bias, s.bias_lshift, s.out_rshift, y)
}

pub fn emit(e: &mut Emit, s: &QScaleBias) -> (Call, String) {
    e.param("BIAS_LSHIFT", "i32", s.bias_lshift.to_string());
    e.param("OUT_RSHIFT", "i32", s.out_rshift.to_string());
    e.arrays.push(ArrayCtx::i8(
        format!("{}_SCALES", e.p),
        format!(
            "`{}` scales [{}], {} fraction bits.",
            e.l.name,
            s.scales.len(),
            s.scale_frac
        ),
        &s.scales,
    ));
    e.arrays.push(ArrayCtx::i8(
        format!("{}_BIAS", e.p),
        format!(
            "`{}` biases [{}], {} fraction bits.",
            e.l.name,
            s.bias.len(),
            s.bias_frac
        ),
        &s.bias,
    ));
    (
        Call::Scale,
        format!(
            "{}: per-channel scale/bias {} -> {}",
            e.l.name,
            e.in_name(0),
            e.l.output
        ),
    )
}
