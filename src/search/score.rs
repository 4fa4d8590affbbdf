//! Scoring a quantized network's outputs against float outputs and labels.

use super::objective::{deq_logical, Compare, Objective};
use crate::fixed::graph::QGraph;
use crate::fixed::sim::Activations;
use crate::report::Score;
use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// Index of the largest value, the first one on ties (the firmware's arg-max rule too).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Numerically stable softmax in f64.
pub fn softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = v.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// The float blobs a quantized output is compared with, shared between a scorer and its subsets.
#[derive(Debug)]
pub struct FloatOutput {
    /// The blob name (in the float and the quantized graph alike).
    pub name: String,
    /// Logical shape without the batch.
    pub shape: Vec<usize>,
    /// Values per image.
    pub len: usize,
    /// `images × len`, in the float engine's logical order.
    data: Vec<f32>,
}

impl FloatOutput {
    pub fn new(name: String, shape: Vec<usize>, data: Vec<f32>) -> FloatOutput {
        let len = shape.iter().product();
        FloatOutput {
            name,
            shape,
            len,
            data,
        }
    }

    fn image(&self, i: usize) -> &[f32] {
        &self.data[i * self.len..(i + 1) * self.len]
    }
}

/// The reference a candidate is scored against: float outputs and, if known, labels.
#[derive(Debug, Clone)]
pub struct Scorer {
    pub objective: Objective,
    pub images: usize,
    /// Every output's float values (one copy, shared by the subsets: for a model with large
    /// outputs they are most of the search's memory). Their softmax is recomputed at each score
    /// (the same f64 arithmetic, so scores are unchanged) instead of being stored.
    outputs: Arc<Vec<FloatOutput>>,
    /// Image `i` of this scorer is image `index[i]` of `outputs`.
    index: Vec<usize>,
    /// Per image: its label, else the float top-1 (classifier), else 0 (regression); the
    /// classifier scores against it and the search's subsets are stratified by it.
    targets: Vec<usize>,
}

impl Scorer {
    /// `outputs` hold `images` images each; `labels` (if any) one per image.
    pub fn new(
        objective: Objective,
        outputs: Vec<FloatOutput>,
        images: usize,
        labels: Option<&[usize]>,
    ) -> Result<Scorer> {
        ensure!(images > 0, "no calibration images");
        ensure!(!outputs.is_empty(), "the model has no output to score");
        for o in &outputs {
            ensure!(
                o.len > 0 && o.data.len() == o.len * images,
                "float output '{}' has {} values, not {images} images of {}",
                o.name,
                o.data.len(),
                o.len
            );
        }
        let targets = match (labels, objective) {
            (Some(l), _) => {
                ensure!(l.len() == images, "{} labels for {images} images", l.len());
                l.to_vec()
            }
            (None, Objective::Classifier) => {
                (0..images).map(|i| argmax(outputs[0].image(i))).collect()
            }
            (None, Objective::Regression) => vec![0; images],
        };
        Ok(Scorer {
            objective,
            images,
            outputs: Arc::new(outputs),
            index: (0..images).collect(),
            targets,
        })
    }

    /// Image `i`'s float values of output `o`.
    fn float_row(&self, o: usize, i: usize) -> &[f32] {
        self.outputs[o].image(self.index[i])
    }

    pub fn targets(&self) -> &[usize] {
        &self.targets
    }

    pub fn outputs(&self) -> impl Iterator<Item = &FloatOutput> {
        self.outputs.iter()
    }

    /// The scorer of images `idx` (in that order); shares the float values.
    pub fn subset(&self, idx: &[usize]) -> Scorer {
        Scorer {
            objective: self.objective,
            images: idx.len(),
            outputs: Arc::clone(&self.outputs),
            index: idx.iter().map(|&i| self.index[i]).collect(),
            targets: idx.iter().map(|&i| self.targets[i]).collect(),
        }
    }

    /// Score the q7 outputs of all the scorer's images.
    pub fn score(&self, qg: &QGraph, acts: &Activations) -> Result<Score> {
        Ok(self.score_with_hits(qg, acts)?.0)
    }

