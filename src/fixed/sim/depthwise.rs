//! The simulator's depthwise convolution (`groups == in_c == out_c`, any stride, padding and
//! dilation): channel-parallel over HWC, one vector of `i32` sums per output pixel.
//!
//! The generic paths treat every channel as its own group of one, a dot product of `kh·kw`
//! elements with 1 of 16+ lanes in use; here the channel axis (contiguous in HWC) is the vector
//! axis instead. An `i8 × i8` product fits in `i16`, so the products are `i16` multiplies and
//! only the sums are widened; sums wrap in `i32` exactly as `kernels.rs` does (proptested).

use super::super::graph::QConv;
use super::super::kernels::{round_term, sat_i8};

/// A depthwise layer with its weights tap-major (`[kh·kw][c]`, `i16`) and bias terms.
pub(super) struct DwConv {
    c: usize,
    in_hw: (usize, usize),
    out_hw: (usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dil: (usize, usize),
    /// `[tap][c]`.
    w: Vec<i16>,
    /// `(bias << bias_lshift) + round_term(out_rshift)` per channel, wrapping.
    bias: Vec<i32>,
    /// `out_rshift` per channel (all equal for per-layer formats).
    rshift: Vec<u32>,
}

/// The in-bounds taps `[lo, hi)` of output coordinate `o` along one axis and the input
/// coordinate of tap `lo` (taps `dil` apart): the window rule of `kernels::conv_hwc_q7`.
fn taps(
    o: usize,
    stride: usize,
    pad: usize,
    kernel: usize,
    dil: usize,
    size: usize,
) -> (usize, usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let d = dil as isize;
    let lo = if start < 0 {
        ((-start + d - 1) / d) as usize
    } else {
        0
    }
    .min(kernel);
    let room = size as isize - start;
    let hi = if room <= 0 {
        0
    } else {
        (((room + d - 1) / d) as usize).min(kernel)
    };
    let hi = hi.max(lo);
    (lo, hi, (start + lo as isize * d).max(0) as usize)
}

impl DwConv {
    /// The layer prepared, or `None` when it is not depthwise. The caller validated the layer
    /// (shifts in `0..=31`, weight and bias lengths).
    pub fn new(c: &QConv) -> Option<DwConv> {
        let ch = c.in_dims.c;
        if !(c.groups == ch && c.out_dims.c == ch && ch > 0) {
            return None;
        }
        let taps = c.kernel.h * c.kernel.w;
        let mut w = vec![0i16; taps * ch];
        for o in 0..ch {
            for t in 0..taps {
                w[t * ch + o] = c.weights[o * taps + t] as i16;
            }
        }
        let (bls, ors) = c.shifts();
        let at = |v: &[i32], o: usize| v[if v.len() == 1 { 0 } else { o }];
        let rs: Vec<u32> = (0..ch).map(|o| at(ors, o) as u32).collect();
        let bias = c
            .bias
            .iter()
            .enumerate()
            .map(|(o, &b)| ((b as i32) << at(bls, o)).wrapping_add(round_term(rs[o])))
            .collect();
        Some(DwConv {
            c: ch,
            in_hw: (c.in_dims.h, c.in_dims.w),
            out_hw: (c.out_dims.h, c.out_dims.w),
            kernel: (c.kernel.h, c.kernel.w),
            stride: (c.stride.h, c.stride.w),
            pad: (c.pad.h, c.pad.w),
            dil: (c.dilation.h, c.dilation.w),
            w,
            bias,
            rshift: rs,
        })
    }

    /// One image: `x` HWC input, `y` HWC output, `acc`: scratch for the sums.
    pub fn run(&self, x: &[i8], y: &mut [i8], acc: &mut Vec<i32>) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2 (checked just above).
                unsafe { self.run_avx2(x, y, acc) };
                return;
            }
        }
        self.body(x, y, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, x: &[i8], y: &mut [i8], acc: &mut Vec<i32>) {
        self.body(x, y, acc)
    }

    #[inline(always)]
    fn body(&self, x: &[i8], y: &mut [i8], acc: &mut Vec<i32>) {
        let c = self.c;
        let (ih, iw) = self.in_hw;
        let (oh, ow) = self.out_hw;
        let (kh, kw) = self.kernel;
        acc.clear();
        acc.resize(c, 0);
        for oy in 0..oh {
            let (ylo, yhi, iy0) = taps(oy, self.stride.0, self.pad.0, kh, self.dil.0, ih);
            for ox in 0..ow {
                let (xlo, xhi, ix0) = taps(ox, self.stride.1, self.pad.1, kw, self.dil.1, iw);
                acc.copy_from_slice(&self.bias);
                for ky in ylo..yhi {
                    let iy = iy0 + (ky - ylo) * self.dil.0;
                    for kx in xlo..xhi {
                        let ix = ix0 + (kx - xlo) * self.dil.1;
                        let px = &x[(iy * iw + ix) * c..][..c];
                        let wt = &self.w[(ky * kw + kx) * c..][..c];
                        for ((a, xv), wv) in acc.iter_mut().zip(px).zip(wt) {
                            *a = a.wrapping_add(((*xv as i16) * *wv) as i32);
                        }
                    }
                }
                let out = &mut y[(oy * ow + ox) * c..][..c];
                for ((o, a), s) in out.iter_mut().zip(acc.iter()).zip(&self.rshift) {
                    *o = sat_i8(*a >> s);
                }
            }
        }
    }
}
