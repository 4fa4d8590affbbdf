//! The search's overflow guard: the starting formats of a conv/fc come from float max-abs values,
//! which know nothing about the `i32` accumulator. When they would let it wrap (typically tiny
//! weights with a large bias: a large `bias_lshift`), the start takes fewer weight fraction bits
//! until the overflow proof (`fixed::headroom`) holds. The search itself never leaves safe
//! formats: `QGraph::quantize` refuses a candidate whose accumulator could wrap, and refused
//! candidates are skipped.

use crate::fixed::graph::LayerFormat;
use crate::fixed::headroom;
use crate::fixed::qformat::QFormat;
use crate::ir::{Node, Op};

/// The int8 weights of a conv/fc grouped by output (each output's weights contiguous), for the
/// headroom bound; `None` for other layers.
fn rows(n: &Node, wf: i32) -> Option<(Vec<i8>, usize)> {
    let w = &n.weights.first()?.data;
    let q = QFormat::new(wf);
    match &n.op {
        Op::Convolution(c) => Some((q.quantize_slice(w), c.num_output)),
        // The shape was checked when the graph was built; a mismatch is QGraph::quantize's to report.
        Op::Deconvolution(c) => {
            let in_c = w.len() / (c.num_output / c.group.max(1) * c.kernel.h * c.kernel.w).max(1);
            let wq =
                crate::fixed::graph::deconv_weights(w, in_c, c.num_output, c.group, c.kernel, q)?;
            Some((wq, c.num_output))
        }
        Op::InnerProduct(p) => {
            let no = p.num_output;
            if no == 0 || !w.len().is_multiple_of(no) {
                return None;
            }
            let k = w.len() / no;
            let mut out = vec![0i8; w.len()];
            for o in 0..no {
                for i in 0..k {
                    let src = if p.transpose { i * no + o } else { o * k + i };
                    out[o * k + i] = q.quantize(w[src]);
                }
            }
            Some((out, no))
        }
        _ => None,
    }
}

/// Whether a conv/fc with these formats has a provably non-wrapping accumulator (layers it
/// cannot judge count as fitting: `QGraph::quantize` reports their real problem).
pub fn fits(n: &Node, lf: &LayerFormat, in_frac: i32, out_frac: i32) -> bool {
    let Some((w, rows)) = rows(n, lf.weight_frac_bits) else {
        return true;
    };
    let acc_frac = lf.weight_frac_bits + in_frac;
    let (bias, bf) = match (n.weights.get(1), lf.bias_frac_bits) {
        (Some(b), Some(bf)) => (QFormat::new(bf).quantize_slice(&b.data), bf),
        _ => (vec![0; rows], acc_frac),
    };
    let (bl, or) = (acc_frac - bf, acc_frac - out_frac);
    if !(0..=31).contains(&bl) || !(0..=31).contains(&or) || bias.len() != rows {
        return true;
    }
    headroom::dense(&n.name, &w, rows, &bias, bl, or).is_ok()
}
