//! Caffe's `DataTransformer` in the TEST phase, in Caffe's order:
//! 1. centre crop when `crop_size > 0` (`h_off = (H - crop) / 2`, `w_off = (W - crop) / 2`);
//! 2. `(pixel - mean) * scale` in f32, where `mean` is either the mean-file blob indexed at the
//!    *uncropped* position (Caffe requires the mean image to have the datum's full size and crops
//!    it at the same offsets) or `mean_value` (one for all channels, or one per channel).
//!
//! `mirror` is ignored: Caffe mirrors at random (`mirror && Rand(2)`) even in TEST, which no
//! reproducible evaluation can follow. Colour (`force_color`/`force_gray`) acts when images are
//! decoded, see [`super::ColorMode`]. Caffe's `HDF5Data` layer applies no transform at all; a
//! caller reading such a layer should use a default `Preprocess` with `scale = 1`.
//!
//! Output is f32 CHW; [`Preprocessor::batch`] packs samples into one contiguous NCHW buffer for
//! the float engine, while [`u8_batch`] keeps the raw bytes for the int8 path, which does its own
//! arithmetic on uint8.

use super::{Image, Sample};
use crate::ir::{Preprocess, Tensor};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
enum Mean {
    None,
    Values(Vec<f32>),
    Image { chw: [usize; 3], data: Vec<f32> },
}

/// A ready-to-apply TEST-phase transform.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessor {
    crop: usize,
    scale: f32,
    mean: Mean,
}

/// Preprocessed samples, NCHW contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Per-image `[C, H, W]` (after cropping).
    pub shape: [usize; 3],
    pub data: Vec<f32>,
    pub labels: Vec<Option<i64>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Image `i` of the batch.
    pub fn image(&self, i: usize) -> &[f32] {
        let n: usize = self.shape.iter().product();
        &self.data[i * n..(i + 1) * n]
    }
}

impl Preprocessor {
    /// `mean` is the mean-file blob (`[C,H,W]` or `[1,C,H,W]`), already read by the caller
    /// (see [`Preprocessor::load`]). Giving both a mean blob and `mean_value`s is refused, as
    /// Caffe does.
    ///
    /// A `scale` of 0 (or not finite) is refused: it would feed the net zeros. Note that
    /// `Preprocess::default()` has scale 0; the front end always fills Caffe's default 1.
    pub fn new(p: &Preprocess, mean: Option<Tensor>) -> Result<Self> {
        ensure!(
            p.scale != 0.0 && p.scale.is_finite(),
            "transform_param scale is {}; it must be a non-zero finite number (Caffe's default is 1)",
            p.scale
        );
        let mean = match (mean, p.mean_values.is_empty()) {
            (Some(_), false) => bail!("transform_param gives both a mean file and mean_value; Caffe refuses that, keep one"),
            (Some(t), true) => {
                let mut s: &[usize] = &t.shape;
                while s.len() > 3 && s[0] == 1 {
                    s = &s[1..];
                }
                ensure!(
                    s.len() == 3 && t.data.len() == s.iter().product::<usize>(),
                    "the mean blob has shape {:?}; expected [C, H, W] or [1, C, H, W]",
                    t.shape
                );
                Mean::Image {
                    chw: [s[0], s[1], s[2]],
                    data: t.data,
                }
            }
            (None, false) => Mean::Values(p.mean_values.clone()),
            (None, true) => Mean::None,
        };
        Ok(Preprocessor {
            crop: p.crop_size,
            scale: p.scale,
            mean,
        })
    }

    /// Build from a `Preprocess`, reading the mean file from `mean_file` (the `--mean-file`
    /// override) or else from the path the prototxt names.
    pub fn load(p: &Preprocess, mean_file: Option<&Path>) -> Result<Self> {
        let path = mean_file
            .map(Path::to_path_buf)
            .or_else(|| p.mean_file.as_ref().map(Into::into));
        let mean = match path {
            Some(mp) => {
                if !mp.exists() {
                    bail!(
                        "the mean file {} does not exist{}; pass --mean-file PATH",
                        mp.display(),
                        if mean_file.is_none() {
                            " (the prototxt's transform_param names it)"
                        } else {
                            ""
                        }
                    );
                }
                Some(
                    crate::caffe::read_blob_file(&mp)
                        .with_context(|| format!("mean file {}", mp.display()))?,
                )
            }
            None => None,
        };
        Self::new(p, mean)
    }

