//! 256-bit direct convolution (and fully connected) for x86 CPUs without AVX-512 VNNI,
//! bit-exact to `kernels.rs`.
//!
//! The layout is the one of `vnni.rs` (see `direct.rs`): no im2col, a padded copy of the image,
//! a pixel's receptive field read as contiguous segments, the 8 `i32` lanes of a register holding
//! 8 output channels of one pixel. Every step broadcasts 4 bytes of activations and multiplies
//! them with 32 bytes of weights (8 channels × 4 bytes), in one of two exact ways:
//!
//! - **AVX2** ([`Isa::Avx2`]): activations and weights widened to `i16`, `vpmaddwd` adds the two
//!   products of a lane into an `i32` (at most 2·128·128 = 2^15 in magnitude, no saturation) and
//!   `vpaddd` accumulates with wrap-around. Not `vpmaddubsw` in general: its `i16` pair sums
//!   saturate. **Except** when every input value is non-negative (an input after a ReLU, checked
//!   per image): then `x ≤ 127`, a pair `x₁w₁ + x₂w₂` lies in `[-32512, 32258]` and cannot
//!   saturate, so `vpmaddubsw` (x as `u8` × w as `i8`, four bytes per lane) then `vpmaddwd` with
//!   ones is exact. It takes 3 instructions per 32 products instead of 4 and half the broadcasts
//!   (the `u8` image, weights packed four per lane as for VNNI).
//! - **VNNI on 256 bits**: `vpdpbusd ymm`, four `u8 × i8` products per lane, with `u = x + 128`
//!   and `128·Σw` taken off the bias as in `vnni.rs`. [`Isa::AvxVnni`] is the VEX encoding (CPUs
//!   with AVX-VNNI but no AVX-512: Alder Lake and later, Zen 5 desktop); [`Isa::Avx512VnniYmm`]
//!   is the same kernel with the EVEX encoding, which is how the property tests exercise this
//!   code on AVX-512 VNNI machines.
//!
//! The wrapping `i32` sum is associative, so any order gives the reference bits; an arithmetic
//! shift and two saturating packs (`i32 → i16 → i8`, which together saturate to `i8`) give
//! `sat_i8(acc >> s)`.
//!
//! One generic kernel serves the three: the `Dot` trait supplies the one instruction that differs,
//! everything is `#[inline(always)]`, and each ISA has one `#[target_feature]` entry point into
//! which the whole kernel is inlined and compiled for that ISA.
#![allow(clippy::incompatible_msrv)]

use super::direct::{ConvSpec, Geometry, Seg};
use std::arch::x86_64::*;

/// Which instruction set runs the 256-bit kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Avx2,
    AvxVnni,
    Avx512VnniYmm,
}

