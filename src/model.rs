//! The quantized model file (`.nnq.json`): everything `codegen` and `eval --quantized` need, with
//! no reference back to the Caffe files except their hashes.

use crate::fixed::graph::{Formats, Hwc, QGraph};
use crate::fixed::headroom::Headroom;
use crate::fixed::qformat::InputScale;
use crate::fixed::validate;
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
        let text = crate::fsio::read_text(path, "the quantized model")?;
        Self::from_json(&text).with_context(|| {
            format!(
                "{} is not a valid nnquant quantized model; make one with `nnquant quantize`",
                path.display()
            )
        })
    }

    /// Parse and validate a model file's text: every field the simulator, the code generator
    /// and the kernels rely on is checked here, so a hand-edited file is refused with the field
    /// named instead of failing (or panicking) downstream.
    pub fn from_json(text: &str) -> Result<NnqModel> {
        let m: NnqModel = serde_json::from_str(text).context("it does not parse")?;
        m.validate()?;
        Ok(m)
    }

    /// The checks of [`NnqModel::from_json`]; returns the overflow headroom of every conv/fc
    /// (and Eltwise SUM) layer.
    pub fn validate(&self) -> Result<std::collections::BTreeMap<String, Headroom>> {
        ensure!(
            self.schema == SCHEMA,
            "schema is '{}', this nnquant reads '{SCHEMA}'",
            self.schema
        );
        if !self.name.is_empty() {
            validate::check_name("name", &self.name)?;
        }
        self.formats.check_ranges().context("in formats")?;
        let heads = validate::validate(&self.graph).context("in graph")?;
        let g = &self.graph;
        let i = &self.input;
        let in_blob = &g.blobs[&g.input];
        ensure!(
            i.shape_chw.len() == 3,
            "input.shape_chw {:?} is not [C, H, W]",
            i.shape_chw
        );
        let [c, h, w] = [i.shape_chw[0], i.shape_chw[1], i.shape_chw[2]];
        ensure!(
            in_blob.layout == (Hwc { h, w, c }),
            "input.shape_chw {:?} does not match the graph's input blob '{}' (layout h {}, w {}, c {})",
            i.shape_chw,
            g.input,
            in_blob.layout.h,
            in_blob.layout.w,
            in_blob.layout.c
        );
        ensure!(
            ["rgb", "bgr", "as stored"].contains(&i.channel_order.as_str()),
            "input.channel_order '{}' is not rgb, bgr or \"as stored\"",
            i.channel_order
        );
        let n = in_blob.layout.len();
        ensure!(
            i.mean_u8.is_empty() || i.mean_u8.len() == c || i.mean_u8.len() == n,
            "input.mean_u8 has {} values; it must be empty, one per channel ({c}) or one per input value ({n})",
            i.mean_u8.len()
        );
        ensure!(
            i.scale.is_finite() && i.scale >= 0.0,
            "input.scale {} is not a finite non-negative number",
            i.scale
        );
        ensure!(
            i.frac_bits == in_blob.frac_bits,
            "input.frac_bits {} differs from the input blob's frac_bits {}",
            i.frac_bits,
            in_blob.frac_bits
        );
        let s = InputScale::new(i.scale, i.frac_bits).context("input.scale at input.frac_bits")?;
        ensure!(
            (i.mul, i.rshift) == (s.mul, s.rshift),
            "input.mul {} / input.rshift {} are not scale {} at {} fraction bits (mul {}, rshift {})",
            i.mul,
            i.rshift,
            i.scale,
            i.frac_bits,
            s.mul,
            s.rshift
        );
        ensure!(
            i.crop_size == 0 || (i.crop_size == h && i.crop_size == w),
            "input.crop_size {} does not match the input's {h}×{w}",
            i.crop_size
        );
        // Several outputs (detector heads) are run and written in this order; `classes` describes
        // the first.
        let mut seen = std::collections::BTreeSet::new();
        for o in &g.outputs {
            ensure!(seen.insert(o), "the output '{o}' is listed twice");
        }
        let out_len = g.blob_len(&g.outputs[0]);
        ensure!(
            self.classes == out_len,
            "classes is {}, but the output blob '{}' has {out_len} values",
            self.classes,
            g.outputs[0]
        );
        Ok(heads)
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
