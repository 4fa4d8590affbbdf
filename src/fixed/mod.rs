//! Fixed point: Qm.n formats ([`qformat`]), the q7 kernels ([`kernels`], `core` only, copied
//! verbatim into firmware), the quantized graph ([`graph`]) and the fast bit-exact simulator
//! ([`sim`]).
//!
//! Layout: Caffe is CHW, the q7 world is HWC throughout (kernels, simulator, firmware). The
//! conversion happens on the host, once: weights are permuted by [`graph::QGraph::quantize`],
//! images and mean images are converted by [`chw_to_hwc`] before `kernels::input_u8_q7` (the
//! firmware receives HWC uint8 pixels, the natural camera/file order).

pub mod graph;
pub mod headroom;
pub mod kernels;
pub mod lower_memo;
pub mod qformat;
pub mod sim;
pub mod validate;

pub use graph::{Formats, LayerFormat, QGraph, QOp};
pub use qformat::{InputScale, QFormat};
pub use sim::{run_reference, Activations, Keep, SimdPath, Simulator};

/// Reorder one `C×H×W` tensor into `H×W×C`.
pub fn chw_to_hwc<T: Copy>(x: &[T], c: usize, h: usize, w: usize) -> Vec<T> {
    assert_eq!(
        x.len(),
        c * h * w,
        "chw_to_hwc: {} elements for {c}×{h}×{w}",
        x.len()
    );
    let mut out = Vec::with_capacity(x.len());
    for y in 0..h {
        for xx in 0..w {
            for ch in 0..c {
                out.push(x[(ch * h + y) * w + xx]);
            }
        }
    }
    out
}