    /// The score, and per image whether it counts as correct (classifier: top-1 equals its
    /// target; regression: every output row keeps the float arg-max), for paired comparisons.
    pub fn score_with_hits(&self, qg: &QGraph, acts: &Activations) -> Result<(Score, Vec<bool>)> {
        ensure!(
            qg.outputs.len() == self.outputs.len(),
            "the quantized graph has {} outputs, the float reference {}",
            qg.outputs.len(),
            self.outputs.len()
        );
        let mut q = Vec::with_capacity(self.outputs.len());
        for (name, o) in qg.outputs.iter().zip(self.outputs.iter()) {
            ensure!(
                *name == o.name,
                "quantized output '{name}' is compared with float blob '{}'",
                o.name
            );
            let v = acts
                .get(name)
                .with_context(|| format!("output blob '{name}' missing from the run"))?;
            ensure!(
                v.len() == self.images * o.len,
                "output '{name}' has {} values, expected {} × {}",
                v.len(),
                self.images,
                o.len
            );
            q.push(v);
        }
        match self.objective {
            Objective::Classifier => self.score_classifier(qg, q[0]),
            Objective::Regression => self.score_regression(qg, &q),
        }
    }

    /// Correct top-1, then the mean KL of the quantized softmax from the float softmax.
    fn score_classifier(&self, qg: &QGraph, q: &[i8]) -> Result<(Score, Vec<bool>)> {
        let out = &self.outputs[0];
        let scale = (-(qg.frac_bits(&out.name).context("output format")? as f64)).exp2();
        let mut correct = 0;
        let mut hits = Vec::with_capacity(self.images);
        let mut kl = 0.0;
        for (i, row) in q.chunks(out.len).enumerate() {
            let hit = argmax(row) == self.targets[i];
            hits.push(hit);
            if hit {
                correct += 1;
            }
            let deq: Vec<f32> = row.iter().map(|&x| (x as f64 * scale) as f32).collect();
            let pq = softmax(&deq);
            kl += softmax(self.float_row(0, i))
                .iter()
                .zip(&pq)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, q)| p * (p / q.max(1e-300)).ln())
                .sum::<f64>();
        }
        Ok((
            Score {
                correct,
                images: self.images,
                kl: kl / self.images as f64,
                sqnr_db: None,
                cosine: None,
            },
            hits,
        ))
    }

    /// Every output against float, per image (images in parallel, each into its own figures;
    /// callers sum them in image order, so the f64 sums do not depend on the thread count).
    fn per_image(&self, qg: &QGraph, q: &[&[i8]]) -> Result<Vec<Vec<Compare>>> {
        let mut layouts = Vec::with_capacity(q.len());
        for o in self.outputs.iter() {
            let b = qg
                .blobs
                .get(&o.name)
                .with_context(|| format!("no format for output '{}'", o.name))?;
            layouts.push((b.layout, b.frac_bits));
        }
        Ok((0..self.images)
            .into_par_iter()
            .map_init(Vec::new, |deq, i| {
                self.outputs
                    .iter()
                    .zip(&layouts)
                    .zip(q)
                    .enumerate()
                    .map(|(o, ((out, &(layout, frac)), q))| {
                        deq_logical(&q[i * out.len..(i + 1) * out.len], layout, frac, deq);
                        Compare::image(&out.shape, self.float_row(o, i), deq)
                    })
                    .collect()
            })
            .collect())
    }

    /// The lowest output SQNR, then the mean cosine; `correct`: images whose every row of every
    /// output keeps the float arg-max.
    fn score_regression(&self, qg: &QGraph, q: &[&[i8]]) -> Result<(Score, Vec<bool>)> {
        let mut total = vec![Compare::default(); self.outputs.len()];
        let mut correct = 0;
        let mut hits = Vec::with_capacity(self.images);
        for img in &self.per_image(qg, q)? {
            let hit = img.iter().all(|c| c.agree == c.rows);
            hits.push(hit);
            correct += usize::from(hit);
            for (t, c) in total.iter_mut().zip(img) {
                t.add(c);
            }
        }
        let sqnr = total
            .iter()
            .map(Compare::sqnr_db)
            .fold(f64::INFINITY, f64::min);
        let cosine = total.iter().map(Compare::mean_cosine).sum::<f64>() / total.len() as f64;
        Ok((
            Score {
                correct,
                images: self.images,
                kl: 0.0,
                sqnr_db: Some(sqnr),
                cosine: Some(cosine),
            },
            hits,
        ))
    }
}

