//! The overflow proof: the worst-case accumulator of every conv/fc (and Eltwise SUM) layer.
//!
//! `kernels.rs` accumulates in `i32` and wraps, as CMSIS-NN's C code does on the target, so a
//! layer whose accumulator can leave the `i32` range would silently compute garbage for some
//! inputs (and still be "bit-exact" with the firmware). nnquant proves, before it accepts a
//! layer's formats, that no q7 input can make it wrap: for one output,
//! `acc0 = (bias << bias_lshift) + ((1 << out_rshift) >> 1)` and every product `in · w` with
//! `in ∈ [-128, 127]` lies between `min(127·w, -128·w)` and `max(127·w, -128·w)`; since the
//! first is ≤ 0 and the second ≥ 0, every partial sum in any accumulation order (the DSP kernels
//! add pairs, the simulator adds blocks) lies within `[acc0 + Σ min, acc0 + Σ max]`. The kernels
//! saturate only at the end (`sat_i8(acc >> out_rshift)`), so these bounds are all that matters.

use anyhow::{ensure, Result};

/// The worst case of one layer's accumulator over all q7 inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headroom {
    /// Largest |accumulator| any q7 input can produce.
    pub worst_abs: i64,
    /// `log2(i32::MAX / worst_abs)`: how many more bits the accumulator could grow (0 means it
    /// just fits; 31 for an all-zero layer).
    pub bits: f64,
}

impl Headroom {
    fn of(worst_abs: i64) -> Headroom {
        let bits = if worst_abs <= 0 {
            31.0
        } else {
            (i32::MAX as f64 / worst_abs as f64).log2()
        };
        Headroom {
            worst_abs,
            bits: (bits * 100.0).floor() / 100.0,
        }
    }
}

/// `(1 << s) >> 1` for any shift (0 for `s ≤ 0`).
fn round_term(s: i32) -> i64 {
    if s <= 0 {
        0
    } else {
        1i64 << (s.min(62) - 1)
    }
}

/// The worst case of a conv/fc with `rows` outputs, each reading `weights.len() / rows`
/// consecutive weights; an error naming the layer, the output and the terms when `i32` could
/// wrap. Shifts are expected in `0..=31` (checked elsewhere; larger ones are clamped here so the
/// bound stays computable and is then certainly out of range).
pub fn dense(
    layer: &str,
    weights: &[i8],
    rows: usize,
    bias: &[i8],
    bias_lshift: i32,
    out_rshift: i32,
) -> Result<Headroom> {
    dense_channels(layer, weights, rows, bias, &[bias_lshift], &[out_rshift])
}

/// [`dense`] with per-output shifts: `bias_lshift` and `out_rshift` hold one shift for every
/// output (length 1) or one per output (length `rows`); each output is bounded with its own.
pub fn dense_channels(
    layer: &str,
    weights: &[i8],
    rows: usize,
    bias: &[i8],
    bias_lshift: &[i32],
    out_rshift: &[i32],
) -> Result<Headroom> {
    ensure!(
        rows > 0 && weights.len().is_multiple_of(rows) && bias.len() == rows,
        "layer '{layer}': {} weights and {} biases do not make {rows} outputs",
        weights.len(),
        bias.len()
    );
    let ok = |v: &[i32]| v.len() == 1 || v.len() == rows;
    ensure!(
        ok(bias_lshift) && ok(out_rshift),
        "layer '{layer}': {} bias shifts and {} output shifts for {rows} outputs",
        bias_lshift.len(),
        out_rshift.len()
    );
    let at = |v: &[i32], o: usize| if v.len() == 1 { v[0] } else { v[o] };
    let k = weights.len() / rows;
    // (|acc|, output, bias term, Σ|w|·128, its bias_lshift, its rounding term)
    let mut worst = (0i64, 0usize, 0i64, 0i64, 0i32, 0i64);
    for (o, (row, &b)) in weights.chunks_exact(k.max(1)).zip(bias).enumerate() {
        let bl = at(bias_lshift, o).clamp(0, 40);
        let rnd = round_term(at(out_rshift, o));
        let acc0 = ((b as i64) << bl) + rnd;
        let (mut hi, mut lo, mut abs) = (acc0, acc0, 0i64);
        for &w in row {
            let (p, n) = (127 * w as i64, -128 * w as i64);
            hi += p.max(n);
            lo += p.min(n);
            abs += 128 * (w as i64).abs();
        }
        let m = hi.max(-lo);
        if m > worst.0 {
            worst = (m, o, (b as i64) << bl, abs, at(bias_lshift, o), rnd);
        }
    }
    let (m, o, bterm, wterm, bias_lshift, rnd) = worst;
    ensure!(
        m <= i32::MAX as i64,
        "layer '{layer}': its i32 accumulator can wrap: for output {o} the worst case over all int8 inputs reaches {m} (bias << bias_lshift {bias_lshift} = {bterm}, rounding term {rnd}, Σ|w|·128 up to {wterm}), beyond i32's ±{}, and the kernels wrap there like CMSIS-NN's C code on the target. Choose fewer weight or input fraction bits, or more bias fraction bits, for this layer",
        i32::MAX
    );
    Ok(Headroom::of(m))
}

/// The worst case of an Eltwise SUM `(a << a_lshift) + (b << b_lshift) + rounding`.
pub fn add(layer: &str, a_lshift: i32, b_lshift: i32, out_rshift: i32) -> Result<Headroom> {
    let (la, lb) = (a_lshift.clamp(0, 40), b_lshift.clamp(0, 40));
    let rnd = round_term(out_rshift);
    let hi = (127i64 << la) + (127i64 << lb) + rnd;
    let lo = (-128i64 << la) + (-128i64 << lb) + rnd;
    let m = hi.max(-lo);
    ensure!(
        m <= i32::MAX as i64,
        "layer '{layer}': its i32 sum can wrap: with a_lshift {a_lshift}, b_lshift {b_lshift} and out_rshift {out_rshift} the worst case reaches {m}, beyond i32's ±{}. Choose closer formats for its inputs and output",
        i32::MAX
    );
    Ok(Headroom::of(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_exact_at_the_limit() {
        // One output, one weight -128: acc = in · -128 ∈ [-16256, 16384].
        let h = dense("l", &[-128], 1, &[0], 0, 0).unwrap();
        assert_eq!(h.worst_abs, 16384);
        // bias 127 << 24 fits, 127 << 25 does not.
        assert!(dense("l", &[0], 1, &[127], 24, 0).is_ok());
        let e = dense("l", &[0], 1, &[127], 25, 0).unwrap_err().to_string();
        assert!(e.contains("can wrap") && e.contains("output 0"), "{e}");
        // -128 << 24 = i32::MIN is representable, but the bound is symmetric (|acc| ≤
        // i32::MAX), one value stricter than the kernels need.
        assert!(dense("l", &[0], 1, &[-128], 24, 0).is_err());
        assert_eq!(dense("l", &[0; 4], 2, &[0, 0], 0, 0).unwrap().bits, 31.0);
    }

    #[test]
    fn many_large_weights_overflow() {
        // 132,200 weights of 127 with inputs of -128 reach 2,149,068,800 > i32::MAX.
        let k = 132_200;
        let w = vec![127i8; k];
        assert!(dense("fc", &w, 1, &[0], 0, 0).is_err());
        assert!(dense("fc", &w[..100_000], 1, &[0], 0, 0).is_ok());
    }

    #[test]
    fn add_bounds() {
        assert!(add("s", 23, 0, 31).is_ok());
        assert!(add("s", 24, 24, 0).is_err());
    }
}
