//! aarch64 NEON direct convolution (and fully connected), bit-exact to `kernels.rs`.
//!
//! The same plan as the AVX-512 VNNI kernel (`sim/vnni.rs`): the input is copied once per layer
//! into a zero-padded image, a pixel's receptive field is read straight from it as a few
//! contiguous segments (one per kernel row when `groups == 1`, one per tap otherwise), each
//! segment's weights are padded with zeros to a multiple of 4 bytes (whatever the last 4-byte
//! group reads beyond the segment meets a zero weight), and the weights are packed once as
//! `[group][block of 16 output channels][k / 4][16][4]`, so that 4 registers of 4 `i32` lanes
//! hold the 16 output channels of one pixel and the result is already HWC.
//!
//! Two inner kernels, picked at run time:
//! - **SDOT** (Armv8.2 `dotprod`: Apple M1+, Graviton 2+, Cortex-A55/A76+): `sdot` multiplies
//!   four signed bytes by four signed bytes and adds the four products (exactly) to an `i32`
//!   lane with wrap-around — the very arithmetic of the q7 kernels, no offset trick needed. It is
//!   written with `asm!` because the `vdotq_s32` intrinsic is not stable in Rust 1.95
//!   (`stdarch_neon_dotprod`).
//! - **plain NEON** (every aarch64 CPU): `smull` gives eight exact `i16` products (|x·w| ≤ 2^14),
//!   `sadalp` adds adjacent pairs into `i32` lanes with wrap-around. Summing two products in
//!   `i16` (`smlal` on bytes) would overflow for `(-128)·(-128) + (-128)·(-128)`, hence the
//!   pairwise widening. Each output channel then owns two lanes, folded by one `addp` at the end.
//!
//! Either way the sum is taken modulo 2^32, which is associative and commutative, so it equals
//! the reference sum bit for bit; `sshl` by `-out_rshift` is the arithmetic shift and two
//! saturating narrowings (`sqxtn` i32 → i16 → i8) are exactly `sat_i8`.

use super::direct::{ConvSpec, Geometry, Seg};
use std::arch::aarch64::*;
use std::arch::asm;

/// True when this CPU can run the NEON path (Advanced SIMD is part of every aarch64 Rust
/// target; asked anyway so that the choice is made the same way as on x86).
pub(super) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// True when this CPU has the `sdot` instruction.
pub(super) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// A conv (or fc, as a 1×1 conv on a 1×1 image) prepared for the NEON kernels.
pub(super) struct NConv {
    geo: Geometry,
    /// 16-channel blocks per group.
    nb: usize,
    /// `[group][block][kp / 4][16][4]`.
    w: Vec<i8>,
    /// `[group][block][16]`: `(bias << lshift) + round`, wrapping.
    bias: Vec<i32>,
    /// `[group][block][16]`: `-out_rshift` of each lane's channel (`sshl` by a negative count
    /// shifts right arithmetically).
    neg_rshift: Vec<i32>,
    /// SDOT kernel (true) or plain NEON (false).
    dotprod: bool,
}

impl NConv {
    /// The conv `c` prepared for the NEON kernels. Uses SDOT when the CPU has it
    /// ([`NConv::with_dotprod`] forces the choice).
    pub(super) fn new(c: &ConvSpec) -> NConv {
        let geo = c.geometry(4);
        let wk = geo.reorder(c.weights);
        // Channels past a group's end get zero weights and bias: computed, never stored.
        let b = geo.per_lane(16, |o| c.bias_term(o));
        let neg_rshift = geo.per_lane(16, |o| -(c.rshift(o) as i32));
        NConv {
            nb: geo.blocks(16),
            w: geo.pack(&wk, 16, 4),
            geo,
            bias: b,
            neg_rshift,
            dotprod: has_dotprod(),
        }
    }