    /// Shape of the transformed image for an input of `[C, H, W]`, checking that crop and mean
    /// fit it.
    pub fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3]> {
        let [c, h, w] = input;
        if self.crop > 0 {
            ensure!(
                self.crop <= h && self.crop <= w,
                "crop_size {} is larger than the {h}×{w} images",
                self.crop
            );
        }
        match &self.mean {
            Mean::Image { chw, .. } => ensure!(
                *chw == input,
                "the mean file is {}×{}×{} (C×H×W) but the images are {c}×{h}×{w}; Caffe needs the mean image at the images' full (uncropped) size",
                chw[0],
                chw[1],
                chw[2]
            ),
            Mean::Values(v) => ensure!(
                v.len() == 1 || v.len() == c,
                "{} mean_value(s) given for {c}-channel images; give one, or one per channel",
                v.len()
            ),
            Mean::None => {}
        }
        Ok(if self.crop > 0 {
            [c, self.crop, self.crop]
        } else {
            input
        })
    }

    /// Top-left corner of the TEST-phase (centre) crop in an `h × w` image.
    pub fn crop_offsets(&self, h: usize, w: usize) -> (usize, usize) {
        if self.crop > 0 {
            ((h - self.crop) / 2, (w - self.crop) / 2)
        } else {
            (0, 0)
        }
    }

    /// Transform one image into `out` (length C·H'·W').
    pub fn apply_into(&self, img: &Image, out: &mut [f32]) -> Result<()> {
        let [c, oh, ow] = self.output_shape(img.shape())?;
        ensure!(
            out.len() == c * oh * ow,
            "output buffer holds {} values, the image needs {}",
            out.len(),
            c * oh * ow
        );
        let (h, w) = (img.height, img.width);
        let (y0, x0) = self.crop_offsets(h, w);
        for ch in 0..c {
            let mv = match &self.mean {
                Mean::Values(v) => v[if v.len() == 1 { 0 } else { ch }],
                Mean::None | Mean::Image { .. } => 0.0,
            };
            for y in 0..oh {
                for x in 0..ow {
                    let src = (ch * h + y0 + y) * w + x0 + x;
                    let v = img.value(src);
                    let v = match &self.mean {
                        Mean::Image { data, .. } => (v - data[src]) * self.scale,
                        Mean::Values(_) => (v - mv) * self.scale,
                        Mean::None => v * self.scale,
                    };
                    out[(ch * oh + y) * ow + x] = v;
                }
            }
        }
        Ok(())
    }

    /// Transform one image.
    pub fn apply(&self, img: &Image) -> Result<Vec<f32>> {
        let n: usize = self.output_shape(img.shape())?.iter().product();
        let mut out = vec![0.0; n];
        self.apply_into(img, &mut out)?;
        Ok(out)
    }

    /// Transform samples into one NCHW buffer (all images must share a shape).
    pub fn batch(&self, samples: &[Sample]) -> Result<Batch> {
        let first = samples
            .first()
            .ok_or_else(|| anyhow!("cannot build a batch from no samples"))?;
        let in_shape = first.image.shape();
        let shape = self.output_shape(in_shape)?;
        let per: usize = shape.iter().product();
        let mut data = vec![0.0; per * samples.len()];
        for (i, (s, out)) in samples.iter().zip(data.chunks_exact_mut(per)).enumerate() {
            ensure!(
                s.image.shape() == in_shape,
                "batch image {i} is {:?} but image 0 is {in_shape:?}",
                s.image.shape()
            );
            self.apply_into(&s.image, out)?;
        }
        Ok(Batch {
            shape,
            data,
            labels: samples.iter().map(|s| s.label).collect(),
        })
    }
}

/// The raw uint8 pixels of samples, NCHW contiguous, with the per-image `[C, H, W]`: the int8
/// path's input (it subtracts the mean in integers itself).
pub fn u8_batch(samples: &[Sample]) -> Result<(Vec<u8>, [usize; 3])> {
    let first = samples
        .first()
        .ok_or_else(|| anyhow!("cannot build a batch from no samples"))?;
    let shape = first.image.shape();
    let mut out = Vec::with_capacity(samples.len() * shape.iter().product::<usize>());
    for (i, s) in samples.iter().enumerate() {
        ensure!(
            s.image.shape() == shape,
            "batch image {i} is {:?} but image 0 is {shape:?}",
            s.image.shape()
        );
        let b = s.image.as_u8().ok_or_else(|| {
            anyhow!("batch image {i} holds float pixels; the int8 path needs uint8 images")
        })?;
        out.extend_from_slice(b);
    }
    Ok((out, shape))
}
