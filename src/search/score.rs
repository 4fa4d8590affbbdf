//! Scoring a quantized network's outputs against float outputs and labels.

use crate::fixed::graph::QGraph;
use crate::fixed::sim::Activations;
use crate::report::Score;
use anyhow::{ensure, Context, Result};

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

/// The reference a candidate is scored against: float outputs and, if known, labels.
#[derive(Debug, Clone)]
pub struct Scorer {
    pub classes: usize,
    pub images: usize,
    /// The float outputs, `images × classes`. Their softmax is recomputed at each score (the
    /// same f64 arithmetic, so scores are unchanged) instead of being stored: stored as f64
    /// probabilities they cost twice the memory, which dominates for models with large outputs.
    float_logits: Vec<f32>,
    /// Labels, or the float top-1 when the data has none.
    targets: Vec<usize>,
}

impl Scorer {
    pub fn new(float_outputs: &[f32], images: usize, labels: Option<&[usize]>) -> Result<Scorer> {
        ensure!(
            images > 0 && float_outputs.len().is_multiple_of(images),
            "float outputs do not divide into {images} images"
        );
        let classes = float_outputs.len() / images;
        let rows: Vec<&[f32]> = float_outputs.chunks(classes).collect();
        let targets = match labels {
            Some(l) => {
                ensure!(l.len() == images, "{} labels for {images} images", l.len());
                l.to_vec()
            }
            None => rows.iter().map(|r| argmax(r)).collect(),
        };
        Ok(Scorer {
            classes,
            images,
            float_logits: float_outputs.to_vec(),
            targets,
        })
    }

    /// Per image, the class it is scored against (its label, or the float top-1).
    fn float_row(&self, i: usize) -> &[f32] {
        &self.float_logits[i * self.classes..(i + 1) * self.classes]
    }

    pub fn targets(&self) -> &[usize] {
        &self.targets
    }

    /// The scorer of images `idx` (in that order).
    pub fn subset(&self, idx: &[usize]) -> Scorer {
        Scorer {
            classes: self.classes,
            images: idx.len(),
            float_logits: idx
                .iter()
                .flat_map(|&i| self.float_row(i).iter().copied())
                .collect(),
            targets: idx.iter().map(|&i| self.targets[i]).collect(),
        }
    }

    /// Score q7 outputs (the graph's first output blob) of all calibration images.
    pub fn score(&self, qg: &QGraph, acts: &Activations) -> Result<Score> {
        let out = qg
            .outputs
            .first()
            .context("the quantized graph has no output")?;
        let q = acts
            .get(out)
            .with_context(|| format!("output blob '{out}' missing from the run"))?;
        ensure!(
            q.len() == self.images * self.classes,
            "output has {} values, expected {} × {}",
            q.len(),
            self.images,
            self.classes
        );
        let scale = (-(qg.frac_bits(out).context("output format")? as f64)).exp2();
        let mut correct = 0;
        let mut kl = 0.0;
        for (i, row) in q.chunks(self.classes).enumerate() {
            if argmax(row) == self.targets[i] {
                correct += 1;
            }
            let deq: Vec<f32> = row.iter().map(|&x| (x as f64 * scale) as f32).collect();
            let pq = softmax(&deq);
            kl += softmax(self.float_row(i))
                .iter()
                .zip(&pq)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, q)| p * (p / q.max(1e-300)).ln())
                .sum::<f64>();
        }
        Ok(Score {
            correct,
            images: self.images,
            kl: kl / self.images as f64,
        })
    }
}

/// The default objective: more correct, then smaller KL (by a margin that ignores noise).
pub fn better(a: &Score, b: &Score) -> bool {
    a.correct > b.correct || (a.correct == b.correct && a.kl < b.kl * (1.0 - 1e-9) - 1e-12)
}

/// ARM's acceptance: accuracy not lower than the reference by more than 0.001 %.
pub fn arm_not_worse(a: &Score, reference: &Score) -> bool {
    let acc = |s: &Score| s.correct as f64 / s.images.max(1) as f64 * 100.0;
    acc(a) >= acc(reference) - 0.001
}
