//! What the search maximises and the report measures, for any model.
//!
//! A classifier (one output that is a vector of class scores, or one output with labels) is
//! scored as before: correct top-1, then KL to the float softmax. Anything else (several
//! outputs, feature maps, detector heads) is a regression problem: every output is compared
//! with the float blob of the same name, and the search maximises the **lowest** output SQNR,
//! ties broken by the mean cosine similarity. The minimum, not the mean, because the quality
//! of a multi-head model is that of its worst head (a detector whose score head collapsed is
//! useless whatever its box head does, and the dB mean would let one excellent head hide it);
//! the cosine tie-break lets a change that only touches the other heads still count.
//!
//! All comparisons run image by image in the float engine's logical order (the q7 bytes are
//! rearranged per image), so memory stays linear in the output size.

use crate::fixed::graph::Hwc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Correct top-1 (labels, or the float top-1 without labels), then KL to float.
    Classifier,
    /// Lowest output SQNR (dB) over the outputs, then mean cosine.
    Regression,
}

impl Objective {
    pub fn name(self) -> &'static str {
        match self {
            Objective::Classifier => "classifier",
            Objective::Regression => "regression",
        }
    }

    /// The objective for outputs of these logical shapes, and why (for the report).
    pub fn choose(shapes: &[Vec<usize>], labelled: bool) -> (Objective, String) {
        match shapes {
            [s] if vector_like(s) => (
                Objective::Classifier,
                format!(
                    "one output of {} values read as class scores: top-1 {}, then KL to the float softmax",
                    s.iter().product::<usize>(),
                    if labelled { "against the labels" } else { "against the float top-1" }
                ),
            ),
            [s] if labelled => (
                Objective::Classifier,
                format!(
                    "one output ({}) with labels: top-1 against the labels, then KL to the float softmax",
                    shape_text(s)
                ),
            ),
            _ => (
                Objective::Regression,
                format!(
                    "{} output(s) ({}) that are not one vector of class scores: the lowest output SQNR against float, ties by mean cosine",
                    shapes.len(),
                    shapes.iter().map(|s| shape_text(s)).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
    }
}

fn shape_text(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

/// At most one dimension above 1: a vector (`[N]`, `[N,1,1]`, `[1,1,N]`).
pub fn vector_like(shape: &[usize]) -> bool {
    shape.iter().filter(|&&d| d > 1).count() <= 1
}

/// Dequantize one image of a q7 blob, stored HWC of `layout`, into the float engine's logical
/// order (CHW of the same dimensions; a flattened or reshaped blob keeps that order too).
pub fn deq_logical(q: &[i8], layout: Hwc, frac_bits: i32, out: &mut Vec<f64>) {
    let s = (-(frac_bits as f64)).exp2();
    out.clear();
    if layout.h * layout.w <= 1 || layout.c <= 1 {
        out.extend(q.iter().map(|&v| v as f64 * s));
        return;
    }
    out.resize(q.len(), 0.0);
    let hw = layout.h * layout.w;
    for (p, px) in q.chunks_exact(layout.c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * hw + p] = v as f64 * s;
        }
    }
}

/// Index of the largest of `n` values `get(0..n)`, the first on ties (the firmware's rule).
fn argmax_by(n: usize, get: impl Fn(usize) -> f64) -> usize {
    let mut best = 0;
    let mut bv = get(0);
    for i in 1..n {
        let v = get(i);
        if v > bv {
            best = i;
            bv = v;
        }
    }
    best
}

/// Rows whose arg-max float and quantized agree, and the number of rows, for one image in
/// logical order. A vector is one row; a `[C, H, W]` map has a row per position (arg-max over
/// the channels: the per-pixel class); other shapes (`[anchors, 2]`) a row per last-axis slice.
pub fn row_agreement(shape: &[usize], f: &[f32], q: &[f64]) -> (usize, usize) {
    let n = f.len().min(q.len());
    if n == 0 {
        return (0, 0);
    }
    if vector_like(shape) {
        let a = argmax_by(n, |i| f[i] as f64) == argmax_by(n, |i| q[i]);
        return (usize::from(a), 1);
    }
    if let [c, h, w] = *shape {
        let hw = h * w;
        let agree = (0..hw)
            .filter(|&p| {
                argmax_by(c, |ch| f[ch * hw + p] as f64) == argmax_by(c, |ch| q[ch * hw + p])
            })
            .count();
        return (agree, hw);
    }
    let last = (*shape.last().unwrap_or(&1)).max(1);
    let agree = f
        .chunks(last)
        .zip(q.chunks(last))
        .filter(|(a, b)| argmax_by(a.len(), |i| a[i] as f64) == argmax_by(b.len(), |i| b[i]))
        .count();
    (agree, n.div_ceil(last))
}

/// Float against quantized over some images of one output.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Compare {
    pub signal: f64,
    pub noise: f64,
    /// Sum over images of the per-image cosine similarity.
    pub cosine_sum: f64,
    pub agree: usize,
    pub rows: usize,
    pub images: usize,
}