/// Whether `a` beats `b`. Classifier: more correct, then smaller KL (by a margin that ignores
/// rounding noise). Regression: a higher lowest-output SQNR, then (equal to rounding, typically
/// because the change did not touch the worst output) a higher mean cosine.
pub fn better(a: &Score, b: &Score) -> bool {
    match (a.sqnr_db, b.sqnr_db, a.cosine, b.cosine) {
        (Some(sa), Some(sb), Some(ca), Some(cb)) => {
            sa > sb + 1e-9 || ((sa - sb).abs() <= 1e-9 && ca > cb + 1e-12)
        }
        _ => {
            a.correct > b.correct || (a.correct == b.correct && a.kl < b.kl * (1.0 - 1e-9) - 1e-12)
        }
    }
}

/// z² of a two-sided 95 % test.
const Z2_95: f64 = 1.96 * 1.96;

/// The held-out guard's comparison of `a` with `b` on the same images (`*_hits`: per image
/// correct or not). On a held-out fifth a difference of a few correct images is mostly chance:
/// the images a change fixes and those it breaks are counted (McNemar's paired test), and only a
/// difference significant at 95 % (`(gain − loss)² > 1.96² · (gain + loss)`) decides by top-1;
/// otherwise the KL to float, which moves smoothly, decides. The regression objective is
/// continuous already and compares as [`better`].
pub fn beats(a: &Score, a_hits: &[bool], b: &Score, b_hits: &[bool]) -> bool {
    if a.sqnr_db.is_some() || a_hits.len() != b_hits.len() {
        return better(a, b);
    }
    let (mut gain, mut loss) = (0usize, 0usize);
    for (&x, &y) in a_hits.iter().zip(b_hits) {
        match (x, y) {
            (true, false) => gain += 1,
            (false, true) => loss += 1,
            _ => {}
        }
    }
    let d = gain as f64 - loss as f64;
    if d * d > Z2_95 * (gain + loss) as f64 {
        return gain > loss;
    }
    a.kl < b.kl * (1.0 - 1e-9) - 1e-12
}

/// A continuous closeness to float, lower is closer (classifier: KL; regression: minus the
/// lowest SQNR): it ranks screened candidates more reliably than a few correct images.
pub fn distance(s: &Score) -> f64 {
    match s.sqnr_db {
        Some(db) => -db,
        None => s.kl,
    }
}

/// ARM's acceptance: accuracy not lower than the reference by more than 0.001 %.
pub fn arm_not_worse(a: &Score, reference: &Score) -> bool {
    let acc = |s: &Score| s.correct as f64 / s.images.max(1) as f64 * 100.0;
    acc(a) >= acc(reference) - 0.001
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(correct: usize, kl: f64) -> Score {
        Score {
            correct,
            images: 100,
            kl,
            sqnr_db: None,
            cosine: None,
        }
    }

    #[test]
    fn paired_comparison_needs_a_significant_top1_difference() {
        let base = vec![true; 50]
            .into_iter()
            .chain(vec![false; 50])
            .collect::<Vec<_>>();
        // Fixes 3 images, breaks none: not significant (9 < 3.84 · 3), so KL decides.
        let mut a = base.clone();
        a[50..53].iter_mut().for_each(|h| *h = true);
        assert!(!beats(&sc(53, 0.2), &a, &sc(50, 0.1), &base));
        assert!(beats(&sc(53, 0.05), &a, &sc(50, 0.1), &base));
        assert!(
            better(&sc(53, 0.2), &sc(50, 0.1)),
            "the plain objective counts images"
        );
        // Fixes 10, breaks none: significant, wins whatever the KL.
        let mut b = base.clone();
        b[50..60].iter_mut().for_each(|h| *h = true);
        assert!(beats(&sc(60, 0.5), &b, &sc(50, 0.1), &base));
        assert!(!beats(&sc(50, 0.01), &base, &sc(60, 0.5), &b));
        // Regression scores compare as before.
        let r = |db: f64, cos: f64| Score {
            sqnr_db: Some(db),
            cosine: Some(cos),
            ..sc(0, 0.0)
        };
        assert!(beats(&r(21.0, 0.9), &[], &r(20.0, 0.99), &[]));
        assert!(beats(&r(20.0, 0.99), &[], &r(20.0, 0.98), &[]));
        assert!(!beats(&r(19.0, 1.0), &[], &r(20.0, 0.5), &[]));
    }
}
