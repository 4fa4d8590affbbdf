//! The q7 arithmetic: the single source of truth for every integer result nnquant promises.
//!
//! This file is written against `core` only (no `std`, no `alloc`, no `crate::` imports) because
//! the *same file* is compiled into the host tool and copied verbatim into every generated
//! `#![no_std]` firmware crate. The host simulator (`fixed::sim`) computes differently and faster,
//! but property tests pin it to these functions bit for bit.
//!
//! Semantics are those of CMSIS-NN 5.6 legacy q7 kernels, portable C path (measured bit-exact on
//! ARM's CIFAR-10 model):
//! - tensors are `i8`, HWC (channel fastest); conv weights `[out_ch][ky][kx][in_ch / groups]`;
//!   fully connected weights `[out][in]` with `in` the HWC-flattened input; zero padding;
//! - conv / fc: `acc = (bias << bias_lshift) + ((1 << out_rshift) >> 1) + Σ in·w` in `i32`
//!   (wrapping, as the C code does on the target), `out = sat_i8(acc >> out_rshift)` with an
//!   arithmetic shift;
//! - ReLU `max(x, 0)`; max pool over the window clipped to the image; average pool = sum over the
//!   in-bounds window divided by the in-bounds count with C (truncating) division.
//!
//! Every kernel checks its slice lengths and shifts once, up front, and returns
//! [`KernelError`] instead of panicking; shifts outside `0..=31` additionally trip a
//! `debug_assert!` so that a quantizer bug is loud in debug builds. Output sizes are always given
//! by the caller (Caffe's ceil/floor rules live in the tool, not here).

#![allow(unexpected_cfgs)] // `cfg(dsp)` is set by the firmware's build.rs, never on the host

/// Height × width × channels of an HWC tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Dims {
    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// True when the tensor has no element.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A (height, width) pair: kernel size, padding or stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub h: usize,
    pub w: usize,
}

/// Why a kernel refused to run (nothing was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// A slice is shorter or longer than its dimensions say.
    Length,
    /// A shift outside `0..=31` (the quantizer must never produce one).
    Shift,
    /// Zero stride, zero groups, or channels not divisible by groups.
    Geometry,
}

/// Result of a kernel call.
pub type KResult = Result<(), KernelError>;

/// Saturate an `i32` to the q7 range.
#[inline(always)]
pub const fn sat_i8(x: i32) -> i8 {
    if x > 127 {
        127
    } else if x < -128 {
        -128
    } else {
        x as i8
    }
}

/// CMSIS's rounding term `(1 << s) >> 1` (0 for a zero shift), for `s` in `0..=31`.
#[inline(always)]
pub const fn round_term(s: u32) -> i32 {
    if s == 0 {
        0
    } else {
        1i32 << (s - 1)
    }
}

/// Validate a shift: `debug_assert!` (loud in debug builds) and an error in release builds.
#[inline]
fn check_shift(s: i32) -> Result<u32, KernelError> {
    debug_assert!(
        (0..=31).contains(&s),
        "negative or oversized shift {s}: the quantizer must never produce it"
    );
    if (0..=31).contains(&s) {
        Ok(s as u32)
    } else {
        Err(KernelError::Shift)
    }
}

/// The requantization shared by conv and fc: `sat_i8(acc >> out_rshift)`.
#[inline(always)]
fn requant(acc: i32, out_rshift: u32) -> i8 {
    sat_i8(acc >> out_rshift)
}

/// Packed-SIMD primitives of the Cortex-M4/M7/M33 DSP extension, used by the `cfg(dsp)` paths.
///
/// On ARM with `cfg(dsp)` each function is the one instruction it names (stable `asm!`: the
/// `core::arch::arm` intrinsics are unstable). Everywhere else it is a plain-Rust model of the
/// same instruction, so that host tests can run the DSP algorithms ([`variants`]) and hold them
/// to the portable ones bit for bit; QEMU then proves the instructions equal their models.
mod simd {
    #[cfg(all(dsp, target_arch = "arm"))]
    use core::arch::asm;

    /// `SXTB16 r, x`: bytes 0 and 2 of `x`, sign-extended into the low and high halfwords.
    #[inline(always)]
    pub fn sxtb16(x: u32) -> u32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: u32;
            // SAFETY: register-only instruction, no memory access, no flags.
            unsafe {
                asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
                     options(pure, nomem, nostack, preserves_flags));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            (x as u8 as i8 as i16 as u16 as u32)
                | ((((x >> 16) as u8 as i8 as i16 as u16) as u32) << 16)
        }
    }

    /// `SXTB16 r, x, ROR #8`: bytes 1 and 3 of `x`, sign-extended into the two halfwords.
    #[inline(always)]
    pub fn sxtb16_ror8(x: u32) -> u32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: u32;
            // SAFETY: register-only instruction, no memory access, no flags.
            unsafe {
                asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x,
                     options(pure, nomem, nostack, preserves_flags));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            sxtb16(x.rotate_right(8))
        }
    }

    /// `SMLAD r, x, y, acc`: `acc + x.lo·y.lo + x.hi·y.hi` (signed halfwords), wrapping in
    /// `i32` (the instruction only sets the sticky Q flag on overflow; the result wraps).
    #[inline(always)]
    pub fn smlad(x: u32, y: u32, acc: i32) -> i32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: i32;
            // SAFETY: register-only instruction, no memory access; it may set the sticky Q
            // flag, which nothing reads.
            unsafe {
                asm!("smlad {r}, {x}, {y}, {a}", r = lateout(reg) r, x = in(reg) x,
                     y = in(reg) y, a = in(reg) acc, options(pure, nomem, nostack));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            let lo = (x as u16 as i16 as i32) * (y as u16 as i16 as i32);
            let hi = ((x >> 16) as u16 as i16 as i32) * ((y >> 16) as u16 as i16 as i32);
            acc.wrapping_add(lo).wrapping_add(hi)
        }
    }

    /// `SMLABB r, x, y, acc`: `acc + x.lo·y.lo` (signed halfwords), wrapping in `i32` (only the
    /// sticky Q flag records an overflow).
    #[inline(always)]
    pub fn smlabb(x: u32, y: u32, acc: i32) -> i32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: i32;
            // SAFETY: register-only instruction, no memory access; it may set the sticky Q
            // flag, which nothing reads.
            unsafe {
                asm!("smlabb {r}, {x}, {y}, {a}", r = lateout(reg) r, x = in(reg) x,
                     y = in(reg) y, a = in(reg) acc, options(pure, nomem, nostack));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            acc.wrapping_add((x as u16 as i16 as i32) * (y as u16 as i16 as i32))
        }
    }

    /// `SMLATT r, x, y, acc`: `acc + x.hi·y.hi` (signed halfwords), wrapping in `i32`.
    #[inline(always)]
    pub fn smlatt(x: u32, y: u32, acc: i32) -> i32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: i32;
            // SAFETY: as `smlabb`.
            unsafe {
                asm!("smlatt {r}, {x}, {y}, {a}", r = lateout(reg) r, x = in(reg) x,
                     y = in(reg) y, a = in(reg) acc, options(pure, nomem, nostack));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            acc.wrapping_add(((x >> 16) as u16 as i16 as i32) * ((y >> 16) as u16 as i16 as i32))
        }
    }

    /// `SSAT r, #8, x`: `x` saturated to -128..=127.
    #[inline(always)]
    pub fn ssat8(x: i32) -> i32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: i32;
            // SAFETY: register-only instruction (the sticky Q flag is not read).
            unsafe {
                asm!("ssat {r}, #8, {x}", r = lateout(reg) r, x = in(reg) x,
                     options(pure, nomem, nostack));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            x.clamp(-128, 127)
        }
    }

    /// `USAT r, #7, x`: `x` saturated to 0..=127 (a ReLU and the q7 saturation in one).
    #[inline(always)]
    pub fn usat7(x: i32) -> i32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: i32;
            // SAFETY: register-only instruction (the sticky Q flag is not read).
            unsafe {
                asm!("usat {r}, #7, {x}", r = lateout(reg) r, x = in(reg) x,
                     options(pure, nomem, nostack));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            x.clamp(0, 127)
        }
    }

    /// Lane-wise signed maximum of four bytes: `SSUB8` (sets the GE flags) then `SEL`.
    #[inline(always)]
    pub fn max8(a: u32, b: u32) -> u32 {
        #[cfg(all(dsp, target_arch = "arm"))]
        {
            let r: u32;
            // SAFETY: register-only instructions, no memory access; the GE flags they use
            // are written and read inside this block.
            unsafe {
                asm!("ssub8 {r}, {a}, {b}", "sel {r}, {a}, {b}", r = out(reg) r,
                     a = in(reg) a, b = in(reg) b, options(pure, nomem, nostack));
            }
            r
        }
        #[cfg(not(all(dsp, target_arch = "arm")))]
        {
            let mut r = 0u32;
            for i in 0..4 {
                let x = (a >> (8 * i)) as u8 as i8;
                let y = (b >> (8 * i)) as u8 as i8;
                r |= (x.max(y) as u8 as u32) << (8 * i);
            }
            r
        }
    }
}

/// Four bytes as one little-endian word (a single `LDR` on Cortex-M3/M4/M7, which allow
/// unaligned word loads).
#[inline(always)]
fn word(b: &[i8]) -> u32 {
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// The last `b.len() < 4` bytes as a word, zero-filled above.
#[inline(always)]
fn word_tail(b: &[i8]) -> u32 {
    let mut w = 0u32;
    for (i, v) in b.iter().enumerate().take(4) {
        w |= (*v as u8 as u32) << (8 * i);
    }
    w
}

/// Largest `kernel.h · kernel.w · in_c / groups` [`conv_hwc_q7`] runs by im2col: its patches
/// live on the stack (`conv_scratch_len(PATCH_MAX, true)` bytes). Larger kernels use the direct
/// path (same results, slower). The firmware calls [`conv_hwc_q7_scratch`] and
/// [`conv_pool_hwc_q7`] instead, with scratch sized to the layer in its arena.
pub const PATCH_MAX: usize = 1024;

/// Geometry of a convolution, validated by [`conv_hwc_q7`].
#[derive(Clone, Copy)]
struct ConvGeo<'s> {
    in_dims: Dims,
    out_dims: Dims,
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    /// Kernel dilation (1 × 1: dense); dilated convolutions run the direct or depthwise path.
    dil: Pair,
    groups: usize,
    cin_g: usize,
    cout_g: usize,
    ksize: usize,
    bl: u32,
    or: u32,
    rnd: i32,
    /// Per-channel shifts (validated, `out_dims.c` each), or empty when every channel takes
    /// `bl` / `or` (per-layer formats).
    bls: &'s [i32],
    ors: &'s [i32],
}

impl ConvGeo<'_> {
    /// The accumulator's start value for the bias of output channel `ch`. `PC`: the layer has
    /// per-channel shifts (a compile-time choice, so that the per-layer loops stay as they were).
    #[inline(always)]
    fn acc0<const PC: bool>(&self, bias: i8, ch: usize) -> i32 {
        let (bl, rnd) = if !PC {
            (self.bl, self.rnd)
        } else {
            // `round_term` without its branch: `(1 << or) >> 1` in u32 is 0 for `or == 0` and
            // `2^(or - 1)` up to `or == 31` (shifts were validated).
            let or = self.ors[ch] as u32;
            (self.bls[ch] as u32, ((1u32 << or) >> 1) as i32)
        };
        ((bias as i32) << bl).wrapping_add(rnd)
    }

    /// The output shift of channel `ch` (`PC` as for [`Self::acc0`]).
    #[inline(always)]
    fn or_of<const PC: bool>(&self, ch: usize) -> u32 {
        if !PC {
            self.or
        } else {
            self.ors[ch] as u32
        }
    }

    /// The in-bounds kernel range `[lo, hi)` along one axis for output coordinate `o` (taps
    /// `dil` apart), and the input coordinate of kernel index `lo`; tap `k` of the range reads
    /// input coordinate `first + (k - lo) · dil`.
    #[inline(always)]
    fn krange(
        o: usize,
        stride: usize,
        pad: usize,
        kernel: usize,
        dil: usize,
        size: usize,
    ) -> (usize, usize, usize) {
        let start = (o * stride) as isize - pad as isize;
        let room = size as isize - start;
        if dil <= 1 {
            // The common dense case, without the divisions (no hardware divide on M0).
            let lo = if start < 0 { (-start) as usize } else { 0 }.min(kernel);
            let hi = if room <= 0 {
                0
            } else {
                (room as usize).min(kernel)
            };
            let hi = hi.max(lo);
            return (lo, hi, (start + lo as isize).max(0) as usize);
        }
        // Taps `ceil(n / dil)`.
        let d = dil as isize;
        let lo = if start < 0 {
            ((-start + d - 1) / d) as usize
        } else {
            0
        }
        .min(kernel);
        let hi = if room <= 0 {
            0
        } else {
            (((room + d - 1) / d) as usize).min(kernel)
        };
        let hi = hi.max(lo);
        (lo, hi, (start + lo as isize * d).max(0) as usize)
    }

    /// The in-bounds window of output pixel `pixel`: `(ylo, yhi, iy0, xlo, xhi, ix0)` as
    /// [`Self::krange`] gives them for the two axes.
    #[inline(always)]
    fn window(&self, pixel: usize) -> (usize, usize, usize, usize, usize, usize) {
        let (oy, ox) = (pixel / self.out_dims.w, pixel % self.out_dims.w);
        let (ylo, yhi, iy0) = Self::krange(
            oy,
            self.stride.h,
            self.pad.h,
            self.kernel.h,
            self.dil.h,
            self.in_dims.h,
        );
        let (xlo, xhi, ix0) = Self::krange(
            ox,
            self.stride.w,
            self.pad.w,
            self.kernel.w,
            self.dil.w,
            self.in_dims.w,
        );
        (ylo, yhi, iy0, xlo, xhi, ix0)
    }

    /// Whether the convolution is dense (dilation 1 × 1): the im2col paths assume it.
    #[inline(always)]
    fn dense(&self) -> bool {
        self.dil.h == 1 && self.dil.w == 1
    }

    /// Whether patches can be widened straight from the input words (no i8 patch copy): one
    /// group and a channel count that is a multiple of 4, so every kernel row's in-bounds span
    /// and its padding are whole words.
    #[inline(always)]
    fn direct_widen(&self) -> bool {
        self.groups == 1 && self.in_dims.c.is_multiple_of(4) && self.in_dims.c > 0
    }

    /// The widened patch of one output pixel (see [`widen_patch`]) into slot `slot` of `q`,
    /// read straight from the input; only when [`Self::direct_widen`].
    #[inline(always)]
    fn widen_patch_from_input(&self, input: &[i8], pixel: usize, q: &mut [i8], slot: usize) {
        if slot == 0 {
            self.widen_from_input::<0>(input, pixel, q)
        } else {
            self.widen_from_input::<1>(input, pixel, q)
        }
    }

    fn widen_from_input<const SLOT: usize>(&self, input: &[i8], pixel: usize, q: &mut [i8]) {
        let (iw, cin) = (self.in_dims.w, self.in_dims.c);
        let (ylo, yhi, iy0, xlo, xhi, ix0) = self.window(pixel);
        let row_groups = self.kernel.w * cin / 4;
        let (lg, mg) = (xlo * cin / 4, (xhi - xlo) * cin / 4);
        for (ky, qrow) in q
            .chunks_exact_mut(16 * row_groups)
            .take(self.kernel.h)
            .enumerate()
        {
            if ky < ylo || ky >= yhi || mg == 0 {
                for d in qrow.chunks_exact_mut(16) {
                    put_group::<SLOT>(d, 0);
                }
                continue;
            }
            let src = &input[((iy0 + ky - ylo) * iw + ix0) * cin..][..4 * mg];
            let (left, rest) = qrow.split_at_mut(16 * lg);
            let (mid, right) = rest.split_at_mut(16 * mg);
            for d in left.chunks_exact_mut(16).chain(right.chunks_exact_mut(16)) {
                put_group::<SLOT>(d, 0);
            }
            for (d, x) in mid.chunks_exact_mut(16).zip(src.chunks_exact(4)) {
                put_group::<SLOT>(d, word(x));
            }
        }
    }

    /// im2col of one output pixel and group into `dst` (`ksize` bytes, `[ky][kx][c]`, zeros
    /// where the kernel hangs over the padding).
    fn fill_patch(&self, input: &[i8], grp: usize, pixel: usize, dst: &mut [i8]) {
        let (iw, cin, cg) = (self.in_dims.w, self.in_dims.c, self.cin_g);
        let (ylo, yhi, iy0, xlo, xhi, ix0) = self.window(pixel);
        let row_len = self.kernel.w * cg;
        for (ky, drow) in dst.chunks_exact_mut(row_len).enumerate() {
            if ky < ylo || ky >= yhi || xlo == xhi {
                drow.fill(0);
                continue;
            }
            let src = &input[(iy0 + ky - ylo) * iw * cin..][..iw * cin];
            let (left, rest) = drow.split_at_mut(xlo * cg);
            let (mid, right) = rest.split_at_mut((xhi - xlo) * cg);
            left.fill(0);
            right.fill(0);
            if cg == cin {
                mid.copy_from_slice(&src[ix0 * cin..][..mid.len()]);
            } else {
                let c0 = grp * cg;
                for (d, s) in mid
                    .chunks_exact_mut(cg)
                    .zip(src[ix0 * cin..].chunks_exact(cin))
                {
                    d.copy_from_slice(&s[c0..c0 + cg]);
                }
            }
        }
    }
}

