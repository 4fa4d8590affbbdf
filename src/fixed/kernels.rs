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

/// Convolution, HWC, zero padding, rectangular kernel/pad/stride, `groups` ≥ 1 (depthwise when
/// `groups == in_dims.c == out_dims.c`).
///
/// `weights`: `[out_dims.c][kernel.h][kernel.w][in_dims.c / groups]`; `bias`: `out_dims.c` q7
/// values. Output channel `o` belongs to group `o / (out_dims.c / groups)` and reads input
/// channels `g * cin_g .. (g + 1) * cin_g`.
#[allow(clippy::too_many_arguments)]
pub fn conv_hwc_q7(
    input: &[i8],
    in_dims: Dims,
    weights: &[i8],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    groups: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
    output: &mut [i8],
    out_dims: Dims,
) -> KResult {
    let bl = check_shift(bias_lshift)?;
    let or = check_shift(out_rshift)?;
    if groups == 0
        || stride.h == 0
        || stride.w == 0
        || in_dims.c % groups != 0
        || out_dims.c % groups != 0
    {
        return Err(KernelError::Geometry);
    }
    let cin_g = in_dims.c / groups;
    let cout_g = out_dims.c / groups;
    let ksize = kernel.h * kernel.w * cin_g;
    if input.len() != in_dims.len()
        || output.len() != out_dims.len()
        || weights.len() != out_dims.c * ksize
        || bias.len() != out_dims.c
    {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    for oy in 0..out_dims.h {
        for ox in 0..out_dims.w {
            let out_px = (oy * out_dims.w + ox) * out_dims.c;
            for o in 0..out_dims.c {
                let g = o / cout_g;
                let wbase = o * ksize;
                let mut acc: i32 = ((bias[o] as i32) << bl).wrapping_add(rnd);
                for ky in 0..kernel.h {
                    // Signed input row; outside the image the padding contributes zero.
                    let iy = (oy * stride.h + ky) as isize - pad.h as isize;
                    if iy < 0 || iy >= in_dims.h as isize {
                        continue;
                    }
                    for kx in 0..kernel.w {
                        let ix = (ox * stride.w + kx) as isize - pad.w as isize;
                        if ix < 0 || ix >= in_dims.w as isize {
                            continue;
                        }
                        let ibase = (iy as usize * in_dims.w + ix as usize) * in_dims.c + g * cin_g;
                        let wk = wbase + (ky * kernel.w + kx) * cin_g;
                        let xs = &input[ibase..ibase + cin_g];
                        let ws = &weights[wk..wk + cin_g];
                        for (x, w) in xs.iter().zip(ws) {
                            acc = acc.wrapping_add((*x as i32) * (*w as i32));
                        }
                    }
                }
                output[out_px + o] = requant(acc, or);
            }
        }
    }
    Ok(())
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
    let bl = check_shift(bias_lshift)?;
    let or = check_shift(out_rshift)?;
    let n_in = input.len();
    if weights.len() != n_in * output.len() || bias.len() != output.len() {
        return Err(KernelError::Length);
    }
    let rnd = round_term(or);
    for (o, out) in output.iter_mut().enumerate() {
        let mut acc: i32 = ((bias[o] as i32) << bl).wrapping_add(rnd);
        for (x, w) in input.iter().zip(&weights[o * n_in..(o + 1) * n_in]) {
            acc = acc.wrapping_add((*x as i32) * (*w as i32));
        }
        *out = requant(acc, or);
    }
    Ok(())
}

/// The in-bounds part `[start, end)` of a pooling window along one axis.
#[inline(always)]
fn clip_window(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = start + kernel as isize;
    let s = if start < 0 { 0 } else { start as usize };
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
    check_pool(input, in_dims, stride, output, out_dims)?;
    let c = in_dims.c;
    for oy in 0..out_dims.h {
        let (y0, y1) = clip_window(oy, stride.h, pad.h, kernel.h, in_dims.h);
        for ox in 0..out_dims.w {
            let (x0, x1) = clip_window(ox, stride.w, pad.w, kernel.w, in_dims.w);
            let out = &mut output[(oy * out_dims.w + ox) * c..][..c];
            out.fill(-128);
            for y in y0..y1 {
                for x in x0..x1 {
                    let px = &input[(y * in_dims.w + x) * c..][..c];
                    for (o, v) in out.iter_mut().zip(px) {
                        if *v > *o {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Average pool, HWC: sum over the window clipped to the image, divided by the number of
/// in-bounds elements with `/` on `i32` (truncates toward zero, like C: -7/2 = -3). Note that
/// Caffe's float AVE pool divides by the window size *including* padding when `pad > 0`; the q7
/// semantics (CMSIS) count only in-bounds elements. An empty window gives 0.
pub fn avepool_hwc_q7(
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
    for oy in 0..out_dims.h {
        let (y0, y1) = clip_window(oy, stride.h, pad.h, kernel.h, in_dims.h);
        for ox in 0..out_dims.w {
            let (x0, x1) = clip_window(ox, stride.w, pad.w, kernel.w, in_dims.w);
            let count = ((y1 - y0) * (x1 - x0)) as i32;
            let out = &mut output[(oy * out_dims.w + ox) * c..][..c];
            for (ch, o) in out.iter_mut().enumerate() {
                let mut sum: i32 = 0;
                for y in y0..y1 {
                    for x in x0..x1 {
                        sum += input[(y * in_dims.w + x) * c + ch] as i32;
                    }
                }
                *o = if count == 0 { 0 } else { sat_i8(sum / count) };
            }
        }
    }
    Ok(())
}

/// ReLU in place: `max(x, 0)`.
pub fn relu_q7(data: &mut [i8]) {
    for v in data.iter_mut() {
        if *v < 0 {
            *v = 0;
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
    if output.len() != pixels.len() || (!mean.is_empty() && pixels.len() % mean.len() != 0) {
        return Err(KernelError::Length);
    }
    let m = mean.len();
    for (i, (p, o)) in pixels.iter().zip(output.iter_mut()).enumerate() {
        let mv = if m == 0 { 0 } else { mean[i % m] as i64 };
        let d = (*p as i64 - mv) * mul as i64;
        let q = rshift_half_away(d, rshift as u32);
        *o = if q > 127 {
            127
        } else if q < -128 {
            -128
        } else {
            q as i8
        };
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
        || input.len() % in_c != 0
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
