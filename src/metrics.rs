//! Classification metrics: top-1/top-5, per-class accuracy, confusion matrix.

use serde::Serialize;

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

/// Whether `label` is among the `k` largest values (ties broken by lower index, like argmax).
pub fn in_top_k<T: PartialOrd + Copy>(v: &[T], label: usize, k: usize) -> bool {
    let Some(&l) = v.get(label) else { return false };
    let better = v
        .iter()
        .enumerate()
        .filter(|&(i, &x)| x > l || (x == l && i < label))
        .count();
    better < k
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassStats {
    pub class: usize,
    pub images: usize,
    pub correct: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub images: usize,
    pub classes: usize,
    pub top1_correct: usize,
    pub top5_correct: usize,
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<ClassStats>,
    /// `confusion[label][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

/// Accumulates predictions image by image.
#[derive(Debug, Clone)]
pub struct Accumulator {
    classes: usize,
    images: usize,
    top1: usize,
    top5: usize,
    confusion: Vec<Vec<usize>>,
}

impl Accumulator {
    pub fn new(classes: usize) -> Self {
        Accumulator {
            classes,
            images: 0,
            top1: 0,
            top5: 0,
            confusion: vec![vec![0; classes]; classes],
        }
    }

    /// Add one image's scores and label; a label outside the classes is an error for the caller
    /// to report (returns false).
    pub fn add<T: PartialOrd + Copy>(&mut self, scores: &[T], label: usize) -> bool {
        if label >= self.classes {
            return false;
        }
        let p = argmax(scores);
        self.images += 1;
        self.top1 += usize::from(p == label);
        self.top5 += usize::from(in_top_k(scores, label, 5));
        self.confusion[label][p] += 1;
        true
    }

    pub fn finish(&self) -> Metrics {
        let frac = |n: usize| {
            if self.images == 0 {
                0.0
            } else {
                n as f64 / self.images as f64
            }
        };
        let per_class = (0..self.classes)
            .map(|c| {
                let images: usize = self.confusion[c].iter().sum();
                let correct = self.confusion[c][c];
                ClassStats {
                    class: c,
                    images,
                    correct,
                    accuracy: if images == 0 {
                        0.0
                    } else {
                        correct as f64 / images as f64
                    },
                }
            })
            .collect();
        Metrics {
            images: self.images,
            classes: self.classes,
            top1_correct: self.top1,
            top5_correct: self.top5,
            top1: frac(self.top1),
            top5: frac(self.top5),
            per_class,
            confusion: self.confusion.clone(),
        }
    }
}

impl Metrics {
    /// The confusion matrix as a Markdown table (rows: label, columns: prediction).
    pub fn confusion_markdown(&self) -> String {
        let mut s = String::from("| label \\ predicted |");
        for c in 0..self.classes {
            s += &format!(" {c} |");
        }
        s += " accuracy |\n|---|";
        s += &"---|".repeat(self.classes + 1);
        s.push('\n');
        for (l, row) in self.confusion.iter().enumerate() {
            s += &format!("| {l} |");
            for v in row {
                s += &format!(" {v} |");
            }
            s += &format!(" {:.2} % |\n", self.per_class[l].accuracy * 100.0);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_confusion() {
        let mut a = Accumulator::new(3);
        assert!(a.add(&[0.1f32, 0.7, 0.2], 1));
        assert!(a.add(&[0.5f32, 0.5, 0.0], 1)); // tie: first index wins, so predicted 0
        assert!(!a.add(&[0.5f32, 0.5, 0.0], 3));
        let m = a.finish();
        assert_eq!((m.images, m.top1_correct, m.top5_correct), (2, 1, 2));
        assert_eq!(m.confusion[1], vec![1, 1, 0]);
        assert!(in_top_k(&[3i8, 1, 2], 2, 2));
        assert!(!in_top_k(&[3i8, 2, 2], 2, 2)); // tie with a lower index ranks above
    }
}