/// Portable 2 pixels × 2 channels dot products over i8 patches:
/// `[a·w0, a·w1, b·w0, b·w1]` added to `s`.
#[inline(always)]
fn dot2x2(a: &[i8], b: &[i8], w0: &[i8], w1: &[i8], mut s: [i32; 4]) -> [i32; 4] {
    for (((x, y), u), v) in a.iter().zip(b).zip(w0).zip(w1) {
        let (x, y, u, v) = (*x as i32, *y as i32, *u as i32, *v as i32);
        s[0] = s[0].wrapping_add(x * u);
        s[1] = s[1].wrapping_add(x * v);
        s[2] = s[2].wrapping_add(y * u);
        s[3] = s[3].wrapping_add(y * v);
    }
    s
}

/// Word `i` of the byte buffer `q`.
#[inline(always)]
fn get_word(q: &[i8], i: usize) -> u32 {
    word(&q[4 * i..4 * i + 4])
}

/// Widen a patch for `SMLAD` into slot `slot` (0 or 1) of an interleaved two-pixel buffer `q`
/// (bytes, holding words): every 4 bytes `x0 x1 x2 x3` of the patch (the last group
/// zero-filled) become the words `(x0, x2)` at word `4g + slot` and `(x1, x3)` at word
/// `4g + 2 + slot`, each two i16 halves. Weights are widened the same way (on the fly with
/// `SXTB16` and `SXTB16 ROR 8`, or once by [`widen_weights`]), so the halves line up without
/// any packing instruction.
#[inline(always)]
fn widen_patch(p: &[i8], q: &mut [i8], slot: usize) {
    if slot == 0 {
        widen_patch_slot::<0>(p, q)
    } else {
        widen_patch_slot::<1>(p, q)
    }
}

/// One group of 4 patch bytes (as the word `x`) into its 16-byte group `d` of the widened
/// buffer, slot `SLOT` (a constant, so the stores need no bounds checks).
#[inline(always)]
fn put_group<const SLOT: usize>(d: &mut [i8], x: u32) {
    // Whole 4-byte copies (one `STR` each; byte-wise stores are not merged by LLVM).
    let e = simd::sxtb16(x).to_le_bytes().map(|b| b as i8);
    let o = simd::sxtb16_ror8(x).to_le_bytes().map(|b| b as i8);
    if d.len() == 16 {
        d[4 * SLOT..4 * SLOT + 4].copy_from_slice(&e);
        d[8 + 4 * SLOT..8 + 4 * SLOT + 4].copy_from_slice(&o);
    }
}

#[inline(always)]
fn widen_patch_slot<const SLOT: usize>(p: &[i8], q: &mut [i8]) {
    let n4 = p.len() / 4;
    let (body, tail) = q.split_at_mut(16 * n4);
    for (c, d) in p.chunks_exact(4).zip(body.chunks_exact_mut(16)) {
        put_group::<SLOT>(d, word(c));
    }
    if !p.len().is_multiple_of(4) {
        put_group::<SLOT>(&mut tail[..16], word_tail(&p[n4 * 4..]));
    }
}

/// One group of 4 kernel elements of [`dot2x2_q15`]: weight words `u`, `v` (rows 0 and 1),
/// widened pixels `x = [a_even, b_even, a_odd, b_odd]`.
#[inline(always)]
fn mac2x2(u: u32, v: u32, x: [u32; 4], s: [i32; 4]) -> [i32; 4] {
    let [mut s0, mut s1, mut s2, mut s3] = s;
    let t = simd::sxtb16(u);
    s0 = simd::smlad(t, x[0], s0);
    s2 = simd::smlad(t, x[1], s2);
    let t = simd::sxtb16(v);
    s1 = simd::smlad(t, x[0], s1);
    s3 = simd::smlad(t, x[1], s3);
    let t = simd::sxtb16_ror8(u);
    s0 = simd::smlad(t, x[2], s0);
    s2 = simd::smlad(t, x[3], s2);
    let t = simd::sxtb16_ror8(v);
    s1 = simd::smlad(t, x[2], s1);
    s3 = simd::smlad(t, x[3], s3);
    [s0, s1, s2, s3]
}

/// The whole groups of [`dot2x2_q15`] (`w0.len() == w1.len() == 4n`, `q`: `4n` words as
/// bytes): on DSP targets one hand-scheduled loop of 18 instructions per 16 multiply-accumulates
/// (the compiler spills), elsewhere (and for a misaligned `q`) its plain-Rust model.
#[inline(always)]
fn mac2x2_groups(q: &[i8], w0: &[i8], w1: &[i8], s: [i32; 4]) -> [i32; 4] {
    #[cfg(all(dsp, target_arch = "arm"))]
    {
        let n = w0.len();
        if n > 0 && w1.len() == n && q.len() == 4 * n && (q.as_ptr() as usize).is_multiple_of(4) {
            return mac2x2_groups_asm(q, w0, w1, s);
        }
    }
    let mut s = s;
    for (g, (u, v)) in w0.chunks_exact(4).zip(w1.chunks_exact(4)).enumerate() {
        let x = [
            get_word(q, 4 * g),
            get_word(q, 4 * g + 1),
            get_word(q, 4 * g + 2),
            get_word(q, 4 * g + 3),
        ];
        s = mac2x2(word(u), word(v), x, s);
    }
    s
}

/// The loop of [`mac2x2_groups`] in assembly; the caller checked the lengths (`n` a non-zero
/// multiple of 4) and that `q` is word-aligned.
#[cfg(all(dsp, target_arch = "arm"))]
#[inline(always)]
fn mac2x2_groups_asm(q: &[i8], w0: &[i8], w1: &[i8], s: [i32; 4]) -> [i32; 4] {
    use core::arch::asm;
    let n = w0.len();
    let [mut s0, mut s1, mut s2, mut s3] = s;
    let end = w0[n..].as_ptr();
    // SAFETY: reads `n` bytes from `w0` and `w1` and `4n` bytes from `q` (lengths checked by the
    // caller, `n` a non-zero multiple of 4; `q` is word-aligned as LDRD needs); writes only
    // registers.
    unsafe {
        asm!(
            "2:",
            "ldr {u}, [{pw0}], #4",
            "ldr {v}, [{pw1}], #4",
            "ldrd {x0}, {x1}, [{pq}], #8",
            "sxtb16 {t}, {u}",
            "smlad {s0}, {t}, {x0}, {s0}",
            "smlad {s2}, {t}, {x1}, {s2}",
            "sxtb16 {t}, {v}",
            "smlad {s1}, {t}, {x0}, {s1}",
            "smlad {s3}, {t}, {x1}, {s3}",
            "ldrd {x0}, {x1}, [{pq}], #8",
            "sxtb16 {t}, {u}, ror #8",
            "smlad {s0}, {t}, {x0}, {s0}",
            "smlad {s2}, {t}, {x1}, {s2}",
            "sxtb16 {t}, {v}, ror #8",
            "smlad {s1}, {t}, {x0}, {s1}",
            "smlad {s3}, {t}, {x1}, {s3}",
            "cmp {pw0}, {end}",
            "bne 2b",
            pw0 = inout(reg) w0.as_ptr() => _,
            pw1 = inout(reg) w1.as_ptr() => _,
            pq = inout(reg) q.as_ptr() => _,
            end = in(reg) end,
            s0 = inout(reg) s0,
            s1 = inout(reg) s1,
            s2 = inout(reg) s2,
            s3 = inout(reg) s3,
            u = out(reg) _,
            v = out(reg) _,
            t = out(reg) _,
            x0 = out(reg) _,
            x1 = out(reg) _,
            options(nostack, readonly),
        );
    }
    [s0, s1, s2, s3]
}

/// DSP 2 pixels × 2 channels over the interleaved widened patches `q` (`4·⌈k/4⌉` words as
/// bytes, see [`widen_patch`]) and i8 weight rows `w0`, `w1` (`k` bytes each):
/// `[a·w0, a·w1, b·w0, b·w1]` added to `s`.
#[inline(always)]
fn dot2x2_q15(q: &[i8], w0: &[i8], w1: &[i8], s: [i32; 4]) -> [i32; 4] {
    let k = w0.len();
    let n = k & !3;
    let s = mac2x2_groups(&q[..4 * n], &w0[..n], &w1[..n], s);
    if n < k {
        let x = [
            get_word(q, n),
            get_word(q, n + 1),
            get_word(q, n + 2),
            get_word(q, n + 3),
        ];
        mac2x2(word_tail(&w0[n..]), word_tail(&w1[n..]), x, s)
    } else {
        s
    }
}

/// The two per-pixel-pair steps of an im2col convolution: prepare the patch of one pixel, then
/// take dot products of the two patches with pairs of weight rows.
trait PairKernel {
    /// Prepare the patch of output pixel `pixel` of group `grp` in slot `second` (0 or 1).
    fn fill(&mut self, g: &ConvGeo, input: &[i8], grp: usize, pixel: usize, second: bool);
    /// `[a·w0, a·w1, b·w0, b·w1]` added to `s` (a, b: the patches in slots 0 and 1; w0, w1:
    /// the `ksize`-byte rows `r0`, `r1` of `w`, the weights from the group's first row on;
    /// `pair`: the index of the channel pair among all pairs, for pre-widened weights).
    fn dot(&self, w: &[i8], r0: usize, r1: usize, pair: usize, s: [i32; 4]) -> [i32; 4];
}

/// Portable: two i8 patches (in caller-provided scratch), scalar multiply-accumulates.
struct Portable<'a> {
    a: &'a mut [i8],
    b: &'a mut [i8],
}

impl PairKernel for Portable<'_> {
    #[inline(always)]
    fn fill(&mut self, g: &ConvGeo, input: &[i8], grp: usize, pixel: usize, second: bool) {
        let dst = if second { &mut *self.b } else { &mut *self.a };
        g.fill_patch(input, grp, pixel, dst);
    }
    #[inline(always)]
    fn dot(&self, w: &[i8], r0: usize, r1: usize, _pair: usize, s: [i32; 4]) -> [i32; 4] {
        let k = self.a.len();
        dot2x2(self.a, self.b, &w[r0 * k..][..k], &w[r1 * k..][..k], s)
    }
}

/// DSP: the patches of two output pixels are widened to interleaved q15 pairs once, then every
/// pair of output channels takes 8 `SMLAD`s per 4 kernel elements. `patch` holds `k` bytes,
/// `q` `4·⌈k/4⌉` words (as bytes, word-aligned), both in caller-provided scratch. With
/// pre-widened weights `wq` ([`widen_weights`]) the weights need no `SXTB16` either.
struct Dsp<'a> {
    patch: &'a mut [i8],
    q: &'a mut [i8],
    wq: &'a [u32],
    /// Whether patches can be widened straight from the input ([`ConvGeo::direct_widen`]).
    direct: bool,
}

impl PairKernel for Dsp<'_> {
    #[inline(always)]
    fn fill(&mut self, g: &ConvGeo, input: &[i8], grp: usize, pixel: usize, second: bool) {
        if self.direct {
            g.widen_patch_from_input(input, pixel, self.q, second as usize);
        } else {
            g.fill_patch(input, grp, pixel, self.patch);
            widen_patch(self.patch, self.q, second as usize);
        }
    }
    #[inline(always)]
    fn dot(&self, w: &[i8], r0: usize, r1: usize, pair: usize, s: [i32; 4]) -> [i32; 4] {
        let k = self.patch.len();
        let nq = k.div_ceil(4) * 4;
        if !self.wq.is_empty() {
            return mac2x2_wq(self.q, &self.wq[pair * nq..][..nq], s);
        }
        if r1 * k + nq <= w.len() && r0 <= r1 {
            // Read whole words past the rows' ends (into the next rows): the widened patches
            // are zero there, so those bytes add nothing, and the tail needs no special case.
            mac2x2_groups(self.q, &w[r0 * k..][..nq], &w[r1 * k..][..nq], s)
        } else {
            dot2x2_q15(self.q, &w[r0 * k..][..k], &w[r1 * k..][..k], s)
        }
    }
}

/// Words of pre-widened weights ([`widen_weights`]) of a convolution with `out_c` output
/// channels in `groups` groups and `ksize` weights per channel.
pub const fn widened_weights_len(out_c: usize, groups: usize, ksize: usize) -> usize {
    if groups == 0 {
        0
    } else {
        groups * (out_c / groups).div_ceil(2) * ksize.div_ceil(4) * 4
    }
}

/// Pre-widen convolution weights (`[out_c][ksize]` i8) for the DSP kernels, once, at code
/// generation: per group, per pair of output channels (the last channel of an odd group paired
/// with itself), per 4 kernel elements `x0..x3` (zero beyond `ksize`), the words
/// `[c0 (x0, x2), c1 (x0, x2), c0 (x1, x3), c1 (x1, x3)]` of two i16 halves each: the layout of
/// the widened patches, so that one `LDRD` feeds two `SMLAD`s with no `SXTB16` in the loop.
pub fn widen_weights(
    weights: &[i8],
    out_c: usize,
    groups: usize,
    ksize: usize,
    dst: &mut [u32],
) -> KResult {
    if groups == 0 || !out_c.is_multiple_of(groups) {
        return Err(KernelError::Geometry);
    }
    if weights.len() != out_c * ksize || dst.len() != widened_weights_len(out_c, groups, ksize) {
        return Err(KernelError::Length);
    }
    let cg = out_c / groups;
    let (pairs, ng) = (cg.div_ceil(2), ksize.div_ceil(4));
    let e = |r: usize, i: usize| -> u32 {
        if i < ksize {
            weights[r * ksize + i] as i16 as u16 as u32
        } else {
            0
        }
    };
    for grp in 0..groups {
        for j in 0..pairs {
            let r0 = grp * cg + 2 * j;
            let r1 = if 2 * j + 1 < cg { r0 + 1 } else { r0 };
            for gi in 0..ng {
                let b = ((grp * pairs + j) * ng + gi) * 4;
                let x = 4 * gi;
                dst[b] = e(r0, x) | e(r0, x + 2) << 16;
                dst[b + 1] = e(r1, x) | e(r1, x + 2) << 16;
                dst[b + 2] = e(r0, x + 1) | e(r0, x + 3) << 16;
                dst[b + 3] = e(r1, x + 1) | e(r1, x + 3) << 16;
            }
        }
    }
    Ok(())
}

