//! Validation of a quantized graph read from a file: everything the simulator, the code
//! generator and the kernels assume, checked once with an error that names the field, so that a
//! hand-edited or corrupted `.nnq.json` is refused instead of panicking somewhere downstream.
//!
//! What is checked: blob layouts against their shapes (and a size cap); SSA blob references
//! (every layer input exists and is produced before use, outputs produced once); per op, the
//! dimensions against the blobs they read and write (Caffe's output-size rules), weight and bias
//! lengths, shifts in the ranges the kernels take, the shifts against the fraction bits they
//! derive from, and the overflow proof ([`super::headroom`]).

use super::graph::{ChannelFormats, Hwc, QBlob, QGraph, QOp};
use super::headroom::Headroom;
use super::qformat::MAX_FRAC_BITS;
use crate::ops;
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Largest blob (elements per image) a quantized graph may hold: 16 M, thousands of times any
/// Cortex-M's RAM, and small enough that the simulator's batches stay allocatable.
pub const MAX_BLOB_ELEMENTS: usize = 1 << 24;

/// Shifts of [`super::kernels::rescale_one`] (Concat): beyond 24 a left shift of an `i8` leaves
/// `i32` and wraps.
pub const RESCALE_SHIFTS: std::ops::RangeInclusive<i32> = -31..=24;

/// Check a fraction-bit count is one nnquant can compute with.
pub fn check_frac(what: &str, v: i32) -> Result<()> {
    ensure!(
        (-MAX_FRAC_BITS..=MAX_FRAC_BITS).contains(&v),
        "{what} = {v} fraction bits is outside -{MAX_FRAC_BITS}..={MAX_FRAC_BITS}"
    );
    Ok(())
}

pub(crate) fn check_shift(layer: &str, what: &str, v: i32) -> Result<()> {
    ensure!(
        (0..=31).contains(&v),
        "layer '{layer}': {what} = {v} is outside 0..=31, the shifts the q7 kernels take"
    );
    Ok(())
}

/// Names end up in the generated firmware's comments and string literals: no control
/// characters, quotes or backslashes (Caffe's names never have them).
pub fn check_name(what: &str, name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && !name
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\'),
        "{what} {name:?} is empty or contains control characters, quotes or backslashes"
    );
    Ok(())
}

fn check_blob(name: &str, b: &QBlob) -> Result<()> {
    check_name("blob name", name)?;
    let l = b.layout;
    let len = [l.h, l.w, l.c]
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n > 0 && n <= MAX_BLOB_ELEMENTS)
        .with_context(|| {
            format!("blob '{name}': layout {}×{}×{} is empty or larger than {MAX_BLOB_ELEMENTS} elements", l.h, l.w, l.c)
        })?;
    let slen = b
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .with_context(|| format!("blob '{name}': shape {:?} overflows", b.shape))?;
    ensure!(
        slen == len,
        "blob '{name}': shape {:?} has {slen} elements but its layout {}×{}×{} has {len}",
        b.shape,
        l.h,
        l.w,
        l.c
    );
    // A layout is either the HWC of a C×H×W shape, the HWC of the feature map a 1-D blob was
    // flattened from, or flat (1×1×N: the bytes in the logical order of any shape).
    let flat = l.h == 1 && l.w == 1;
    match b.shape[..] {
        [c, h, w] => ensure!(
            l == (Hwc { h, w, c }) || flat,
            "blob '{name}': a C×H×W shape {:?} must have the layout h {h}, w {w}, c {c} or be flat (1×1×{slen}), not {l:?}",
            b.shape
        ),
        [_] => {}
        _ => ensure!(
            flat && !b.shape.is_empty() && b.shape.len() <= 4,
            "blob '{name}': a shape {:?} of {} axes must have a flat layout (1×1×{slen}), not {l:?}",
            b.shape,
            b.shape.len()
        ),
    }
    check_frac(&format!("blob '{name}': frac_bits"), b.frac_bits)
}

/// `got` must be the layout of `blob`.
pub(crate) fn same_layout(layer: &str, what: &str, got: Hwc, blob: &str, b: &QBlob) -> Result<()> {
    ensure!(
        got == b.layout,
        "layer '{layer}': {what} {}×{}×{} (h×w×c) does not match blob '{blob}' ({}×{}×{})",
        got.h,
        got.w,
        got.c,
        b.layout.h,
        b.layout.w,
        b.layout.c
    );
    Ok(())
}

/// The shifts of a conv/fc against the formats they come from.
pub(crate) fn check_dense_shifts(
    layer: &str,
    wf: i32,
    bf: i32,
    bias_lshift: i32,
    out_rshift: i32,
    in_frac: i32,
    out_frac: i32,
) -> Result<()> {
    check_frac(&format!("layer '{layer}': weight_frac_bits"), wf)?;
    check_frac(&format!("layer '{layer}': bias_frac_bits"), bf)?;
    check_shift(layer, "bias_lshift", bias_lshift)?;
    check_shift(layer, "out_rshift", out_rshift)?;
    ensure!(
        bias_lshift == wf + in_frac - bf,
        "layer '{layer}': bias_lshift {bias_lshift} is not weight_frac_bits {wf} + input frac_bits {in_frac} - bias_frac_bits {bf}"
    );
    ensure!(
        out_rshift == wf + in_frac - out_frac,
        "layer '{layer}': out_rshift {out_rshift} is not weight_frac_bits {wf} + input frac_bits {in_frac} - output frac_bits {out_frac}"
    );
    Ok(())
}