    /// The same conv on the SDOT kernel (`true`) or the plain NEON one (`false`); both use the
    /// same packed weights. Tests (through `SimdPath::NeonDotprod` / `SimdPath::Neon`) pin each to `kernels.rs`.
    ///
    /// Panics when SDOT is asked for on a CPU without `dotprod` (running `sdot` there would be
    /// an illegal instruction); callers check [`has_dotprod`] first.
    pub(super) fn with_dotprod(mut self, dotprod: bool) -> NConv {
        assert!(
            !dotprod || has_dotprod(),
            "neon conv: SDOT kernel forced on a CPU without dotprod"
        );
        self.dotprod = dotprod;
        self
    }

    /// True when this conv runs on the SDOT kernel.
    #[cfg(test)]
    pub(super) fn uses_dotprod(&self) -> bool {
        self.dotprod
    }

    /// `y = conv(x)`; `img` is scratch.
    pub(super) fn run(&self, x: &[i8], y: &mut [i8], img: &mut Vec<u8>) {
        assert_eq!(x.len(), self.geo.ind.len(), "neon conv: input length");
        assert_eq!(y.len(), self.geo.outd.len(), "neon conv: output length");
        // Zero padding; the bytes are `i8` values.
        self.geo.pad_image(x, |v| v as u8, 0, img);
        // SAFETY: `dotprod` is only set when the CPU has it (`new`, `with_dotprod`); every read
        // stays inside `img` (windows lie in the padded image, plus SLACK for the 4-byte groups)
        // and every write inside `y` (checked lengths; a block writes only its valid channels).
        unsafe {
            if self.dotprod {
                self.run_sdot(img, y)
            } else {
                self.run_plain(img, y)
            }
        }
    }

    #[target_feature(enable = "neon,dotprod")]
    unsafe fn run_sdot(&self, img: &[u8], y: &mut [i8]) {
        // SAFETY: as in `run`; the CPU has dotprod.
        unsafe { self.drive::<Sdot>(img, y) }
    }

    #[target_feature(enable = "neon")]
    unsafe fn run_plain(&self, img: &[u8], y: &mut [i8]) {
        // SAFETY: as in `run`.
        unsafe { self.drive::<Plain>(img, y) }
    }

    /// The loops over groups, 16-channel blocks and output rows; `K` does a row of pixels.
    /// Inlined into the `target_feature` entry points so that the kernel is compiled with them.
    #[inline(always)]
    unsafe fn drive<K: RowKernel>(&self, img: &[u8], y: &mut [i8]) {
        let c = self.geo.ind.c;
        let (oh, ow, oc) = (self.geo.outd.h, self.geo.outd.w, self.geo.outd.c);
        let blk_bytes = self.geo.kp * 16;
        let img = img.as_ptr() as *const i8;
        let yp = y.as_mut_ptr();
        for g in 0..self.geo.groups {
            for blk in 0..self.nb {
                // SAFETY (all pointer offsets below): block `blk` of group `g` exists in `w`
                // and `bias`; rows `oy < oh` start inside `img` and `y`.
                let t = unsafe {
                    Tile {
                        segs: &self.geo.segs[g],
                        st: self.geo.stride.1 * c,
                        w: self.w.as_ptr().add((g * self.nb + blk) * blk_bytes),
                        bias: self.bias.as_ptr().add((g * self.nb + blk) * 16),
                        shift: self.neg_rshift.as_ptr().add((g * self.nb + blk) * 16),
                        valid: (self.geo.cout_g - blk * 16).min(16),
                        out_px: oc,
                    }
                };
                let ch0 = g * self.geo.cout_g + blk * 16;
                for oy in 0..oh {
                    // Kernel rows in the top or bottom zero padding add nothing (no activation
                    // offset here): skip them and their weights, 16 lanes × 4 bytes per step.
                    let win = self.geo.row_window(oy);
                    unsafe {
                        let t = Tile {
                            segs: &t.segs[win.segs.clone()],
                            w: t.w.add(win.skipped * 16),
                            ..t
                        };
                        let row_in = img.add(oy * self.geo.stride.0 * self.geo.wp * c);
                        let row_out = yp.add(oy * ow * oc + ch0);
                        K::row(&t, row_in, row_out, ow);
                    }
                }
            }
        }
    }
}

