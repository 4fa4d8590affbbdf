//! Qm.n formats and float → q7 quantization.
//!
//! A [`QFormat`] is the number of fraction bits `n`: the stored integer `q` means `q · 2^-n`.
//! `n` may be negative (ARM's CIFAR-10 model stores conv1's output with `n = -3`, one step = 8)
//! or larger than 7 (small weights).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// A fixed-point format for `i8` values: `value = int · 2^-frac_bits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QFormat {
    pub frac_bits: i32,
}

/// Largest |frac_bits| nnquant accepts: keeps `2^n` exact and finite in `f64`, far beyond any
/// useful q7 format.
pub const MAX_FRAC_BITS: i32 = 64;

impl QFormat {
    pub const fn new(frac_bits: i32) -> Self {
        QFormat { frac_bits }
    }

    /// `2^frac_bits` (the factor from real value to integer).
    pub fn scale(self) -> f64 {
        (self.frac_bits as f64).exp2()
    }

    /// Quantize one real value: `round(x · 2^n)` with **round half away from zero** (Rust's
    /// `f64::round`, and the rule of ARM's `nn_quantizer.py`, which uses `np.round` only on
    /// values it has already checked), then **saturate** to `[-128, 127]`. NaN maps to 0.
    /// `x · 2^n` is computed in `f64`, where the power-of-two scaling of an `f32` is exact.
    pub fn quantize(self, x: f32) -> i8 {
        let v = (x as f64 * self.scale()).round();
        if v.is_nan() {
            0
        } else {
            v.clamp(-128.0, 127.0) as i8
        }
    }

    /// Quantize a slice (see [`QFormat::quantize`]).
    pub fn quantize_slice(self, xs: &[f32]) -> Vec<i8> {
        xs.iter().map(|&x| self.quantize(x)).collect()
    }

    /// The real value of a stored integer.
    pub fn dequantize(self, q: i8) -> f32 {
        (q as f64 / self.scale()) as f32
    }

    /// ARM's rule: `frac_bits = 7 - ceil(log2(max_abs))`, i.e. the integer part gets the fewest
    /// bits with `max_abs ≤ 2^int_bits`. Computed exactly (no `log2` rounding near powers of
    /// two). A max_abs that is an exact power of two (e.g. 1.0 → Q0.7) lands on +2^int_bits and
    /// therefore saturates to 127 (-max_abs is still exact): this is ARM's choice and we keep it
    /// so that its formats are reproducible. `max_abs == 0` (all-zero tensor) gives Q0.7 (any
    /// format is exact; 7 is ARM's default). The result is clamped to ±[`MAX_FRAC_BITS`].
    /// Errors on a negative, NaN or infinite `max_abs`.
    pub fn from_max_abs(max_abs: f32) -> Result<QFormat> {
        if !max_abs.is_finite() || max_abs < 0.0 {
            bail!("cannot choose a Q format for max |x| = {max_abs}");
        }
        if max_abs == 0.0 {
            return Ok(QFormat::new(7));
        }
        let m = max_abs as f64;
        // Smallest e with 2^e >= m, starting from the float estimate and correcting it.
        let mut e = m.log2().ceil() as i32;
        while (e as f64 - 1.0).exp2() >= m {
            e -= 1;
        }
        while (e as f64).exp2() < m {
            e += 1;
        }
        Ok(QFormat::new((7 - e).clamp(-MAX_FRAC_BITS, MAX_FRAC_BITS)))
    }
}

impl std::fmt::Display for QFormat {
    /// `Qm.n` with `m = 7 - n` integer bits (sign excluded), as ARM writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q{}.{}", 7 - self.frac_bits, self.frac_bits)
    }
}

/// How the float preprocessing `(pixel - mean) · scale` at `frac_bits` becomes the integer
/// `round_half_away((pixel - mean) · mul / 2^rshift)` of `kernels::input_u8_q7`.
///
/// Every finite `f32` scale is a dyadic rational `mantissa · 2^e`, so `scale · 2^frac_bits =
/// mul / 2^rshift` **exactly** with an odd 24-bit `mul` (or a power of two): the integer path
/// then equals quantizing the exact real product, rounded once. A power-of-two scale gives
/// `mul = 2^k` or `mul = 1` with a right shift (mean 128, scale 1/128 at 7 fraction bits →
/// `mul = 1, rshift = 0`: exact). A scale that is not a power of two (e.g. 1/255 as an `f32`) is
/// still exact with respect to the `f32` value, at the cost of an `i64` multiply per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputScale {
    pub mul: i32,
    pub rshift: i32,
}

