//! PReLU: `max(x, 0) + slope[c] · min(x, 0)`, a slope per channel (Caffe's axis 1) or one
//! shared; in q7 the slopes are q7 with `slope_frac` fraction bits (`kernels::prelu_q7`) and
//! the output keeps the input's format.

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::{ArrayCtx, Call};
use crate::fixed::graph::QOp;
use crate::fixed::kernels::{self, KResult};
use crate::fixed::QFormat;
use crate::float::{elementwise, Kernel};
use crate::ir::Tensor;
use anyhow::{ensure, Context as _, Result};

pub fn float<'g>(channel_shared: bool, input: &[usize], w: &'g [Tensor]) -> Result<Kernel<'g>> {
    Ok(Kernel::PRelu(elementwise::PRelu::new(
        channel_shared,
        input,
        w,
    )?))
}

pub fn lower(x: &Lower, channel_shared: bool) -> Result<Lowered> {
    let s = &x
        .node
        .weights
        .first()
        .with_context(|| format!("{}: no slopes attached", x.ctx()))?
        .data;
    let in0 = x.in0();
    let l = in0.layout;
    let slopes_f: Vec<f32> = if channel_shared {
        vec![
            *s.first()
                .with_context(|| format!("{}: no slope", x.ctx()))?;
            l.c
        ]
    } else {
        ensure!(x.channels_innermost() && s.len() == l.c, "{}: per-channel PReLU over {:?} stored {}×{}×{} has no q7 kernel (channels must be the innermost axis)", x.ctx(), in0.shape, l.h, l.w, l.c);
        s.clone()
    };
    let m = slopes_f.iter().fold(0f32, |m, v| m.max(v.abs()));
    let slope_frac = QFormat::from_max_abs(m)?.frac_bits.clamp(0, 15);
    let slopes = QFormat::new(slope_frac).quantize_slice(&slopes_f);
    Ok((QOp::PRelu { slopes, slope_frac }, x.forced("PReLU")?, l))
}

pub fn check(c: &Check, slopes: &[i8], slope_frac: i32) -> Result<()> {
    let inp = c.unary_same_layout()?;
    c.same_format(inp, "PReLU ")?;
    ensure!(
        slopes.len() == inp.layout.c,
        "layer '{}': {} slopes for {} channels",
        c.name(),
        slopes.len(),
        inp.layout.c
    );
    c.shift("slope_frac", slope_frac)
}

pub fn run(r: &Run, slopes: &[i8], slope_frac: i32, y: &mut [i8]) -> KResult {
    y.copy_from_slice(r.ins[0]);
    kernels::prelu_q7(y, slopes, slope_frac)
}

/// In place over its input when it dies here, else on a copy in the output's buffer.
pub fn emit(e: &mut Emit, slopes: &[i8], slope_frac: i32) -> (Call, String) {
    e.param("SLOPE_RSHIFT", "i32", slope_frac.to_string());
    e.arrays.push(ArrayCtx::i8(
        format!("{}_SLOPES", e.p),
        format!(
            "`{}` PReLU slopes [{}], {slope_frac} fraction bits.",
            e.l.name,
            slopes.len()
        ),
        slopes,
    ));
    (
        e.pick(Call::PreluInplace, Call::PreluCopy),
        format!("{}: PReLU {} -> {}", e.l.name, e.in_name(0), e.l.output),
    )
}