/// 2 pixels × 2 channels over widened patches `q` (`4n` words as bytes) and pre-widened weights
/// `wq` (`4n` words, [`widen_weights`]): `[a·w0, a·w1, b·w0, b·w1]` added to `s`. On DSP
/// targets a hand-scheduled loop of 13 instructions per 16 multiply-accumulates (two groups
/// per iteration), elsewhere (and for a misaligned `q`) its plain-Rust model.
#[inline(always)]
fn mac2x2_wq(q: &[i8], wq: &[u32], s: [i32; 4]) -> [i32; 4] {
    #[cfg(all(dsp, target_arch = "arm"))]
    {
        if !wq.is_empty()
            && wq.len().is_multiple_of(4)
            && q.len() == 4 * wq.len()
            && (q.as_ptr() as usize).is_multiple_of(4)
        {
            return mac2x2_wq_asm(q, wq, s);
        }
    }
    let [mut s0, mut s1, mut s2, mut s3] = s;
    for (gi, w) in wq.chunks_exact(4).enumerate() {
        let (ae, be) = (get_word(q, 4 * gi), get_word(q, 4 * gi + 1));
        let (ao, bo) = (get_word(q, 4 * gi + 2), get_word(q, 4 * gi + 3));
        s0 = simd::smlad(w[0], ae, s0);
        s1 = simd::smlad(w[1], ae, s1);
        s2 = simd::smlad(w[0], be, s2);
        s3 = simd::smlad(w[1], be, s3);
        s0 = simd::smlad(w[2], ao, s0);
        s1 = simd::smlad(w[3], ao, s1);
        s2 = simd::smlad(w[2], bo, s2);
        s3 = simd::smlad(w[3], bo, s3);
    }
    [s0, s1, s2, s3]
}