impl Isa {
    /// True when this CPU can run the kernel with this instruction set.
    pub(super) fn available(self) -> bool {
        is_x86_feature_detected!("avx2")
            && match self {
                Isa::Avx2 => true,
                Isa::AvxVnni => is_x86_feature_detected!("avxvnni"),
                Isa::Avx512VnniYmm => {
                    is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
            }
    }

    /// Bytes per activation element in the padded image (`i16` or `u8`).
    fn elem_bytes(self) -> usize {
        match self {
            Isa::Avx2 => 2,
            Isa::AvxVnni | Isa::Avx512VnniYmm => 1,
        }
    }

    /// Elements per 4-byte broadcast.
    fn group(self) -> usize {
        4 / self.elem_bytes()
    }
}

/// Output channels per register.
const LANES: usize = 8;

/// A conv (or fc, as a 1×1 conv on a 1×1 image) prepared for the 256-bit kernel.
pub(super) struct YConv {
    geo: Geometry,
    isa: Isa,
    /// 8-channel blocks per group.
    nb: usize,
    /// `[group][block][kp / G][8][G]` elements (`i16` little-endian bytes for AVX2, `i8` else).
    w: Vec<u8>,
    /// `[group][block][8]`: `(bias << lshift) + round` (`- 128·Σw` for the `u8` kernels).
    bias: Vec<i32>,
    /// `[group][block][8]`: `out_rshift` of each lane's channel.
    rshift: Vec<i32>,
    /// [`Isa::Avx2`] only: the `vpmaddubsw` kernel for non-negative inputs (same bias and
    /// shifts).
    nonneg: Option<Box<NonNeg>>,
}

/// The weights of the `vpmaddubsw` kernel, and how large the input may be for the paired form.
struct NonNeg {
    geo: Geometry,
    /// `i8` weights, `[group][block][kp / 4][8][4]`.
    w: Vec<u8>,
    /// The paired form ([`NonNegPairDot`]) is exact when every input value is at most this.
    pair_limit: i8,
}

impl NonNeg {
    fn new(c: &ConvSpec) -> NonNeg {
        let geo = c.geometry(4);
        let wk = geo.reorder(c.weights);
        let pair_limit = pair_limit(&geo, &wk);
        let w = geo.pack(&wk, LANES, 4).iter().map(|&v| v as u8).collect();
        NonNeg { geo, w, pair_limit }
    }
}

/// The largest input value (at most 127) for which [`NonNegPairDot`] is exact on these weights
/// (`[out_c][kp]`, from [`Geometry::reorder`]).
///
/// The paired form adds two `vpmaddubsw` results (two steps of 4 bytes) as `i16` before widening.
/// Each `i16` lane then holds `Σ xₖwₖ` over four weights (bytes 0, 1, 4, 5 or 2, 3, 6, 7 of the
/// 8 the two steps cover), which lies in `[-x·Σw⁻, x·Σw⁺]` for inputs in `[0, x]`. Steps pair up
/// from the start of each segment, as the kernel walks them; a segment's odd last step runs
/// alone. So the limit is the largest `x` with `x·Σw⁺ ≤ 32767` and `x·Σw⁻ ≤ 32768` over every
/// channel, pair of steps and lane.
fn pair_limit(geo: &Geometry, wk: &[i8]) -> i8 {
    let (mut pos, mut neg) = (1i32, 1i32);
    for w in wk.chunks_exact(geo.kp) {
        let mut at = 0;
        for s in &geo.segs[0] {
            for two in w[at..at + s.len].chunks_exact(8) {
                for lane in [[0, 1, 4, 5], [2, 3, 6, 7]] {
                    let (p, n) = lane.iter().fold((0i32, 0i32), |(p, n), &i| {
                        let v = two[i] as i32;
                        (p + v.max(0), n + (-v).max(0))
                    });
                    pos = pos.max(p);
                    neg = neg.max(n);
                }
            }
            at += s.len;
        }
    }
    let limit = (i16::MAX as i32 / pos).min(-(i16::MIN as i32) / neg);
    limit.min(i8::MAX as i32) as i8
}

impl YConv {
    /// The conv `c` prepared for the kernel on `isa` (the caller checks `isa.available()`).
    pub(super) fn new(isa: Isa, c: &ConvSpec) -> YConv {
        let g = isa.group();
        let geo = c.geometry(g);
        let wk = geo.reorder(c.weights);
        let offset = isa != Isa::Avx2;
        let b = geo.per_lane(LANES, |o| {
            let b = c.bias_term(o);
            if offset {
                let sw = wk[o * geo.kp..(o + 1) * geo.kp]
                    .iter()
                    .fold(0i32, |s, &v| s.wrapping_add(v as i32));
                b.wrapping_sub(sw.wrapping_mul(128))
            } else {
                b
            }
        });
        let rshift = geo.per_lane(LANES, |o| c.rshift(o) as i32);
        let nonneg = (isa == Isa::Avx2).then(|| Box::new(NonNeg::new(c)));
        let packed = geo.pack(&wk, LANES, g);
        let w = match isa {
            Isa::Avx2 => packed
                .iter()
                .flat_map(|&v| (v as i16).to_le_bytes())
                .collect(),
            Isa::AvxVnni | Isa::Avx512VnniYmm => packed.iter().map(|&v| v as u8).collect(),
        };
        YConv {
            nb: geo.blocks(LANES),
            geo,
            isa,
            w,
            bias: b,
            rshift,
            nonneg,
        }
    }

