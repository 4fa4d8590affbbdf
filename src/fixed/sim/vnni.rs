//! AVX-512 VNNI direct convolution (and fully connected), bit-exact to `kernels.rs`.
//!
//! `vpdpbusd` multiplies four unsigned bytes by four signed bytes, adds the four products
//! (exactly: each is at most 2^15 in magnitude) and adds that to an `i32` lane **with
//! wrap-around** — the very arithmetic of the q7 kernels. The activations become unsigned by
//! `u = x + 128` (`x ^ 0x80`), so `Σ u·w = Σ x·w + 128·Σ w`; the constant `128·Σ w` of each
//! output channel is taken off its bias once, in wrapping `i32`, and the result equals the
//! reference sum modulo 2^32 — i.e. bit for bit.
//!
//! No im2col: the input image is copied once per layer into a zero-padded unsigned image (padding
//! is `x = 0`, so `u = 0x80`), and a pixel's receptive field is read straight from it as a few
//! contiguous segments (one per kernel row when `groups == 1`, one per tap otherwise). Each
//! segment's weights are padded with zeros to a multiple of 4 bytes, so whatever bytes the last
//! group of 4 reads beyond the segment are multiplied by zero. Weights are packed once as
//! `[group][block of 16 output channels][k / 4][16][4]`; the 16 `i32` lanes of a register hold
//! 16 output channels of one pixel, so the result is already HWC, and `vpmovsdb` (signed
//! saturation to `i8`) after an arithmetic shift is exactly `sat_i8(acc >> s)`.
//!
//! Toolchain: the AVX-512 intrinsics and target features are stable since Rust 1.89 (the
//! crate's `rust-version` says 1.85; this module is what needs the newer compiler).
#![allow(clippy::incompatible_msrv)]

use super::direct::{ConvSpec, Geometry, Seg};
use std::arch::x86_64::*;

/// True when this CPU can run the VNNI path.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// A conv (or fc, as a 1×1 conv on a 1×1 image) prepared for the VNNI kernel.
pub(super) struct VConv {
    geo: Geometry,
    /// 16-channel blocks per group.
    nb: usize,
    /// `[group][block][kp / 4][16][4]`.
    w: Vec<i8>,
    /// `[group][block][16]`: `(bias << lshift) + round - 128·Σw`, wrapping.
    bias: Vec<i32>,
    /// `[group][block][16]`: `out_rshift` of each lane's channel.
    rshift: Vec<i32>,
    /// `[segment][group][block][16]`: `128·Σw` over the segment's weights, wrapping: what a
    /// row that skips the segment gives back to the bias.
    seg_offsets: Vec<i32>,
}

impl VConv {
    /// The conv `c` prepared for the kernel.
    pub(super) fn new(c: &ConvSpec) -> VConv {
        let geo = c.geometry(4);
        let wk = geo.reorder(c.weights);
        let b = geo.per_lane(16, |o| {
            let sw = wk[o * geo.kp..(o + 1) * geo.kp]
                .iter()
                .fold(0i32, |s, &v| s.wrapping_add(v as i32));
            c.bias_term(o).wrapping_sub(sw.wrapping_mul(128))
        });
        let rshift = geo.per_lane(16, |o| c.rshift(o) as i32);
        let seg_offsets = geo.segment_offsets(&wk, 16);
        VConv {
            nb: geo.blocks(16),
            w: geo.pack(&wk, 16, 4),
            geo,
            bias: b,
            rshift,
            seg_offsets,
        }
    }