/// The loop of [`mac2x2_wq`] in assembly; the caller checked the lengths (`wq`: a non-zero
/// multiple of 4 words, `q` as many words) and that `q` is word-aligned (`wq` is a `u32` slice).
#[cfg(all(dsp, target_arch = "arm"))]
#[inline(always)]
fn mac2x2_wq_asm(q: &[i8], wq: &[u32], s: [i32; 4]) -> [i32; 4] {
    use core::arch::asm;
    let [mut s0, mut s1, mut s2, mut s3] = s;
    let groups = wq.len() / 4;
    let mut pw = wq.as_ptr();
    let mut pq = q.as_ptr();
    if groups % 2 == 1 {
        // SAFETY: reads one group (4 words) from `wq` and `q` (lengths checked by the caller,
        // both word-aligned as LDRD needs) and advances both pointers past it.
        unsafe {
            asm!(
                "ldrd {x0}, {x1}, [{pq}], #8",
                "ldrd {u}, {v}, [{pw}], #8",
                "smlad {s0}, {u}, {x0}, {s0}",
                "smlad {s1}, {v}, {x0}, {s1}",
                "smlad {s2}, {u}, {x1}, {s2}",
                "smlad {s3}, {v}, {x1}, {s3}",
                "ldrd {x0}, {x1}, [{pq}], #8",
                "ldrd {u}, {v}, [{pw}], #8",
                "smlad {s0}, {u}, {x0}, {s0}",
                "smlad {s1}, {v}, {x0}, {s1}",
                "smlad {s2}, {u}, {x1}, {s2}",
                "smlad {s3}, {v}, {x1}, {s3}",
                pw = inout(reg) pw,
                pq = inout(reg) pq,
                s0 = inout(reg) s0,
                s1 = inout(reg) s1,
                s2 = inout(reg) s2,
                s3 = inout(reg) s3,
                u = out(reg) _,
                v = out(reg) _,
                x0 = out(reg) _,
                x1 = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    if groups >= 2 {
        let end = wq[groups * 4..].as_ptr();
        // SAFETY: reads the remaining groups (an even, non-zero number; 4 words each) from `wq`
        // and `q`, word-aligned as LDRD needs; writes only registers.
        unsafe {
            asm!(
                "2:",
                "ldrd {x0}, {x1}, [{pq}], #8",
                "ldrd {u}, {v}, [{pw}], #8",
                "smlad {s0}, {u}, {x0}, {s0}",
                "smlad {s1}, {v}, {x0}, {s1}",
                "smlad {s2}, {u}, {x1}, {s2}",
                "smlad {s3}, {v}, {x1}, {s3}",
                "ldrd {x0}, {x1}, [{pq}], #8",
                "ldrd {u}, {v}, [{pw}], #8",
                "smlad {s0}, {u}, {x0}, {s0}",
                "smlad {s1}, {v}, {x0}, {s1}",
                "smlad {s2}, {u}, {x1}, {s2}",
                "smlad {s3}, {v}, {x1}, {s3}",
                "ldrd {x0}, {x1}, [{pq}], #8",
                "ldrd {u}, {v}, [{pw}], #8",
                "smlad {s0}, {u}, {x0}, {s0}",
                "smlad {s1}, {v}, {x0}, {s1}",
                "smlad {s2}, {u}, {x1}, {s2}",
                "smlad {s3}, {v}, {x1}, {s3}",
                "ldrd {x0}, {x1}, [{pq}], #8",
                "ldrd {u}, {v}, [{pw}], #8",
                "smlad {s0}, {u}, {x0}, {s0}",
                "smlad {s1}, {v}, {x0}, {s1}",
                "smlad {s2}, {u}, {x1}, {s2}",
                "smlad {s3}, {v}, {x1}, {s3}",
                "cmp {pw}, {end}",
                "bne 2b",
                pw = inout(reg) pw => _,
                pq = inout(reg) pq => _,
                end = in(reg) end,
                s0 = inout(reg) s0,
                s1 = inout(reg) s1,
                s2 = inout(reg) s2,
                s3 = inout(reg) s3,
                u = out(reg) _,
                v = out(reg) _,
                x0 = out(reg) _,
                x1 = out(reg) _,
                options(nostack, readonly),
            );
        }
    }
    [s0, s1, s2, s3]
}

/// Whether a convolution is depthwise: one input and one output channel per group
/// (`groups == in_c == out_c`). Such layers run [`conv_hwc_q7`]'s channel-parallel depthwise
/// path (no patches), and their pre-widened weights have the layout of [`widen_conv_weights`].
pub const fn is_depthwise(in_c: usize, out_c: usize, groups: usize) -> bool {
    groups > 0 && in_c == groups && out_c == groups
}

/// Words of pre-widened depthwise weights for `c` channels and `taps = kernel.h · kernel.w`:
/// per quad of channels (the last one zero-filled), per tap, two words; then per quad the
/// output stage ([`DW_QUAD_STAGE`] words).
pub const fn dw_widened_len(c: usize, taps: usize) -> usize {
    (2 * taps + DW_QUAD_STAGE) * c.div_ceil(4)
}

/// Words of a depthwise quad's output stage in the pre-widened weights: the four channels'
/// accumulator start values (`(bias << bias_lshift) + round`, exactly the kernel's own start)
/// and their four output shifts packed in one word (a byte each). Computing them at code
/// generation takes the per-channel shift loads and the start arithmetic out of the loop.
pub const DW_QUAD_STAGE: usize = 5;

/// Words of pre-widened weights ([`widen_conv_weights`]) of a convolution with `in_c` input and
/// `out_c` output channels in `groups` groups and `ksize` weights per output channel.
pub const fn conv_widened_len(in_c: usize, out_c: usize, groups: usize, ksize: usize) -> usize {
    if is_depthwise(in_c, out_c, groups) {
        dw_widened_len(out_c, ksize)
    } else {
        widened_weights_len(out_c, groups, ksize)
    }
}

/// Pre-widen convolution weights (`[out_c][ksize]` i8) for the DSP kernels, once, at code
/// generation. Depthwise layers ([`is_depthwise`]) get the channel-parallel layout: per quad of
/// channels `c0..c3`, per tap `t`, the words `[(c0, c2), (c1, c3)]` of two i16 halves (zero for
/// channels beyond `out_c`), the order in which `SXTB16` / `SXTB16 ROR 8` split four input
/// bytes, so that `SMLABB` / `SMLATT` pair them with no packing. Other layers get the layout of
/// [`widen_weights`]. After the depthwise weights come the quads' output stages
/// ([`DW_QUAD_STAGE`]), made from `bias` and the shifts (`bias_lshift` / `out_rshift`: one value
/// for the layer or one per channel, as the kernels take them); other layers do not read them.
#[allow(clippy::too_many_arguments)]
pub fn widen_conv_weights(
    weights: &[i8],
    bias: &[i8],
    bias_lshift: &[i32],
    out_rshift: &[i32],
    in_c: usize,
    out_c: usize,
    groups: usize,
    ksize: usize,
    dst: &mut [u32],
) -> KResult {
    if !is_depthwise(in_c, out_c, groups) {
        return widen_weights(weights, out_c, groups, ksize, dst);
    }
    let per = |v: &[i32]| v.len() == 1 || v.len() == out_c;
    if weights.len() != out_c * ksize
        || dst.len() != dw_widened_len(out_c, ksize)
        || bias.len() != out_c
        || !per(bias_lshift)
        || !per(out_rshift)
    {
        return Err(KernelError::Length);
    }
    let shift = |v: &[i32], c: usize| -> Result<u32, KernelError> {
        let s = if v.len() == 1 { v[0] } else { v[c] };
        if (0..=31).contains(&s) {
            Ok(s as u32)
        } else {
            Err(KernelError::Shift)
        }
    };
    let quads = out_c.div_ceil(4);
    let (wpart, stages) = dst.split_at_mut(2 * ksize * quads);
    for (q, st) in stages.chunks_exact_mut(DW_QUAD_STAGE).enumerate() {
        let mut packed = 0u32;
        for (k, acc) in st[..4].iter_mut().enumerate() {
            let c = 4 * q + k;
            // Channels beyond `out_c` (never stored) start at 0 with shift 0.
            let (acc0, or) = if c < out_c {
                let (bl, or) = (shift(bias_lshift, c)?, shift(out_rshift, c)?);
                (
                    ((bias[c] as i32) << bl).wrapping_add(((1u32 << or) >> 1) as i32),
                    or,
                )
            } else {
                (0, 0)
            };
            *acc = acc0 as u32;
            packed |= or << (8 * k);
        }
        st[4] = packed;
    }
    let dst = wpart;
    let half = |c: usize, t: usize| -> u32 {
        if c < out_c {
            weights[c * ksize + t] as i16 as u16 as u32
        } else {
            0
        }
    };
    for (q, quad) in dst.chunks_exact_mut(2 * ksize).enumerate() {
        let c = 4 * q;
        for (t, w) in quad.chunks_exact_mut(2).enumerate() {
            w[0] = half(c, t) | half(c + 2, t) << 16;
            w[1] = half(c + 1, t) | half(c + 3, t) << 16;
        }
    }
    Ok(())
}

/// One kernel row of a depthwise channel quad: `n = w.len() / 2` taps, tap `k` reading the four
/// input bytes at `input[p + k · step..]` (channels `c0..c3` of one pixel) and the weight words
/// `w[2k], w[2k + 1]` ([`widen_conv_weights`]); `[c0, c1, c2, c3]` sums added to `a`.
#[inline(always)]
fn dw_row_wq(input: &[i8], p: usize, step: usize, w: &[u32], a: [i32; 4]) -> [i32; 4] {
    let [mut a0, mut a1, mut a2, mut a3] = a;
    for (k, wk) in w.chunks_exact(2).enumerate() {
        let x = word(&input[p + k * step..]);
        let (xe, xo) = (simd::sxtb16(x), simd::sxtb16_ror8(x));
        a0 = simd::smlabb(xe, wk[0], a0);
        a2 = simd::smlatt(xe, wk[0], a2);
        a1 = simd::smlabb(xo, wk[1], a1);
        a3 = simd::smlatt(xo, wk[1], a3);
    }
    [a0, a1, a2, a3]
}

/// The whole channel quads of one depthwise output pixel, with pre-widened weights: quad `q`
/// starts from its output stage's accumulators (`stages[DW_QUAD_STAGE · q..]`, see
/// [`widen_conv_weights`]), takes the window (`rows` kernel rows of `nx` taps; row `r`, tap `k`
/// reads the input word at `p + 4q + r · ystep + k · xstep` and the weight words
/// `w[q · qstride + r · wrow + 2k..][..2]`) and is requantized with the stage's packed shifts
/// into `out[4q..4q + 4]`. On DSP targets, once the window of every quad is checked to lie
/// inside the slices, hand-written code runs with no further checks ([`dw_win33_asm`] for a
/// whole 3×3 window, else a row at a time with [`dw_row3_asm`] / [`dw_rown_asm`]); elsewhere
/// (and if the check fails) the plain-Rust model. Per-layer and per-channel shifts take the
/// same code: the stage holds each channel's own.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dw_quads(
    input: &[i8],
    p: usize,
    (ystep, xstep): (usize, usize),
    (rows, nx): (usize, usize),
    w: &[u32],
    (qstride, wrow): (usize, usize),
    stages: &[u32],
    out: &mut [i8],
    lo: i8,
) {
    let init = |st: &[u32]| [st[0] as i32, st[1] as i32, st[2] as i32, st[3] as i32];
    let store = |o: &mut [i8], a: [i32; 4], st: &[u32]| dw_store(o, a, st[4], lo);
    let quad_io = out
        .chunks_exact_mut(4)
        .zip(stages.chunks_exact(DW_QUAD_STAGE));
    #[cfg(all(dsp, target_arch = "arm"))]
    {
        let quads = quad_io.len();
        if quads > 0 && rows > 0 && nx > 0 {
            let last_in = p + 4 * (quads - 1) + (rows - 1) * ystep + (nx - 1) * xstep + 4;
            let last_w = (quads - 1) * qstride + (rows - 1) * wrow + 2 * nx;
            if last_in <= input.len() && last_w <= w.len() {
                let (mut px, mut pw) = (input.as_ptr().wrapping_add(p), w.as_ptr());
                if rows == 3 && nx == 3 && wrow == 6 {
                    for (o4, st) in quad_io {
                        // SAFETY: every quad's 3×3 window lies inside `input` and `w`
                        // (checked above).
                        let a = unsafe { dw_win33_asm(px, pw, xstep, ystep, init(st)) };
                        store(o4, a, st);
                        px = px.wrapping_add(4);
                        pw = pw.wrapping_add(qstride);
                    }
                    return;
                }
                for (o4, st) in quad_io {
                    let mut a = init(st);
                    let (mut rx, mut rw) = (px, pw);
                    for _ in 0..rows {
                        // SAFETY: every tap of every row of every quad lies inside `input`
                        // and `w` (checked above).
                        a = unsafe {
                            if nx == 3 {
                                dw_row3_asm(rx, rw, xstep, a)
                            } else {
                                dw_rown_asm(rx, rw, xstep, nx, a)
                            }
                        };
                        rx = rx.wrapping_add(ystep);
                        rw = rw.wrapping_add(wrow);
                    }
                    store(o4, a, st);
                    px = px.wrapping_add(4);
                    pw = pw.wrapping_add(qstride);
                }
                return;
            }
        }
    }
    for (qi, (o4, st)) in quad_io.enumerate() {
        let mut a = init(st);
        for r in 0..rows {
            let wr = &w[qi * qstride + r * wrow..][..2 * nx];
            a = dw_row_wq(input, p + 4 * qi + r * ystep, xstep, wr, a);
        }
        store(o4, a, st);
    }
}

/// Requantize a depthwise quad's four sums into `o` with the packed shifts `s` (a byte each).
/// Always inlined: a call per quad costs more than the stores.
#[inline(always)]
fn dw_store(o: &mut [i8], a: [i32; 4], s: u32, lo: i8) {
    for (k, (o, v)) in o.iter_mut().zip(a).enumerate() {
        *o = requant_dsp(v, (s >> (8 * k)) & 31, lo);
    }
}

/// A row of 3 taps of [`dw_quads`], unrolled (9 instructions per 4 multiply-accumulates).
///
/// # Safety
/// `px`, `px + xstep`, `px + 2·xstep` must each start 4 readable bytes; `pw` 6 readable words.
#[cfg(all(dsp, target_arch = "arm"))]
#[inline(always)]
unsafe fn dw_row3_asm(px: *const i8, pw: *const u32, xstep: usize, a: [i32; 4]) -> [i32; 4] {
    use core::arch::asm;
    let [mut a0, mut a1, mut a2, mut a3] = a;
    // SAFETY: the caller guarantees the reads; writes only registers.
    unsafe {
        asm!(
            "ldr {x}, [{px}]",
            "sxtb16 {e}, {x}, ror #8",
            "sxtb16 {x}, {x}",
            "ldr {w}, [{pw}], #4",
            "smlabb {a0}, {x}, {w}, {a0}",
            "smlatt {a2}, {x}, {w}, {a2}",
            "ldr {w}, [{pw}], #4",
            "smlabb {a1}, {e}, {w}, {a1}",
            "smlatt {a3}, {e}, {w}, {a3}",
            "ldr {x}, [{px}, {xs}]",
            "sxtb16 {e}, {x}, ror #8",
            "sxtb16 {x}, {x}",
            "ldr {w}, [{pw}], #4",
            "smlabb {a0}, {x}, {w}, {a0}",
            "smlatt {a2}, {x}, {w}, {a2}",
            "ldr {w}, [{pw}], #4",
            "smlabb {a1}, {e}, {w}, {a1}",
            "smlatt {a3}, {e}, {w}, {a3}",
            "ldr {x}, [{px}, {xs}, lsl #1]",
            "sxtb16 {e}, {x}, ror #8",
            "sxtb16 {x}, {x}",
            "ldr {w}, [{pw}], #4",
            "smlabb {a0}, {x}, {w}, {a0}",
            "smlatt {a2}, {x}, {w}, {a2}",
            "ldr {w}, [{pw}]",
            "smlabb {a1}, {e}, {w}, {a1}",
            "smlatt {a3}, {e}, {w}, {a3}",
            px = in(reg) px,
            pw = inout(reg) pw => _,
            xs = in(reg) xstep,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            x = out(reg) _,
            e = out(reg) _,
            w = out(reg) _,
            options(nostack, readonly, preserves_flags),
        );
    }
    [a0, a1, a2, a3]
}

/// A whole 3×3 window of [`dw_quads`] (9 contiguous tap pairs of weights), unrolled: 9
/// instructions per 4 multiply-accumulates and no loop.
///
/// # Safety
/// `px + r·ystep + k·xstep` must start 4 readable bytes for `r, k < 3`; `pw` 18 readable words.
#[cfg(all(dsp, target_arch = "arm"))]
#[inline(always)]
unsafe fn dw_win33_asm(
    px: *const i8,
    pw: *const u32,
    xstep: usize,
    ystep: usize,
    a: [i32; 4],
) -> [i32; 4] {
    use core::arch::asm;
    let [mut a0, mut a1, mut a2, mut a3] = a;
    macro_rules! tap {
        ($load:literal) => {
            concat!(
                $load,
                "\n",
                "sxtb16 {e}, {x}, ror #8\n",
                "sxtb16 {x}, {x}\n",
                "ldr {w}, [{pw}], #4\n",
                "smlabb {a0}, {x}, {w}, {a0}\n",
                "smlatt {a2}, {x}, {w}, {a2}\n",
                "ldr {w}, [{pw}], #4\n",
                "smlabb {a1}, {e}, {w}, {a1}\n",
                "smlatt {a3}, {e}, {w}, {a3}\n",
            )
        };
    }
    // SAFETY: the caller guarantees the reads; writes only registers.
    unsafe {
        asm!(
            tap!("ldr {x}, [{px}]"),
            tap!("ldr {x}, [{px}, {xs}]"),
            tap!("ldr {x}, [{px}, {xs}, lsl #1]"),
            "add {px}, {px}, {ys}",
            tap!("ldr {x}, [{px}]"),
            tap!("ldr {x}, [{px}, {xs}]"),
            tap!("ldr {x}, [{px}, {xs}, lsl #1]"),
            "add {px}, {px}, {ys}",
            tap!("ldr {x}, [{px}]"),
            tap!("ldr {x}, [{px}, {xs}]"),
            tap!("ldr {x}, [{px}, {xs}, lsl #1]"),
            px = inout(reg) px => _,
            pw = inout(reg) pw => _,
            xs = in(reg) xstep,
            ys = in(reg) ystep,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            x = out(reg) _,
            e = out(reg) _,
            w = out(reg) _,
            options(nostack, readonly, preserves_flags),
        );
    }
    [a0, a1, a2, a3]
}

/// A row of `n ≥ 1` taps of [`dw_quads`] as a loop (12 instructions per 4 multiply-accumulates).
///
/// # Safety
/// `px + k·xstep` must start 4 readable bytes for `k < n`; `pw` `2n` readable words.
#[cfg(all(dsp, target_arch = "arm"))]
#[inline(always)]
unsafe fn dw_rown_asm(
    px: *const i8,
    pw: *const u32,
    xstep: usize,
    n: usize,
    a: [i32; 4],
) -> [i32; 4] {
    use core::arch::asm;
    let [mut a0, mut a1, mut a2, mut a3] = a;
    let end = pw.wrapping_add(2 * n);
    // SAFETY: the caller guarantees the reads; writes only registers.
    unsafe {
        asm!(
            "2:",
            "ldr {x}, [{px}]",
            "add {px}, {px}, {xs}",
            "sxtb16 {e}, {x}, ror #8",
            "sxtb16 {x}, {x}",
            "ldr {w}, [{pw}], #4",
            "smlabb {a0}, {x}, {w}, {a0}",
            "smlatt {a2}, {x}, {w}, {a2}",
            "ldr {w}, [{pw}], #4",
            "smlabb {a1}, {e}, {w}, {a1}",
            "smlatt {a3}, {e}, {w}, {a3}",
            "cmp {pw}, {end}",
            "bne 2b",
            px = inout(reg) px => _,
            pw = inout(reg) pw => _,
            xs = in(reg) xstep,
            end = in(reg) end,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            x = out(reg) _,
            e = out(reg) _,
            w = out(reg) _,
            options(nostack, readonly),
        );
    }
    [a0, a1, a2, a3]
}

/// Weight of channel `ch`, tap `t` of a depthwise convolution: from the i8 weights
/// (`[c][taps]`), or from the pre-widened words when `wq` is in use.
#[inline(always)]
fn dw_weight(weights: &[i8], wq: &[u32], taps: usize, ch: usize, t: usize) -> i32 {
    if wq.is_empty() {
        weights[ch * taps + t] as i32
    } else {
        let w = wq[2 * ((ch / 4) * taps + t) + (ch & 1)];
        (if ch & 2 == 0 { w } else { w >> 16 }) as u16 as i16 as i32
    }
}

/// Depthwise convolution ([`is_depthwise`]) of the output pixels `pixels` into `output`
/// (`pixels.len() · c` bytes), any stride, padding and dilation, no scratch. Per output pixel
/// the in-bounds window is computed once, then the channels go four at a time (HWC: four
/// consecutive input bytes are four channels of one pixel). DSP: one word load, two `SXTB16`
/// and four `SMLABB`/`SMLATT` per tap, with pre-widened weights `wq` ([`dw_quads`]; without
/// them the same words are built from the i8 weights on the fly); portable: four scalar sums.
/// The channels beyond the last whole quad go one at a time. Not inlined: its locals then do
/// not add to the stack frame of the other convolution paths.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn dw_run<const PC: bool>(
    dsp: bool,
    input: &[i8],
    weights: &[i8],
    wq: &[u32],
    bias: &[i8],
    output: &mut [i8],
    g: &ConvGeo,
    pixels: core::ops::Range<usize>,
    lo: i8,
) {
    let (iw, c, kw) = (g.in_dims.w, g.in_dims.c, g.kernel.w);
    let taps = g.ksize;
    let quads = c / 4;
    // Pre-widened weights are read on DSP targets only (`conv_geo` checks them only there).
    let wq = if dsp { wq } else { &[] };
    let (ystep, xstep) = (g.dil.h * iw * c, g.dil.w * c);
    // The whole quads' output stages, after the weights (`conv_geo` checked `wq`'s length).
    let stages = wq
        .get(2 * taps * c.div_ceil(4)..)
        .and_then(|s| s.get(..DW_QUAD_STAGE * quads))
        .unwrap_or(&[]);
    let q = |acc: i32, ch: usize| requant_lo(acc, g.or_of::<PC>(ch), lo);
    let n = pixels.len() * c;
    for (i, out) in output[..n].chunks_exact_mut(c).enumerate() {
        let (ylo, yhi, iy0, xlo, xhi, ix0) = g.window(pixels.start + i);
        let nx = xhi - xlo;
        let base = (iy0 * iw + ix0) * c;
        if wq.is_empty() {
            // The i8 weights: four scalar sums (portable), or each tap's two weight words built
            // on the fly (DSP without pre-widened weights).
            let quad_outs = out[..4 * quads].chunks_exact_mut(4);
            for (qi, (o4, b4)) in quad_outs.zip(bias.chunks_exact(4)).enumerate() {
                let ch = 4 * qi;
                let mut a = [
                    g.acc0::<PC>(b4[0], ch),
                    g.acc0::<PC>(b4[1], ch + 1),
                    g.acc0::<PC>(b4[2], ch + 2),
                    g.acc0::<PC>(b4[3], ch + 3),
                ];
                let wr = &weights[ch * taps..][..4 * taps];
                let (w0, w1, w2, w3) = (
                    &wr[..taps],
                    &wr[taps..2 * taps],
                    &wr[2 * taps..3 * taps],
                    &wr[3 * taps..],
                );
                for ky in ylo..yhi {
                    let p = base + (ky - ylo) * ystep + ch;
                    for k in 0..nx {
                        let t = ky * kw + xlo + k;
                        if dsp {
                            let h = |v: i8| v as i16 as u16 as u32;
                            let ww = [h(w0[t]) | h(w2[t]) << 16, h(w1[t]) | h(w3[t]) << 16];
                            a = dw_row_wq(input, p + k * xstep, xstep, &ww, a);
                        } else {
                            let x = &input[p + k * xstep..][..4];
                            a[0] = a[0].wrapping_add(x[0] as i32 * w0[t] as i32);
                            a[1] = a[1].wrapping_add(x[1] as i32 * w1[t] as i32);
                            a[2] = a[2].wrapping_add(x[2] as i32 * w2[t] as i32);
                            a[3] = a[3].wrapping_add(x[3] as i32 * w3[t] as i32);
                        }
                    }
                }
                for (k, (o, s)) in o4.iter_mut().zip(a).enumerate() {
                    *o = if dsp {
                        requant_dsp(s, g.or_of::<PC>(ch + k), lo)
                    } else {
                        q(s, ch + k)
                    };
                }
            }
        } else if quads > 0 {
            // (A window entirely in the padding has `ylo` or `xlo` at the kernel's end: no
            // taps, and no weights to point at.)
            let (rows, taps_in) = if yhi > ylo && nx > 0 {
                (yhi - ylo, nx)
            } else {
                (0, 0)
            };
            let w = if rows > 0 {
                &wq[2 * (ylo * kw + xlo)..]
            } else {
                &[]
            };
            dw_quads(
                input,
                base,
                (ystep, xstep),
                (rows, taps_in),
                w,
                (2 * taps, 2 * kw),
                stages,
                &mut out[..4 * quads],
                lo,
            );
        }
        for (ch, o) in out.iter_mut().enumerate().skip(4 * quads) {
            let mut acc = g.acc0::<PC>(bias[ch], ch);
            for ky in ylo..yhi {
                let row = base + (ky - ylo) * ystep + ch;
                let t0 = ky * kw + xlo;
                for k in 0..nx {
                    let x = input[row + k * xstep] as i32;
                    acc = acc.wrapping_add(x * dw_weight(weights, wq, taps, ch, t0 + k));
                }
            }
            *o = q(acc, ch);
        }
    }
}

/// Bytes of scratch [`conv_hwc_q7_scratch`] and [`conv_pool_hwc_q7`] need for a convolution
/// with `ksize = kernel.h · kernel.w · in_c / groups`: two i8 patches (portable), or an i8
/// patch and two interleaved q15 patches plus 3 bytes to align them to a word (DSP).
pub const fn conv_scratch_len(ksize: usize, dsp: bool) -> usize {
    if ksize == 0 {
        0
    } else if dsp {
        ksize + 16 * ksize.div_ceil(4) + 3
    } else {
        2 * ksize
    }
}

/// The output stage: `sat_i8(acc >> or)`, raised to at least `lo` (0 fuses a ReLU into the
/// requantization, -128 is a plain requantization).
#[inline(always)]
fn requant_lo(acc: i32, or: u32, lo: i8) -> i8 {
    let v = requant(acc, or);
    if v < lo {
        lo
    } else {
        v
    }
}

/// [`requant_lo`] for `lo` 0 or -128 with one saturating instruction on DSP targets:
/// `USAT #7` (0..=127: ReLU fused) or `SSAT #8`.
#[inline(always)]
fn requant_dsp(acc: i32, or: u32, lo: i8) -> i8 {
    let v = acc >> or;
    if lo == 0 {
        simd::usat7(v) as i8
    } else if lo == -128 {
        simd::ssat8(v) as i8
    } else {
        requant_lo(acc, or, lo)
    }
}

/// The loop nest of the im2col convolutions over the output pixels `pixels` (raster order)
/// written to `output` (`pixels.len() · out_c` bytes): for every group, pixel pair (the last
/// pixel alone when their count is odd, computed as a pair with itself) and channel pair (the
/// last channel with itself when odd). Every output is independent of the pairing, so any range
/// gives the bytes of the whole-image call.
#[allow(clippy::too_many_arguments)]
fn conv_pixel_pairs<K: PairKernel, const PC: bool>(
    input: &[i8],
    weights: &[i8],
    bias: &[i8],
    output: &mut [i8],
    g: &ConvGeo,
    kern: &mut K,
    pixels: core::ops::Range<usize>,
    lo: i8,
) {
    let (k, cout, cg) = (g.ksize, g.out_dims.c, g.cout_g);
    let q = |acc: i32, ch: usize| requant_lo(acc, g.or_of::<PC>(ch), lo);
    for grp in 0..g.groups {
        // From the group's first row to the end of all weights (see `PairKernel::dot`); empty
        // when the DSP kernel runs on pre-widened weights only.
        let wg = weights.get(grp * cg * k..).unwrap_or(&[]);
        let bg = &bias[grp * cg..][..cg];
        // Output channel of `bg[j]`.
        let c0 = grp * cg;
        let even = cg & !1;
        let pair_base = grp * cg.div_ceil(2);
        let mut p = pixels.start;
        while p < pixels.end {
            let pair = p + 1 < pixels.end;
            kern.fill(g, input, grp, p, false);
            kern.fill(g, input, grp, if pair { p + 1 } else { p }, true);
            let base = (p - pixels.start) * cout + grp * cg;
            let outs = &mut output[base..][..if pair { cout + cg } else { cg }];
            let (oa, ob) = outs.split_at_mut(cg);
            if pair {
                let ob = &mut ob[cout - cg..];
                for (j, ((b2, a2), c2)) in bg[..even]
                    .chunks_exact(2)
                    .zip(oa.chunks_exact_mut(2))
                    .zip(ob.chunks_exact_mut(2))
                    .enumerate()
                {
                    let ch = c0 + 2 * j;
                    let (b0, b1) = (g.acc0::<PC>(b2[0], ch), g.acc0::<PC>(b2[1], ch + 1));
                    let s = kern.dot(wg, 2 * j, 2 * j + 1, pair_base + j, [b0, b1, b0, b1]);
                    a2[0] = q(s[0], ch);
                    a2[1] = q(s[1], ch + 1);
                    c2[0] = q(s[2], ch);
                    c2[1] = q(s[3], ch + 1);
                }
                if even < cg {
                    let b0 = g.acc0::<PC>(bg[even], c0 + even);
                    let s = kern.dot(wg, even, even, pair_base + even / 2, [b0, b0, b0, b0]);
                    oa[even] = q(s[0], c0 + even);
                    ob[even] = q(s[2], c0 + even);
                }
            } else {
                for (j, (b2, a2)) in bg[..even]
                    .chunks_exact(2)
                    .zip(oa.chunks_exact_mut(2))
                    .enumerate()
                {
                    let ch = c0 + 2 * j;
                    let (b0, b1) = (g.acc0::<PC>(b2[0], ch), g.acc0::<PC>(b2[1], ch + 1));
                    let s = kern.dot(wg, 2 * j, 2 * j + 1, pair_base + j, [b0, b1, b0, b1]);
                    a2[0] = q(s[0], ch);
                    a2[1] = q(s[1], ch + 1);
                }
                if even < cg {
                    let b0 = g.acc0::<PC>(bg[even], c0 + even);
                    let s = kern.dot(wg, even, even, pair_base + even / 2, [b0, b0, b0, b0]);
                    oa[even] = q(s[0], c0 + even);
                }
            }
            p += 2;
        }
    }
}

/// Run the output pixels `pixels` of a validated convolution into `output`: depthwise layers by
/// [`dw_run`]; dense ones with the patch buffers carved from `scratch` (at least
/// [`conv_scratch_len`] bytes for `dsp`); dilated ones, and all when `scratch` is `None`, by the
/// direct path. `wq`: pre-widened weights (DSP only; empty: widen the i8 weights in the loop).
#[allow(clippy::too_many_arguments)]
fn conv_run(
    dsp: bool,
    input: &[i8],
    weights: &[i8],
    wq: &[u32],
    bias: &[i8],
    output: &mut [i8],
    g: &ConvGeo,
    pixels: core::ops::Range<usize>,
    lo: i8,
    scratch: Option<&mut [i8]>,
) {
    if g.ors.is_empty() {
        conv_run_with::<false>(
            dsp, input, weights, wq, bias, output, g, pixels, lo, scratch,
        )
    } else {
        conv_run_with::<true>(
            dsp, input, weights, wq, bias, output, g, pixels, lo, scratch,
        )
    }
}

/// [`conv_run`] for per-layer (`PC = false`) or per-channel shifts.
#[allow(clippy::too_many_arguments)]
fn conv_run_with<const PC: bool>(
    dsp: bool,
    input: &[i8],
    weights: &[i8],
    wq: &[u32],
    bias: &[i8],
    output: &mut [i8],
    g: &ConvGeo,
    pixels: core::ops::Range<usize>,
    lo: i8,
    scratch: Option<&mut [i8]>,
) {
    let k = g.ksize;
    if is_depthwise(g.in_dims.c, g.out_dims.c, g.groups) {
        return dw_run::<PC>(dsp, input, weights, wq, bias, output, g, pixels, lo);
    }
    match scratch {
        Some(scr) if k > 0 && g.dense() => {
            if dsp {
                // Word-align the q15 buffer (LDRD needs it): skip 0..=3 leading bytes.
                let skip = (4 - (scr.as_ptr() as usize) % 4) % 4;
                let (q, patch) = scr[skip..].split_at_mut(16 * k.div_ceil(4));
                let mut kern = Dsp {
                    patch: &mut patch[..k],
                    q,
                    wq,
                    direct: g.direct_widen(),
                };
                conv_pixel_pairs::<_, PC>(input, weights, bias, output, g, &mut kern, pixels, lo);
            } else {
                let (a, b) = scr.split_at_mut(k);
                let mut kern = Portable { a, b: &mut b[..k] };
                conv_pixel_pairs::<_, PC>(input, weights, bias, output, g, &mut kern, pixels, lo);
            }
        }
        _ => conv_direct::<PC>(input, weights, bias, output, g, pixels, lo),
    }
}

/// Direct convolution (no scratch), for kernels larger than [`PATCH_MAX`] and dilated
/// convolutions: the in-bounds kernel window is computed once per output pixel, so the inner
/// loops have no bounds tests.
fn conv_direct<const PC: bool>(
    input: &[i8],
    weights: &[i8],
    bias: &[i8],
    output: &mut [i8],
    g: &ConvGeo,
    pixels: core::ops::Range<usize>,
    lo: i8,
) {
    let (iw, cin, cg) = (g.in_dims.w, g.in_dims.c, g.cin_g);
    let n = pixels.len() * g.out_dims.c;
    for (i, out) in output[..n].chunks_exact_mut(g.out_dims.c).enumerate() {
        let (ylo, mut yhi, iy0, xlo, xhi, ix0) = g.window(pixels.start + i);
        if xlo == xhi {
            // The window lies in the padding (`ix0` may then be past the image).
            yhi = ylo;
        }
        for (o, y) in out.iter_mut().enumerate() {
            let c0 = (o / g.cout_g) * cg;
            let w = &weights[o * g.ksize..][..g.ksize];
            let mut acc = g.acc0::<PC>(bias[o], o);
            for ky in ylo..yhi {
                let src = &input[((iy0 + (ky - ylo) * g.dil.h) * iw + ix0) * cin..];
                let wrow = &w[(ky * g.kernel.w + xlo) * cg..][..(xhi - xlo) * cg];
                // Chunks of `dil.w` pixels: each starts at the pixel of the next tap.
                for (s, wk) in src.chunks(cin * g.dil.w).zip(wrow.chunks_exact(cg)) {
                    for (x, v) in s[c0..c0 + cg].iter().zip(wk) {
                        acc = acc.wrapping_add((*x as i32) * (*v as i32));
                    }
                }
            }
            *y = requant_lo(acc, g.or_of::<PC>(o), lo);
        }
    }
}

/// Convolution, HWC, zero padding, rectangular kernel/pad/stride/dilation, `groups` ≥ 1
/// (depthwise when `groups == in_dims.c == out_dims.c`, [`is_depthwise`]: then a
/// channel-parallel path without patches runs).
///
/// Kernel tap `(ky, kx)` of output pixel `(oy, ox)` reads input pixel
/// `(oy·stride.h + ky·dilation.h - pad.h, ox·stride.w + kx·dilation.w - pad.w)` (Caffe's rule;
/// dilation `1 × 1` is an ordinary convolution).
///
/// `weights`: `[out_dims.c][kernel.h][kernel.w][in_dims.c / groups]`; `bias`: `out_dims.c` q7
/// values. Output channel `o` belongs to group `o / (out_dims.c / groups)` and reads input
/// channels `g * cin_g .. (g + 1) * cin_g`.
///
/// With `cfg(dsp)` (Cortex-M4/M7/M33) the work is done with `SMLAD`; the results are the same
/// bytes (wrapping `i32` addition is associative, so the summation order does not matter).
#[allow(clippy::too_many_arguments)]
pub fn conv_hwc_q7(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    variants::conv_hwc_q7(
        cfg!(dsp),
        input,
        in_dims,
        weights,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        output,
        out_dims,
    )
}

/// Validate a convolution's geometry, slices and shifts (everything but the output slice) and
/// return its [`ConvGeo`].
#[allow(clippy::too_many_arguments)]
fn conv_geo<'s>(
    dsp: bool,
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    wq: &[u32],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: &'s [i32],
    out_rshift: &'s [i32],
    out_dims: Dims,
) -> Result<ConvGeo<'s>, KernelError> {
    let (bl, or, bls, ors) = channel_shifts(bias_lshift, out_rshift, out_dims.c)?;
    if groups == 0
        || stride.h == 0
        || stride.w == 0
        || dilation.h == 0
        || dilation.w == 0
        || !in_dims.c.is_multiple_of(groups)
        || !out_dims.c.is_multiple_of(groups)
    {
        return Err(KernelError::Geometry);
    }
    let cin_g = in_dims.c / groups;
    let cout_g = out_dims.c / groups;
    let ksize = kernel.h * kernel.w * cin_g;
    // Pre-widened weights are used on DSP targets only; with them the i8 weights may be empty,
    // except for dilated layers that are not depthwise: the direct path runs those and reads
    // the i8 weights.
    let wq_used = dsp && !wq.is_empty();
    let dense = dilation.h == 1 && dilation.w == 1;
    let wq_alone = wq_used && (dense || is_depthwise(in_dims.c, out_dims.c, groups));
    if input.len() != in_dims.len()
        || (weights.len() != out_dims.c * ksize && !(wq_alone && weights.is_empty()))
        || (wq_used && wq.len() != conv_widened_len(in_dims.c, out_dims.c, groups, ksize))
        || bias.len() != out_dims.c
    {
        return Err(KernelError::Length);
    }
    Ok(ConvGeo {
        in_dims,
        out_dims,
        kernel,
        pad,
        stride,
        dil: dilation,
        groups,
        cin_g,
        cout_g,
        ksize,
        bl,
        or,
        rnd: round_term(or),
        bls,
        ors,
    })
}