impl InputScale {
    /// Decompose `scale · 2^frac_bits` (a scale of 0 in Caffe's `transform_param` means "no
    /// scale", i.e. 1). Errors on a negative or non-finite scale, or when the required shift
    /// leaves `0..=62` / the multiplier overflows `i32` (absurd formats).
    pub fn new(scale: f32, frac_bits: i32) -> Result<InputScale> {
        let scale = if scale == 0.0 { 1.0 } else { scale };
        if !scale.is_finite() || scale < 0.0 {
            bail!("input scale {scale} must be positive and finite");
        }
        // scale = mant · 2^exp with mant odd.
        let bits = scale.to_bits();
        let raw_exp = ((bits >> 23) & 0xff) as i32;
        let frac = (bits & 0x7f_ffff) as i64;
        let (mut mant, mut exp) = if raw_exp == 0 {
            (frac, -149)
        } else {
            (frac | 0x80_0000, raw_exp - 150)
        };
        while mant % 2 == 0 {
            mant /= 2;
            exp += 1;
        }
        let total = exp + frac_bits; // scale · 2^n = mant · 2^total
        let (mul, rshift) = if total >= 0 {
            let m = (mant as i128) << total.min(100);
            if m > i32::MAX as i128 {
                bail!("input scale {scale} at {frac_bits} fraction bits needs a multiplier beyond i32");
            }
            (m as i32, 0)
        } else {
            (mant as i32, -total)
        };
        if rshift > 62 {
            bail!("input scale {scale} at {frac_bits} fraction bits needs a right shift of {rshift} (> 62)");
        }
        Ok(InputScale { mul, rshift })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_half_away_and_saturates() {
        let q = QFormat::new(0);
        assert_eq!(q.quantize(2.5), 3);
        assert_eq!(q.quantize(-2.5), -3);
        assert_eq!(q.quantize(-0.5), -1);
        assert_eq!(q.quantize(1000.0), 127);
        assert_eq!(q.quantize(-1000.0), -128);
        assert_eq!(q.quantize(f32::NAN), 0);
        assert_eq!(QFormat::new(-3).quantize(20.0), 3); // 2.5 -> 3
        assert_eq!(QFormat::new(8).quantize(0.25), 64);
    }

    #[test]
    fn max_abs_rule_is_exact_at_powers_of_two() {
        assert_eq!(QFormat::from_max_abs(1.0).unwrap().frac_bits, 7);
        assert_eq!(QFormat::from_max_abs(1.0001).unwrap().frac_bits, 6);
        assert_eq!(QFormat::from_max_abs(0.5).unwrap().frac_bits, 8);
        assert_eq!(QFormat::from_max_abs(0.49).unwrap().frac_bits, 8);
        assert_eq!(QFormat::from_max_abs(100.0).unwrap().frac_bits, 0);
        assert_eq!(QFormat::from_max_abs(128.0).unwrap().frac_bits, 0);
        assert_eq!(QFormat::from_max_abs(129.0).unwrap().frac_bits, -1);
        assert_eq!(QFormat::from_max_abs(0.0).unwrap().frac_bits, 7);
        assert!(QFormat::from_max_abs(f32::INFINITY).is_err());
        assert!(QFormat::from_max_abs(-1.0).is_err());
        assert_eq!(QFormat::new(-3).to_string(), "Q10.-3");
    }

    #[test]
    fn input_scale_is_exact() {
        assert_eq!(
            InputScale::new(1.0, 0).unwrap(),
            InputScale { mul: 1, rshift: 0 }
        );
        assert_eq!(
            InputScale::new(0.0, 0).unwrap(),
            InputScale { mul: 1, rshift: 0 }
        );
        assert_eq!(
            InputScale::new(1.0 / 128.0, 7).unwrap(),
            InputScale { mul: 1, rshift: 0 }
        );
        assert_eq!(
            InputScale::new(1.0, 2).unwrap(),
            InputScale { mul: 4, rshift: 0 }
        );
        assert_eq!(
            InputScale::new(1.0, -1).unwrap(),
            InputScale { mul: 1, rshift: 1 }
        );
        // 0.75 at 3 bits = 6
        assert_eq!(
            InputScale::new(0.75, 3).unwrap(),
            InputScale { mul: 6, rshift: 0 }
        );
        // 1/255 (f32): exact dyadic, odd mantissa.
        let s = InputScale::new(1.0 / 255.0, 7).unwrap();
        let exact = (1.0f32 / 255.0) as f64 * 128.0;
        assert_eq!(s.mul as f64 / (s.rshift as f64).exp2(), exact);
        assert!(InputScale::new(-1.0, 0).is_err());
    }
}
