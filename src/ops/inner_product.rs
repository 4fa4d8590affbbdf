//! Caffe's InnerProduct (fully connected): in q7 a [`QOp::Fc`] over the HWC-flattened input,
//! weights `[out][HWC in]`, per-layer or per-channel shifts, run by `kernels::fc_q7_pc`.
//!
//! The simulator's faster paths (SIMD direct kernels as a 1×1 convolution, the i16 GEMM) are
//! prepared in `fixed::sim` (`fc_prep`); this module holds the reference call.

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{ArrayCtx, Call};
use crate::fixed::graph::{Hwc, LayerFormat, QFc, QOp};
use crate::fixed::headroom::{self, Headroom};
use crate::fixed::kernels::{self, KResult};
use crate::fixed::validate::check_channel_shifts;
use crate::fixed::QFormat;
use crate::float::{dense, Kernel};
use crate::ir::{InnerProductParams, Tensor};
use anyhow::{ensure, Context as _, Result};

/// The input's axes before `axis`, then `num_output`.
pub fn shape(p: &InnerProductParams, first: &[usize]) -> Result<Vec<usize>> {
    ensure!(p.num_output > 0, "num_output must be positive");
    let axis = p.axis;
    ensure!(
        axis >= 1 && axis <= first.len(),
        "inner product axis {axis} is out of range for input shape {first:?}"
    );
    let mut s = first[..axis - 1].to_vec();
    s.push(p.num_output);
    Ok(s)
}

pub fn float<'g>(p: &InnerProductParams, input: &[usize], w: &'g [Tensor]) -> Result<Kernel<'g>> {
    Ok(Kernel::Dense(dense::Dense::new(p, input, w)?))
}

/// Only `axis: 1` (the whole image per output) has a q7 kernel. `layer_format` gives the
/// layer's entry of the formats file (asked for after the output format, as for every layer
/// with weights, so that a missing output format is the error named first).
pub fn lower<'f>(
    x: &Lower,
    p: &InnerProductParams,
    layer_format: impl FnOnce() -> Result<&'f LayerFormat>,
) -> Result<Lowered> {
    let n = x.node;
    ensure!(
        p.axis == 1,
        "{}: inner product over axis {} (only axis 1) has no q7 kernel",
        x.ctx(),
        p.axis
    );
    let out_frac = x.required()?;
    let lf = layer_format()?;
    let l = x.in0().layout;
    let k = l.len();
    let no = p.num_output;
    let w = &n
        .weights
        .first()
        .with_context(|| format!("{}: no weights attached", x.ctx()))?
        .data;
    lf.weight_frac_bits
        .check_len(&format!("layers.{}.weight_frac_bits", n.name), no)?;
    let mut weights = vec![0i8; w.len()];
    // Caffe flattens C-major (c, y, x); the q7 input is HWC (y, x, c).
    for o in 0..no {
        let wq = QFormat::new(lf.weight_frac_bits.channel(o));
        for ch in 0..l.c {
            for y in 0..l.h {
                for x in 0..l.w {
                    let logical = (ch * l.h + y) * l.w + x;
                    let phys = (y * l.w + x) * l.c + ch;
                    let src = if p.transpose {
                        logical * no + o
                    } else {
                        o * k + logical
                    };
                    weights[o * k + phys] = wq.quantize(w[src]);
                }
            }
        }
    }
    let (bias, pc) = crate::fixed::graph::shifts(n, lf, x.in0().frac_bits, out_frac, no)?;
    headroom::dense_channels(
        &n.name,
        &weights,
        no,
        &bias,
        &pc.bias_lshift,
        &pc.out_rshift,
    )?;
    let (weight_frac_bits, bias_frac_bits, bias_lshift, out_rshift, per_channel) = pc.into_fields();
    let op = QOp::Fc(QFc {
        in_len: k,
        out_len: no,
        weights,
        bias,
        weight_frac_bits,
        bias_frac_bits,
        bias_lshift,
        out_rshift,
        per_channel,
    });
    Ok((op, out_frac, Hwc { h: 1, w: 1, c: no }))
}

/// A model file's fully connected layer: lengths against its blobs, weight and bias lengths,
/// shifts against the formats, the overflow proof.
pub fn check(chk: &Check, f: &QFc) -> Result<Headroom> {
    chk.arity(1)?;
    let (in_name, input) = chk.in0()?;
    let (layer, output, out_name) = (chk.name(), chk.out, chk.l.output.as_str());
    ensure!(
        f.in_len == input.layout.len() && f.in_len > 0,
        "layer '{layer}': in_len {} does not match blob '{in_name}' ({} values)",
        f.in_len,
        input.layout.len()
    );
    ensure!(
        f.out_len == output.layout.len()
            && output.layout
                == (Hwc {
                    h: 1,
                    w: 1,
                    c: f.out_len
                }),
        "layer '{layer}': out_len {} does not match blob '{out_name}' (layout {:?})",
        f.out_len,
        output.layout
    );
    let want = f
        .in_len
        .checked_mul(f.out_len)
        .context("weights size overflows")?;
    ensure!(
        f.weights.len() == want,
        "layer '{layer}': weights has {} values, but in_len {} × out_len {} = {want}",
        f.weights.len(),
        f.in_len,
        f.out_len
    );
    ensure!(
        f.bias.len() == f.out_len,
        "layer '{layer}': bias has {} values for out_len {}",
        f.bias.len(),
        f.out_len
    );
    check_channel_shifts(
        layer,
        &f.per_channel,
        (
            f.weight_frac_bits,
            f.bias_frac_bits,
            f.bias_lshift,
            f.out_rshift,
        ),
        f.out_len,
        input.frac_bits,
        output.frac_bits,
    )?;
    let (bls, ors) = f.shifts();
    headroom::dense_channels(layer, &f.weights, f.out_len, &f.bias, bls, ors)
}

pub fn run(r: &Run, f: &QFc, y: &mut [i8]) -> KResult {
    let (bl, or) = f.shifts();
    kernels::fc_q7_pc(r.ins[0], &f.weights, &f.bias, bl, or, y)
}

pub fn emit(e: &mut Emit, f: &QFc) -> (Call, String) {
    let (p, name) = (e.p.to_string(), e.l.name.clone());
    e.dense_shifts(
        &f.per_channel,
        (
            f.weight_frac_bits,
            f.bias_frac_bits,
            f.bias_lshift,
            f.out_rshift,
        ),
    );
    e.arrays.push(ArrayCtx::i8(
        format!("{p}_WEIGHTS"),
        format!(
            "`{}` weights [{}][{}] (out, HWC-flattened in), {} fraction bits.",
            name, f.out_len, f.in_len, f.weight_frac_bits
        ),
        &f.weights,
    ));
    e.bias(&f.bias, f.bias_frac_bits);
    (
        Call::Fc,
        format!(
            "{}: fully connected {} -> {}, {} -> {}",
            name,
            f.in_len,
            f.out_len,
            e.in_name(0),
            e.l.output
        ),
    )
}