/// Validate per-channel shifts (each slice of length 1: one shift for every channel, or `n`: one
/// per output channel; every shift in `0..=31`) and return `(bl, or, bls, ors)`: the shifts of
/// channel 0, and both slices again when any is per channel (empty when both are per layer).
#[allow(clippy::type_complexity)]
fn channel_shifts<'s>(
    bias_lshift: &'s [i32],
    out_rshift: &'s [i32],
    n: usize,
) -> Result<(u32, u32, &'s [i32], &'s [i32]), KernelError> {
    let ok_len = |l: usize| l == 1 || l == n;
    if !ok_len(bias_lshift.len()) || !ok_len(out_rshift.len()) {
        return Err(KernelError::Length);
    }
    for s in bias_lshift.iter().chain(out_rshift) {
        check_shift(*s)?;
    }
    let (bl, or) = (bias_lshift[0] as u32, out_rshift[0] as u32);
    if bias_lshift.len() == 1 && out_rshift.len() == 1 {
        return Ok((bl, or, &[], &[]));
    }
    // Both per channel (n > 1 here), so `bls[ch]` / `ors[ch]` index one slice each.
    if bias_lshift.len() != out_rshift.len() {
        return Err(KernelError::Length);
    }
    Ok((bl, or, bias_lshift, out_rshift))
}

/// Convolution ([`conv_hwc_q7`], same bytes) with optional pre-widened weights `wq`
/// ([`widen_conv_weights`]; used on DSP targets, where `weights` may then be empty unless the
/// layer is dilated and not depthwise; ignored
/// elsewhere), caller-provided scratch for the patches
/// (at least [`conv_scratch_len`] bytes: the firmware places it in its arena for the duration of
/// the layer instead of on the stack) and, when `relu` is set, a ReLU fused into the
/// requantization (the bytes of [`conv_hwc_q7`] followed by [`relu_q7`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_hwc_q7_scratch(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    wq: &[u32],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    relu: bool,
    scratch: &mut [i8],
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    variants::conv_hwc_q7_scratch(
        cfg!(dsp),
        input,
        in_dims,
        weights,
        wq,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        relu,
        scratch,
        output,
        out_dims,
    )
}

/// A pooling layer as it follows a convolution in [`conv_pool_hwc_q7`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub kernel: Pair,
    pub pad: Pair,
    pub stride: Pair,
    /// Max pool (`true`) or average pool.
    pub max: bool,
    /// Average pool only: round the mean to nearest (`true`) or truncate it (see [`ave_q7`]).
    pub round: bool,
}

/// What follows the convolution in a fused [`conv_pool_hwc_q7`]: an optional ReLU on the
/// convolution's output, the pool, an optional ReLU on the pool's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fused {
    pub relu_conv: bool,
    pub pool: PoolSpec,
    pub relu_out: bool,
}

/// Convolution rows the ring buffer of [`conv_pool_hwc_q7`] holds: one pooling window's height
/// (no more than the convolution has).
pub const fn conv_pool_ring_rows(conv_dims: Dims, pool_kernel_h: usize) -> usize {
    if pool_kernel_h < conv_dims.h {
        pool_kernel_h
    } else {
        conv_dims.h
    }
}

/// Bytes of the ring buffer of [`conv_pool_hwc_q7`].
pub const fn conv_pool_ring_len(conv_dims: Dims, pool_kernel_h: usize) -> usize {
    conv_pool_ring_rows(conv_dims, pool_kernel_h) * conv_dims.w * conv_dims.c
}

/// Fused convolution → (ReLU) → max/average pool → (ReLU), HWC: the bytes of
/// [`conv_hwc_q7`], [`relu_q7`], [`maxpool_hwc_q7`] / [`avepool_hwc_q7`] and [`relu_q7`] run one
/// after the other, without materialising the convolution's output (`conv_dims`). Pooled row
/// `oy` needs the convolution rows of its (clipped) window; those are computed once each, in
/// order, into `ring` ([`conv_pool_ring_len`] bytes: one window's height of rows, row `r` in
/// slot `r % rows`), and rows no window covers (stride > kernel) are never computed. `scratch`
/// holds the convolution's patches ([`conv_scratch_len`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_pool_hwc_q7(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    wq: &[u32],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    conv_dims: Dims,
    fuse: Fused,
    ring: &mut [i8],
    scratch: &mut [i8],
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    variants::conv_pool_hwc_q7(
        cfg!(dsp),
        input,
        in_dims,
        weights,
        wq,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        conv_dims,
        fuse,
        ring,
        scratch,
        output,
        out_dims,
    )
}

