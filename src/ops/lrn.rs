//! LRN (local response normalisation, across channels or within a channel): in q7 a table of
//! the factor `(k + α/n · Σx²)^-β` indexed by the shifted sum of squares (`kernels::lrn_q7`).

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{ArrayCtx, Call};
use crate::fixed::graph::{hwc_of, QOp};
use crate::fixed::kernels::{self, KResult};
use crate::float::{norm, Kernel};
use crate::ir::LrnParams;
use anyhow::{ensure, Context as _, Result};

pub fn float(p: &LrnParams, input: &[usize]) -> Result<Kernel<'static>> {
    Ok(Kernel::Lrn(norm::Lrn::new(p, input)?))
}

/// The output format is the given one, else the input's (LRN only shrinks values).
pub fn lower(x: &Lower, p: &LrnParams) -> Result<Lowered> {
    let in0 = x.in0();
    ensure!(
        in0.shape.len() == 3 && hwc_of(&in0.shape) == Some(in0.layout),
        "{}: LRN needs a C×H×W feature map as input; '{}' is {:?}",
        x.ctx(),
        x.node.inputs[0],
        in0.shape
    );
    let out_frac = x.given.unwrap_or(in0.frac_bits);
    let l = table(p, in0.frac_bits, out_frac).with_context(|| x.ctx())?;
    Ok((l, out_frac, in0.layout))
}

/// The q7 LRN of a layer: the factor table for these formats (see [`QOp::Lrn`]). The index
/// shift makes the largest possible sum of squares (`window · 128²`) land on the table's last
/// entry; the table takes as many fraction bits as its largest factor allows in a `u16`
/// (at most 31 - in_frac + out_frac, so that the output shift stays in range).
pub fn table(p: &crate::ir::LrnParams, in_frac: i32, out_frac: i32) -> Result<QOp> {
    use crate::fixed::kernels::LRN_TABLE_LEN;
    let size = p.local_size;
    ensure!(
        size % 2 == 1 && size <= 255,
        "LRN local_size {size} is not an odd number up to 255"
    );
    let (across, window, k) = match p.region {
        crate::ir::NormRegion::AcrossChannels => (true, size, f64::from(p.k)),
        // Caffe builds WITHIN_CHANNEL from a Power layer with shift 1: `k` is not used.
        crate::ir::NormRegion::WithinChannel => (false, size * size, 1.0),
    };
    let max_s = window as u64 * 128 * 128;
    let segments = (LRN_TABLE_LEN - 1) as u64;
    let index_shift = (0..32).find(|&s| max_s >> s <= segments).unwrap_or(31);
    let a = f64::from(p.alpha) / window as f64 * (-2.0 * f64::from(in_frac)).exp2();
    let beta = f64::from(p.beta);
    let factors: Vec<f64> = (0..LRN_TABLE_LEN)
        .map(|j| (k + a * ((j as u64) << index_shift) as f64).powf(-beta))
        .collect();
    ensure!(
        factors.iter().all(|v| v.is_finite() && *v >= 0.0),
        "LRN with k {k}, alpha {}, beta {beta}: k + alpha/n·Σx² must stay positive for a q7 table",
        p.alpha
    );
    let max = factors
        .iter()
        .cloned()
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let table_frac = ((65535.0 / max).log2().floor() as i32).min(31 - in_frac + out_frac);
    let out_rshift = table_frac + in_frac - out_frac;
    ensure!(
        (0..=31).contains(&out_rshift),
        "LRN output format {out_frac} is too fine for input format {in_frac} and the factor table (shift {out_rshift})"
    );
    ensure!(
        table_frac >= 0,
        "LRN factors up to {max} do not fit a table with a right shift of at most 31"
    );
    let table = factors
        .iter()
        .map(|v| (v * f64::from(table_frac).exp2()).round().min(65535.0) as u16)
        .collect();
    Ok(QOp::Lrn {
        size,
        across,
        index_shift,
        table,
        table_frac,
        out_rshift,
    })
}

pub fn check(
    c: &Check,
    size: usize,
    index_shift: i32,
    table: &[u16],
    table_frac: i32,
    out_rshift: i32,
) -> Result<()> {
    let name = c.name();
    let out = c.out;
    let inp = c.unary_same_layout()?;
    ensure!(
        inp.shape.len() == 3 && size % 2 == 1 && size <= 255,
        "layer '{name}': LRN needs a C×H×W input and an odd size up to 255"
    );
    ensure!(
        table.len() == kernels::LRN_TABLE_LEN,
        "layer '{name}': the LRN table has {} entries, not {}",
        table.len(),
        kernels::LRN_TABLE_LEN
    );
    c.shift("index_shift", index_shift)?;
    c.shift("out_rshift", out_rshift)?;
    ensure!(
        out_rshift == table_frac + inp.frac_bits - out.frac_bits,
        "layer '{name}': out_rshift {out_rshift} is not table_frac {table_frac} + input frac_bits {} - output frac_bits {}",
        inp.frac_bits,
        out.frac_bits
    );
    Ok(())
}

pub fn run(
    r: &Run,
    size: usize,
    across: bool,
    index_shift: i32,
    table: &[u16],
    out_rshift: i32,
    y: &mut [i8],
) -> KResult {
    let d = r.in_layout(0).dims();
    kernels::lrn_q7(r.ins[0], d, size, across, index_shift, table, out_rshift, y)
}

pub fn emit(
    e: &mut Emit,
    size: usize,
    across: bool,
    index_shift: i32,
    table: &[u16],
    table_frac: i32,
    out_rshift: i32,
) -> (Call, String) {
    let dims = crate::codegen::dims(e.g.blobs[e.in_name(0)].layout);
    e.param("DIMS", "Dims", dims);
    e.param("SIZE", "usize", size.to_string());
    e.param("ACROSS", "bool", across.to_string());
    e.param("INDEX_SHIFT", "i32", index_shift.to_string());
    e.param("OUT_RSHIFT", "i32", out_rshift.to_string());
    e.arrays.push(ArrayCtx::u16(
        format!("{}_TABLE", e.p),
        format!(
            "`{}`: the LRN factor at Σx² = j << {index_shift}, {table_frac} fraction bits.",
            e.l.name
        ),
        table,
    ));
    (
        Call::Lrn,
        format!(
            "{}: LRN {} size {size}, {} -> {}",
            e.l.name,
            if across {
                "across channels"
            } else {
                "within channel"
            },
            e.in_name(0),
            e.l.output
        ),
    )
}