/// What a tile needs besides its pixel pointers.
struct Tile<'a> {
    segs: &'a [Seg],
    /// Bytes between horizontally adjacent output pixels in the padded image.
    st: usize,
    /// This block's packed weights, `[kp / 4][16][4]`.
    w: *const i8,
    /// This block's 16 bias terms.
    bias: *const i32,
    /// This block's 16 `-out_rshift` (`sshl` by a negative count shifts right arithmetically).
    shift: *const i32,
    /// Output channels of this block that exist (the rest are never stored).
    valid: usize,
    /// Output bytes per pixel.
    out_px: usize,
}

/// An inner kernel: `n` horizontally adjacent output pixels of one 16-channel block.
trait RowKernel {
    /// # Safety
    /// `inp` is the first pixel's base in the padded image and `out` its first output channel
    /// of the block; the caller guarantees the reads and writes of `n` pixels are in bounds and
    /// that the CPU has the kernel's features.
    unsafe fn row(t: &Tile, inp: *const i8, out: *mut i8, n: usize);
}

/// Four bytes at `p` (any alignment) in every `i32` lane.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> int8x16_t {
    // SAFETY: the caller guarantees 4 readable bytes.
    unsafe { vreinterpretq_s8_s32(vdupq_n_s32((p as *const i32).read_unaligned())) }
}

/// `sat_i8((acc >> s))` of 16 channels, stored at `out` (only the first `t.valid`).
#[inline(always)]
unsafe fn store16(t: &Tile, acc: [int32x4_t; 4], out: *mut i8) {
    unsafe {
        let s = |v, q: usize| vshlq_s32(v, vld1q_s32(t.shift.add(4 * q)));
        let lo = vqmovn_high_s32(vqmovn_s32(s(acc[0], 0)), s(acc[1], 1));
        let hi = vqmovn_high_s32(vqmovn_s32(s(acc[2], 2)), s(acc[3], 3));
        let v = vqmovn_high_s16(vqmovn_s16(lo), hi);
        if t.valid == 16 {
            vst1q_s8(out, v);
        } else {
            let mut tmp = [0i8; 16];
            vst1q_s8(tmp.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, t.valid);
        }
    }
}

/// The block's 16 bias terms as 4 registers.
#[inline(always)]
unsafe fn load_bias(t: &Tile) -> [int32x4_t; 4] {
    unsafe { std::array::from_fn(|j| vld1q_s32(t.bias.add(4 * j))) }
}

/// `acc + Σ_{i<4} a[4l+i]·b[4l+i]` per `i32` lane `l`, wrapping: one `sdot`.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: only reached from `run_sdot` (CPU has dotprod); register-only instruction.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// The SDOT kernel.
struct Sdot;

impl Sdot {
    /// `P` adjacent pixels: `4·P` accumulators + 4 weight registers + 1 input fit in 32.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // acc[p][j] reads better than nested iterators
    unsafe fn tile<const P: usize>(t: &Tile, inp: *const i8, out: *mut i8) {
        unsafe {
            let mut acc = [load_bias(t); P];
            let mut wp = t.w;
            for s in t.segs {
                let base = inp.add(s.off);
                let mut k = 0;
                while k < s.len {
                    let w: [int8x16_t; 4] = std::array::from_fn(|j| vld1q_s8(wp.add(16 * j)));
                    for p in 0..P {
                        let x = bcast4(base.add(p * t.st + k));
                        for j in 0..4 {
                            acc[p][j] = sdot(acc[p][j], w[j], x);
                        }
                    }
                    wp = wp.add(64);
                    k += 4;
                }
            }
            for p in 0..P {
                store16(t, acc[p], out.add(p * t.out_px));
            }
        }
    }
}

impl RowKernel for Sdot {
    #[inline(always)]
    unsafe fn row(t: &Tile, inp: *const i8, out: *mut i8, n: usize) {
        let mut x = 0;
        unsafe {
            while n - x >= 4 {
                Self::tile::<4>(t, inp.add(x * t.st), out.add(x * t.out_px));
                x += 4;
            }
            while x < n {
                Self::tile::<1>(t, inp.add(x * t.st), out.add(x * t.out_px));
                x += 1;
            }
        }
    }
}

