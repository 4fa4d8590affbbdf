//! Deterministic, class-stratified parts of the calibration set: the held-out part that guards
//! the search against overfitting, and the screening subset that the search scores every
//! candidate on before it confirms the best one on the whole search part.

/// Calibration sets smaller than this are searched whole (screening would save little and its
/// noise would cost accuracy).
pub const MIN_SCREENED: usize = 1024;

/// How many calibration images the default search screens candidates on (`--screen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Screen {
    /// An eighth of the set (at least 512 images) on sets of [`MIN_SCREENED`] images or more.
    #[default]
    Auto,
    /// Score every candidate on the whole set.
    Off,
    /// This many images.
    Images(usize),
}

impl Screen {
    /// `auto`, `off` or a number of images (clap's value parser).
    pub fn parse(s: &str) -> Result<Screen, String> {
        match s {
            "auto" => Ok(Screen::Auto),
            "off" => Ok(Screen::Off),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Screen::Images(n)),
                _ => Err(format!(
                    "'{s}' is not auto, off or a positive number of images"
                )),
            },
        }
    }

    /// The screening subset's size for `n` calibration images (`None`: no screening).
    pub fn size(self, n: usize) -> Option<usize> {
        match self {
            Screen::Auto => (n >= MIN_SCREENED).then(|| (n / 8).max(512)),
            Screen::Off => None,
            Screen::Images(k) => (k < n).then_some(k),
        }
    }
}

/// Calibration sets smaller than this are searched whole: a held-out fifth of fewer than 50
/// images judges a change by a handful of images, too few to tell overfitting from noise.
pub const MIN_HELD_OUT: usize = 250;

/// How much of the calibration set the default search holds out (`--holdout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Holdout {
    /// A fifth, on sets of [`MIN_HELD_OUT`] images or more.
    #[default]
    Auto,
    /// Search on the whole set (the search of earlier versions).
    Off,
    /// This many images.
    Images(usize),
}

impl Holdout {
    /// `auto`, `off` or a number of images (clap's value parser).
    pub fn parse(s: &str) -> Result<Holdout, String> {
        match s {
            "auto" => Ok(Holdout::Auto),
            "off" => Ok(Holdout::Off),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Holdout::Images(n)),
                _ => Err(format!(
                    "'{s}' is not auto, off or a positive number of images"
                )),
            },
        }
    }

    /// The held-out part's size for `n` calibration images (`None`: none). At least one image
    /// stays in the search part.
    pub fn size(self, n: usize) -> Option<usize> {
        match self {
            Holdout::Auto => (n >= MIN_HELD_OUT).then_some(n / 5),
            Holdout::Off => None,
            Holdout::Images(k) => (k < n).then_some(k),
        }
    }
}

/// The complement of sorted indices `idx` in `0..n`.
pub fn complement(idx: &[usize], n: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(n - idx.len().min(n));
    let mut it = idx.iter().peekable();
    for i in 0..n {
        if it.peek() == Some(&&i) {
            it.next();
        } else {
            out.push(i);
        }
    }
    out
}

/// `size` indices of `targets` (one class per image), every class represented in proportion:
/// the images sorted by (class, index) are taken at evenly spaced positions. Sorted ascending.
pub fn stratified(targets: &[usize], size: usize) -> Vec<usize> {
    let n = targets.len();
    let size = size.min(n);
    let mut by_class: Vec<usize> = (0..n).collect();
    by_class.sort_by_key(|&i| (targets[i], i));
    let mut idx: Vec<usize> = (0..size).map(|j| by_class[j * n / size]).collect();
    idx.sort_unstable();
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stratified_keeps_class_proportions_and_is_deterministic() {
        // 3 classes: 600, 300, 100 images, interleaved.
        let targets: Vec<usize> = (0..1000)
            .map(|i| match i % 10 {
                0..=5 => 0,
                6..=8 => 1,
                _ => 2,
            })
            .collect();
        let idx = stratified(&targets, 100);
        assert_eq!(idx.len(), 100);
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        let count = |c| idx.iter().filter(|&&i| targets[i] == c).count();
        assert_eq!((count(0), count(1), count(2)), (60, 30, 10));
        assert_eq!(idx, stratified(&targets, 100));
        assert_eq!(stratified(&targets, 5000).len(), 1000);
    }

    #[test]
    fn holdout_sizes_and_complement() {
        assert_eq!(Holdout::Auto.size(200), None);
        assert_eq!(Holdout::Auto.size(5085), Some(1017));
        assert_eq!(Holdout::Off.size(5085), None);
        assert_eq!(Holdout::Images(40).size(200), Some(40));
        assert_eq!(Holdout::Images(200).size(200), None);
        assert_eq!(Holdout::parse("off"), Ok(Holdout::Off));
        assert_eq!(Holdout::parse("40"), Ok(Holdout::Images(40)));
        assert!(Holdout::parse("-1").is_err() && Holdout::parse("0").is_err());
        assert_eq!(complement(&[1, 3], 5), vec![0, 2, 4]);
        assert_eq!(complement(&[], 2), vec![0, 1]);
    }

    #[test]
    fn screen_sizes() {
        assert_eq!(Screen::Auto.size(200), None);
        assert_eq!(Screen::Auto.size(1023), None);
        assert_eq!(Screen::Auto.size(1024), Some(512));
        assert_eq!(Screen::Auto.size(5085), Some(635));
        assert_eq!(Screen::Off.size(5085), None);
        assert_eq!(Screen::Images(1000).size(5085), Some(1000));
        assert_eq!(Screen::Images(6000).size(5085), None);
        assert_eq!(Screen::parse("auto"), Ok(Screen::Auto));
        assert_eq!(Screen::parse("off"), Ok(Screen::Off));
        assert_eq!(Screen::parse("700"), Ok(Screen::Images(700)));
        assert!(Screen::parse("0").is_err() && Screen::parse("many").is_err());
    }
}
