//! The search's overflow guard: the starting formats of a conv/fc come from float max-abs values,
//! which know nothing about the `i32` accumulator. When they would let it wrap (typically tiny
//! weights with a large bias: a large `bias_lshift`), the start takes fewer weight fraction bits
//! until the overflow proof (`fixed::headroom`) holds. The search itself never leaves safe
//! formats: `QGraph::quantize` refuses a candidate whose accumulator could wrap, and refused
//! candidates are skipped.

use crate::fixed::graph::{Frac, LayerFormat};
use crate::fixed::headroom;
use crate::fixed::qformat::QFormat;
use crate::ir::{Dense, Node};

/// The int8 weights of a conv/fc grouped by output (each output's weights contiguous, output
/// `o` quantized with `wf.channel(o)` fraction bits), for the headroom bound; `None` for other
/// layers.
fn rows(n: &Node, wf: &Frac) -> Option<(Vec<i8>, usize)> {
    let w = &n.weights.first()?.data;
    let (no, transpose) = match n.op.dense()? {
        Dense::Convolution(c) => (c.num_output, false),
        Dense::InnerProduct(p) => (p.num_output, p.transpose),
        // Deconvolution weights take one format per layer (a per-channel list is
        // QGraph::quantize's to refuse). The shape was checked when the graph was built.
        Dense::Deconvolution(c) => {
            if matches!(wf, Frac::Channels(_)) {
                return None;
            }
            let in_c = w.len() / (c.num_output / c.group.max(1) * c.kernel.h * c.kernel.w).max(1);
            let q = QFormat::new(wf.channel(0));
            let wq =
                crate::fixed::graph::deconv_weights(w, in_c, c.num_output, c.group, c.kernel, q)?;
            return Some((wq, c.num_output));
        }
    };
    if no == 0 || !w.len().is_multiple_of(no) || matches!(wf, Frac::Channels(v) if v.len() != no) {
        return None;
    }
    let k = w.len() / no;
    let mut out = vec![0i8; w.len()];
    for o in 0..no {
        let q = QFormat::new(wf.channel(o));
        for i in 0..k {
            let src = if transpose { i * no + o } else { o * k + i };
            out[o * k + i] = q.quantize(w[src]);
        }
    }
    Some((out, no))
}

/// Per output of a conv/fc with these formats, whether its accumulator provably cannot wrap
/// (`None` for layers it cannot judge: `QGraph::quantize` reports their real problem; outputs
/// whose shifts are out of range count as fitting for the same reason).
pub fn fits_per_output(
    n: &Node,
    lf: &LayerFormat,
    in_frac: i32,
    out_frac: i32,
) -> Option<Vec<bool>> {
    let (w, rows) = rows(n, &lf.weight_frac_bits)?;
    let k = w.len() / rows;
    let bias = n.weights.get(1).map(|b| &b.data);
    if bias.is_some_and(|b| b.len() != rows)
        || matches!(&lf.bias_frac_bits, Some(Frac::Channels(v)) if v.len() != rows)
    {
        return None;
    }
    let fits = (0..rows)
        .map(|o| {
            let acc_frac = lf.weight_frac_bits.channel(o) + in_frac;
            let (b, bf) = match (bias, &lf.bias_frac_bits) {
                (Some(b), Some(bf)) => {
                    let bf = bf.channel(o);
                    (QFormat::new(bf).quantize(b[o]), bf)
                }
                _ => (0, acc_frac),
            };
            let (bl, or) = (acc_frac - bf, acc_frac - out_frac);
            if !(0..=31).contains(&bl) || !(0..=31).contains(&or) {
                return true;
            }
            headroom::dense(&n.name, &w[o * k..][..k], 1, &[b], bl, or).is_ok()
        })
        .collect();
    Some(fits)
}

/// Whether a conv/fc with these formats has a provably non-wrapping accumulator (layers it
/// cannot judge count as fitting: `QGraph::quantize` reports their real problem).
pub fn fits(n: &Node, lf: &LayerFormat, in_frac: i32, out_frac: i32) -> bool {
    fits_per_output(n, lf, in_frac, out_frac).is_none_or(|v| v.iter().all(|&f| f))
}
