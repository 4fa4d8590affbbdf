//! The quantized model file (`.nnq.json`): everything `codegen` and `eval --quantized` need, with
//! no reference back to the Caffe files except their hashes.

use crate::fixed::graph::{Formats, QGraph};
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCHEMA: &str = "nnquant.model/1";

/// The source files the model came from (for provenance and `build`'s change detection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub prototxt: String,
    pub prototxt_sha256: String,
    pub weights: String,
    pub weights_sha256: String,
}

/// How the firmware turns uint8 pixels into the q7 input: `q7 = sat(round((pixel - mean) · mul /
/// 2^rshift))` over HWC pixels (see `kernels::input_u8_q7`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// `[C, H, W]` of the network input.
    pub shape_chw: Vec<usize>,
    /// "rgb" or "bgr": the channel order the network was trained on.
    pub channel_order: String,
    /// A per-pixel HWC mean (`H·W·C` values), a per-channel mean (`C` values), or empty.
    pub mean_u8: Vec<u8>,
    /// Caffe's `scale`, as the prototxt gives it (1 when absent).
    pub scale: f32,
    pub frac_bits: i32,
    pub mul: i32,
    pub rshift: i32,
    /// Caffe's TEST-phase centre crop applied to raw images before anything else (0: none).
    pub crop_size: usize,
}

impl InputSpec {
    /// Cropped HWC uint8 pixels of a raw CHW uint8 image, as the firmware receives them.
    pub fn pixels_hwc(
        &self,
        img: &crate::data::Image,
        index: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let crate::data::Pixels::U8(px) = &img.pixels else {
            anyhow::bail!("image {index} holds float pixels; the int8 model takes uint8 images");
        };
        let (c, h, w) = (img.channels, img.height, img.width);
        let [mc, oh, ow] = [self.shape_chw[0], self.shape_chw[1], self.shape_chw[2]];
        let expect = if self.crop_size > 0 {
            "at least the crop size"
        } else {
            "exactly the model input"
        };
        ensure!(
            c == mc && h >= oh && w >= ow && (self.crop_size > 0 || (h, w) == (oh, ow)),
            "image {index} is {c}×{h}×{w}; the model takes {mc}×{oh}×{ow} ({expect})"
        );
        let (y0, x0) = ((h - oh) / 2, (w - ow) / 2);
        for y in 0..oh {
            for x in 0..ow {
                for ch in 0..c {
                    out.push(px[(ch * h + y0 + y) * w + x0 + x]);
                }
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.shape_chw.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NnqModel {
    pub schema: String,
    pub name: String,
    pub source: SourceInfo,
    pub input: InputSpec,
    pub classes: usize,
    pub formats: Formats,
    pub graph: QGraph,
}

impl NnqModel {
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    pub fn read(path: &Path) -> Result<NnqModel> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the quantized model {}", path.display()))?;
        let m: NnqModel = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an nnquant quantized model ({e}); make one with `nnquant quantize`",
                path.display()
            )
        })?;
        ensure!(
            m.schema == SCHEMA,
            "{} has schema '{}', this nnquant reads '{SCHEMA}'",
            path.display(),
            m.schema
        );
        ensure!(
            m.graph.blob_len(&m.graph.input) == m.input.len(),
            "{}: the input spec ({} values) does not match the graph input ({} values)",
            path.display(),
            m.input.len(),
            m.graph.blob_len(&m.graph.input)
        );
        Ok(m)
    }
}

/// Hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
