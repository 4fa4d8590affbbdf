//! The content hash of an evaluation (or calibration) set: SHA-256 over exactly the images and
//! labels used, in order, so that `report diff` can tell whether two reports measured the same
//! thing, whatever the files were called or where they lived.

use crate::data::{Pixels, Sample};
use sha2::{Digest, Sha256};

/// Feeds samples in order; [`DataHasher::finish`] gives the hex digest.
pub struct DataHasher(Sha256);

impl Default for DataHasher {
    fn default() -> Self {
        let mut h = Sha256::new();
        h.update(b"nnquant.data/1");
        DataHasher(h)
    }
}

impl DataHasher {
    /// One sample: its shape, its pixels (u8 or f32 bytes, tagged so the two never collide)
    /// and its label (or the absence of one).
    pub fn add(&mut self, s: &Sample) {
        let h = &mut self.0;
        for d in s.image.shape() {
            h.update((d as u64).to_le_bytes());
        }
        match &s.image.pixels {
            Pixels::U8(v) => {
                h.update([0u8]);
                h.update(v);
            }
            Pixels::F32(v) => {
                h.update([1u8]);
                for x in v {
                    h.update(x.to_le_bytes());
                }
            }
        }
        match s.label {
            Some(l) => {
                h.update([1u8]);
                h.update(l.to_le_bytes());
            }
            None => h.update([0u8]),
        }
    }

    pub fn finish(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Image;

    fn sample(px: Vec<u8>, label: Option<i64>) -> Sample {
        Sample {
            image: Image {
                channels: 1,
                height: 1,
                width: px.len(),
                pixels: Pixels::U8(px),
            },
            label,
        }
    }

    fn hash(samples: &[Sample]) -> String {
        let mut h = DataHasher::default();
        samples.iter().for_each(|s| h.add(s));
        h.finish()
    }

    #[test]
    fn pixels_labels_and_order_all_count() {
        let a = [sample(vec![1, 2], Some(0)), sample(vec![3, 4], Some(1))];
        let base = hash(&a);
        assert_eq!(base, hash(&a));
        assert_ne!(
            base,
            hash(&[sample(vec![1, 2], Some(0)), sample(vec![3, 5], Some(1))])
        );
        assert_ne!(
            base,
            hash(&[sample(vec![1, 2], Some(0)), sample(vec![3, 4], Some(2))])
        );
        assert_ne!(
            base,
            hash(&[sample(vec![1, 2], Some(0)), sample(vec![3, 4], None)])
        );
        assert_ne!(base, hash(&[a[1].clone(), a[0].clone()]));
        // Same bytes, different shape.
        assert_ne!(
            hash(&[sample(vec![1, 2, 3, 4], None)]),
            hash(&[sample(vec![1, 2], None), sample(vec![3, 4], None)])
        );
    }
}
