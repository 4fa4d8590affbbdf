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
//!   (the `u8` image, weights packed four per lane as for VNNI). When the image's largest value
//!   is small enough for the layer's weights ([`group_limit`], computed once per layer), the
//!   `vpmaddubsw` results of 8, 4 or 2 steps are summed as `i16` before one `vpmaddwd`
//!   ([`Grouped`]): each `i16` lane then provably holds its exact sum.
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
    /// The `u8` kernels only: [`Geometry::segment_offsets`], what a row that skips a segment
    /// of the padding gives back to the bias (empty for [`Isa::Avx2`], which has no offset).
    seg_offsets: Vec<i32>,
}

/// The weights of the `vpmaddubsw` kernel, and how large the input may be for each grouped form.
struct NonNeg {
    geo: Geometry,
    /// `i8` weights, `[group][block][kp / 4][8][4]`.
    w: Vec<u8>,
    /// `limits[i]`: [`Grouped`] with `GROUPS[i]` steps is exact when every input value is at
    /// most this.
    limits: [i8; GROUPS.len()],
}

impl NonNeg {
    fn new(c: &ConvSpec) -> NonNeg {
        let geo = c.geometry(4);
        let wk = geo.reorder(c.weights);
        let limits = GROUPS.map(|steps| group_limit(&geo, &wk, steps));
        let w = geo.pack(&wk, LANES, 4).iter().map(|&v| v as u8).collect();
        NonNeg { geo, w, limits }
    }
}

/// The step counts of the [`Grouped`] kernels, largest first.
const GROUPS: [usize; 3] = [8, 4, 2];

