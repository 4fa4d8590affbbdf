//! Sigmoid and TanH: elementwise functions that q7 computes as a table over the 256 input codes
//! (`kernels::lut_q7`), filled in f64 at quantization for the layer's input and output formats.

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{ArrayCtx, Call};
use crate::fixed::graph::QOp;
use crate::fixed::kernels::{self, KResult};
use crate::float::{elementwise, Kernel};
use anyhow::{ensure, Result};

/// The functions with a table, by the name the model file stores.
#[derive(Debug, Clone, Copy)]
pub enum Function {
    Sigmoid,
    TanH,
}

impl Function {
    fn name(self) -> &'static str {
        match self {
            Function::Sigmoid => "sigmoid",
            Function::TanH => "tanh",
        }
    }

    fn f64(self) -> fn(f64) -> f64 {
        match self {
            Function::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
            Function::TanH => f64::tanh,
        }
    }
}

pub fn float(f: Function) -> Kernel<'static> {
    Kernel::Unary(match f {
        Function::Sigmoid => elementwise::sigmoid,
        Function::TanH => f32::tanh,
    })
}

pub fn lower(x: &Lower, f: Function) -> Result<Lowered> {
    let out_frac = x.required()?;
    let table = table(x.in0().frac_bits, out_frac, f.f64());
    let op = QOp::Lut {
        function: f.name().into(),
        table,
    };
    Ok((op, out_frac, x.in0().layout))
}

/// The 256 outputs of an elementwise function `f` for every q7 input code, at the input's and
/// the output's formats (rounded half away from zero and saturated, like weights).
pub fn table(in_frac: i32, out_frac: i32, f: fn(f64) -> f64) -> Vec<i8> {
    (0..256u32)
        .map(|code| {
            let x = f64::from(code as u8 as i8) * (-f64::from(in_frac)).exp2();
            let y = (f(x) * f64::from(out_frac).exp2()).round();
            if y.is_nan() {
                0
            } else {
                y.clamp(-128.0, 127.0) as i8
            }
        })
        .collect()
}

pub fn check(c: &Check, function: &str, table: &[i8]) -> Result<()> {
    c.unary_same_layout()?;
    ensure!(
        table.len() == 256,
        "layer '{}': the {function} table has {} entries, not 256",
        c.name(),
        table.len()
    );
    Ok(())
}

pub fn run(r: &Run, table: &[i8], y: &mut [i8]) -> KResult {
    y.copy_from_slice(r.ins[0]);
    kernels::lut_q7(y, table)
}

/// In place over its input when it dies here, else on a copy in the output's buffer.
pub fn emit(e: &mut Emit, function: &str, table: &[i8]) -> (Call, String) {
    e.arrays.push(ArrayCtx::i8(
        format!("{}_TABLE", e.p),
        format!(
            "`{}`: {function} of every q7 input code (index = the byte as u8).",
            e.l.name
        ),
        table,
    ));
    (
        e.pick(Call::LutInplace, Call::LutCopy),
        format!(
            "{}: {function} {} -> {}",
            e.l.name,
            e.in_name(0),
            e.l.output
        ),
    )
}
