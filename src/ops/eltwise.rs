//! Eltwise SUM / MAX / PROD. Float: Caffe's formula over any number of same-shaped inputs (SUM
//! with its coefficients). q7: two inputs; SUM and MAX bring both to a common format with left
//! shifts (`kernels::add_q7`, `kernels::max_q7`), PROD shifts the product
//! (`kernels::mul_q7`).

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::Call;
use crate::fixed::graph::QOp;
use crate::fixed::headroom::{self, Headroom};
use crate::fixed::kernels::{self, KResult};
use crate::float::Kernel;
use crate::ir::{EltwiseOp, Graph};
use anyhow::{ensure, Result};

/// Every input has the first one's shape; coefficients, if any, one per input.
pub fn shape(coeffs: &[f32], inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let first = inputs[0];
    for (i, s) in inputs.iter().enumerate() {
        ensure!(
            *s == first,
            "Eltwise input {i} has shape {s:?}, but input 0 has {first:?}"
        );
    }
    ensure!(
        coeffs.is_empty() || coeffs.len() == inputs.len(),
        "Eltwise has {} coefficients for {} inputs",
        coeffs.len(),
        inputs.len()
    );
    Ok(first.to_vec())
}

pub fn float<'g>(
    op: EltwiseOp,
    coeffs: &'g [f32],
    g: &Graph,
    inputs: &[String],
) -> Result<Kernel<'g>> {
    ensure!(!inputs.is_empty(), "Eltwise has no inputs");
    let input = g.shape(&inputs[0]);
    for b in inputs {
        ensure!(
            g.shape(b) == input,
            "Eltwise input '{b}' has shape {:?}, expected {input:?}",
            g.shape(b)
        );
    }
    ensure!(
        coeffs.is_empty() || coeffs.len() == inputs.len(),
        "Eltwise has {} coefficients for {} inputs",
        coeffs.len(),
        inputs.len()
    );
    Ok(Kernel::Eltwise(op, coeffs))
}

pub fn lower(x: &Lower, op: EltwiseOp, coeffs: &[f32]) -> Result<Lowered> {
    let ins = x.ins;
    let in0 = x.in0();
    match op {
        EltwiseOp::Prod => {
            ensure!(ins.len() == 2, "{}: q7 Eltwise PROD takes exactly 2 inputs, got {} (chain two-input PROD layers instead)", x.ctx(), ins.len());
            ensure!(
                ins[1].layout == in0.layout,
                "{}: Eltwise inputs differ in layout",
                x.ctx()
            );
            let out_frac = x.required()?;
            let out_rshift = ins[0].frac_bits + ins[1].frac_bits - out_frac;
            crate::fixed::graph::check_shift(
                &x.node.name,
                "out_rshift",
                out_rshift,
                &format!(
                    "input_frac {} + input_frac {} - output_frac {out_frac}",
                    ins[0].frac_bits, ins[1].frac_bits
                ),
            )?;
            Ok((QOp::Mul { out_rshift }, out_frac, in0.layout))
        }
        EltwiseOp::Sum | EltwiseOp::Max => {
            ensure!(
                ins.len() == 2,
                "{}: q7 Eltwise {op:?} takes exactly 2 inputs, got {}",
                x.ctx(),
                ins.len()
            );
            ensure!(
                coeffs.iter().all(|&c| c == 1.0),
                "{}: Eltwise coefficients {coeffs:?} are not supported (all 1)",
                x.ctx()
            );
            let out_frac = x.required()?;
            let (fa, fb) = (ins[0].frac_bits, ins[1].frac_bits);
            let common = fa.max(fb).max(out_frac);
            let (a_lshift, b_lshift, out_rshift) = (common - fa, common - fb, common - out_frac);
            ensure!(a_lshift <= 23 && b_lshift <= 23 && out_rshift <= 31, "{}: input formats {fa}, {fb} and output format {out_frac} are too far apart for an i32 sum", x.ctx());
            ensure!(
                ins[1].layout == in0.layout,
                "{}: Eltwise inputs differ in layout",
                x.ctx()
            );
            let op = if op == EltwiseOp::Max {
                QOp::Max {
                    a_lshift,
                    b_lshift,
                    out_rshift,
                }
            } else {
                headroom::add(&x.node.name, a_lshift, b_lshift, out_rshift)?;
                QOp::Add {
                    a_lshift,
                    b_lshift,
                    out_rshift,
                }
            };
            Ok((op, out_frac, in0.layout))
        }
    }
}