/// One pooled output row `orow` of [`conv_pool_hwc_q7`] from the convolution rows `y0..y1` held
/// in the ring: the window arithmetic of [`maxpool_hwc_q7`] / [`avepool_hwc_q7`], then the
/// optional ReLU.
#[allow(clippy::too_many_arguments)]
#[inline(never)] // its locals then do not add to the frame that calls the convolution
fn pool_ring_row(
    dsp: bool,
    ring: &[i8],
    rows: usize,
    conv_dims: Dims,
    y0: usize,
    y1: usize,
    fuse: &Fused,
    orow: &mut [i8],
    out_dims: Dims,
) {
    let (c, row_len, p) = (conv_dims.c, conv_dims.w * conv_dims.c, fuse.pool);
    if c == 0 {
        return;
    }
    for (ox, out) in orow.chunks_exact_mut(c).enumerate().take(out_dims.w) {
        let (x0, x1) = clip_window(ox, p.stride.w, p.pad.w, p.kernel.w, conv_dims.w);
        if p.max {
            out.fill(-128);
            for y in y0..y1 {
                let r = &ring[(y % rows) * row_len..][..row_len];
                for px in r[x0 * c..x1 * c].chunks_exact(c) {
                    if dsp {
                        max_into::<true>(out, px);
                    } else {
                        max_into::<false>(out, px);
                    }
                }
            }
        } else {
            // Channel blocks of up to 16 running sums on the stack.
            const BLOCK: usize = 16;
            let mut sums = [0i32; BLOCK];
            let count = ((y1 - y0) * (x1 - x0)) as i32;
            for (cb, ob) in out.chunks_mut(BLOCK).enumerate() {
                let acc = &mut sums[..ob.len()];
                acc.fill(0);
                for y in y0..y1 {
                    let r = &ring[(y % rows) * row_len..][..row_len];
                    for px in r[x0 * c..x1 * c].chunks_exact(c) {
                        for (a, v) in acc.iter_mut().zip(&px[cb * BLOCK..]) {
                            *a += *v as i32;
                        }
                    }
                }
                for (o, a) in ob.iter_mut().zip(acc.iter()) {
                    *o = ave_q7(*a, count, p.round);
                }
            }
        }
        if fuse.relu_out {
            for v in out.iter_mut() {
                if *v < 0 {
                    *v = 0;
                }
            }
        }
    }
}

/// Portable 1 input × 2 weight rows: `[x·w0, x·w1]` added to `s`.
#[inline(always)]
fn dot1x2(x: &[i8], w0: &[i8], w1: &[i8], mut s: [i32; 2]) -> [i32; 2] {
    for ((a, u), v) in x.iter().zip(w0).zip(w1) {
        s[0] = s[0].wrapping_add((*a as i32) * (*u as i32));
        s[1] = s[1].wrapping_add((*a as i32) * (*v as i32));
    }
    s
}

/// DSP 1 input × 2 weight rows (all i8, widened on the fly): `[x·w0, x·w1]` added to `s`.
#[inline(always)]
fn dot1x2_dsp(x: &[i8], w0: &[i8], w1: &[i8], s: [i32; 2]) -> [i32; 2] {
    let [mut s0, mut s1] = s;
    let k = x.len();
    let n = k & !3;
    for ((a, u), v) in x[..n]
        .chunks_exact(4)
        .zip(w0[..n].chunks_exact(4))
        .zip(w1[..n].chunks_exact(4))
    {
        let a = word(a);
        let (ae, ao) = (simd::sxtb16(a), simd::sxtb16_ror8(a));
        let u = word(u);
        s0 = simd::smlad(simd::sxtb16(u), ae, s0);
        s0 = simd::smlad(simd::sxtb16_ror8(u), ao, s0);
        let v = word(v);
        s1 = simd::smlad(simd::sxtb16(v), ae, s1);
        s1 = simd::smlad(simd::sxtb16_ror8(v), ao, s1);
    }
    dot1x2(&x[n..], &w0[n..], &w1[n..], [s0, s1])
}

/// Fully connected: `output[o] = sat_i8((bias[o] << bias_lshift + round + Σ_i input[i]·w[o][i]) >>
/// out_rshift)`, weights `[output.len()][input.len()]` with the input in HWC-flattened order.
pub fn fc_q7(
    input: &[i8],
    weights: &[i8],
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
) -> KResult {
    variants::fc_q7(
        cfg!(dsp),
        input,
        weights,
        bias,
        bias_lshift,
        out_rshift,
        output,
    )
}

/// The in-bounds part `[start, end)` of a pooling window along one axis.
#[inline(always)]
fn clip_window(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = start + kernel as isize;
    let s = if start < 0 {
        0
    } else {
        (start as usize).min(size)
    };
    let e = if end > size as isize {
        size
    } else {
        end as usize
    };
    (s, if e < s { s } else { e })
}

/// Checks shared by the two pools.
fn check_pool(input: &[i8], in_dims: Dims, stride: Pair, output: &[i8], out_dims: Dims) -> KResult {
    if stride.h == 0 || stride.w == 0 || in_dims.c != out_dims.c {
        return Err(KernelError::Geometry);
    }
    if input.len() != in_dims.len() || output.len() != out_dims.len() {
        return Err(KernelError::Length);
    }
    Ok(())
}

/// Max pool, HWC: the maximum over the window clipped to the image. A window with no in-bounds
/// element (impossible with Caffe's output-size rule) gives -128 (Caffe's -FLT_MAX, saturated).
pub fn maxpool_hwc_q7(
    input: &[i8],
    in_dims: Dims,
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    variants::maxpool_hwc_q7(
        cfg!(dsp),
        input,
        in_dims,
        kernel,
        pad,
        stride,
        output,
        out_dims,
    )
}

/// `out = max(out, px)` lane by lane.
#[inline(always)]
fn max_into<const DSP: bool>(out: &mut [i8], px: &[i8]) {
    let n = if DSP { out.len() & !3 } else { 0 };
    if DSP {
        for (o, p) in out[..n].chunks_exact_mut(4).zip(px[..n].chunks_exact(4)) {
            let m = simd::max8(word(o), word(p)).to_le_bytes();
            for (d, s) in o.iter_mut().zip(m) {
                *d = s as i8;
            }
        }
    }
    for (o, v) in out[n..].iter_mut().zip(&px[n..]) {
        if *v > *o {
            *o = *v;
        }
    }
}

/// The mean of `count` q7 values summing to `sum`, as q7: rounded to nearest, halves away from
/// zero (`round`; TFLM's int8 average pool), or truncated toward zero like C's `/` (CMSIS-NN's
/// legacy q7 pool: -7/2 = -3). Truncation biases the mean of non-negative data (a pool after a
/// ReLU) down by almost half a step, which the next layer amplifies; rounding is unbiased. An
/// empty window gives 0.
#[inline(always)]
pub fn ave_q7(sum: i32, count: i32, round: bool) -> i8 {
    if count == 0 {
        return 0;
    }
    let half = if !round {
        0
    } else if sum >= 0 {
        count / 2
    } else {
        -(count / 2)
    };
    sat_i8((sum + half) / count)
}

/// Average pool, HWC: sum over the window clipped to the image, divided by the number of
/// in-bounds elements ([`ave_q7`]: rounded when `round`, else truncated toward zero as CMSIS-NN
/// does). Note that Caffe's float AVE pool divides by the window size *including* padding when
/// `pad > 0`; the q7 semantics (CMSIS) count only in-bounds elements. An empty window gives 0.
#[allow(clippy::too_many_arguments)]
pub fn avepool_hwc_q7(
    input: &[i8],
    in_dims: Dims,
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    output: &mut [i8],
    out_dims: Dims,
    round: bool,
) -> KResult {
    check_pool(input, in_dims, stride, output, out_dims)?;
    let c = in_dims.c;
    if c == 0 {
        return Ok(());
    }
    // Channel blocks of up to 64 running sums on the stack.
    const BLOCK: usize = 64;
    let mut sums = [0i32; BLOCK];
    for (pixel, out) in output.chunks_exact_mut(c).enumerate() {
        let (oy, ox) = (pixel / out_dims.w, pixel % out_dims.w);
        let (y0, y1) = clip_window(oy, stride.h, pad.h, kernel.h, in_dims.h);
        let (x0, x1) = clip_window(ox, stride.w, pad.w, kernel.w, in_dims.w);
        let count = ((y1 - y0) * (x1 - x0)) as i32;
        for (cb, ob) in out.chunks_mut(BLOCK).enumerate() {
            let acc = &mut sums[..ob.len()];
            acc.fill(0);
            for y in y0..y1 {
                let row = &input[(y * in_dims.w + x0) * c..][..(x1 - x0) * c];
                for px in row.chunks_exact(c) {
                    for (a, v) in acc.iter_mut().zip(&px[cb * BLOCK..]) {
                        *a += *v as i32;
                    }
                }
            }
            for (o, a) in ob.iter_mut().zip(acc.iter()) {
                *o = ave_q7(*a, count, round);
            }
        }
    }
    Ok(())
}

/// ReLU in place: `max(x, 0)`.
pub fn relu_q7(data: &mut [i8]) {
    variants::relu_q7(cfg!(dsp), data)
}

/// The kernels with the implementation chosen at run time: `dsp = true` runs the DSP algorithm
/// (its instructions modelled in plain Rust off-target, see `simd`), `false` the portable one.
/// The public kernels call these with `cfg!(dsp)`; host tests call both and compare.
#[doc(hidden)]
pub mod variants {
    use super::*;

    /// [`super::conv_hwc_q7`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_hwc_q7(
        dsp: bool,
        input: &[i8],
        in_dims: Dims,
        weights: &[i8],
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        dilation: Pair,
        groups: usize,
        bias: &[i8],
        bias_lshift: i32,
        out_rshift: i32,
        output: &mut [i8],
        out_dims: Dims,
    ) -> KResult {
        conv_hwc_q7_pc(
            dsp,
            input,
            in_dims,
            weights,
            kernel,
            pad,
            stride,
            dilation,
            groups,
            bias,
            core::slice::from_ref(&bias_lshift),
            core::slice::from_ref(&out_rshift),
            output,
            out_dims,
        )
    }

    /// [`super::conv_hwc_q7_pc`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_hwc_q7_pc(
        dsp: bool,
        input: &[i8],
        in_dims: Dims,
        weights: &[i8],
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        dilation: Pair,
        groups: usize,
        bias: &[i8],
        bias_lshift: &[i32],
        out_rshift: &[i32],
        output: &mut [i8],
        out_dims: Dims,
    ) -> KResult {
        let wq: &[u32] = &[];
        let g = conv_geo(
            dsp,
            input,
            in_dims,
            weights,
            wq,
            kernel,
            pad,
            stride,
            dilation,
            groups,
            bias,
            bias_lshift,
            out_rshift,
            out_dims,
        )?;
        if output.len() != out_dims.len() {
            return Err(KernelError::Length);
        }
        let npix = out_dims.h * out_dims.w;
        if g.ksize == 0 || g.ksize > PATCH_MAX {
            conv_run(
                dsp,
                input,
                weights,
                wq,
                bias,
                output,
                &g,
                0..npix,
                -128,
                None,
            );
        } else {
            let mut scratch = [0i8; conv_scratch_len(PATCH_MAX, true)];
            conv_run(
                dsp,
                input,
                weights,
                wq,
                bias,
                output,
                &g,
                0..npix,
                -128,
                Some(&mut scratch),
            );
        }
        Ok(())
    }

    /// [`super::conv_hwc_q7_scratch`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_hwc_q7_scratch(
        dsp: bool,
        input: &[i8],
        in_dims: Dims,
        weights: &[i8],
        wq: &[u32],
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        dilation: Pair,
        groups: usize,
        bias: &[i8],
        bias_lshift: i32,
        out_rshift: i32,
        relu: bool,
        scratch: &mut [i8],
        output: &mut [i8],
        out_dims: Dims,
    ) -> KResult {
        conv_hwc_q7_scratch_pc(
            dsp,
            input,
            in_dims,
            weights,
            wq,
            kernel,
            pad,
            stride,
            dilation,
            groups,
            bias,
            core::slice::from_ref(&bias_lshift),
            core::slice::from_ref(&out_rshift),
            relu,
            scratch,
            output,
            out_dims,
        )
    }

    /// [`super::conv_hwc_q7_scratch_pc`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_hwc_q7_scratch_pc(
        dsp: bool,
        input: &[i8],
        in_dims: Dims,
        weights: &[i8],
        wq: &[u32],
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        dilation: Pair,
        groups: usize,
        bias: &[i8],
        bias_lshift: &[i32],
        out_rshift: &[i32],
        relu: bool,
        scratch: &mut [i8],
        output: &mut [i8],
        out_dims: Dims,
    ) -> KResult {
        let g = conv_geo(
            dsp,
            input,
            in_dims,
            weights,
            wq,
            kernel,
            pad,
            stride,
            dilation,
            groups,
            bias,
            bias_lshift,
            out_rshift,
            out_dims,
        )?;
        if output.len() != out_dims.len() || scratch.len() < conv_scratch_len(g.ksize, dsp) {
            return Err(KernelError::Length);
        }
        let lo = if relu { 0 } else { -128 };
        let npix = out_dims.h * out_dims.w;
        conv_run(
            dsp,
            input,
            weights,
            wq,
            bias,
            output,
            &g,
            0..npix,
            lo,
            Some(scratch),
        );
        Ok(())
    }

    /// [`super::conv_pool_hwc_q7`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_pool_hwc_q7(
        dsp: bool,
        input: &[i8],
        in_dims: Dims,
        weights: &[i8],
        wq: &[u32],
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        dilation: Pair,
        groups: usize,
        bias: &[i8],
        bias_lshift: i32,
        out_rshift: i32,
        conv_dims: Dims,
        fuse: Fused,
        ring: &mut [i8],
        scratch: &mut [i8],
        output: &mut [i8],
        out_dims: Dims,
    ) -> KResult {
        conv_pool_hwc_q7_pc(
            dsp,
            input,
            in_dims,
            weights,
            wq,
            kernel,
            pad,
            stride,
            dilation,
            groups,
            bias,
            core::slice::from_ref(&bias_lshift),
            core::slice::from_ref(&out_rshift),
            conv_dims,
            fuse,
            ring,
            scratch,
            output,
            out_dims,
        )
    }

    /// [`super::conv_pool_hwc_q7_pc`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_pool_hwc_q7_pc(
        dsp: bool,
        input: &[i8],
        in_dims: Dims,
        weights: &[i8],
        wq: &[u32],
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        dilation: Pair,
        groups: usize,
        bias: &[i8],
        bias_lshift: &[i32],
        out_rshift: &[i32],
        conv_dims: Dims,
        fuse: Fused,
        ring: &mut [i8],
        scratch: &mut [i8],
        output: &mut [i8],
        out_dims: Dims,
    ) -> KResult {
        let g = conv_geo(
            dsp,
            input,
            in_dims,
            weights,
            wq,
            kernel,
            pad,
            stride,
            dilation,
            groups,
            bias,
            bias_lshift,
            out_rshift,
            conv_dims,
        )?;
        let pool = fuse.pool;
        if pool.stride.h == 0 || pool.stride.w == 0 || out_dims.c != conv_dims.c {
            return Err(KernelError::Geometry);
        }
        let rows = conv_pool_ring_rows(conv_dims, pool.kernel.h);
        let row_len = conv_dims.w * conv_dims.c;
        if output.len() != out_dims.len()
            || ring.len() < rows * row_len
            || scratch.len() < conv_scratch_len(g.ksize, dsp)
        {
            return Err(KernelError::Length);
        }
        if output.is_empty() {
            return Ok(());
        }
        let lo = if fuse.relu_conv { 0 } else { -128 };
        // Conv rows [0, next) have been computed; row r lives in ring slot r % rows.
        let mut next = 0;
        let out_row_len = out_dims.w * out_dims.c;
        for (oy, orow) in output.chunks_exact_mut(out_row_len).enumerate() {
            let (y0, y1) = clip_window(oy, pool.stride.h, pool.pad.h, pool.kernel.h, conv_dims.h);
            // Rows below y0 are never needed again (windows only move down): skip them.
            next = next.max(y0);
            while next < y1 {
                let slot = &mut ring[(next % rows) * row_len..][..row_len];
                let px = next * conv_dims.w;
                conv_run(
                    dsp,
                    input,
                    weights,
                    wq,
                    bias,
                    slot,
                    &g,
                    px..px + conv_dims.w,
                    lo,
                    Some(&mut *scratch),
                );
                next += 1;
            }
            pool_ring_row(dsp, ring, rows, conv_dims, y0, y1, &fuse, orow, out_dims);
        }
        Ok(())
    }

    /// [`super::fc_q7`] with the implementation chosen by `dsp`.
    pub fn fc_q7(
        dsp: bool,
        input: &[i8],
        weights: &[i8],
        bias: &[i8],
        bias_lshift: i32,
        out_rshift: i32,
        output: &mut [i8],
    ) -> KResult {
        fc_q7_pc(
            dsp,
            input,
            weights,
            bias,
            core::slice::from_ref(&bias_lshift),
            core::slice::from_ref(&out_rshift),
            output,
        )
    }

    /// [`super::fc_q7_pc`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn fc_q7_pc(
        dsp: bool,
        input: &[i8],
        weights: &[i8],
        bias: &[i8],
        bias_lshift: &[i32],
        out_rshift: &[i32],
        output: &mut [i8],
    ) -> KResult {
        let (bl, or, bls, ors) = channel_shifts(bias_lshift, out_rshift, output.len())?;
        let n_in = input.len();
        if weights.len() != n_in * output.len() || bias.len() != output.len() {
            return Err(KernelError::Length);
        }
        let rnd = round_term(or);
        // Per-layer shifts, or output `o`'s own (`channel_shifts` checked them).
        let shifts = |o: usize| {
            if ors.is_empty() {
                (bl, rnd, or)
            } else {
                let r = ors[o] as u32;
                (bls[o] as u32, round_term(r), r)
            }
        };
        let acc0 = |b: i8, o: usize| {
            let (bl, rnd, _) = shifts(o);
            ((b as i32) << bl).wrapping_add(rnd)
        };
        let n_out = output.len();
        let mut o = 0;
        while o < n_out {
            let o1 = if o + 1 < n_out { o + 1 } else { o };
            let (w0, w1) = (&weights[o * n_in..][..n_in], &weights[o1 * n_in..][..n_in]);
            let s = [acc0(bias[o], o), acc0(bias[o1], o1)];
            let s = if dsp {
                dot1x2_dsp(input, w0, w1, s)
            } else {
                dot1x2(input, w0, w1, s)
            };
            output[o] = requant(s[0], shifts(o).2);
            output[o1] = requant(s[1], shifts(o1).2);
            o += 2;
        }
        Ok(())
    }

    /// [`super::maxpool_hwc_q7`] with the implementation chosen by `dsp`.
    #[allow(clippy::too_many_arguments)]
    pub fn maxpool_hwc_q7(
        dsp: bool,
        input: &[i8],
        in_dims: Dims,
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        output: &mut [i8],
        out_dims: Dims,
    ) -> KResult {
        check_pool(input, in_dims, stride, output, out_dims)?;
        let c = in_dims.c;
        if c == 0 {
            return Ok(());
        }
        for (pixel, out) in output.chunks_exact_mut(c).enumerate() {
            let (oy, ox) = (pixel / out_dims.w, pixel % out_dims.w);
            let (y0, y1) = clip_window(oy, stride.h, pad.h, kernel.h, in_dims.h);
            let (x0, x1) = clip_window(ox, stride.w, pad.w, kernel.w, in_dims.w);
            out.fill(-128);
            for y in y0..y1 {
                let row = &input[(y * in_dims.w + x0) * c..][..(x1 - x0) * c];
                for px in row.chunks_exact(c) {
                    if dsp {
                        max_into::<true>(out, px);
                    } else {
                        max_into::<false>(out, px);
                    }
                }
            }
        }
        Ok(())
    }

    /// [`super::relu_q7`] with the implementation chosen by `dsp`.
    pub fn relu_q7(dsp: bool, data: &mut [i8]) {
        let n = data.len() & !3;
        let (body, tail) = data.split_at_mut(n);
        for c in body.chunks_exact_mut(4) {
            let x = word(c);
            let y = if dsp {
                simd::max8(x, 0)
            } else {
                // SWAR: clear every byte whose sign bit is set.
                let neg = ((x >> 7) & 0x0101_0101).wrapping_mul(0xff);
                x & !neg
            };
            for (d, s) in c.iter_mut().zip(y.to_le_bytes()) {
                *d = s as i8;
            }
        }
        for v in tail {
            if *v < 0 {
                *v = 0;
            }
        }
    }
}

