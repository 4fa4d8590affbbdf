//! The integer input path: what the firmware does to uint8 pixels, mirrored on the host.
//!
//! Caffe computes `(pixel - mean) * scale` in float on CHW data (after a centre crop in TEST).
//! The firmware receives HWC uint8 pixels and computes the q7 input in integers
//! (`kernels::input_u8_q7`), so the mean must be uint8: a mean file's values are rounded to the
//! nearest integer (ARM's `mean.binaryproto` is already integral), `mean_value`s likewise.

use crate::data::{Pixels, Sample};
use crate::ir::{Preprocess, Tensor};
use anyhow::{bail, ensure, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct IntegerInput {
    /// Raw image shape `[C, H, W]` before the crop.
    pub raw: [usize; 3],
    /// Network input shape `[C, H', W']`.
    pub shape: [usize; 3],
    crop: (usize, usize),
    /// HWC per-pixel mean (cropped), per-channel mean, or empty.
    pub mean_u8: Vec<u8>,
    pub scale: f32,
    /// Largest |rounded - exact| of the mean (0 for an integral mean).
    pub mean_rounding: f32,
}

fn to_u8(v: f32, what: &str) -> Result<u8> {
    ensure!(
        v.is_finite() && (-0.5..255.5).contains(&v),
        "{what} value {v} is outside 0..255; a uint8 input path cannot subtract it"
    );
    Ok(v.round() as u8)
}

impl IntegerInput {
    pub fn new(p: &Preprocess, mean: Option<&Tensor>, raw: [usize; 3]) -> Result<IntegerInput> {
        let [c, h, w] = raw;
        let crop = p.crop_size;
        ensure!(
            crop <= h && crop <= w,
            "crop_size {crop} is larger than the {h}×{w} images"
        );
        let (oh, ow) = if crop > 0 { (crop, crop) } else { (h, w) };
        let (y0, x0) = if crop > 0 {
            ((h - crop) / 2, (w - crop) / 2)
        } else {
            (0, 0)
        };
        let mut rounding = 0f32;
        let mean_u8 = match (mean, p.mean_values.as_slice()) {
            (Some(_), [_, ..]) => {
                bail!("transform_param gives both a mean file and mean_value; keep one")
            }
            (Some(t), []) => {
                ensure!(
                    t.len() == c * h * w,
                    "the mean file has shape {:?} but the images are {c}×{h}×{w}",
                    t.shape
                );
                let mut m = Vec::with_capacity(c * oh * ow);
                for y in 0..oh {
                    for x in 0..ow {
                        for ch in 0..c {
                            let v = t.data[(ch * h + y0 + y) * w + x0 + x];
                            rounding = rounding.max((v - v.round()).abs());
                            m.push(to_u8(v, "mean file")?);
                        }
                    }
                }
                m
            }
            (None, []) => vec![],
            (None, vals) => {
                ensure!(
                    vals.len() == 1 || vals.len() == c,
                    "{} mean_value entries for {c} channels",
                    vals.len()
                );
                (0..c)
                    .map(|ch| {
                        let v = vals[if vals.len() == 1 { 0 } else { ch }];
                        rounding = rounding.max((v - v.round()).abs());
                        to_u8(v, "mean_value")
                    })
                    .collect::<Result<_>>()?
            }
        };
        Ok(IntegerInput {
            raw,
            shape: [c, oh, ow],
            crop: (y0, x0),
            mean_u8,
            scale: p.scale,
            mean_rounding: rounding,
        })
    }

    /// Bytes of one network input image.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cropped HWC uint8 pixels of one sample, appended to `out`.
    pub fn push_hwc(&self, s: &Sample, index: usize, out: &mut Vec<u8>) -> Result<()> {
        let img = &s.image;
        ensure!(
            img.shape() == self.raw,
            "image {index} is {:?}, expected {:?}",
            img.shape(),
            self.raw
        );
        let Pixels::U8(px) = &img.pixels else {
            bail!("image {index} holds float pixels; the int8 pipeline (and the firmware) take uint8 images");
        };
        let [c, h, w] = self.raw;
        let [_, oh, ow] = self.shape;
        let (y0, x0) = self.crop;
        for y in 0..oh {
            for x in 0..ow {
                for ch in 0..c {
                    out.push(px[(ch * h + y0 + y) * w + x0 + x]);
                }
            }
        }
        Ok(())
    }
}
