//! The histogram of a blob's float values over the calibration set, as the report stores it
//! (`blobs[i].histogram`) and the plots draw it (`svg`).
//!
//! Fixed bins, integer counts, and no dependence on how the values were split into batches or
//! threads: the bins always cover `[-2^e, 2^e)` with `2^e` the smallest power of two above every
//! |x| seen, [`BINS`] equal bins. A value's bin is `floor(x · 2^(6-e)) + 64`, computed exactly
//! (a product by a power of two is exact in f64), and when a later value raises `e` by `d` the
//! counts move to `64 + floor((i - 64) / 2^d)`, which is where those values would have landed
//! directly (`floor(floor(y) / 2^d) = floor(y / 2^d)`). So any order of adding and merging gives
//! the same histogram as one pass over all values at the final range. The range is a power of
//! two like a q7 format's, so the max-abs format's range `[-2^(7-f), 2^(7-f))` is exactly the
//! histogram's range, each bin two q7 steps wide.
//!
//! Memory is fixed per blob (never the values themselves).

use serde::{Deserialize, Serialize};

/// Bins over `[-2^e, 2^e)`.
pub const BINS: usize = 128;
const HALF: i64 = (BINS / 2) as i64;
const LOG2_HALF: i32 = 6;
/// The exponent of a histogram that has seen only zeros: below that of any nonzero f32
/// (the smallest subnormal is 2^-149, whose exponent here is -148).
const ZERO_EXP: i32 = -149;

/// A blob's histogram as stored in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// The bins cover `[lo, hi)`, `counts.len()` equal bins; `hi = -lo` is a power of two.
    pub lo: f64,
    pub hi: f64,
    /// Largest |x| over the finite values (the calibration set's, which sets the search's
    /// start format).
    pub max_abs: f32,
    pub counts: Vec<u64>,
    /// NaN or infinite values, left out of the bins.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nonfinite: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The accumulating form: add values batch by batch, merge partial histograms in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramAcc {
    exp: i32,
    counts: Vec<u64>,
    /// Bits of the largest finite |x| (non-negative floats compare like their bits).
    max_abs_bits: u32,
    nonfinite: u64,
}

impl Default for HistogramAcc {
    fn default() -> Self {
        HistogramAcc {
            exp: ZERO_EXP,
            counts: vec![0; BINS],
            max_abs_bits: 0,
            nonfinite: 0,
        }
    }
}

/// `2^k` exactly (`k` within f64's normal exponents, which every caller's is).
fn pow2(k: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&k));
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// The smallest `e` with `2^e > m` (`m` finite, non-negative); [`ZERO_EXP`] for zero.
fn exp_above(m: f32) -> i32 {
    if m == 0.0 {
        return ZERO_EXP;
    }
    // Every f32 is a normal f64, whose exponent field is floor(log2 m).
    (((m as f64).to_bits() >> 52) & 0x7ff) as i32 - 1023 + 1
}

impl HistogramAcc {
    pub fn new() -> Self {
        Self::default()
    }

    /// The histogram of these values alone.
    pub fn of(values: &[f32]) -> Self {
        let mut h = Self::new();
        h.add(values);
        h
    }