    /// `y = conv(x)`; `img` is scratch.
    pub(super) fn run(&self, x: &[i8], y: &mut [i8], img: &mut Vec<u8>) {
        assert_eq!(x.len(), self.geo.ind.len(), "vnni conv: input length");
        assert_eq!(y.len(), self.geo.outd.len(), "vnni conv: output length");
        // Padding is `x = 0`, i.e. `u = 0x80`.
        self.geo.pad_image(x, |v| (v as u8) ^ 0x80, 0x80, img);
        // SAFETY: `available()` was true when this VConv was built (checked by the caller);
        // every read stays inside `img` (windows lie in the padded image, plus SLACK for the
        // 4-byte groups) and every write inside `y` (checked lengths, masked stores).
        unsafe { self.run_avx512(img, y) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run_avx512(&self, img: &[u8], y: &mut [i8]) {
        let c = self.geo.ind.c;
        let (oh, ow, oc) = (self.geo.outd.h, self.geo.outd.w, self.geo.outd.c);
        let st = self.geo.stride.1 * c;
        let blk_bytes = self.geo.kp * 16;
        let yp = y.as_mut_ptr();
        for g in 0..self.geo.groups {
            let segs = &self.geo.segs[g][..];
            let mut blk = 0;
            while blk < self.nb {
                let mb = if self.nb - blk >= 2 { 2 } else { 1 };
                let masks: [u16; 2] = std::array::from_fn(|m| {
                    let valid = self.geo.cout_g.saturating_sub((blk + m) * 16).min(16);
                    if valid == 16 {
                        0xffff
                    } else {
                        ((1u32 << valid) - 1) as u16
                    }
                });
                let t = Tile {
                    segs,
                    st,
                    w: self.w.as_ptr().add((g * self.nb + blk) * blk_bytes),
                    blk_bytes,
                    bias: self.bias.as_ptr().add((g * self.nb + blk) * 16),
                    shift: self.rshift.as_ptr().add((g * self.nb + blk) * 16),
                    masks,
                    out_px: oc,
                };
                let ch0 = g * self.geo.cout_g + blk * 16;
                let first = (g * self.nb + blk) * 16;
                for oy in 0..oh {
                    // Kernel rows in the top or bottom padding are skipped with their weights;
                    // their `u = 0x80` products (`128·Σw`) go back into the bias instead.
                    let win = self.geo.row_window(oy);
                    let mut buf = [0i32; 32];
                    let bias = self.geo.row_bias(
                        &self.bias,
                        &self.seg_offsets,
                        &win.segs,
                        first,
                        &mut buf[..16 * mb],
                    );
                    // 16 lanes of weights per image byte.
                    let t = Tile {
                        segs: &segs[win.segs.clone()],
                        w: t.w.add(win.skipped * 16),
                        bias: bias.as_ptr(),
                        ..t
                    };
                    let row_in = img.as_ptr().add(oy * self.geo.stride.0 * self.geo.wp * c);
                    let row_out = yp.add(oy * ow * oc + ch0);
                    // Wide tiles first, with the pixel stride a compile-time constant where it
                    // is a common one (every pixel load is then base + immediate, which frees
                    // the registers that wide tiles need), then narrower tails.
                    let mut ox = 0;
                    macro_rules! run {
                        ($mb:literal, $p:literal, $st:literal) => {
                            while ow - ox >= $p {
                                t.tile::<$mb, $p, $st>(row_in.add(ox * st), row_out.add(ox * oc));
                                ox += $p;
                            }
                        };
                    }
                    macro_rules! wide {
                        ($st:literal) => {
                            if mb == 2 {
                                run!(2, 12, $st);
                                run!(2, 8, $st);
                            } else {
                                run!(1, 16, $st);
                                run!(1, 8, $st);
                            }
                        };
                    }
                    match st {
                        3 => wide!(3),
                        16 => wide!(16),
                        32 => wide!(32),
                        64 => wide!(64),
                        _ => {}
                    }
                    if mb == 2 {
                        run!(2, 8, 0);
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
}

/// What a tile needs besides its pixel pointers.
struct Tile<'a> {
    segs: &'a [Seg],
    /// Bytes between horizontally adjacent output pixels in the padded image.
    st: usize,
    w: *const i8,
    /// Bytes between two 16-channel weight blocks.
    blk_bytes: usize,
    bias: *const i32,
    /// This block's per-lane output shifts.
    shift: *const i32,
    masks: [u16; 2],
    /// Output bytes per pixel.
    out_px: usize,
}

impl Tile<'_> {
    /// `MB` blocks of 16 output channels × `P` horizontally adjacent pixels starting at `inp`
    /// (pixel base in the padded image), written at `out`. `ST` is the pixel stride in the
    /// padded image when known at compile time (`self.st` is used when `ST == 0`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::needless_range_loop)] // acc[m][p] reads better than nested iterators
    unsafe fn tile<const MB: usize, const P: usize, const ST: usize>(
        &self,
        inp: *const u8,
        out: *mut i8,
    ) {
        debug_assert!(ST == 0 || ST == self.st);
        let st = if ST == 0 { self.st } else { ST };
        let mut acc = [[_mm512_setzero_si512(); P]; MB];
        for (m, a) in acc.iter_mut().enumerate() {
            let b = _mm512_loadu_si512(self.bias.add(16 * m) as *const _);
            for v in a.iter_mut() {
                *v = b;
            }
        }
        let mut wp = self.w;
        for s in self.segs {
            let base = inp.add(s.off);
            let mut k = 0;
            while k < s.len {
                let mut wv = [_mm512_setzero_si512(); MB];
                for (m, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(wp.add(m * self.blk_bytes) as *const _);
                }
                for p in 0..P {
                    let a =
                        _mm512_set1_epi32((base.add(p * st + k) as *const i32).read_unaligned());
                    for m in 0..MB {
                        acc[m][p] = _mm512_dpbusd_epi32(acc[m][p], a, wv[m]);
                    }
                }
                wp = wp.add(64);
                k += 4;
            }
        }
        for p in 0..P {
            for m in 0..MB {
                let sh = _mm512_loadu_si512(self.shift.add(16 * m) as *const _);
                let v = _mm512_srav_epi32(acc[m][p], sh);
                _mm512_mask_cvtsepi32_storeu_epi8(
                    out.add(p * self.out_px + 16 * m) as *mut _,
                    self.masks[m],
                    v,
                );
            }
        }
    }
}