/// `round_half_away_from_zero(x / 2^s)` for `s` in `0..=62`.
#[inline(always)]
const fn rshift_half_away(x: i64, s: u32) -> i64 {
    if s == 0 {
        x
    } else {
        let half = 1i64 << (s - 1);
        if x >= 0 {
            (x + half) >> s
        } else {
            -((-x + half) >> s)
        }
    }
}

/// Input preprocessing from uint8 pixels (HWC, the firmware's camera/image layout):
/// `q7 = sat_i8(round_half_away((pixel - mean) · mul / 2^rshift))`, exact in `i64`.
///
/// `mean` is either one value per element (a mean image, HWC, `mean.len() == pixels.len()`) or
/// one value per channel (`pixels.len() % mean.len() == 0`, broadcast along HWC's channel axis);
/// an empty `mean` means no mean. `mul`/`rshift` express `scale · 2^input_frac_bits` exactly
/// (see `fixed::qformat::InputScale`): ARM's model uses `mul = 1, rshift = 0`. Rounding is half
/// away from zero so that the integer path equals quantizing the float `(pixel - mean) · scale`
/// with `QFormat::quantize` rounding. `rshift` must be in `0..=62`.
pub fn input_u8_q7(
    pixels: &[u8],
    mean: &[u8],
    mul: i32,
    rshift: i32,
    output: &mut [i8],
) -> KResult {
    debug_assert!(
        (0..=62).contains(&rshift),
        "input rshift {rshift} out of 0..=62"
    );
    if !(0..=62).contains(&rshift) {
        return Err(KernelError::Shift);
    }
    if output.len() != pixels.len()
        || (!mean.is_empty() && !pixels.len().is_multiple_of(mean.len()))
    {
        return Err(KernelError::Length);
    }
    let m = mean.len();
    for (i, (p, o)) in pixels.iter().zip(output.iter_mut()).enumerate() {
        let mv = if m == 0 { 0 } else { mean[i % m] };
        *o = input_one(*p, mv, mul, rshift as u32);
    }
    Ok(())
}

/// One pixel of [`input_u8_q7`].
#[inline(always)]
fn input_one(p: u8, mean: u8, mul: i32, rshift: u32) -> i8 {
    let d = (p as i64 - mean as i64) * mul as i64;
    let q = rshift_half_away(d, rshift);
    if q > 127 {
        127
    } else if q < -128 {
        -128
    } else {
        q as i8
    }
}

/// [`input_u8_q7`] in place: `buf` holds the uint8 pixels (each byte's bits, as written by a
/// camera or DMA into the firmware's arena) and receives the q7 values, so the image needs no
/// buffer of its own.
pub fn input_u8_q7_in_place(buf: &mut [i8], mean: &[u8], mul: i32, rshift: i32) -> KResult {
    debug_assert!(
        (0..=62).contains(&rshift),
        "input rshift {rshift} out of 0..=62"
    );
    if !(0..=62).contains(&rshift) {
        return Err(KernelError::Shift);
    }
    if !mean.is_empty() && !buf.len().is_multiple_of(mean.len()) {
        return Err(KernelError::Length);
    }
    let m = mean.len();
    for (i, v) in buf.iter_mut().enumerate() {
        let mv = if m == 0 { 0 } else { mean[i % m] };
        *v = input_one(*v as u8, mv, mul, rshift as u32);
    }
    Ok(())
}

/// Change of format by `shift = out_frac - in_frac`: a saturating left shift when positive, an
/// arithmetic right shift with CMSIS's rounding term (`(x + ((1 << r) >> 1)) >> r`, i.e. round
/// half up, the same rule as the conv output stage) when negative. `shift` in `-31..=31`.
#[inline(always)]
pub fn rescale_one(x: i8, shift: i32) -> i8 {
    if shift >= 0 {
        sat_i8((x as i32) << shift)
    } else {
        let r = (-shift) as u32;
        sat_i8(((x as i32) + round_term(r)) >> r)
    }
}

fn check_rescale(shift: i32) -> KResult {
    debug_assert!(
        (-31..=31).contains(&shift),
        "rescale shift {shift} out of -31..=31"
    );
    if (-31..=31).contains(&shift) {
        Ok(())
    } else {
        Err(KernelError::Shift)
    }
}

/// Copy one HWC input into a channel slice of an HWC concat output, changing its format by
/// `shift` ([`rescale_one`]). The input has `in_c` channels, the output `out_c`; the input's
/// channels land at `c_offset..c_offset + in_c` of every output pixel.
pub fn concat_hwc_q7(
    input: &[i8],
    in_c: usize,
    shift: i32,
    output: &mut [i8],
    out_c: usize,
    c_offset: usize,
) -> KResult {
    check_rescale(shift)?;
    if in_c == 0
        || !input.len().is_multiple_of(in_c)
        || c_offset + in_c > out_c
        || output.len() != input.len() / in_c * out_c
    {
        return Err(KernelError::Length);
    }
    for (px, chunk) in input.chunks_exact(in_c).enumerate() {
        let out = &mut output[px * out_c + c_offset..][..in_c];
        for (o, x) in out.iter_mut().zip(chunk) {
            *o = rescale_one(*x, shift);
        }
    }
    Ok(())
}