/// The plain NEON kernel (`smull` + `sadalp`).
struct Plain;

impl Plain {
    /// `P` adjacent pixels: `8·P` accumulators (two lanes per channel) + 4 weight registers.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // acc[p][j] reads better than nested iterators
    unsafe fn tile<const P: usize>(t: &Tile, inp: *const i8, out: *mut i8) {
        unsafe {
            // acc[p][2j] = channels 4j, 4j+1 (two lanes each), acc[p][2j+1] = 4j+2, 4j+3.
            let mut acc = [[vdupq_n_s32(0); 8]; P];
            let mut wp = t.w;
            for s in t.segs {
                let base = inp.add(s.off);
                let mut k = 0;
                while k < s.len {
                    let w: [int8x16_t; 4] = std::array::from_fn(|j| vld1q_s8(wp.add(16 * j)));
                    for p in 0..P {
                        let x = bcast4(base.add(p * t.st + k));
                        let xl = vget_low_s8(x);
                        for j in 0..4 {
                            let lo = vmull_s8(vget_low_s8(w[j]), xl);
                            let hi = vmull_high_s8(w[j], x);
                            acc[p][2 * j] = vpadalq_s16(acc[p][2 * j], lo);
                            acc[p][2 * j + 1] = vpadalq_s16(acc[p][2 * j + 1], hi);
                        }
                    }
                    wp = wp.add(64);
                    k += 4;
                }
            }
            let bias = load_bias(t);
            for p in 0..P {
                let sums: [int32x4_t; 4] = std::array::from_fn(|j| {
                    vaddq_s32(vpaddq_s32(acc[p][2 * j], acc[p][2 * j + 1]), bias[j])
                });
                store16(t, sums, out.add(p * t.out_px));
            }
        }
    }
}

impl RowKernel for Plain {
    #[inline(always)]
    unsafe fn row(t: &Tile, inp: *const i8, out: *mut i8, n: usize) {
        let mut x = 0;
        unsafe {
            while n - x >= 2 {
                Self::tile::<2>(t, inp.add(x * t.st), out.add(x * t.out_px));
                x += 2;
            }
            while x < n {
                Self::tile::<1>(t, inp.add(x * t.st), out.add(x * t.out_px));
                x += 1;
            }
        }
    }
}