    /// `y = conv(x)`; `img8` / `img16` are scratch (the one this ISA uses is filled).
    pub(super) fn run(&self, x: &[i8], y: &mut [i8], img8: &mut Vec<u8>, img16: &mut Vec<i16>) {
        assert_eq!(x.len(), self.geo.ind.len(), "avx256 conv: input length");
        assert_eq!(y.len(), self.geo.outd.len(), "avx256 conv: output length");
        // SAFETY: the caller built this YConv only when `isa.available()`; every read stays
        // inside the padded image (windows lie in it, plus SLACK elements for the last group of
        // a segment) and every write inside `y` (lengths checked above, partial blocks stored
        // through a bounce buffer).
        unsafe {
            let own = Weights {
                geo: &self.geo,
                w: &self.w,
                eb: self.isa.elem_bytes(),
            };
            match self.isa {
                Isa::Avx2 => match (self.nonneg.as_deref(), min_max(x)) {
                    (Some(nn), (lo, hi)) if lo >= 0 => {
                        nn.geo.pad_image(x, |v| v as u8, 0, img8);
                        let k = Weights {
                            geo: &nn.geo,
                            w: &nn.w,
                            eb: 1,
                        };
                        if hi <= nn.pair_limit {
                            run_avx2_nonneg_pairs(self, &k, img8.as_ptr(), y)
                        } else {
                            run_avx2_nonneg(self, &k, img8.as_ptr(), y)
                        }
                    }
                    _ => {
                        self.geo.pad_image(x, |v| v as i16, 0, img16);
                        run_avx2(self, &own, img16.as_ptr() as *const u8, y)
                    }
                },
                Isa::AvxVnni => {
                    self.geo.pad_image(x, |v| (v as u8) ^ 0x80, 0x80, img8);
                    run_avxvnni(self, &own, img8.as_ptr(), y)
                }
                Isa::Avx512VnniYmm => {
                    self.geo.pad_image(x, |v| (v as u8) ^ 0x80, 0x80, img8);
                    run_evex(self, &own, img8.as_ptr(), y)
                }
            }
        }
    }
}

/// `(min, max)` of `x`, in one pass that vectorizes (unlike an early-exit `all`).
fn min_max(x: &[i8]) -> (i8, i8) {
    x.iter()
        .fold((i8::MAX, i8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// The one instruction that differs between the ISAs: `acc + Σ (4 bytes of a) · (4 bytes of w)`
/// per `i32` lane.
trait Dot {
    /// True when [`dot2`](Self::dot2) is cheaper than two [`dot`](Self::dot)s; the kernel then
    /// walks each segment two steps at a time.
    const PAIRED: bool = false;

    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i;

    /// Two steps: `dot(dot(acc, a1, w1), a2, w2)`.
    #[inline(always)]
    unsafe fn dot2(acc: __m256i, a1: __m256i, w1: __m256i, a2: __m256i, w2: __m256i) -> __m256i {
        Self::dot(Self::dot(acc, a1, w1), a2, w2)
    }
}

struct Avx2Dot;
impl Dot for Avx2Dot {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, w))
    }
}

/// `vpmaddubsw` (`u8` activations, which must be at most 127, × `i8` weights: exact pairs) then
/// `vpmaddwd` with ones: the four products of a lane summed into an `i32`.
struct NonNegDot;
impl Dot for NonNegDot {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(a, w);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

/// [`NonNegDot`] two steps at a time: the two `vpmaddubsw` results are added as `i16` before one
/// `vpmaddwd`, 3 multiplies per 64 products instead of 4. Exact only when the inputs are at most
/// [`pair_limit`] (the caller checks).
struct NonNegPairDot;
impl Dot for NonNegPairDot {
    const PAIRED: bool = true;

    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        NonNegDot::dot(acc, a, w)
    }

    #[inline(always)]
    unsafe fn dot2(acc: __m256i, a1: __m256i, w1: __m256i, a2: __m256i, w2: __m256i) -> __m256i {
        let sum = _mm256_add_epi16(_mm256_maddubs_epi16(a1, w1), _mm256_maddubs_epi16(a2, w2));
        _mm256_add_epi32(acc, _mm256_madd_epi16(sum, _mm256_set1_epi16(1)))
    }
}

struct VexDot;
impl Dot for VexDot {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, a, w)
    }
}