/// The per-channel formats of a conv/fc (when present): one value per output, each channel's
/// shifts consistent with its formats, channel 0 repeated in the scalar fields.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_channel_shifts(
    layer: &str,
    pc: &Option<ChannelFormats>,
    scalars: (i32, i32, i32, i32),
    outputs: usize,
    in_frac: i32,
    out_frac: i32,
) -> Result<()> {
    let Some(pc) = pc else {
        let (wf, bf, bl, or) = scalars;
        return check_dense_shifts(layer, wf, bf, bl, or, in_frac, out_frac);
    };
    for (what, v) in [
        ("weight_frac_bits", &pc.weight_frac_bits),
        ("bias_frac_bits", &pc.bias_frac_bits),
        ("bias_lshift", &pc.bias_lshift),
        ("out_rshift", &pc.out_rshift),
    ] {
        ensure!(
            v.len() == outputs,
            "layer '{layer}': per_channel.{what} has {} values for {outputs} output channels",
            v.len()
        );
    }
    ensure!(
        outputs > 0
            && scalars
                == (
                    pc.weight_frac_bits[0],
                    pc.bias_frac_bits[0],
                    pc.bias_lshift[0],
                    pc.out_rshift[0]
                ),
        "layer '{layer}': weight_frac_bits/bias_frac_bits/bias_lshift/out_rshift {scalars:?} are not channel 0's per-channel values"
    );
    for c in 0..outputs {
        check_dense_shifts(
            &format!("{layer}' channel '{c}"),
            pc.weight_frac_bits[c],
            pc.bias_frac_bits[c],
            pc.bias_lshift[c],
            pc.out_rshift[c],
            in_frac,
            out_frac,
        )?;
    }
    Ok(())
}

/// Check everything; the headroom of every conv/fc/Eltwise layer, by name.
pub fn validate(g: &QGraph) -> Result<BTreeMap<String, Headroom>> {
    for (name, b) in &g.blobs {
        check_blob(name, b)?;
    }
    let input = g
        .blobs
        .get(&g.input)
        .with_context(|| format!("the input blob '{}' is not among the blobs", g.input))?;
    ensure!(
        input.shape.len() == 3 || input.shape.len() == 1,
        "the input blob '{}' has shape {:?}",
        g.input,
        input.shape
    );
    let mut produced: BTreeSet<&str> = BTreeSet::from([g.input.as_str()]);
    let mut names = BTreeSet::new();
    let mut heads = BTreeMap::new();
    for (i, l) in g.layers.iter().enumerate() {
        let name = l.name.as_str();
        check_name("layer name", name)?;
        ensure!(
            names.insert(name),
            "layers[{i}]: the layer name '{name}' is used twice"
        );
        let blob = |b: &str| -> Result<&QBlob> {
            g.blobs
                .get(b)
                .with_context(|| format!("layer '{name}': blob '{b}' is not among the blobs"))
        };
        for b in &l.inputs {
            blob(b)?;
            ensure!(
                produced.contains(b.as_str()),
                "layer '{name}': its input '{b}' is produced by no earlier layer"
            );
        }
        let out = blob(&l.output)?;
        ensure!(produced.insert(l.output.as_str()), "layer '{name}': its output '{}' is already produced by an earlier layer (blobs are written once)", l.output);
        let chk = ops::Check { g, l, out };
        match &l.op {
            QOp::Conv(c) => {
                heads.insert(l.name.clone(), ops::conv::check(&chk, c)?);
            }
            QOp::Deconv(c) => {
                heads.insert(l.name.clone(), ops::deconv::check(&chk, c)?);
            }
            QOp::Lrn {
                size,
                across: _,
                index_shift,
                table,
                table_frac,
                out_rshift,
            } => ops::lrn::check(&chk, *size, *index_shift, table, *table_frac, *out_rshift)?,
            QOp::Mul { out_rshift } => ops::eltwise::check_mul(&chk, *out_rshift)?,
            QOp::ScaleBias(s) => ops::scale::check(&chk, s)?,
            QOp::Fc(f) => {
                heads.insert(l.name.clone(), ops::inner_product::check(&chk, f)?);
            }
            QOp::MaxPool(p) | QOp::AvePool(p) => ops::pool::check(&chk, p)?,
            QOp::Relu => ops::relu::check(&chk)?,
            QOp::Reshape => ops::reshape::check_reshape(&chk)?,
            QOp::Permute { order } => ops::reshape::check_permute(&chk, order)?,
            QOp::Lut { function, table } => ops::lut::check(&chk, function, table)?,
            QOp::PRelu { slopes, slope_frac } => ops::prelu::check(&chk, slopes, *slope_frac)?,
            QOp::Softmax { row, exp_table } => ops::softmax::check(&chk, *row, exp_table)?,
            QOp::Add {
                a_lshift,
                b_lshift,
                out_rshift,
            } => {
                let h = ops::eltwise::check(&chk, (*a_lshift, *b_lshift, *out_rshift), true)?;
                heads.extend(h.map(|h| (l.name.clone(), h)));
            }
            QOp::Max {
                a_lshift,
                b_lshift,
                out_rshift,
            } => {
                ops::eltwise::check(&chk, (*a_lshift, *b_lshift, *out_rshift), false)?;
            }
            QOp::Concat { shifts } => ops::concat::check(&chk, shifts)?,
        }
    }
    ensure!(!g.outputs.is_empty(), "the graph has no outputs");
    for o in &g.outputs {
        if !produced.contains(o.as_str()) {
            bail!("the output '{o}' is produced by no layer");
        }
    }
    Ok(heads)
}
