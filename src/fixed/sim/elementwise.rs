//! Pooling and ReLU written so that they vectorize (channel-innermost loops, branch-free `max`),
//! compiled for AVX-512BW / AVX2 / baseline and picked at run time. Same results as
//! `kernels.rs` by construction (max is max; the average pool's division, truncating or rounded
//! as `kernels::ave_q7`, is done in `f32` only where that is provably exact, see [`avepool`]);
//! property tests pin them.

use crate::fixed::kernels::{self, Dims, KResult, Pair};

/// The in-bounds part `[start, end)` of a pooling window along one axis (as in `kernels.rs`).
#[inline(always)]
fn clip_window(o: usize, stride: usize, pad: usize, kernel: usize, size: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    let end = start + kernel as isize;
    let s = start.max(0) as usize;
    let e = (end.min(size as isize)).max(0) as usize;
    (s, e.max(s))
}

/// The arguments `kernels.rs` would accept; anything else goes to `kernels.rs` for its error.
fn pool_ok(input: &[i8], ind: Dims, stride: Pair, output: &[i8], outd: Dims) -> bool {
    stride.h > 0
        && stride.w > 0
        && ind.c == outd.c
        && input.len() == ind.len()
        && output.len() == outd.len()
}

/// Max pool over `CB` channels at a time (`c % CB == 0`), separably: the window rows' maximum
/// first (one long contiguous loop per output row, into `rowmax`), then the maximum over the
/// window columns of that, a `CB`-channel chunk at a time in a register.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn maxpool_chunks<const CB: usize>(
    input: &[i8],
    ind: Dims,
    k: Pair,
    pad: Pair,
    s: Pair,
    out: &mut [i8],
    outd: Dims,
    rowmax: &mut Vec<i8>,
) {
    let c = ind.c;
    let row = ind.w * c;
    rowmax.clear();
    rowmax.resize(row, -128);
    for oy in 0..outd.h {
        let (y0, y1) = clip_window(oy, s.h, pad.h, k.h, ind.h);
        rowmax.fill(-128);
        for y in y0..y1 {
            for (a, b) in rowmax.iter_mut().zip(&input[y * row..(y + 1) * row]) {
                *a = (*a).max(*b);
            }
        }
        for ox in 0..outd.w {
            let (x0, x1) = clip_window(ox, s.w, pad.w, k.w, ind.w);
            let o = &mut out[(oy * outd.w + ox) * c..][..c];
            for (j, oc) in o.chunks_exact_mut(CB).enumerate() {
                let mut m = [-128i8; CB];
                for x in x0..x1 {
                    let px: &[i8; CB] =
                        rowmax[x * c + j * CB..][..CB].try_into().expect("CB chunk");
                    for (a, b) in m.iter_mut().zip(px) {
                        *a = (*a).max(*b);
                    }
                }
                oc.copy_from_slice(&m);
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn maxpool_body(
    input: &[i8],
    ind: Dims,
    k: Pair,
    pad: Pair,
    s: Pair,
    out: &mut [i8],
    outd: Dims,
    rowmax: &mut Vec<i8>,
) {
    let c = ind.c;
    match c {
        _ if c.is_multiple_of(64) => {
            return maxpool_chunks::<64>(input, ind, k, pad, s, out, outd, rowmax)
        }
        _ if c.is_multiple_of(32) => {
            return maxpool_chunks::<32>(input, ind, k, pad, s, out, outd, rowmax)
        }
        _ if c.is_multiple_of(16) => {
            return maxpool_chunks::<16>(input, ind, k, pad, s, out, outd, rowmax)
        }
        _ => {}
    }
    for oy in 0..outd.h {
        let (y0, y1) = clip_window(oy, s.h, pad.h, k.h, ind.h);
        for ox in 0..outd.w {
            let (x0, x1) = clip_window(ox, s.w, pad.w, k.w, ind.w);
            let o = &mut out[(oy * outd.w + ox) * c..][..c];
            o.fill(-128);
            for y in y0..y1 {
                for x in x0..x1 {
                    let px = &input[(y * ind.w + x) * c..][..c];
                    for (a, b) in o.iter_mut().zip(px) {
                        *a = (*a).max(*b);
                    }
                }
            }
        }
    }
}

/// Average pool over `CB` channels at a time (`c % CB == 0`), sums in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn avepool_chunks<const CB: usize>(
    input: &[i8],
    ind: Dims,
    k: Pair,
    pad: Pair,
    s: Pair,
    out: &mut [i8],
    outd: Dims,
    round: bool,
) {
    let c = ind.c;
    for oy in 0..outd.h {
        let (y0, y1) = clip_window(oy, s.h, pad.h, k.h, ind.h);
        for ox in 0..outd.w {
            let (x0, x1) = clip_window(ox, s.w, pad.w, k.w, ind.w);
            let count = ((y1 - y0) * (x1 - x0)) as i32;
            let o = &mut out[(oy * outd.w + ox) * c..][..c];
            if count == 0 {
                o.fill(0);
                continue;
            }
            let (d, half) = (count as f32, if round { count / 2 } else { 0 });
            for (j, oc) in o.chunks_exact_mut(CB).enumerate() {
                let mut sum = [0i32; CB];
                for y in y0..y1 {
                    for x in x0..x1 {
                        let px: &[i8; CB] = input[(y * ind.w + x) * c + j * CB..][..CB]
                            .try_into()
                            .expect("CB chunk");
                        for (a, b) in sum.iter_mut().zip(px) {
                            *a += *b as i32;
                        }
                    }
                }
                for (a, b) in oc.iter_mut().zip(&sum) {
                    let n = b + if *b >= 0 { half } else { -half };
                    // SAFETY: |n| <= 128·count + count/2, so the quotient is finite and within
                    // [-129, 129]: the conversion cannot overflow (unlike `as`, it vectorizes).
                    *a = kernels::sat_i8(unsafe { (n as f32 / d).to_int_unchecked::<i32>() });
                }
            }
        }
    }
}

/// `kernels::ave_q7`: `(sum ± count/2) / count` (the `±` term only when `round`) truncated
/// toward zero, in `f32`: exact when the numerator is below `2^24` in magnitude and
/// `0 < count < 2^24` (a non-integral quotient is at least `1/count` away from the next integer,
/// relatively `> 2^-24`, so rounding the `f32` quotient cannot reach it).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn avepool_body(
    input: &[i8],
    ind: Dims,
    k: Pair,
    pad: Pair,
    s: Pair,
    out: &mut [i8],
    outd: Dims,
    sum: &mut Vec<i32>,
    round: bool,
) {
    let c = ind.c;
    match c {
        _ if c.is_multiple_of(32) => {
            return avepool_chunks::<32>(input, ind, k, pad, s, out, outd, round)
        }
        _ if c.is_multiple_of(16) => {
            return avepool_chunks::<16>(input, ind, k, pad, s, out, outd, round)
        }
        _ => {}
    }
    sum.clear();
    sum.resize(c, 0);
    for oy in 0..outd.h {
        let (y0, y1) = clip_window(oy, s.h, pad.h, k.h, ind.h);
        for ox in 0..outd.w {
            let (x0, x1) = clip_window(ox, s.w, pad.w, k.w, ind.w);
            let count = ((y1 - y0) * (x1 - x0)) as i32;
            let o = &mut out[(oy * outd.w + ox) * c..][..c];
            if count == 0 {
                o.fill(0);
                continue;
            }
            sum.fill(0);
            for y in y0..y1 {
                for x in x0..x1 {
                    let px = &input[(y * ind.w + x) * c..][..c];
                    for (a, b) in sum.iter_mut().zip(px) {
                        *a += *b as i32;
                    }
                }
            }
            let (d, half) = (count as f32, if round { count / 2 } else { 0 });
            for (a, b) in o.iter_mut().zip(sum.iter()) {
                let n = b + if *b >= 0 { half } else { -half };
                *a = kernels::sat_i8((n as f32 / d) as i32);
            }
        }
    }
}

#[inline(always)]
fn relu_body(x: &[i8], y: &mut [i8]) {
    for (o, i) in y.iter_mut().zip(x) {
        *o = (*i).max(0);
    }
}

/// Compile `$body` three times (AVX-512BW, AVX2, baseline) behind one dispatching function,
/// which takes AVX-512 only when `avx512` allows it (see [`SimdPath::elementwise_avx512`]).
///
/// [`SimdPath::elementwise_avx512`]: super::SimdPath::elementwise_avx512
macro_rules! multiversion {
    ($name:ident, $body:ident, ($($arg:ident : $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name(avx512: bool, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v256($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if avx512 && std::arch::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the CPU has AVX-512F/BW (checked).
                    return unsafe { v512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked).
                    return unsafe { v256($($arg),*) };
                }
            }
            let _ = avx512;
            $body($($arg),*)
        }
    };
}

multiversion!(maxpool_mv, maxpool_body, (input: &[i8], ind: Dims, k: Pair, pad: Pair, s: Pair, out: &mut [i8], outd: Dims, rowmax: &mut Vec<i8>));
multiversion!(avepool_mv, avepool_body, (input: &[i8], ind: Dims, k: Pair, pad: Pair, s: Pair, out: &mut [i8], outd: Dims, sum: &mut Vec<i32>, round: bool));
multiversion!(relu_mv, relu_body, (x: &[i8], y: &mut [i8]));

/// `kernels::maxpool_hwc_q7`, vectorized (`rowmax` is scratch; `avx512`: may use AVX-512).
#[allow(clippy::too_many_arguments)]
pub(super) fn maxpool(
    avx512: bool,
    input: &[i8],
    ind: Dims,
    k: Pair,
    pad: Pair,
    s: Pair,
    out: &mut [i8],
    outd: Dims,
    rowmax: &mut Vec<i8>,
) -> KResult {
    if !pool_ok(input, ind, s, out, outd) {
        return kernels::maxpool_hwc_q7(input, ind, k, pad, s, out, outd);
    }
    maxpool_mv(avx512, input, ind, k, pad, s, out, outd, rowmax);
    Ok(())
}

/// `kernels::avepool_hwc_q7`, vectorized; windows too large for the exact `f32` division
/// (`kh · kw ≥ 2^16`) go to `kernels.rs`.
#[allow(clippy::too_many_arguments)]
pub(super) fn avepool(
    avx512: bool,
    input: &[i8],
    ind: Dims,
    k: Pair,
    pad: Pair,
    s: Pair,
    out: &mut [i8],
    outd: Dims,
    sum: &mut Vec<i32>,
    round: bool,
) -> KResult {
    let small = k.h.checked_mul(k.w).is_some_and(|n| n < 1 << 16);
    if !pool_ok(input, ind, s, out, outd) || !small {
        return kernels::avepool_hwc_q7(input, ind, k, pad, s, out, outd, round);
    }
    avepool_mv(avx512, input, ind, k, pad, s, out, outd, sum, round);
    Ok(())
}

/// `y = max(x, 0)` (`kernels::relu_q7` on a copy), vectorized.
pub(super) fn relu(avx512: bool, x: &[i8], y: &mut [i8]) {
    assert_eq!(x.len(), y.len(), "relu: lengths");
    relu_mv(avx512, x, y)
}