/// The shifts of a SUM or MAX: `(a_lshift, b_lshift, out_rshift)`.
pub type Shifts = (i32, i32, i32);

/// SUM and MAX; a SUM returns its accumulator headroom (MAX has no sum).
pub fn check(
    c: &Check,
    (a_lshift, b_lshift, out_rshift): Shifts,
    sum: bool,
) -> Result<Option<Headroom>> {
    let name = c.name();
    let (a, b) = c.binary_same_layout()?;
    let out = c.out;
    for (what, v) in [
        ("a_lshift", a_lshift),
        ("b_lshift", b_lshift),
        ("out_rshift", out_rshift),
    ] {
        c.shift(what, v)?;
    }
    // A common format F: a_lshift = F - a, b_lshift = F - b, out_rshift = F - out.
    ensure!(
        a.frac_bits + a_lshift == b.frac_bits + b_lshift && a.frac_bits + a_lshift == out.frac_bits + out_rshift,
        "layer '{name}': shifts a_lshift {a_lshift}, b_lshift {b_lshift}, out_rshift {out_rshift} do not bring the formats {}, {} and {} to a common one",
        a.frac_bits, b.frac_bits, out.frac_bits
    );
    if sum {
        Ok(Some(headroom::add(name, a_lshift, b_lshift, out_rshift)?))
    } else {
        // No sum: only the shifted inputs must stay within i32.
        ensure!(
            a_lshift <= 23 && b_lshift <= 23,
            "layer '{name}': left shifts above 23 wrap in i32"
        );
        Ok(None)
    }
}

pub fn check_mul(c: &Check, out_rshift: i32) -> Result<()> {
    let (a, b) = c.binary_same_layout()?;
    c.shift("out_rshift", out_rshift)?;
    ensure!(
        out_rshift == a.frac_bits + b.frac_bits - c.out.frac_bits,
        "layer '{}': out_rshift {out_rshift} is not the input formats {} + {} - the output format {}",
        c.name(),
        a.frac_bits,
        b.frac_bits,
        c.out.frac_bits
    );
    Ok(())
}

pub fn run_add(r: &Run, (a, b, o): Shifts, y: &mut [i8]) -> KResult {
    kernels::add_q7(r.ins[0], a, r.in1()?, b, o, y)
}

pub fn run_max(r: &Run, (a, b, o): Shifts, y: &mut [i8]) -> KResult {
    kernels::max_q7(r.ins[0], a, r.in1()?, b, o, y)
}

pub fn run_mul(r: &Run, out_rshift: i32, y: &mut [i8]) -> KResult {
    kernels::mul_q7(r.ins[0], r.in1()?, out_rshift, y)
}

fn shift_params(e: &mut Emit, (a, b, o): Shifts) {
    e.param("A_LSHIFT", "i32", a.to_string());
    e.param("B_LSHIFT", "i32", b.to_string());
    e.param("OUT_RSHIFT", "i32", o.to_string());
}

/// A SUM over the input that dies here when the plan says so.
pub fn emit_add(e: &mut Emit, s: Shifts) -> (Call, String) {
    shift_params(e, s);
    let over = match e.in_place_input.filter(|_| e.in_place) {
        Some(i) => format!(" (over {})", e.in_name(i)),
        None => String::new(),
    };
    (
        e.pick(Call::AddInplace, Call::Add),
        format!(
            "{}: add {} + {} -> {}{over}",
            e.l.name,
            e.in_name(0),
            e.in_name(1),
            e.l.output
        ),
    )
}

pub fn emit_max(e: &mut Emit, s: Shifts) -> (Call, String) {
    shift_params(e, s);
    (
        Call::Max,
        format!(
            "{}: max {} , {} -> {}",
            e.l.name,
            e.in_name(0),
            e.in_name(1),
            e.l.output
        ),
    )
}

pub fn emit_mul(e: &mut Emit, out_rshift: i32) -> (Call, String) {
    e.param("OUT_RSHIFT", "i32", out_rshift.to_string());
    (
        Call::Mul,
        format!(
            "{}: product {} · {} -> {}",
            e.l.name,
            e.in_name(0),
            e.in_name(1),
            e.l.output
        ),
    )
}