/// Both inner kernels against `kernels.rs` on random shapes and values (saturation, extreme
/// values, shifts up to 31, and sums that wrap in `i32`). Run on x86 under QEMU user mode by
/// `tools/test_aarch64.sh` (with and without `dotprod`).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::graph::Hwc;
    use crate::fixed::kernels::{self, Dims, Pair};
    use proptest::prelude::*;

    /// The kernels this CPU can run: plain NEON always, SDOT when it has `dotprod`.
    fn paths() -> Vec<bool> {
        if has_dotprod() {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    fn name(dotprod: bool) -> &'static str {
        if dotprod {
            "SDOT"
        } else {
            "plain NEON"
        }
    }

    /// Deterministic bytes from a seed (splitmix64), in one of four value regimes.
    fn bytes(len: usize, seed: u64, regime: u8) -> Vec<i8> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                let r = (z ^ (z >> 31)) as u8;
                match regime {
                    0 => r as i8,                         // full range: saturates a lot
                    1 => (r % 9) as i8 - 4,               // small: many unsaturated outputs
                    2 => -128,                            // the largest products, all positive
                    _ => [-128i8, 127][(r & 1) as usize], // extremes of both signs
                }
            })
            .collect()
    }

    /// A conv case: the layer's geometry and parameters, all consistent with Caffe's rule.
    #[derive(Debug, Clone)]
    struct Case {
        ind: Hwc,
        outd: Hwc,
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
        groups: usize,
        weights: Vec<i8>,
        bias: Vec<i8>,
        /// One shift for every channel, or one per output channel (per-channel formats).
        bias_lshift: Vec<i32>,
        out_rshift: Vec<i32>,
        x: Vec<i8>,
    }

    /// Shifts: mostly realistic, sometimes anywhere in `0..=31` (`bias << 31` wraps in `i32`).
    fn shift(realistic: u32) -> impl Strategy<Value = u32> {
        prop_oneof![3 => 0..=realistic, 1 => 0u32..=31]
    }

    fn conv_case() -> impl Strategy<Value = Case> {
        (
            (1usize..=70, any::<usize>(), any::<bool>(), 1usize..=70),
            (
                1usize..=5,
                1usize..=5,
                1usize..=3,
                1usize..=3,
                0usize..=2,
                0usize..=2,
            ),
            (0usize..=6, 0usize..=6),
            (shift(8), shift(14), any::<u64>(), 0u8..=3, 0u8..=3),
        )
            .prop_map(|(ch, geo, extra, val)| {
                let (cin, gsel, depthwise, cout_raw) = ch;
                let (kh, kw, sh, sw, ph, pw) = geo;
                let (bl, or, seed, rx, rw) = val;
                let divisors: Vec<usize> = (1..=cin).filter(|d| cin % d == 0).collect();
                let groups = if depthwise {
                    cin
                } else {
                    divisors[gsel % divisors.len()]
                };
                let cout_g = 1 + (cout_raw - 1) % (70 / groups).max(1);
                let h = kh.saturating_sub(2 * ph).max(1) + extra.0;
                let w = kw.saturating_sub(2 * pw).max(1) + extra.1;
                let ind = Hwc { h, w, c: cin };
                let outd = Hwc {
                    h: (h + 2 * ph - kh) / sh + 1,
                    w: (w + 2 * pw - kw) / sw + 1,
                    c: cout_g * groups,
                };
                let wlen = outd.c * kh * kw * (cin / groups);
                // Odd seeds: per-channel shifts (spread over 0..=31 from the drawn one).
                let per = |s: u32, k: usize| -> Vec<i32> {
                    if seed & 1 == 0 {
                        vec![s as i32]
                    } else {
                        (0..outd.c)
                            .map(|c| ((s as usize + c * k) % 32) as i32)
                            .collect()
                    }
                };
                Case {
                    ind,
                    outd,
                    kernel: (kh, kw),
                    stride: (sh, sw),
                    pad: (ph, pw),
                    groups,
                    weights: bytes(wlen, seed, rw),
                    bias: bytes(outd.c, seed ^ 1, rw),
                    bias_lshift: per(bl, 5),
                    out_rshift: per(or, 3),
                    x: bytes(ind.len(), seed ^ 2, rx),
                }
            })
    }

    fn dims(d: Hwc) -> Dims {
        Dims {
            h: d.h,
            w: d.w,
            c: d.c,
        }
    }

    /// `kernels::conv_hwc_q7_pc` on the case.
    fn reference(c: &Case) -> Vec<i8> {
        let mut y = vec![0i8; c.outd.len()];
        kernels::conv_hwc_q7_pc(
            &c.x,
            dims(c.ind),
            &c.weights,
            Pair {
                h: c.kernel.0,
                w: c.kernel.1,
            },
            Pair {
                h: c.pad.0,
                w: c.pad.1,
            },
            Pair {
                h: c.stride.0,
                w: c.stride.1,
            },
            Pair { h: 1, w: 1 },
            c.groups,
            &c.bias,
            &c.bias_lshift,
            &c.out_rshift,
            &mut y,
            dims(c.outd),
        )
        .expect("valid case");
        y
    }

    /// The NEON kernel `dotprod` on the case (twice, reusing the scratch, as the simulator does).
    fn neon(c: &Case, dotprod: bool) -> Vec<i8> {
        let nc = NConv::new(&ConvSpec {
            ind: c.ind,
            outd: c.outd,
            kernel: c.kernel,
            stride: c.stride,
            pad: c.pad,
            groups: c.groups,
            weights: &c.weights,
            bias: &c.bias,
            bias_lshift: &c.bias_lshift,
            out_rshift: &c.out_rshift,
        })
        .with_dotprod(dotprod);
        assert_eq!(nc.uses_dotprod(), dotprod);
        let mut img = vec![0x55u8; 7]; // stale scratch must not leak into the result
        let mut y = vec![0x33i8; c.outd.len()];
        nc.run(&c.x, &mut y, &mut img);
        let mut y2 = vec![0i8; c.outd.len()];
        nc.run(&c.x, &mut y2, &mut img);
        assert_eq!(y, y2, "{}: second run differs", name(dotprod));
        y
    }

    #[test]
    fn neon_paths_report() {
        let p: Vec<&str> = paths().into_iter().map(name).collect();
        println!("neon: CPU dotprod = {}; testing {p:?}", has_dotprod());
        assert!(available(), "aarch64 without Advanced SIMD");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn neon_conv_matches_kernels(c in conv_case()) {
            let want = reference(&c);
            for dot in paths() {
                prop_assert_eq!(&neon(&c, dot), &want, "{} kernel", name(dot));
            }
        }

        #[test]
        fn neon_fc_matches_kernels(
            k in prop_oneof![1usize..=70, 1usize..=3000],
            o in prop_oneof![1usize..=17, 1usize..=70],
            bl in shift(8),
            or in shift(16),
            seed in any::<u64>(),
            rx in 0u8..=3,
            rw in 0u8..=3,
        ) {
            let c = Case {
                ind: Hwc { h: 1, w: 1, c: k },
                outd: Hwc { h: 1, w: 1, c: o },
                kernel: (1, 1),
                stride: (1, 1),
                pad: (0, 0),
                groups: 1,
                weights: bytes(o * k, seed, rw),
                bias: bytes(o, seed ^ 1, rw),
                bias_lshift: vec![bl as i32],
                out_rshift: vec![or as i32],
                x: bytes(k, seed ^ 2, rx),
            };
            let mut want = vec![0i8; o];
            kernels::fc_q7(&c.x, &c.weights, &c.bias, bl as i32, or as i32, &mut want).unwrap();
            for dot in paths() {
                prop_assert_eq!(&neon(&c, dot), &want, "{} kernel", name(dot));
            }
        }
    }

    /// Sums of more than 2^17 products of ±128 leave the `i32` range: the kernels must wrap
    /// exactly like `kernels.rs`. With more than 2^19 products (a 3×3 conv over 60,000 channels,
    /// an fc over 600,000 inputs) even each of an output's partial lanes (the plain kernel
    /// spreads a channel over two lanes, each taking half the products) leaves it, so a
    /// saturating or widening-too-late accumulation anywhere shows. Several shifts, so that the
    /// wrapped bits reach the output.
    #[test]
    fn neon_wrapping_sums_match_kernels() {
        for (case_no, (ind, kernel, cout)) in [
            (
                Hwc {
                    h: 3,
                    w: 3,
                    c: 60_000,
                },
                (3, 3),
                5,
            ),
            (
                Hwc {
                    h: 1,
                    w: 1,
                    c: 600_000,
                },
                (1, 1),
                3,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            for (regime, rshift) in [(2u8, 0u32), (2, 31), (3, 0), (3, 20), (0, 7)] {
                let wlen = cout * kernel.0 * kernel.1 * ind.c;
                let c = Case {
                    ind,
                    outd: Hwc {
                        h: 1,
                        w: 1,
                        c: cout,
                    },
                    kernel,
                    stride: (1, 1),
                    pad: (0, 0),
                    groups: 1,
                    weights: bytes(wlen, 11, regime),
                    bias: bytes(cout, 12, regime),
                    bias_lshift: vec![30],
                    out_rshift: vec![rshift as i32],
                    x: bytes(ind.len(), 13, regime),
                };
                if regime == 2 {
                    // Every product is +16384: half the sum exceeds i32::MAX.
                    let products = (kernel.0 * kernel.1 * ind.c) as i64;
                    assert!(products / 2 * 16384 > i32::MAX as i64);
                }
                let want = reference(&c);
                for dot in paths() {
                    assert_eq!(
                        neon(&c, dot),
                        want,
                        "case {case_no}, regime {regime}, shift {rshift}: {} kernel",
                        name(dot)
                    );
                }
            }
        }
    }
}
