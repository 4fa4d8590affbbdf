//! Concat along a Caffe axis. q7: channels (axis 1) of HWC blobs with equal H×W, each input
//! rescaled to the output's format by its own shift (`kernels::concat_hwc_q7`).

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{Call, InputRef};
use crate::fixed::graph::{Hwc, QOp};
use crate::fixed::kernels::{self, KResult};
use crate::fixed::validate::RESCALE_SHIFTS;
use crate::float::{layout, Kernel};
use anyhow::{ensure, Result};

pub fn shape(axis: usize, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let first = inputs[0];
    ensure!(
        axis >= 1 && axis <= first.len(),
        "concat axis {axis} out of range for {first:?}"
    );
    let a = axis - 1;
    let mut s = first.to_vec();
    s[a] = 0;
    for (i, t) in inputs.iter().enumerate() {
        ensure!(
            t.len() == first.len(),
            "Concat input {i} has rank {} but input 0 has {}",
            t.len(),
            first.len()
        );
        for d in 0..first.len() {
            ensure!(d == a || t[d] == first[d], "Concat input {i} shape {t:?} does not match input 0 shape {first:?} outside axis {axis}");
        }
        s[a] += t[a];
    }
    Ok(s)
}

pub fn float(axis: usize, inputs: &[&[usize]]) -> Result<Kernel<'static>> {
    Ok(Kernel::Concat(layout::Concat::new(axis, inputs)?))
}

pub fn lower(x: &Lower, axis: usize) -> Result<Lowered> {
    ensure!(
        axis == 1,
        "{}: q7 Concat joins channels (axis 1) only, got axis {axis}",
        x.ctx()
    );
    let out_frac = x.required()?;
    let in0 = x.in0();
    let mut shifts = Vec::new();
    for b in x.ins {
        ensure!(
            b.layout.h == in0.layout.h && b.layout.w == in0.layout.w,
            "{}: inputs differ in H×W",
            x.ctx()
        );
        let s = out_frac - b.frac_bits;
        ensure!(RESCALE_SHIFTS.contains(&s), "{}: format change {s} (output frac_bits {out_frac} - input frac_bits {}) is outside {:?}: larger left shifts wrap in i32", x.ctx(), b.frac_bits, RESCALE_SHIFTS);
        shifts.push(s);
    }
    let c = x.ins.iter().map(|b| b.layout.c).sum();
    let layout = Hwc {
        h: in0.layout.h,
        w: in0.layout.w,
        c,
    };
    Ok((QOp::Concat { shifts }, out_frac, layout))
}

pub fn check(c: &Check, shifts: &[i32]) -> Result<()> {
    let (name, l, out) = (c.name(), c.l, c.out);
    ensure!(
        !l.inputs.is_empty() && shifts.len() == l.inputs.len(),
        "layer '{name}': {} shifts for {} inputs",
        shifts.len(),
        l.inputs.len()
    );
    let mut ch = 0usize;
    for (b, &s) in l.inputs.iter().zip(shifts) {
        let x = c.blob(b)?;
        ensure!(
            x.layout.h == out.layout.h && x.layout.w == out.layout.w,
            "layer '{name}': input '{b}' is {}×{}, the output {}×{}",
            x.layout.h,
            x.layout.w,
            out.layout.h,
            out.layout.w
        );
        ensure!(RESCALE_SHIFTS.contains(&s), "layer '{name}': shift {s} for input '{b}' is outside {RESCALE_SHIFTS:?} (larger left shifts wrap in i32)");
        ensure!(s == out.frac_bits - x.frac_bits, "layer '{name}': shift {s} for input '{b}' is not output frac_bits {} - input frac_bits {}", out.frac_bits, x.frac_bits);
        ch += x.layout.c;
    }
    ensure!(
        ch == out.layout.c,
        "layer '{name}': inputs have {ch} channels in total, the output '{}' {}",
        l.output,
        out.layout.c
    );
    Ok(())
}

/// Each input into its channel range of the output.
pub fn run(r: &Run, shifts: &[i32], y: &mut [i8]) -> KResult {
    let out_c = r.out_blob().layout.c;
    let mut off = 0;
    let mut res = Ok(());
    for (i, (x, sh)) in r.ins.iter().zip(shifts).enumerate() {
        let c = r.in_layout(i).c;
        res = res.and(kernels::concat_hwc_q7(x, c, *sh, y, out_c, off));
        off += c;
    }
    res
}

/// One call per input: each input learns its shift and channel offset.
pub fn emit(e: &mut Emit, shifts: &[i32], ins: &mut [InputRef]) -> Result<(Call, String)> {
    ensure!(
        shifts.len() == ins.len(),
        "layer '{}': {} shifts for {} inputs",
        e.l.name,
        shifts.len(),
        ins.len()
    );
    let mut c_off = 0;
    for (i, s) in ins.iter_mut().zip(shifts) {
        i.shift = *s;
        i.c_offset = c_off;
        c_off += i.c;
    }
    Ok((
        Call::Concat,
        format!(
            "{}: concat {} -> {}",
            e.l.name,
            e.l.inputs.join(", "),
            e.l.output
        ),
    ))
}
