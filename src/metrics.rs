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
    /// The non-zero cells of the confusion matrix, by label then prediction. Sparse: a model
    /// with many outputs (a detector's 300k-value map read as classes) must not cost memory
    /// quadratic in its output size.
    pub confusion: Vec<ConfusionCell>,
}

/// One non-zero cell of the confusion matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConfusionCell {
    pub label: usize,
    pub predicted: usize,
    pub count: usize,
}

/// Accumulates predictions image by image.
#[derive(Debug, Clone)]
pub struct Accumulator {
    classes: usize,
    images: usize,
    top1: usize,
    top5: usize,
    /// (label, predicted) → count, non-zero cells only.
    cells: std::collections::BTreeMap<(usize, usize), usize>,
    per_class_images: Vec<usize>,
}

impl Accumulator {
    pub fn new(classes: usize) -> Self {
        Accumulator {
            classes,
            images: 0,
            top1: 0,
            top5: 0,
            cells: Default::default(),
            per_class_images: vec![0; classes],
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
        *self.cells.entry((label, p)).or_default() += 1;
        self.per_class_images[label] += 1;
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
                let images = self.per_class_images[c];
                let correct = self.cells.get(&(c, c)).copied().unwrap_or(0);
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
            confusion: self
                .cells
                .iter()
                .map(|(&(label, predicted), &count)| ConfusionCell {
                    label,
                    predicted,
                    count,
                })
                .collect(),
        }
    }
}

impl Metrics {
    /// The count of `(label, predicted)`.
    pub fn confusion_at(&self, label: usize, predicted: usize) -> usize {
        self.confusion
            .binary_search_by_key(&(label, predicted), |c| (c.label, c.predicted))
            .map_or(0, |i| self.confusion[i].count)
    }

    /// The confusion matrix as a Markdown table (rows: label, columns: prediction); for more
    /// than [`MARKDOWN_MATRIX_CLASSES`] classes, the most frequent confusions instead.
    pub fn confusion_markdown(&self) -> String {
        if self.classes > MARKDOWN_MATRIX_CLASSES {
            let mut off: Vec<&ConfusionCell> = self
                .confusion
                .iter()
                .filter(|c| c.label != c.predicted)
                .collect();
            off.sort_by_key(|c| (std::cmp::Reverse(c.count), c.label, c.predicted));
            let mut s = format!(
                "{} classes: the {} most frequent confusions\n\n| label | predicted | images |\n|---:|---:|---:|\n",
                self.classes,
                off.len().min(20)
            );
            for c in off.iter().take(20) {
                s += &format!("| {} | {} | {} |\n", c.label, c.predicted, c.count);
            }
            return s;
        }
        let mut s = String::from("| label \\ predicted |");
        for c in 0..self.classes {
            s += &format!(" {c} |");
        }
        s += " accuracy |\n|---|";
        s += &"---|".repeat(self.classes + 1);
        s.push('\n');
        for l in 0..self.classes {
            s += &format!("| {l} |");
            for p in 0..self.classes {
                s += &format!(" {} |", self.confusion_at(l, p));
            }
            s += &format!(" {:.2} % |\n", self.per_class[l].accuracy * 100.0);
        }
        s
    }
}

/// Above this many classes a full confusion matrix is not printed.
pub const MARKDOWN_MATRIX_CLASSES: usize = 32;

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
        assert_eq!(
            (0..3).map(|p| m.confusion_at(1, p)).collect::<Vec<_>>(),
            vec![1, 1, 0]
        );
        assert_eq!(m.confusion.len(), 2, "only non-zero cells are kept");
        assert!(m
            .confusion_markdown()
            .contains("| 1 | 1 | 1 | 0 | 50.00 % |"));
        // Many outputs: memory follows the images, not classes².
        let mut big = Accumulator::new(300_000);
        let mut scores = vec![0i8; 300_000];
        scores[7] = 1;
        assert!(big.add(&scores, 7) && big.add(&scores, 299_999));
        let m = big.finish();
        assert_eq!((m.top1_correct, m.confusion.len()), (1, 2));
        assert!(m.confusion_markdown().contains("| 299999 | 7 | 1 |"));
        assert!(in_top_k(&[3i8, 1, 2], 2, 2));
        assert!(!in_top_k(&[3i8, 2, 2], 2, 2)); // tie with a lower index ranks above
    }
}