struct EvexDot;
impl Dot for EvexDot {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, a, w)
    }
}

/// The padded image's geometry and the weights packed for it.
struct Weights<'a> {
    geo: &'a Geometry,
    w: &'a [u8],
    /// Bytes per image element.
    eb: usize,
}

#[target_feature(enable = "avx2")]
unsafe fn run_avx2(c: &YConv, k: &Weights, img: *const u8, y: &mut [i8]) {
    run_generic::<Avx2Dot>(c, k, img, y)
}

#[target_feature(enable = "avx2")]
unsafe fn run_avx2_nonneg(c: &YConv, k: &Weights, img: *const u8, y: &mut [i8]) {
    run_generic::<NonNegDot>(c, k, img, y)
}

#[target_feature(enable = "avx2")]
unsafe fn run_avx2_nonneg_pairs(c: &YConv, k: &Weights, img: *const u8, y: &mut [i8]) {
    run_generic::<NonNegPairDot>(c, k, img, y)
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn run_avxvnni(c: &YConv, k: &Weights, img: *const u8, y: &mut [i8]) {
    run_generic::<VexDot>(c, k, img, y)
}

#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
unsafe fn run_evex(c: &YConv, k: &Weights, img: *const u8, y: &mut [i8]) {
    run_generic::<EvexDot>(c, k, img, y)
}

/// What a tile needs besides its pixel pointers.
struct Tile<'a> {
    segs: &'a [Seg],
    /// Bytes per image element.
    eb: usize,
    /// Bytes between horizontally adjacent output pixels in the padded image.
    st: usize,
    w: *const u8,
    /// Bytes between two 8-channel weight blocks.
    blk_bytes: usize,
    bias: *const i32,
    /// This block's per-lane output shifts.
    shift: *const i32,
    /// Valid channels of each of the (up to 2) blocks.
    valid: [usize; 2],
    /// Output bytes per pixel.
    out_px: usize,
}

#[inline(always)]
unsafe fn run_generic<D: Dot>(cv: &YConv, k: &Weights, img: *const u8, y: &mut [i8]) {
    let (geo, eb) = (k.geo, k.eb);
    let c = geo.ind.c;
    let (oh, ow, oc) = (geo.outd.h, geo.outd.w, geo.outd.c);
    let st = geo.stride.1 * c * eb;
    let blk_bytes = geo.kp * LANES * eb;
    let yp = y.as_mut_ptr();
    for g in 0..geo.groups {
        let mut blk = 0;
        while blk < cv.nb {
            let mb = if cv.nb - blk >= 2 { 2 } else { 1 };
            let t = Tile {
                segs: &geo.segs[g],
                eb,
                st,
                w: k.w.as_ptr().add((g * cv.nb + blk) * blk_bytes),
                blk_bytes,
                bias: cv.bias.as_ptr().add((g * cv.nb + blk) * LANES),
                shift: cv.rshift.as_ptr().add((g * cv.nb + blk) * LANES),
                valid: std::array::from_fn(|m| {
                    geo.cout_g.saturating_sub((blk + m) * LANES).min(LANES)
                }),
                out_px: oc,
            };
            let ch0 = g * geo.cout_g + blk * LANES;
            for oy in 0..oh {
                let row_in = img.add(oy * geo.stride.0 * geo.wp * c * eb);
                let row_out = yp.add(oy * ow * oc + ch0);
                // Wide tiles first, with the pixel stride a compile-time constant where it is a
                // common one (pixel loads become base + immediate, which frees registers), then
                // narrower tails. 16 ymm registers: MB·P accumulators + MB weights + 1 broadcast.
                let mut ox = 0;
                macro_rules! run {
                    ($mb:literal, $p:literal, $st:literal) => {
                        while ow - ox >= $p {
                            tile::<D, $mb, $p, $st>(&t, row_in.add(ox * st), row_out.add(ox * oc));
                            ox += $p;
                        }
                    };
                }
                // The paired form holds twice the weights and broadcasts (and the ones): fewer
                // accumulators.
                macro_rules! wide {
                    ($st:literal) => {
                        match (mb == 2, D::PAIRED) {
                            (true, false) => run!(2, 6, $st),
                            (true, true) => run!(2, 3, $st),
                            (false, false) => run!(1, 12, $st),
                            (false, true) => run!(1, 8, $st),
                        }
                    };
                }
                match st {
                    3 => wide!(3),
                    6 => wide!(6),
                    16 => wide!(16),
                    32 => wide!(32),
                    64 => wide!(64),
                    128 => wide!(128),
                    _ => {}
                }
                if mb == 2 {
                    run!(2, 6, 0);
                    run!(2, 4, 0);
                    run!(2, 2, 0);
                    run!(2, 1, 0);
                } else {
                    run!(1, 8, 0);
                    run!(1, 4, 0);
                    run!(1, 2, 0);
                    run!(1, 1, 0);
                }
            }
            blk += mb;
        }
    }
}