impl Compare {
    /// One image: float `f` and dequantized `q`, both in logical order.
    pub fn image(shape: &[usize], f: &[f32], q: &[f64]) -> Compare {
        let (mut ff, mut qq, mut fq, mut noise) = (0f64, 0f64, 0f64, 0f64);
        for (&x, &y) in f.iter().zip(q) {
            let x = x as f64;
            ff += x * x;
            qq += y * y;
            fq += x * y;
            noise += (x - y) * (x - y);
        }
        let cosine = if ff == 0.0 && qq == 0.0 {
            1.0 // both all zero: identical
        } else if ff == 0.0 || qq == 0.0 {
            0.0
        } else {
            fq / (ff.sqrt() * qq.sqrt())
        };
        let (agree, rows) = row_agreement(shape, f, q);
        Compare {
            signal: ff,
            noise,
            cosine_sum: cosine,
            agree,
            rows,
            images: 1,
        }
    }

    pub fn add(&mut self, o: &Compare) {
        self.signal += o.signal;
        self.noise += o.noise;
        self.cosine_sum += o.cosine_sum;
        self.agree += o.agree;
        self.rows += o.rows;
        self.images += o.images;
    }

    pub fn sqnr_db(&self) -> f64 {
        crate::report::sqnr_db(self.signal, self.noise)
    }

    pub fn mean_cosine(&self) -> f64 {
        if self.images == 0 {
            0.0
        } else {
            self.cosine_sum / self.images as f64
        }
    }

    /// Fraction of rows whose arg-max agrees with float.
    pub fn agreement(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.agree as f64 / self.rows as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_objective_follows_the_outputs() {
        let c = |s: &[&[usize]], l| {
            Objective::choose(&s.iter().map(|s| s.to_vec()).collect::<Vec<_>>(), l).0
        };
        assert_eq!(c(&[&[10]], false), Objective::Classifier);
        assert_eq!(c(&[&[10, 1, 1]], false), Objective::Classifier);
        assert_eq!(c(&[&[1, 1, 10]], true), Objective::Classifier);
        assert_eq!(c(&[&[4, 5, 5]], true), Objective::Classifier);
        assert_eq!(c(&[&[4, 5, 5]], false), Objective::Regression);
        assert_eq!(c(&[&[4420, 2]], false), Objective::Regression);
        assert_eq!(c(&[&[10], &[10]], true), Objective::Regression);
    }

    #[test]
    fn stored_hwc_becomes_logical_chw() {
        // 2 channels × 1 × 3 positions, stored HWC: (p0c0 p0c1 p1c0 p1c1 p2c0 p2c1).
        let mut out = Vec::new();
        deq_logical(
            &[1, 10, 2, 20, 3, 30],
            Hwc { h: 1, w: 3, c: 2 },
            1,
            &mut out,
        );
        assert_eq!(out, vec![0.5, 1.0, 1.5, 5.0, 10.0, 15.0]);
        deq_logical(&[1, 2, 3], Hwc { h: 1, w: 1, c: 3 }, -1, &mut out);
        assert_eq!(out, vec![2.0, 4.0, 6.0]);
    }

    #[test]
    fn rows_agree_per_position_or_per_last_axis() {
        // [2 anchors, 2 scores]: the first row agrees, the second does not.
        assert_eq!(
            row_agreement(&[2, 2], &[0.1, 0.9, 0.8, 0.2], &[0.0, 1.0, 0.0, 1.0]),
            (1, 2)
        );
        // [2 channels, 1, 2 positions] in CHW: position 0 channel 1, position 1 channel 0.
        assert_eq!(
            row_agreement(&[2, 1, 2], &[0.0, 5.0, 1.0, 0.0], &[0.0, 5.0, 1.0, 0.0]),
            (2, 2)
        );
        assert_eq!(
            row_agreement(&[2, 1, 2], &[0.0, 5.0, 1.0, 0.0], &[1.0, 5.0, 0.0, 0.0]),
            (1, 2)
        );
        // A vector is one row.
        assert_eq!(
            row_agreement(&[3], &[0.0, 2.0, 1.0], &[0.0, 2.0, 1.0]),
            (1, 1)
        );
    }

    #[test]
    fn compare_measures_noise_and_direction() {
        let c = Compare::image(&[2], &[3.0, 4.0], &[3.0, 4.0]);
        assert_eq!(
            (c.signal, c.noise, c.cosine_sum, c.agree),
            (25.0, 0.0, 1.0, 1)
        );
        let mut d = Compare::image(&[2], &[3.0, 4.0], &[4.0, 3.0]);
        assert!((d.sqnr_db() - 10.0 * (25.0f64 / 2.0).log10()).abs() < 1e-12);
        assert!((d.mean_cosine() - 24.0 / 25.0).abs() < 1e-12);
        assert_eq!(d.agreement(), 0.0);
        d.add(&c);
        assert_eq!((d.images, d.rows, d.agree), (2, 2, 1));
        assert_eq!(
            Compare::image(&[2], &[0.0, 0.0], &[1.0, 0.0]).cosine_sum,
            0.0
        );
    }
}