    /// Add values (in any batches: the result does not depend on how they are split).
    pub fn add(&mut self, values: &[f32]) {
        // One integer pass for the largest |x| (bits of non-negative floats order like the
        // floats; NaN and ±inf have the largest bits of all).
        let max_bits = values
            .iter()
            .fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff));
        if max_bits >= f32::INFINITY.to_bits() {
            // Rare: non-finite values are counted apart, the rest binned.
            let finite: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
            self.nonfinite += (values.len() - finite.len()) as u64;
            return self.add(&finite);
        }
        self.max_abs_bits = self.max_abs_bits.max(max_bits);
        self.widen(exp_above(f32::from_bits(max_bits)));
        let scale = pow2(LOG2_HALF - self.exp);
        // floor(v) + 64 with v in [-64, 64): truncate, then step down where that rounded up.
        // (Faster on this machine than the same from the bits of x in integers.)
        let bin = |x: f32| {
            let v = x as f64 * scale;
            let t = v as i64;
            (t - i64::from((t as f64) > v) + HALF) as usize
        };
        // Four partial counts: runs of equal values (the zeros after a ReLU) would otherwise
        // make each increment wait for the previous one.
        let mut part = [[0u64; BINS]; 4];
        let quads = values.chunks_exact(4);
        for x in quads.remainder() {
            part[0][bin(*x)] += 1;
        }
        for q in quads {
            part[0][bin(q[0])] += 1;
            part[1][bin(q[1])] += 1;
            part[2][bin(q[2])] += 1;
            part[3][bin(q[3])] += 1;
        }
        for (i, c) in self.counts.iter_mut().enumerate() {
            *c += part[0][i] + part[1][i] + part[2][i] + part[3][i];
        }
    }

    /// Add another histogram's values (merging in any order gives the same result).
    pub fn merge(&mut self, other: &HistogramAcc) {
        let mut o = other.clone();
        let e = self.exp.max(o.exp);
        self.widen(e);
        o.widen(e);
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.max_abs_bits = self.max_abs_bits.max(o.max_abs_bits);
        self.nonfinite += o.nonfinite;
    }

    /// Raise the range to `[-2^e, 2^e)` (no-op if it is already as wide).
    fn widen(&mut self, e: i32) {
        if e <= self.exp {
            return;
        }
        let d = (e - self.exp).min(63) as u32;
        let mut counts = vec![0u64; BINS];
        for (i, &c) in self.counts.iter().enumerate() {
            // Arithmetic shift = floor division by 2^d, also for the negative half.
            counts[(HALF + ((i as i64 - HALF) >> d)) as usize] += c;
        }
        self.counts = counts;
        self.exp = e;
    }

    pub fn finish(&self) -> Histogram {
        let hi = pow2(self.exp);
        Histogram {
            lo: -hi,
            hi,
            max_abs: f32::from_bits(self.max_abs_bits),
            counts: self.counts.clone(),
            nonfinite: self.nonfinite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reproducible spread of values over many magnitudes, both signs, with zeros and
    /// values exactly on bin edges.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                match i % 7 {
                    0 => 0.0,
                    1 => -0.25,           // an edge at every range
                    2 => (u - 0.5) * 3.0, // [-1.5, 1.5)
                    3 => u * 1e-3,
                    4 => -(u * 40.0),
                    _ => (u - 0.3) * 0.7,
                }
            })
            .collect()
    }

    #[test]
    fn bins_are_where_the_formula_puts_them() {
        let h = HistogramAcc::of(&[0.0, 0.5, -0.5, 0.99, -1.0, 1.0]).finish();
        // max |x| = 1.0 → range [-2, 2), 128 bins of 1/32.
        assert_eq!((h.lo, h.hi), (-2.0, 2.0));
        assert_eq!(h.max_abs, 1.0);
        assert_eq!(h.counts.len(), BINS);
        let mut want = vec![0u64; BINS];
        want[64] += 1; // 0
        want[64 + 16] += 1; // 0.5
        want[64 - 16] += 1; // -0.5: its bin starts at -0.5
        want[64 + 31] += 1; // 0.99 → floor(31.68)
        want[64 - 32] += 1; // -1
        want[64 + 32] += 1; // 1
        assert_eq!(h.counts, want);
        assert_eq!(h.counts.iter().sum::<u64>(), 6);
    }

    #[test]
    fn the_same_whatever_the_batches_and_the_merge_order() {
        let v = values(10_000, 7);
        let whole = HistogramAcc::of(&v);
        assert_eq!(whole.counts.iter().sum::<u64>(), 10_000);
        // Added batch by batch, in several batch sizes (the small batches raise the range
        // many times over).
        for batch in [1, 3, 32, 999] {
            let mut h = HistogramAcc::new();
            for c in v.chunks(batch) {
                h.add(c);
            }
            assert_eq!(h, whole, "batches of {batch}");
        }
        // Per-chunk histograms merged forwards, backwards and as a tree.
        let parts: Vec<HistogramAcc> = v.chunks(777).map(HistogramAcc::of).collect();
        let mut fwd = HistogramAcc::new();
        parts.iter().for_each(|p| fwd.merge(p));
        let mut back = HistogramAcc::new();
        parts.iter().rev().for_each(|p| back.merge(p));
        let tree = parts
            .chunks(2)
            .map(|pair| {
                let mut a = pair[0].clone();
                if let Some(b) = pair.get(1) {
                    a.merge(b);
                }
                a
            })
            .fold(HistogramAcc::new(), |mut a, b| {
                a.merge(&b);
                a
            });
        assert_eq!(fwd, whole);
        assert_eq!(back, whole);
        assert_eq!(tree, whole);
        // And a different order of the values themselves.
        let mut rev = v.clone();
        rev.reverse();
        assert_eq!(HistogramAcc::of(&rev), whole);
    }

    #[test]
    fn widening_keeps_each_value_in_its_bin() {
        // 0.25 then 1000: the small range's counts move 11 octaves up, into the bin 0.25
        // lands in directly at [-1024, 1024).
        let mut h = HistogramAcc::of(&[0.25, -0.25, -1e-30]);
        h.add(&[1000.0]);
        let f = h.finish();
        assert_eq!(f.hi, 1024.0);
        let direct = HistogramAcc::of(&[0.25, -0.25, -1e-30, 1000.0]).finish();
        assert_eq!(f, direct);
        assert_eq!(f.counts[64], 1); // 0.25 → floor(0.25/16) = 0
        assert_eq!(f.counts[63], 2); // -0.25 and -1e-30 → -1
        assert_eq!(f.counts[64 + 62], 1); // 1000/16 = 62.5
    }

    #[test]
    fn zeros_and_non_finite_values() {
        let z = HistogramAcc::of(&[0.0, -0.0, f32::NAN, f32::INFINITY]);
        let f = z.finish();
        assert_eq!(f.counts[64], 2);
        assert_eq!(f.nonfinite, 2);
        assert_eq!(f.max_abs, 0.0);
        // Only zeros, then merged with real values: the zeros stay in the centre bin.
        let mut m = z.clone();
        m.merge(&HistogramAcc::of(&[3.0, -3.0]));
        let f = m.finish();
        assert_eq!((f.lo, f.hi), (-4.0, 4.0));
        assert_eq!(f.counts[64], 2);
        assert_eq!(f.counts[64 + 48], 1);
        assert_eq!(f.counts[64 - 48], 1);
        assert_eq!(f.nonfinite, 2);
        // The extremes of f32 stay in range.
        let e = HistogramAcc::of(&[f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-45]).finish();
        assert_eq!(e.hi, 2f64.powi(128));
        assert_eq!(e.counts.iter().sum::<u64>(), 4);
        assert_eq!(e.counts[0] + e.counts[BINS - 1], 2);
    }

    #[test]
    fn round_trips_through_json() {
        let h = HistogramAcc::of(&values(500, 3)).finish();
        let text = serde_json::to_string(&h).unwrap();
        assert!(!text.contains("nonfinite"), "zero is left out: {text}");
        assert_eq!(serde_json::from_str::<Histogram>(&text).unwrap(), h);
    }
}