/// The largest input value (at most 127) for which [`Grouped`] with `steps` steps is exact on
/// these weights (`[out_c][kp]`, from [`Geometry::reorder`]).
///
/// The grouped form adds `steps` `vpmaddubsw` results (4 bytes each) as `i16` before widening.
/// Each `i16` lane then holds `Σ xₖwₖ` over bytes `4j + 2q` and `4j + 2q + 1` of the group's
/// steps `j` (`q`: the lane's half of the 4 bytes), which lies in `[-x·Σw⁻, x·Σw⁺]` for inputs in
/// `[0, x]`. Groups start at each segment's start, as the kernel walks them; a segment's last
/// group may be shorter. So the limit is the largest `x` with `x·Σw⁺ ≤ 32767` and
/// `x·Σw⁻ ≤ 32768` over every channel, group and lane.
fn group_limit(geo: &Geometry, wk: &[i8], steps: usize) -> i8 {
    let (mut pos, mut neg) = (1i32, 1i32);
    for w in wk.chunks_exact(geo.kp) {
        let mut at = 0;
        for s in &geo.segs[0] {
            for group in w[at..at + s.len].chunks(4 * steps) {
                for q in 0..2 {
                    let (p, n) = group
                        .chunks_exact(4)
                        .flat_map(|step| &step[2 * q..2 * q + 2])
                        .fold((0i32, 0i32), |(p, n), &v| {
                            (p + (v as i32).max(0), n + (-(v as i32)).max(0))
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
        let seg_offsets = if offset {
            geo.segment_offsets(&wk, LANES)
        } else {
            Vec::new()
        };
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
            seg_offsets,
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
                        // The largest group whose limit the input respects.
                        match GROUPS.iter().zip(nn.limits).find(|&(_, l)| hi <= l) {
                            Some((8, _)) => run_avx2_grouped::<8>(self, &k, img8.as_ptr(), y),
                            Some((4, _)) => run_avx2_grouped::<4>(self, &k, img8.as_ptr(), y),
                            Some(_) => run_avx2_grouped::<2>(self, &k, img8.as_ptr(), y),
                            None => run_avx2_nonneg(self, &k, img8.as_ptr(), y),
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

/// `(min, max)` of `x`, 32 lanes at a time (`vpminsb`/`vpmaxsb`; the caller checked AVX2).
#[target_feature(enable = "avx2")]
unsafe fn min_max(x: &[i8]) -> (i8, i8) {
    let (mut lo, mut hi) = (_mm256_set1_epi8(i8::MAX), _mm256_set1_epi8(i8::MIN));
    let chunks = x.chunks_exact(32);
    let rest = chunks.remainder();
    for c in chunks {
        let v = _mm256_loadu_si256(c.as_ptr() as *const __m256i);
        lo = _mm256_min_epi8(lo, v);
        hi = _mm256_max_epi8(hi, v);
    }
    let (mut l, mut h) = ([0i8; 32], [0i8; 32]);
    _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, lo);
    _mm256_storeu_si256(h.as_mut_ptr() as *mut __m256i, hi);
    l.iter()
        .chain(rest)
        .zip(h.iter().chain(rest))
        .fold((i8::MAX, i8::MIN), |(l, h), (&a, &b)| (l.min(a), h.max(b)))
}

/// The one instruction that differs between the ISAs: `acc + Σ (4 bytes of a) · (4 bytes of w)`
/// per `i32` lane.
trait Dot {
    /// Steps whose products are summed as `i16` before widening ([`Grouped`]); 1: every step
    /// goes through [`dot`](Self::dot).
    const STEPS: usize = 1;

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

/// [`NonNegDot`] `S` steps at a time: the `vpmaddubsw` results of a group of steps are added as
/// `i16` ([`group`]) before one `vpmaddwd`: `S + 1` multiplies per `32·S` products instead of
/// `2·S`. Exact only when the inputs are at most the weights' [`group_limit`] (the caller
/// checks).
struct Grouped<const S: usize>;
impl<const S: usize> Dot for Grouped<S> {
    const STEPS: usize = S;

    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        NonNegDot::dot(acc, a, w)
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
unsafe fn run_avx2_grouped<const S: usize>(c: &YConv, k: &Weights, img: *const u8, y: &mut [i8]) {
    run_generic::<Grouped<S>>(c, k, img, y)
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
            let first = (g * cv.nb + blk) * LANES;
            for oy in 0..oh {
                let row_in = img.add(oy * geo.stride.0 * geo.wp * c * eb);
                let row_out = yp.add(oy * ow * oc + ch0);
                // Kernel rows in the top or bottom padding are skipped with their weights (7.5 %
                // of the products of a 5×5 conv with pad 2 on 16×16, 15 % on 8×8): their
                // products are zero, or `128·Σw` with the `u8` offset, given back to the bias.
                let win = geo.row_window(oy);
                let mut buf = [0i32; 2 * LANES];
                let bias = geo.row_bias(
                    &cv.bias,
                    &cv.seg_offsets,
                    &win.segs,
                    first,
                    &mut buf[..mb * LANES],
                );
                // 8 lanes × 4 bytes of weights per 4 bytes of image.
                let t = Tile {
                    segs: &t.segs[win.segs.clone()],
                    w: t.w.add(win.skipped * eb * 8),
                    bias: bias.as_ptr(),
                    ..t
                };
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
                // The grouped form holds its `i16` sums too: half the accumulators.
                macro_rules! wide {
                    ($st:literal) => {
                        match (mb == 2, D::STEPS > 1) {
                            (true, false) => run!(2, 6, $st),
                            (true, true) => run!(2, 3, $st),
                            (false, false) => run!(1, 12, $st),
                            (false, true) => run!(1, 6, $st),
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
                match (mb == 2, D::STEPS > 1) {
                    (true, false) => {
                        run!(2, 6, 0);
                        run!(2, 4, 0);
                    }
                    (true, true) => run!(2, 3, 0),
                    (false, false) => {
                        run!(1, 8, 0);
                        run!(1, 4, 0);
                    }
                    (false, true) => {
                        run!(1, 6, 0);
                        run!(1, 4, 0);
                    }
                }
                if mb == 2 {
                    run!(2, 2, 0);
                    run!(2, 1, 0);
                } else {
                    run!(1, 2, 0);
                    run!(1, 1, 0);
                }
            }
            blk += mb;
        }
    }
}

/// `steps` steps of the [`Grouped`] kernel into `acc`: each step's `vpmaddubsw` products (weights
/// at `wp`, activations broadcast from `inp + p·st`) summed as `i16`, then widened once.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // sum[m][p] reads better than nested iterators
unsafe fn group<const MB: usize, const P: usize>(
    steps: usize,
    acc: &mut [[__m256i; P]; MB],
    wp: *const u8,
    blk_bytes: usize,
    inp: *const u8,
    st: usize,
) {
    // Step `j`'s products into the sums through `$f(sum, product)` (a macro, not a closure:
    // the intrinsics must inline into this `target_feature` context). `steps ≥ 1`; the first
    // step's products start the sums.
    let mut sum = [[_mm256_setzero_si256(); P]; MB];
    macro_rules! step {
        ($j:expr, $f:expr) => {
            let mut wv = [_mm256_setzero_si256(); MB];
            for m in 0..MB {
                wv[m] = _mm256_loadu_si256(wp.add(m * blk_bytes + 32 * $j) as *const __m256i);
            }
            for p in 0..P {
                let a =
                    _mm256_set1_epi32((inp.add(p * st + 4 * $j) as *const i32).read_unaligned());
                for m in 0..MB {
                    sum[m][p] = $f(sum[m][p], _mm256_maddubs_epi16(a, wv[m]));
                }
            }
        };
    }
    step!(0, |_, v| v);
    for j in 1..steps {
        step!(j, |s, v| _mm256_add_epi16(s, v));
    }
    for m in 0..MB {
        for p in 0..P {
            acc[m][p] = _mm256_add_epi32(
                acc[m][p],
                _mm256_madd_epi16(sum[m][p], _mm256_set1_epi16(1)),
            );
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
        if D::STEPS > 1 {
            while kb + 4 * D::STEPS <= end {
                // `black_box`: with a known count LLVM unrolls the steps and hoists every
                // step's weight loads, which spills the accumulators on each group (seen in
                // perf); a rolled loop keeps them in registers (+4 % on ARM m4, avx2).
                group::<MB, P>(
                    std::hint::black_box(D::STEPS),
                    &mut acc,
                    wp,
                    t.blk_bytes,
                    base.add(kb),
                    st,
                );
                wp = wp.add(32 * D::STEPS);
                kb += 4 * D::STEPS;
            }
            if kb < end {
                let rest = (end - kb) / 4;
                group::<MB, P>(rest, &mut acc, wp, t.blk_bytes, base.add(kb), st);
                wp = wp.add(32 * rest);
                kb = end;
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

    /// A 1×1 conv of a 1×1×`c` image into 8 channels, every weight `w`: each channel sums
    /// `c·x·w`, and with `c = 4·steps` each `i16` lane of [`Grouped`] holds half of them.
    fn uniform(w: i8, c: usize) -> (Vec<i8>, Vec<i8>, Hwc) {
        (vec![w; 8 * c], vec![0; 8], Hwc { h: 1, w: 1, c })
    }

    fn spec<'a>(w: &'a [i8], b: &'a [i8], d: Hwc, sh: &'a [i32]) -> ConvSpec<'a> {
        ConvSpec {
            ind: d,
            outd: Hwc { h: 1, w: 1, c: 8 },
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

    /// The grouped kernel with `steps` steps itself, whatever the input.
    fn grouped(c: &YConv, x: &[i8], steps: usize) -> Vec<i8> {
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
        unsafe {
            match steps {
                8 => run_avx2_grouped::<8>(c, &k, img.as_ptr(), &mut y),
                4 => run_avx2_grouped::<4>(c, &k, img.as_ptr(), &mut y),
                _ => run_avx2_grouped::<2>(c, &k, img.as_ptr(), &mut y),
            }
        }
        y
    }

    /// `group_limit` is exact and tight for every group size: at the limit the grouped kernel
    /// equals `kernels.rs`; one above it, it wraps an `i16` and differs, and `run` then takes a
    /// smaller group or the ungrouped kernel.
    #[test]
    fn group_limits_are_exact_and_tight() {
        if !Isa::Avx2.available() {
            println!("avx256: no AVX2 on this CPU, group_limit not exercised");
            return;
        }
        // Shift 8: a wrapped i16 flips the sign of the sum, which shows after saturation.
        let shifts = [0, 8];
        for (i, steps) in GROUPS.into_iter().enumerate() {
            // 2·steps products per i16 lane: 32768 / (2·steps·128), 32767 / (2·steps·127).
            let limit = (128 / steps) as i8;
            for w in [-128i8, 127] {
                let (wt, b, d) = uniform(w, 4 * steps);
                let c = spec(&wt, &b, d, &shifts);
                let y = YConv::new(Isa::Avx2, &c);
                let limits = y.nonneg.as_ref().unwrap().limits;
                assert_eq!(limits[i], limit, "{steps} steps, weights {w}: {limits:?}");
                let at = vec![limit; d.c];
                let want = reference(&c, &at);
                assert_eq!(
                    grouped(&y, &at, steps),
                    want,
                    "{steps} steps, weights {w}, x = {limit}"
                );
                let above = vec![limit + 1; d.c];
                let want = reference(&c, &above);
                let wrapped = grouped(&y, &above, steps);
                assert_ne!(
                    wrapped, want,
                    "{steps} steps, weights {w}: the limit is not tight"
                );
                let (mut img8, mut img16) = (Vec::new(), Vec::new());
                let mut got = vec![0i8; 8];
                y.run(&above, &mut got, &mut img8, &mut img16);
                assert_eq!(got, want, "{steps} steps, weights {w}: run above the limit");
            }
        }
    }

    /// Small weights never limit a group below 127.
    #[test]
    fn group_limit_caps_at_127() {
        let (wt, b, d) = uniform(1, 32);
        let geo = spec(&wt, &b, d, &[0, 0]).geometry(4);
        for steps in GROUPS {
            assert_eq!(group_limit(&geo, &geo.reorder(&wt), steps), 127);
        }
    }
}
