//! Deterministic carving of a data set: `--offset/--limit` windows and `--split calib:eval`.
//!
//! Parts are **contiguous index ranges**, never shuffled: the same file and the same flags give
//! the same images on every machine, and a calibration part never overlaps its evaluation part.
//! (Shuffle the file itself if its order is not already random; CIFAR's is.)

use super::{check_index, Sample, Source};
use anyhow::{bail, ensure, Result};
use std::ops::Range;

/// Where to cut a set in two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SplitAt {
    /// The first part gets `floor(len · f)` samples, `0 ≤ f ≤ 1`.
    Fraction(f64),
    /// The first part gets this many samples.
    Count(usize),
}

/// Which side of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Before the cut (calibration).
    First,
    /// After the cut (evaluation).
    Second,
}

/// Parse `--split`: `a:b` (ratio, e.g. `80:20` or `4:1` → first part `a/(a+b)`), a fraction
/// `0.8`, or a count `4000`.
pub fn parse_split(s: &str) -> Result<SplitAt> {
    let bad = || {
        anyhow::anyhow!("split '{s}': expected a ratio 'calib:eval' (e.g. 80:20), a fraction (0.8) or a count (4000)")
    };
    if let Some((a, b)) = s.split_once(':') {
        let a: f64 = a.trim().parse().map_err(|_| bad())?;
        let b: f64 = b.trim().parse().map_err(|_| bad())?;
        ensure!(
            a >= 0.0 && b >= 0.0 && a + b > 0.0 && (a + b).is_finite(),
            bad()
        );
        Ok(SplitAt::Fraction(a / (a + b)))
    } else if let Ok(n) = s.trim().parse::<usize>() {
        Ok(SplitAt::Count(n))
    } else {
        let f: f64 = s.trim().parse().map_err(|_| bad())?;
        ensure!((0.0..=1.0).contains(&f), bad());
        Ok(SplitAt::Fraction(f))
    }
}

impl SplitAt {
    /// Index of the cut in a set of `len` samples.
    pub fn point(self, len: usize) -> Result<usize> {
        match self {
            SplitAt::Fraction(f) => {
                ensure!(
                    (0.0..=1.0).contains(&f),
                    "split fraction {f} is outside 0..1"
                );
                Ok(((len as f64) * f).floor() as usize)
            }
            SplitAt::Count(n) => {
                ensure!(
                    n <= len,
                    "split at {n} but the set holds only {len} samples"
                );
                Ok(n)
            }
        }
    }
}

/// A contiguous window of another source, re-indexed from 0.
pub struct Subset<S> {
    inner: S,
    range: Range<usize>,
}

impl<S: Source> Subset<S> {
    /// Samples `range` of `inner`.
    pub fn new(inner: S, range: Range<usize>) -> Result<Self> {
        ensure!(
            range.start <= range.end && range.end <= inner.len(),
            "{}: window {}..{} does not fit in {} samples",
            inner.describe(),
            range.start,
            range.end,
            inner.len()
        );
        Ok(Subset { inner, range })
    }

    /// `--offset` / `--limit`: skip `offset` samples, keep at most `limit`. An offset past the end
    /// is an error (it would silently yield nothing).
    pub fn window(inner: S, offset: usize, limit: Option<usize>) -> Result<Self> {
        let len = inner.len();
        if offset >= len {
            bail!(
                "{}: --offset {offset} but the set holds only {len} samples",
                inner.describe()
            );
        }
        let end = limit.map_or(len, |l| offset.saturating_add(l).min(len));
        Self::new(inner, offset..end)
    }

    /// One side of a two-way split.
    pub fn split(inner: S, at: SplitAt, part: Part) -> Result<Self> {
        let cut = at.point(inner.len())?;
        let range = match part {
            Part::First => 0..cut,
            Part::Second => cut..inner.len(),
        };
        Self::new(inner, range)
    }

    /// The window in the inner source's indices.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Source> Source for Subset<S> {
    fn len(&self) -> usize {
        self.range.len()
    }
    fn describe(&self) -> String {
        format!(
            "{} [samples {}..{}]",
            self.inner.describe(),
            self.range.start,
            self.range.end
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.range.len(), &self.describe())?;
        self.inner.read(self.range.start + index)
    }
    fn read_range(&mut self, range: Range<usize>) -> Result<Vec<Sample>> {
        if range.is_empty() {
            return Ok(vec![]);
        }
        check_index(range.end - 1, self.range.len(), &self.describe())?;
        let s = self.range.start;
        self.inner.read_range(s + range.start..s + range.end)
    }
}
