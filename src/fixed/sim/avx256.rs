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
    /// [`Isa::Avx2`] only: the geometry and `i8` weights (`[group][block][kp / 4][8][4]`) of the
    /// `vpmaddubsw` kernel for non-negative inputs (same bias and shifts).
    nonneg: Option<Box<(Geometry, Vec<u8>)>>,
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
        let nonneg = (isa == Isa::Avx2).then(|| {
            let geo4 = c.geometry(4);
            let w4 = geo4.pack(&geo4.reorder(c.weights), LANES, 4);
            Box::new((geo4, w4.iter().map(|&v| v as u8).collect()))
        });
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
                Isa::Avx2 => match self.nonneg.as_deref() {
                    // A fold that vectorizes, unlike an early-exit `all`.
                    Some((geo, w)) if x.iter().fold(0i8, |m, &v| m.min(v)) >= 0 => {
                        geo.pad_image(x, |v| v as u8, 0, img8);
                        let k = Weights { geo, w, eb: 1 };
                        run_avx2_nonneg(self, &k, img8.as_ptr(), y)
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

/// The one instruction that differs between the ISAs: `acc + Σ (4 bytes of a) · (4 bytes of w)`
/// per `i32` lane.
trait Dot {
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i;
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
                macro_rules! wide {
                    ($st:literal) => {
                        if mb == 2 {
                            run!(2, 6, $st);
                        } else {
                            run!(1, 12, $st);
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