/// Elementwise sum of two q7 tensors of possibly different formats:
/// `acc = (a << a_lshift) + (b << b_lshift) + ((1 << out_rshift) >> 1)` in `i32`,
/// `out = sat_i8(acc >> out_rshift)`. The quantizer picks a common fraction `F ≥` every input
/// and output fraction, so all three shifts are non-negative (`a_lshift = F - a_frac`, …,
/// `out_rshift = F - out_frac`) and a single rounding happens.
pub fn add_q7(
    a: &[i8],
    a_lshift: i32,
    b: &[i8],
    b_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
) -> KResult {
    let la = check_shift(a_lshift)?;
    let lb = check_shift(b_lshift)?;
    let or = check_shift(out_rshift)?;
    if a.len() != output.len() || b.len() != output.len() {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    for ((o, x), y) in output.iter_mut().zip(a).zip(b) {
        let acc = ((*x as i32) << la)
            .wrapping_add((*y as i32) << lb)
            .wrapping_add(rnd);
        *o = sat_i8(acc >> or);
    }
    Ok(())
}

/// [`add_q7`] written over one of its inputs: `acc` holds one input and receives the sum, so
/// a residual block's add needs no third buffer. The same bytes as `add_q7(acc, acc_lshift,
/// other, other_lshift, out_rshift, out)` and as `add_q7(other, other_lshift, acc, acc_lshift,
/// …)`: elementwise (each byte is read before it is written) and the wrapping sum commutes.
pub fn add_q7_in_place(
    acc: &mut [i8],
    acc_lshift: i32,
    other: &[i8],
    other_lshift: i32,
    out_rshift: i32,
) -> KResult {
    let la = check_shift(acc_lshift)?;
    let lb = check_shift(other_lshift)?;
    let or = check_shift(out_rshift)?;
    if other.len() != acc.len() {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    for (x, y) in acc.iter_mut().zip(other) {
        let sum = ((*y as i32) << lb)
            .wrapping_add((*x as i32) << la)
            .wrapping_add(rnd);
        *x = sat_i8(sum >> or);
    }
    Ok(())
}

/// Max (`max = true`) or average pool computed **in place**: `buf` holds the input (`in_dims`)
/// and receives the output (`out_dims`) in its first `out_dims.len()` bytes, so the firmware
/// needs no second buffer for the pool's output. Results equal [`maxpool_hwc_q7`] /
/// [`avepool_hwc_q7`] without padding (the only case accepted).
///
/// Why it is safe: outputs are produced in raster order, and output `(oy, ox)` lands at byte
/// `(oy·OW + ox)·C`, which is below the first byte any later window reads (`OW ≤ W`, stride ≥ 1,
/// no padding); within one output, a block of channels is written only after it was read, and
/// other channels never share a byte with it.
pub fn pool_hwc_q7_in_place(
    buf: &mut [i8],
    in_dims: Dims,
    kernel: Pair,
    stride: Pair,
    out_dims: Dims,
    max: bool,
    round: bool,
) -> KResult {
    if stride.h == 0
        || stride.w == 0
        || kernel.h == 0
        || kernel.w == 0
        || in_dims.c != out_dims.c
        || out_dims.h > in_dims.h
        || out_dims.w > in_dims.w
    {
        return Err(KernelError::Geometry);
    }
    if buf.len() != in_dims.len() {
        return Err(KernelError::Length);
    }
    let c = in_dims.c;
    const BLOCK: usize = 64;
    let mut acc = [0i32; BLOCK];
    for oy in 0..out_dims.h {
        let (y0, y1) = clip_window(oy, stride.h, 0, kernel.h, in_dims.h);
        for ox in 0..out_dims.w {
            let (x0, x1) = clip_window(ox, stride.w, 0, kernel.w, in_dims.w);
            let count = ((y1 - y0) * (x1 - x0)) as i32;
            let p_out = (oy * out_dims.w + ox) * c;
            let mut cb = 0;
            while cb < c {
                let n = if c - cb < BLOCK { c - cb } else { BLOCK };
                let a = &mut acc[..n];
                a.fill(if max { -128 } else { 0 });
                for y in y0..y1 {
                    for x in x0..x1 {
                        let base = (y * in_dims.w + x) * c + cb;
                        for (s, v) in a.iter_mut().zip(&buf[base..base + n]) {
                            let v = *v as i32;
                            if max {
                                if v > *s {
                                    *s = v;
                                }
                            } else {
                                *s += v;
                            }
                        }
                    }
                }
                for (d, s) in buf[p_out + cb..p_out + cb + n].iter_mut().zip(a.iter()) {
                    *d = if max {
                        *s as i8
                    } else {
                        ave_q7(*s, count, round)
                    };
                }
                cb += n;
            }
        }
    }
    Ok(())
}

/// An elementwise function by table, in place: every value `x` becomes `table[x as u8]` (the
/// quantizer computes the 256 entries for the layer's input and output formats: Sigmoid, TanH).
pub fn lut_q7(data: &mut [i8], table: &[i8]) -> KResult {
    if table.len() != 256 {
        return Err(KernelError::Length);
    }
    for v in data.iter_mut() {
        *v = table[*v as u8 as usize];
    }
    Ok(())
}

/// PReLU in place over values whose innermost axis has `slopes.len()` channels: `x ≥ 0` stays,
/// `x < 0` becomes `sat_i8((x·slope[c] + round) >> slope_rshift)` (slopes are q7 with
/// `slope_rshift` fraction bits, so the output keeps the input's format).
pub fn prelu_q7(data: &mut [i8], slopes: &[i8], slope_rshift: i32) -> KResult {
    let sh = check_shift(slope_rshift)?;
    let c = slopes.len();
    if c == 0 || !data.len().is_multiple_of(c) {
        return Err(KernelError::Length);
    }
    let rnd = round_term(sh);
    for px in data.chunks_exact_mut(c) {
        for (v, s) in px.iter_mut().zip(slopes) {
            if *v < 0 {
                *v = sat_i8(((*v as i32) * (*s as i32) + rnd) >> sh);
            }
        }
    }
    Ok(())
}

/// Elementwise maximum of two q7 tensors of possibly different formats, brought to a common
/// one: `out = sat_i8((max(a << a_lshift, b << b_lshift) + round) >> out_rshift)` (shifts as in
/// [`add_q7`]; no sum, so nothing can wrap).
pub fn max_q7(
    a: &[i8],
    a_lshift: i32,
    b: &[i8],
    b_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
) -> KResult {
    let la = check_shift(a_lshift)?;
    let lb = check_shift(b_lshift)?;
    let or = check_shift(out_rshift)?;
    if la > 23 || lb > 23 {
        return Err(KernelError::Shift);
    }
    if a.len() != output.len() || b.len() != output.len() {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    for ((o, x), y) in output.iter_mut().zip(a).zip(b) {
        let m = ((*x as i32) << la).max((*y as i32) << lb);
        *o = sat_i8(m.wrapping_add(rnd) >> or);
    }
    Ok(())
}

/// Softmax in place over contiguous rows of `row` values. For each row with maximum `m`, value
/// `x` has the weight `e = exp_table[min(m - x, 255)]` (the quantizer's table of
/// `round(2^15 · e^(-d · 2^-in_frac))`, `exp_table[0] > 0`) and becomes
/// `min(127, round_half_up(e · 2^out_frac / Σe))` (large probabilities saturate when `out_frac` > 7): probabilities with `out_frac` (0..=15) fraction
/// bits (large ones saturate the large probabilities), in exact integer arithmetic.
pub fn softmax_q7(data: &mut [i8], row: usize, exp_table: &[u16], out_frac: i32) -> KResult {
    if exp_table.len() != 256 || exp_table[0] == 0 || !(0..=15).contains(&out_frac) {
        return Err(KernelError::Length);
    }
    if row == 0 || !data.len().is_multiple_of(row) {
        return Err(KernelError::Length);
    }
    for r in data.chunks_exact_mut(row) {
        let m = r.iter().copied().max().unwrap_or(0) as i32;
        let weight = |x: i8| u64::from(exp_table[(m - x as i32).min(255) as usize]);
        let sum: u64 = r.iter().map(|&x| weight(x)).sum();
        for v in r.iter_mut() {
            // (2·e·2^f + sum) / (2·sum): e·2^f / sum rounded half up.
            let q = ((weight(*v) << (out_frac + 1)) + sum) / (2 * sum);
            *v = q.min(127) as i8;
        }
    }
    Ok(())
}

/// Transposed convolution (Caffe's `Deconvolution`) in gather form: every output pixel sums the
/// input pixels that scatter into it. Weight `[o][ky][kx][i]` (the conv layout; `i` within the
/// group) carries input pixel `(iy, ix)` to output pixel `(iy·stride + ky·dilation - pad, …)`,
/// so output `(oy, ox)` reads input `iy = (oy + pad - ky·dilation) / stride` when that division
/// is exact and in range. `acc = (bias << bias_lshift) + round + Σ in·w` in wrapping `i32`,
/// `out = sat_i8(acc >> out_rshift)`, as for [`conv_hwc_q7`]; the output size is the caller's
/// (Caffe: `stride·(in - 1) + dilation·(k - 1) + 1 - 2·pad`).
#[allow(clippy::too_many_arguments)]
pub fn deconv_hwc_q7(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    deconv_run(
        cfg!(dsp),
        input,
        in_dims,
        weights,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        output,
        out_dims,
    )
}

/// [`deconv_hwc_q7`] with the implementation chosen by `dsp` (two outputs per `SMLAD` pair, the
/// instructions modelled in plain Rust off-target), so host tests can hold both to the definition.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn deconv_hwc_q7_variant(
    dsp: bool,
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    deconv_run(
        dsp,
        input,
        in_dims,
        weights,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        output,
        out_dims,
    )
}

#[allow(clippy::too_many_arguments)]
fn deconv_run(
    dsp: bool,
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    let bl = check_shift(bias_lshift)?;
    let or = check_shift(out_rshift)?;
    if stride.h == 0 || stride.w == 0 || dilation.h == 0 || dilation.w == 0 || groups == 0 {
        return Err(KernelError::Geometry);
    }
    if !in_dims.c.is_multiple_of(groups) || !out_dims.c.is_multiple_of(groups) {
        return Err(KernelError::Geometry);
    }
    let (cin_g, cout_g) = (in_dims.c / groups, out_dims.c / groups);
    let taps = kernel.h * kernel.w;
    if input.len() != in_dims.len()
        || output.len() != out_dims.len()
        || bias.len() != out_dims.c
        || weights.len() != out_dims.c * taps * cin_g
    {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    // The input coordinate output coordinate `o` reads through tap `k`, if any.
    let src = |o: usize, k: usize, pad: usize, stride: usize, dil: usize, n: usize| {
        let t = (o + pad).checked_sub(k * dil)?;
        (t.is_multiple_of(stride) && t / stride < n).then_some(t / stride)
    };
    // Outputs are summed in blocks of up to DECONV_BLOCK channels of one group on the stack, so
    // that each tap's input position is found once per block rather than once per channel.
    let mut acc = [0i32; DECONV_BLOCK];
    for oy in 0..out_dims.h {
        for ox in 0..out_dims.w {
            let out_px = &mut output[(oy * out_dims.w + ox) * out_dims.c..][..out_dims.c];
            for grp in 0..groups {
                let x0 = grp * cin_g;
                let mut o0 = grp * cout_g;
                while o0 < (grp + 1) * cout_g {
                    let nb = ((grp + 1) * cout_g - o0).min(DECONV_BLOCK);
                    for (a, b) in acc[..nb].iter_mut().zip(&bias[o0..o0 + nb]) {
                        *a = ((*b as i32) << bl).wrapping_add(rnd);
                    }
                    for ky in 0..kernel.h {
                        let Some(iy) = src(oy, ky, pad.h, stride.h, dilation.h, in_dims.h) else {
                            continue;
                        };
                        for kx in 0..kernel.w {
                            let Some(ix) = src(ox, kx, pad.w, stride.w, dilation.w, in_dims.w)
                            else {
                                continue;
                            };
                            let x = &input[(iy * in_dims.w + ix) * in_dims.c + x0..][..cin_g];
                            let tap = ky * kernel.w + kx;
                            let row =
                                |j: usize| &weights[((o0 + j) * taps + tap) * cin_g..][..cin_g];
                            // Two output channels per pass (one input load feeds both).
                            let mut j = 0;
                            while j + 1 < nb {
                                let s = [acc[j], acc[j + 1]];
                                let s = if dsp {
                                    dot1x2_dsp(x, row(j), row(j + 1), s)
                                } else {
                                    dot1x2(x, row(j), row(j + 1), s)
                                };
                                acc[j] = s[0];
                                acc[j + 1] = s[1];
                                j += 2;
                            }
                            if j < nb {
                                acc[j] = dot1x2(x, row(j), row(j), [acc[j], 0])[0];
                            }
                        }
                    }
                    for (y, a) in out_px[o0..o0 + nb].iter_mut().zip(&acc[..nb]) {
                        *y = requant(*a, or);
                    }
                    o0 += nb;
                }
            }
        }
    }
    Ok(())
}

/// Output channels [`deconv_hwc_q7`] sums at once (an `i32` array on the stack: 128 B).
const DECONV_BLOCK: usize = 32;

/// Entries of an LRN scale table: 1,024 segments and their end point (2 KB of flash per layer;
/// 256 segments left the factor's curvature a whole output step off for coarse input formats).
pub const LRN_TABLE_LEN: usize = 1025;

/// Local response normalisation, `y = x · (k + α/n · Σx²)^-β`, in integers. `s` = the sum of
/// the squared q7 codes over the window (ACROSS_CHANNELS: `size` channels centred on the
/// value's, clipped; otherwise WITHIN_CHANNEL: the `size × size` window of its channel centred
/// on the pixel, clipped), at most `size²·16384` in `i32`. The factor is `table` interpolated
/// linearly at `s / 2^index_shift` (`table[j]` = the factor at `s = j << index_shift`, the last
/// entry also for anything beyond, scaled by the quantizer's power of two), and
/// `y = sat_i8((x · factor + round) >> out_rshift)`.
#[allow(clippy::too_many_arguments)]
pub fn lrn_q7(
    input: &[i8],
    dims: Dims,
    size: usize,
    across: bool,
    index_shift: i32,
    table: &[u16],
    out_rshift: i32,
    output: &mut [i8],
) -> KResult {
    let sh = check_shift(index_shift)?;
    let or = check_shift(out_rshift)?;
    if size == 0 || size.is_multiple_of(2) || size > 255 || table.len() != LRN_TABLE_LEN {
        return Err(KernelError::Geometry);
    }
    if input.len() != dims.len() || output.len() != dims.len() {
        return Err(KernelError::Length);
    }
    let half = size / 2;
    let rnd = round_term(or);
    let mask = (1u32 << sh).wrapping_sub(1);
    for y in 0..dims.h {
        for x in 0..dims.w {
            let px = (y * dims.w + x) * dims.c;
            for c in 0..dims.c {
                let mut s: u32 = 0;
                if across {
                    let hi = (c + half + 1).min(dims.c);
                    for v in &input[px + c.saturating_sub(half)..px + hi] {
                        s += (*v as i32 * *v as i32) as u32;
                    }
                } else {
                    for wy in y.saturating_sub(half)..(y + half + 1).min(dims.h) {
                        for wx in x.saturating_sub(half)..(x + half + 1).min(dims.w) {
                            let v = input[(wy * dims.w + wx) * dims.c + c] as i32;
                            s += (v * v) as u32;
                        }
                    }
                }
                let j = (s >> sh) as usize;
                let f = if j >= LRN_TABLE_LEN - 1 {
                    table[LRN_TABLE_LEN - 1] as i64
                } else {
                    let (a, b) = (table[j] as i64, table[j + 1] as i64);
                    // Floor division by 2^sh (arithmetic shift of a possibly negative step).
                    a + (((b - a) * (s & mask) as i64) >> sh)
                };
                let acc = input[px + c] as i64 * f + rnd as i64;
                output[px + c] = sat_i8((acc >> or).clamp(i32::MIN as i64, i32::MAX as i64) as i32);
            }
        }
    }
    Ok(())
}

/// Eltwise PROD of two q7 tensors: `out = sat_i8((a·b + round) >> out_rshift)` with
/// `out_rshift = a_frac + b_frac - out_frac` (the product has `a_frac + b_frac` fraction bits;
/// `|a·b| ≤ 16384` cannot wrap).
pub fn mul_q7(a: &[i8], b: &[i8], out_rshift: i32, output: &mut [i8]) -> KResult {
    let or = check_shift(out_rshift)?;
    if a.len() != output.len() || b.len() != output.len() {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    for ((o, x), y) in output.iter_mut().zip(a).zip(b) {
        *o = sat_i8((*x as i32 * *y as i32 + rnd) >> or);
    }
    Ok(())
}

/// Largest `bias_lshift` of [`scale_q7`]: `|bias << 22| + |x·s| + round < 2^31`.
pub const SCALE_MAX_BIAS_LSHIFT: i32 = 22;

/// A standalone per-channel Scale/Bias over values whose innermost axis has `scales.len()`
/// channels: `acc = x·scale[c] + (bias[c] << bias_lshift) + round`,
/// `out = sat_i8(acc >> out_rshift)` (scale with `sf` fraction bits: `out_rshift = in_frac + sf
/// - out_frac`, `bias_lshift = in_frac + sf - bias_frac` ≤ [`SCALE_MAX_BIAS_LSHIFT`], so the
/// `i32` sum cannot wrap).
pub fn scale_q7(
    input: &[i8],
    scales: &[i8],
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
) -> KResult {
    let bl = check_shift(bias_lshift)?;
    let or = check_shift(out_rshift)?;
    if bias_lshift > SCALE_MAX_BIAS_LSHIFT {
        return Err(KernelError::Shift);
    }
    let c = scales.len();
    if c == 0 || bias.len() != c || input.len() != output.len() || !input.len().is_multiple_of(c) {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    for (xs, ys) in input.chunks_exact(c).zip(output.chunks_exact_mut(c)) {
        for (((y, x), s), b) in ys.iter_mut().zip(xs).zip(scales).zip(bias) {
            let acc = *x as i32 * *s as i32 + ((*b as i32) << bl) + rnd;
            *y = sat_i8(acc >> or);
        }
    }
    Ok(())
}

// Per-channel formats: the convolutions and the fully connected layer with one `bias_lshift`
// and one `out_rshift` per output channel (each output channel's weights and bias have their own
// fraction bits). Every shift slice has length 1 (one shift for every channel: the bytes of the
// per-layer kernel above) or `out_c`; both slices have the same length. Channel `c` computes
// `sat_i8(((bias[c] << bias_lshift[c]) + ((1 << out_rshift[c]) >> 1) + Σ in·w) >> out_rshift[c])`
// on the same paths (im2col pairs, direct, depthwise quads, DSP and portable) as the per-layer
// kernels: only the accumulator's start and the output shift change per channel.

/// [`conv_hwc_q7`] with per-channel shifts.
#[allow(clippy::too_many_arguments)]
pub fn conv_hwc_q7_pc(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: &[i32],
    out_rshift: &[i32],
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    variants::conv_hwc_q7_pc(
        cfg!(dsp),
        input,
        in_dims,
        weights,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        output,
        out_dims,
    )
}

/// [`conv_hwc_q7_scratch`] with per-channel shifts.
#[allow(clippy::too_many_arguments)]
pub fn conv_hwc_q7_scratch_pc(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    wq: &[u32],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: &[i32],
    out_rshift: &[i32],
    relu: bool,
    scratch: &mut [i8],
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    variants::conv_hwc_q7_scratch_pc(
        cfg!(dsp),
        input,
        in_dims,
        weights,
        wq,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        relu,
        scratch,
        output,
        out_dims,
    )
}

/// [`conv_pool_hwc_q7`] with per-channel shifts.
#[allow(clippy::too_many_arguments)]
pub fn conv_pool_hwc_q7_pc(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    wq: &[u32],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: &[i32],
    out_rshift: &[i32],
    conv_dims: Dims,
    fuse: Fused,
    ring: &mut [i8],
    scratch: &mut [i8],
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    variants::conv_pool_hwc_q7_pc(
        cfg!(dsp),
        input,
        in_dims,
        weights,
        wq,
        kernel,
        pad,
        stride,
        dilation,
        groups,
        bias,
        bias_lshift,
        out_rshift,
        conv_dims,
        fuse,
        ring,
        scratch,
        output,
        out_dims,
    )
}

/// [`fc_q7`] with per-channel (per-output) shifts.
pub fn fc_q7_pc(
    input: &[i8],
    weights: &[i8],
    bias: &[i8],
    bias_lshift: &[i32],
    out_rshift: &[i32],
    output: &mut [i8],
) -> KResult {
    variants::fc_q7_pc(
        cfg!(dsp),
        input,
        weights,
        bias,
        bias_lshift,
        out_rshift,
        output,
    )
}
