//! Softmax over contiguous rows: in q7 (`kernels::softmax_q7`, 0 to 15 output fraction bits) an
//! exp table over the distance below the row's maximum. A trailing Softmax is dropped from the
//! q7 graph unless the float graph keeps it (`QGraph::quantize`).

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{ArrayCtx, Call};
use crate::fixed::graph::{hwc_of, QOp};
use crate::fixed::kernels::{self, KResult};
use crate::float::{norm, Kernel};
use anyhow::{ensure, Result};

pub fn float(axis: usize, input: &[usize]) -> Result<Kernel<'static>> {
    Ok(Kernel::Softmax(norm::Softmax::new(axis, input)?))
}

pub fn lower(x: &Lower, axis: usize) -> Result<Lowered> {
    let out_frac = x.required()?;
    ensure!((0..=15).contains(&out_frac), "{}: a q7 Softmax writes probabilities with 0 to 15 fraction bits; the formats give {out_frac} for '{}'", x.ctx(), x.out);
    let in0 = x.in0();
    let l = in0.layout;
    // The softmax axis must be contiguous in memory: channels of an HWC feature
    // map, the last axis of a flat blob, or all values of a 1-D blob.
    let row = if in0.shape.len() == 1 || in0.shape.len() == axis {
        if l.h * l.w == 1 || in0.shape.len() == 1 {
            *in0.shape.last().unwrap_or(&1)
        } else {
            0
        }
    } else if axis == 1 && in0.shape.len() == 3 && hwc_of(&in0.shape) == Some(l) {
        l.c
    } else {
        0
    };
    ensure!(row > 0, "{}: Softmax over axis {axis} of {:?} (stored {}×{}×{}) is not over contiguous values; q7 Softmax takes the channels of a feature map or the last axis", x.ctx(), in0.shape, l.h, l.w, l.c);
    let exp_table = (0..256)
        .map(|d| ((-(d as f64) * (-(in0.frac_bits as f64)).exp2()).exp() * 32768.0).round() as u16)
        .collect();
    Ok((QOp::Softmax { row, exp_table }, out_frac, l))
}

pub fn check(c: &Check, row: usize, exp_table: &[u16]) -> Result<()> {
    let name = c.name();
    let inp = c.unary_same_layout()?;
    ensure!(
        row > 0 && inp.layout.len() % row == 0,
        "layer '{name}': rows of {row} do not divide its {} values",
        inp.layout.len()
    );
    ensure!(
        exp_table.len() == 256 && exp_table[0] > 0,
        "layer '{name}': the exp table must have 256 entries, the first positive"
    );
    ensure!(
        (0..=15).contains(&c.out.frac_bits),
        "layer '{name}': Softmax output '{}' has {} fraction bits, not 0 to 15",
        c.l.output,
        c.out.frac_bits
    );
    Ok(())
}

pub fn run(r: &Run, row: usize, exp_table: &[u16], y: &mut [i8]) -> KResult {
    y.copy_from_slice(r.ins[0]);
    kernels::softmax_q7(y, row, exp_table, r.out_blob().frac_bits)
}

/// In place over its input when it dies here, else on a copy in the output's buffer.
pub fn emit(e: &mut Emit, row: usize, exp_table: &[u16]) -> (Call, String) {
    let (in_frac, out_frac) = (
        e.g.blobs[e.in_name(0)].frac_bits,
        e.g.blobs[&e.l.output].frac_bits,
    );
    e.param("ROW", "usize", row.to_string());
    e.param("OUT_FRAC", "i32", out_frac.to_string());
    e.arrays.push(ArrayCtx::u16(
        format!("{}_EXP", e.p),
        format!(
            "`{}`: round(2^15 · e^(-d · 2^-{in_frac})) for d = 0..=255.",
            e.l.name
        ),
        exp_table,
    ));
    (
        e.pick(Call::SoftmaxInplace, Call::SoftmaxCopy),
        format!(
            "{}: softmax over rows of {row}, {} -> {}",
            e.l.name,
            e.in_name(0),
            e.l.output
        ),
    )
}
