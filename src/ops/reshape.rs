//! Flatten, Reshape and SSD's Permute: shape-only ops. In NCHW float memory Flatten/Reshape move
//! nothing; in q7 they keep the HWC bytes (a copy, or an alias the plan makes free), which allows
//! flattening only. Permute NCHW → NHWC of a feature map is its HWC bytes as they are, into a
//! flat blob (see ARCHITECTURE.md, conventions).

use super::{Check, Emit, Lower, Lowered, Run};
use crate::codegen::Call;
use crate::fixed::graph::{hwc_of, Hwc, QOp};
use crate::fixed::kernels::KResult;
use crate::float::Kernel;
use crate::ir::shape::{canonical_axis, checked_count};
use anyhow::{bail, ensure, Context as _, Result};

/// Caffe's Flatten: axes `axis..=end_axis` (counting the batch axis) become one.
pub fn flatten_shape(first: &[usize], axis: usize, end_axis: i64) -> Result<Vec<usize>> {
    let full: Vec<usize> = std::iter::once(1).chain(first.iter().copied()).collect();
    let a = canonical_axis(axis as i64, full.len())?;
    let e = canonical_axis(end_axis, full.len())?;
    ensure!(
        a >= 1 && a <= e,
        "Flatten axes {a}..{e} are invalid for shape {first:?}"
    );
    let mut s = full[1..a].to_vec();
    s.push(full[a..=e].iter().product());
    s.extend_from_slice(&full[e + 1..]);
    Ok(s)
}

/// Caffe's Reshape rule (0 copies a dimension, one -1 is inferred), on shapes without batch axis.
pub fn reshape_shape(
    input: &[usize],
    dims: &[i64],
    axis: i64,
    num_axes: i64,
) -> Result<Vec<usize>> {
    let full: Vec<usize> = std::iter::once(1).chain(input.iter().copied()).collect();
    let r = full.len() as i64;
    let start = if axis < 0 { axis + r + 1 } else { axis };
    ensure!((0..=r).contains(&start), "reshape axis {axis} out of range");
    let end = if num_axes < 0 { r } else { start + num_axes };
    ensure!(end <= r, "reshape num_axes {num_axes} out of range");
    let (start, end) = (start as usize, end as usize);
    let mut mid = Vec::new();
    let mut infer = None;
    for (i, &d) in dims.iter().enumerate() {
        match d {
            0 => mid.push(
                *full
                    .get(start + i)
                    .context("reshape dim 0 copies a missing axis")?,
            ),
            -1 => {
                ensure!(infer.is_none(), "reshape has more than one -1");
                infer = Some(mid.len());
                mid.push(1);
            }
            d if d > 0 => mid.push(d as usize),
            d => bail!("reshape dimension {d} is invalid"),
        }
    }
    let mut out: Vec<usize> = full[..start].to_vec();
    out.extend(&mid);
    out.extend_from_slice(&full[end..]);
    let total: usize = checked_count(input)?;
    if let Some(i) = infer {
        let known: usize = checked_count(&out)?;
        ensure!(
            known > 0 && total.is_multiple_of(known),
            "reshape cannot infer -1: {total} elements into {out:?}"
        );
        out[start + i] = total / known;
    }
    ensure!(
        checked_count(&out)? == total,
        "reshape to {out:?} changes the element count {total}"
    );
    ensure!(out.first() == Some(&1), "reshape must keep the batch axis");
    Ok(out[1..].to_vec())
}

/// Output axis `i` is input axis `order[i]` (the batch axis included, and first).
pub fn permute_shape(first: &[usize], order: &[usize]) -> Result<Vec<usize>> {
    ensure!(
        order.len() == first.len() + 1,
        "Permute order {order:?} does not fit an input of {} axes (batch included)",
        first.len() + 1
    );
    Ok(order[1..].iter().map(|&a| first[a - 1]).collect())
}

/// Flatten and Reshape: NCHW memory is unchanged.
pub fn float_reshape(input: &[usize], output: &[usize]) -> Result<Kernel<'static>> {
    ensure!(
        checked_count(input)? == checked_count(output)?,
        "changes the element count"
    );
    Ok(Kernel::Copy)
}