/// `MB` blocks of 8 output channels × `P` horizontally adjacent pixels starting at `inp` (pixel
/// base in the padded image), written at `out`. `ST` is the pixel stride in bytes when known at
/// compile time (`t.st` is used when `ST == 0`).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // acc[m][p] reads better than nested iterators
unsafe fn tile<D: Dot, const MB: usize, const P: usize, const ST: usize>(
    t: &Tile,
    inp: *const u8,
    out: *mut i8,
) {
    debug_assert!(ST == 0 || ST == t.st);
    let st = if ST == 0 { t.st } else { ST };
    let mut acc = [[_mm256_setzero_si256(); P]; MB];
    for m in 0..MB {
        let b = _mm256_loadu_si256(t.bias.add(LANES * m) as *const __m256i);
        for p in 0..P {
            acc[m][p] = b;
        }
    }
    let mut wp = t.w;
    for s in t.segs {
        let base = inp.add(s.off * t.eb);
        let end = s.len * t.eb;
        let mut kb = 0;
        if D::PAIRED {
            while kb + 8 <= end {
                let mut w1 = [_mm256_setzero_si256(); MB];
                let mut w2 = [_mm256_setzero_si256(); MB];
                for m in 0..MB {
                    w1[m] = _mm256_loadu_si256(wp.add(m * t.blk_bytes) as *const __m256i);
                    w2[m] = _mm256_loadu_si256(wp.add(m * t.blk_bytes + 32) as *const __m256i);
                }
                for p in 0..P {
                    let at = base.add(p * st + kb);
                    let a1 = _mm256_set1_epi32((at as *const i32).read_unaligned());
                    let a2 = _mm256_set1_epi32((at.add(4) as *const i32).read_unaligned());
                    for m in 0..MB {
                        acc[m][p] = D::dot2(acc[m][p], a1, w1[m], a2, w2[m]);
                    }
                }
                wp = wp.add(64);
                kb += 8;
            }
        }
        while kb < end {
            let mut wv = [_mm256_setzero_si256(); MB];
            for m in 0..MB {
                wv[m] = _mm256_loadu_si256(wp.add(m * t.blk_bytes) as *const __m256i);
            }
            for p in 0..P {
                let a = _mm256_set1_epi32((base.add(p * st + kb) as *const i32).read_unaligned());
                for m in 0..MB {
                    acc[m][p] = D::dot(acc[m][p], a, wv[m]);
                }
            }
            wp = wp.add(32);
            kb += 4;
        }
    }
    for p in 0..P {
        for m in 0..MB {
            let sh = _mm256_loadu_si256(t.shift.add(LANES * m) as *const __m256i);
            let v = _mm256_srav_epi32(acc[m][p], sh);
            let w16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let b8 = _mm_packs_epi16(w16, w16);
            let dst = out.add(p * t.out_px + LANES * m);
            if t.valid[m] == LANES {
                _mm_storel_epi64(dst as *mut __m128i, b8);
            } else {
                let mut tmp = [0i8; 16];
                _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, b8);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, t.valid[m]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::graph::Hwc;
    use crate::fixed::kernels::{self, Dims, Pair};

    /// A 1×1 conv of a 1×1×8 image into 8 channels, every weight `w`: each channel sums
    /// `8·x·w`, and each `i16` lane of the paired form holds four of those products.
    fn uniform(w: i8) -> (Vec<i8>, Vec<i8>, Hwc) {
        (vec![w; 64], vec![0; 8], Hwc { h: 1, w: 1, c: 8 })
    }

    fn spec<'a>(w: &'a [i8], b: &'a [i8], d: Hwc, sh: &'a [i32]) -> ConvSpec<'a> {
        ConvSpec {
            ind: d,
            outd: d,
            kernel: (1, 1),
            stride: (1, 1),
            pad: (0, 0),
            groups: 1,
            weights: w,
            bias: b,
            bias_lshift: &sh[..1],
            out_rshift: &sh[1..],
        }
    }

    fn reference(c: &ConvSpec, x: &[i8]) -> Vec<i8> {
        let d = |h: Hwc| Dims {
            h: h.h,
            w: h.w,
            c: h.c,
        };
        let mut y = vec![0i8; c.outd.len()];
        let one = Pair { h: 1, w: 1 };
        let zero = Pair { h: 0, w: 0 };
        kernels::conv_hwc_q7(
            x,
            d(c.ind),
            c.weights,
            one,
            zero,
            one,
            one,
            1,
            c.bias,
            c.bias_lshift[0],
            c.out_rshift[0],
            &mut y,
            d(c.outd),
        )
        .expect("valid conv");
        y
    }

    /// The paired kernel itself, whatever the input.
    fn paired(c: &YConv, x: &[i8]) -> Vec<i8> {
        let nn = c.nonneg.as_deref().expect("AVX2 conv");
        let mut img = Vec::new();
        nn.geo.pad_image(x, |v| v as u8, 0, &mut img);
        let k = Weights {
            geo: &nn.geo,
            w: &nn.w,
            eb: 1,
        };
        let mut y = vec![0i8; c.geo.outd.len()];
        // SAFETY: AVX2 is available (checked by the callers); `img` is the padded image.
        unsafe { run_avx2_nonneg_pairs(c, &k, img.as_ptr(), &mut y) };
        y
    }

    /// `pair_limit` is exact and tight: at the limit the paired kernel equals `kernels.rs`; one
    /// above it, it wraps an `i16` and differs, and `run` then takes the unpaired kernel.
    #[test]
    fn pair_limit_is_exact_and_tight() {
        if !Isa::Avx2.available() {
            println!("avx256: no AVX2 on this CPU, pair_limit not exercised");
            return;
        }
        // Shift 8 keeps the largest sums (±33k) inside i8 after the shift, so that a wrapped i16
        // shows in the output.
        let shifts = [0, 8];
        for (w, limit) in [(-128i8, 64i8), (127, 64)] {
            let (wt, b, d) = uniform(w);
            let c = spec(&wt, &b, d, &shifts);
            let y = YConv::new(Isa::Avx2, &c);
            assert_eq!(y.nonneg.as_ref().unwrap().pair_limit, limit, "weights {w}");
            let at = vec![limit; 8];
            assert_eq!(
                paired(&y, &at),
                reference(&c, &at),
                "weights {w}, x = {limit}"
            );
            let above = vec![limit + 1; 8];
            let want = reference(&c, &above);
            assert_ne!(
                paired(&y, &above),
                want,
                "weights {w}: the limit is not tight"
            );
            let (mut img8, mut img16) = (Vec::new(), Vec::new());
            let mut got = vec![0i8; 8];
            y.run(&above, &mut got, &mut img8, &mut img16);
            assert_eq!(got, want, "weights {w}: run above the limit");
        }
    }

    /// Small weights never limit the paired form below 127.
    #[test]
    fn pair_limit_caps_at_127() {
        let (wt, b, d) = uniform(3);
        let geo = spec(&wt, &b, d, &[0, 0]).geometry(4);
        assert_eq!(pair_limit(&geo, &geo.reorder(&wt)), 127);
    }
}
