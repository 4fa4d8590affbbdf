//! ReLU (Caffe's `negative_slope` in float; q7 only the plain one, `kernels::relu_q7`). A ReLU
//! right after a convolution is fused into it by `codegen::steps`.

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::Call;
use crate::fixed::graph::QOp;
use crate::fixed::kernels::{self, KResult};
use crate::float::Kernel;
use anyhow::{ensure, Result};

pub fn float(negative_slope: f32) -> Kernel<'static> {
    Kernel::Relu(negative_slope)
}

pub fn lower(x: &Lower, negative_slope: f32) -> Result<Lowered> {
    ensure!(
        negative_slope == 0.0,
        "{}: leaky ReLU (negative_slope {negative_slope}) has no q7 kernel",
        x.ctx()
    );
    Ok((QOp::Relu, x.forced("ReLU")?, x.in0().layout))
}

pub fn check(c: &Check) -> Result<()> {
    c.keeps_input()
}

/// The reference (the simulator's fast path is `fixed::sim::elementwise::relu`).
pub fn run(r: &Run, y: &mut [i8]) -> KResult {
    y.copy_from_slice(r.ins[0]);
    kernels::relu_q7(y);
    Ok(())
}

/// In place over its input when it dies here, else on a copy in the output's buffer.
pub fn emit(e: &mut Emit) -> (Call, String) {
    (
        e.pick(Call::ReluInplace, Call::ReluCopy),
        format!(
            "{}: ReLU {} -> {}{}",
            e.l.name,
            e.in_name(0),
            e.l.output,
            e.pick(" (in place)", "")
        ),
    )
}