pub fn float_permute(order: &[usize], input: &[usize]) -> Kernel<'static> {
    let order: Vec<usize> = order[1..].iter().map(|&a| a - 1).collect();
    Kernel::Permute(input.to_vec(), order)
}

/// Flatten/Reshape: only when the HWC bytes are already in the new shape's order.
pub fn lower_reshape(x: &Lower) -> Result<Lowered> {
    let in0 = x.in0();
    let same = x.out_shape.len() == 1 || (in0.layout.h == 1 && in0.layout.w == 1);
    ensure!(
        same,
        "{}: reshaping {:?} into {:?} would reorder HWC bytes; only flattening is supported",
        x.ctx(),
        in0.shape,
        x.out_shape
    );
    Ok((QOp::Reshape, x.forced("a reshape")?, in0.layout))
}

pub fn lower_permute(x: &Lower, order: &[usize]) -> Result<Lowered> {
    let in0 = x.in0();
    let flat = Hwc {
        h: 1,
        w: 1,
        c: in0.layout.len(),
    };
    let identity = order.iter().enumerate().all(|(i, &a)| i == a);
    let to_nhwc =
        order == [0, 2, 3, 1] && in0.shape.len() == 3 && hwc_of(&in0.shape) == Some(in0.layout);
    let layout = if identity {
        in0.layout
    } else {
        ensure!(to_nhwc || (order == [0, 2, 3, 1] && in0.layout.h * in0.layout.w == 1 && in0.shape.len() == 3),
            "{}: Permute order {order:?} of {:?} (stored {}×{}×{}) would reorder bytes; q7 supports the identity and NCHW → NHWC (0, 2, 3, 1) of a feature map, which is free in nnquant's HWC layout", x.ctx(), in0.shape, in0.layout.h, in0.layout.w, in0.layout.c);
        flat
    };
    let op = QOp::Permute {
        order: order.to_vec(),
    };
    Ok((op, x.forced("a permute")?, layout))
}

pub fn check_reshape(c: &Check) -> Result<()> {
    c.keeps_input()
}

pub fn check_permute(c: &Check, order: &[usize]) -> Result<()> {
    let name = c.name();
    let out = c.out;
    c.arity(1)?;
    let (in0_name, inp) = c.in0()?;
    c.same_format(inp, "")?;
    if order.iter().enumerate().all(|(i, &a)| i == a) {
        crate::fixed::validate::same_layout(
            name,
            "the output's layout",
            out.layout,
            in0_name,
            inp,
        )?;
        ensure!(
            out.shape == inp.shape,
            "layer '{name}': an identity permute changes the shape {:?} into {:?}",
            inp.shape,
            out.shape
        );
    } else {
        let [c, h, w] = inp.shape[..] else {
            bail!(
                "layer '{name}': Permute {order:?} needs a C×H×W input, '{in0_name}' is {:?}",
                inp.shape
            )
        };
        ensure!(
            order[..] == [0, 2, 3, 1] && inp.layout == (Hwc { h, w, c }) && out.shape == [h, w, c] && out.layout == (Hwc { h: 1, w: 1, c: h * w * c }),
            "layer '{name}': a q7 Permute is the identity or NCHW → NHWC (0, 2, 3, 1) of an HWC feature map into a flat [H, W, C] blob; got order {order:?} from {:?} ({:?}) to {:?} ({:?})",
            inp.shape, inp.layout, out.shape, out.layout
        );
    }
    Ok(())
}

/// Reshape and Permute alike: the bytes unchanged.
pub fn run(r: &Run, y: &mut [i8]) -> KResult {
    y.copy_from_slice(r.ins[0]);
    Ok(())
}

pub fn emit_reshape(e: &mut Emit) -> (Call, String) {
    (
        e.pick(Call::Alias, Call::Copy),
        format!("{}: reshape {} -> {}", e.l.name, e.in_name(0), e.l.output),
    )
}

/// NCHW → NHWC is the HWC bytes themselves (the q7 graph allows no other permute).
pub fn emit_permute(e: &mut Emit, order: &[usize]) -> (Call, String) {
    (
        e.pick(Call::Alias, Call::Copy),
        format!(
            "{}: permute {order:?} {} -> {} (bytes unchanged)",
            e.l.name,
            e.in_name(0),
            e.l.output
        ),
    )
}
