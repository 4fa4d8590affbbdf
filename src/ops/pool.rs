//! Max and average pooling (Caffe's rules: ceil rounding, padding excluded from the average's
//! divisor at the edges as Caffe counts it). q7: `kernels::maxpool_hwc_q7` /
//! `avepool_hwc_q7`, or in place over a dying input; the output keeps the input's format. A pool
//! right after a convolution is fused into it by `codegen::steps` (its constants are emitted
//! with the convolution's), and the simulator has vectorised paths (`fixed::sim::elementwise`).

use super::{Check, Emit, Lower, Lowered};
use crate::codegen::{self, Call};
use crate::fixed::graph::{hwc_of, pair, PoolRounding, QOp, QPool};
use crate::fixed::kernels::{self, KResult};
use crate::fixed::validate::same_layout;
use crate::float::{pool, Kernel};
use crate::ir::shape::{expect_chw, pool_geometry, pool_out};
use crate::ir::{Node, PoolMethod, PoolParams, RoundMode};
use anyhow::{ensure, Context as _, Result};

pub fn shape(node: &Node, p: &PoolParams, first: &[usize]) -> Result<Vec<usize>> {
    let (ch, h, w) = expect_chw(node, first)?;
    let (k, s, pad) = pool_geometry(p, h, w);
    Ok(vec![
        ch,
        pool_out(h, k.h, s.h, pad.h, p.round)?,
        pool_out(w, k.w, s.w, pad.w, p.round)?,
    ])
}

pub fn float(p: &PoolParams, input: &[usize], output: &[usize]) -> Result<Kernel<'static>> {
    Ok(Kernel::Pool(pool::Pool::new(p, input, output)?))
}

pub fn lower(x: &Lower, p: &PoolParams) -> Result<Lowered> {
    let (n, in0) = (x.node, x.in0());
    ensure!(
        in0.shape.len() == 3 && hwc_of(&in0.shape) == Some(in0.layout),
        "{}: pooling needs a C×H×W feature map as input; '{}' is {:?} stored as {}×{}×{}",
        x.ctx(),
        n.inputs[0],
        in0.shape,
        in0.layout.h,
        in0.layout.w,
        in0.layout.c
    );
    let out_dims = hwc_of(x.out_shape).context("pool output is not C×H×W")?;
    let (k, s, pad) = pool_geometry(p, in0.layout.h, in0.layout.w);
    let q = QPool {
        in_dims: in0.layout,
        out_dims,
        kernel: k,
        pad,
        stride: s,
        rounding: match p.method {
            PoolMethod::Max => PoolRounding::Truncate,
            PoolMethod::Ave => x.avepool_rounding,
        },
    };
    Ok(match p.method {
        PoolMethod::Max => (QOp::MaxPool(q), x.forced("max pooling")?, out_dims),
        PoolMethod::Ave => (QOp::AvePool(q), x.forced("average pooling")?, out_dims),
    })
}

pub fn check(chk: &Check, p: &QPool) -> Result<()> {
    chk.arity(1)?;
    let (in_name, input) = chk.in0()?;
    let (layer, output, out_name) = (chk.name(), chk.out, chk.l.output.as_str());
    same_layout(layer, "in_dims", p.in_dims, in_name, input)?;
    same_layout(layer, "out_dims", p.out_dims, out_name, output)?;
    ensure!(
        p.in_dims.c == p.out_dims.c,
        "layer '{layer}': pooling keeps the channels, in {} out {}",
        p.in_dims.c,
        p.out_dims.c
    );
    for (axis, i, k, s, pad, o) in [
        (
            "h",
            p.in_dims.h,
            p.kernel.h,
            p.stride.h,
            p.pad.h,
            p.out_dims.h,
        ),
        (
            "w",
            p.in_dims.w,
            p.kernel.w,
            p.stride.w,
            p.pad.w,
            p.out_dims.w,
        ),
    ] {
        let ceil = pool_out(i, k, s, pad, RoundMode::Ceil)
            .with_context(|| format!("layer '{layer}': axis {axis}"))?;
        let floor = pool_out(i, k, s, pad, RoundMode::Floor)?;
        ensure!(
            o == ceil || o == floor,
            "layer '{layer}': out_dims.{axis} is {o}, but input {i}, kernel {k}, stride {s}, pad {pad} give {ceil} (or {floor} rounding down)"
        );
    }
    ensure!(output.frac_bits == input.frac_bits, "layer '{layer}': pooling keeps its input's format ({} fraction bits), its output '{out_name}' has {}", input.frac_bits, output.frac_bits);
    Ok(())
}

/// The reference (`kernels.rs`); the simulator's own path is `fixed::sim::elementwise`.
pub fn run(p: &QPool, max: bool, x: &[i8], y: &mut [i8]) -> KResult {
    let (ind, k, pad, s, outd) = (
        p.in_dims.dims(),
        pair(p.kernel),
        pair(p.pad),
        pair(p.stride),
        p.out_dims.dims(),
    );
    if max {
        kernels::maxpool_hwc_q7(x, ind, k, pad, s, y, outd)
    } else {
        kernels::avepool_hwc_q7(x, ind, k, pad, s, y, outd, p.rounding.nearest())
    }
}

/// An unfused pool: over its input's bytes when the plan says so.
pub fn emit(e: &mut Emit, q: &QPool, max: bool) -> (Call, String) {
    e.param("IN", "Dims", codegen::dims(q.in_dims));
    e.param("OUT", "Dims", codegen::dims(q.out_dims));
    e.param("KERNEL", "Pair", codegen::pair(q.kernel));
    e.param("PAD", "Pair", codegen::pair(q.pad));
    e.param("STRIDE", "Pair", codegen::pair(q.stride));
    if !max {
        e.param("ROUND", "bool", q.rounding.nearest().to_string());
    }
    let k = match (max, e.in_place) {
        (true, false) => Call::Maxpool,
        (false, false) => Call::Avepool,
        (true, true) => Call::MaxpoolInplace,
        (false, true) => Call::AvepoolInplace,
    };
    let comment = format!(
        "{}: {} {}x{} /{}, {} -> {}",
        e.l.name,
        k.name(),
        q.kernel.h,
        q.kernel.w,
        q.stride.h,
        e.in_name(0),
        e.l.output
    );
    (k, comment)
}
