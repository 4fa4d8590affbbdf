//! Activation equalization as `quantize` runs it, before the float statistics pass: the
//! per-channel max-abs of the blobs `ir::equalize::equalize_activations` needs, over
//! calibration images, then the exponents; or a formats file's exponents as they are.

use super::DataSet;
use crate::data::preprocess::Preprocessor;
use crate::fixed::graph::Formats;
use crate::float::{self, Engine};
use crate::ir::equalize::{self, ActivationEqualization, ChannelRanges, Scales};
use crate::ir::Graph;
use anyhow::{Context, Result};

/// Rewrite `g` for activation equalization: with `formats`, the file's exponents (the scales it
/// was chosen for); otherwise, when `measure` (on, per-channel formats), exponents chosen from
/// ranges measured on `ds`. Returns the exponents (for the model's formats) and, when measured,
/// what the report shows.
pub fn equalize(
    g: &mut Graph,
    formats: Option<&Formats>,
    measure: bool,
    ds: &mut DataSet,
    pre: &Preprocessor,
) -> Result<(Scales, Option<ActivationEqualization>)> {
    if let Some(f) = formats {
        equalize::apply_activation_scales(g, &f.activation_scales)?;
        return Ok((f.activation_scales.clone(), None));
    }
    let blobs = equalize::activation_blobs(g);
    if !measure || blobs.is_empty() {
        return Ok((Scales::new(), None));
    }
    let (ranges, n) = self::measure(ds, g, pre, &blobs)?;
    let (s, r) = equalize::equalize_activations(g, &ranges, n)?;
    Ok((s, Some(r)))
}

/// At most this many calibration images, spread evenly over the set (a range is a max: a few
/// dozen images find it, and the float pass keeps every blob).
pub const RANGE_IMAGES: usize = 64;

/// Images per forward pass (every blob is kept).
const BATCH: usize = 16;

/// The per-channel max-abs (axis 0 of each image's blob shape) of `blobs` over up to
/// [`RANGE_IMAGES`] images of `ds`, evenly spaced; and how many images that was.
pub fn measure(
    ds: &mut DataSet,
    g: &Graph,
    pre: &Preprocessor,
    blobs: &[String],
) -> Result<(ChannelRanges, usize)> {
    let len = ds.source.len();
    let n = len.min(RANGE_IMAGES);
    let images: Vec<usize> = (0..n).map(|i| i * len / n.max(1)).collect();
    let engine = Engine::new(g)?;
    let mut ranges: ChannelRanges = blobs
        .iter()
        .map(|b| {
            (
                b.clone(),
                vec![0f32; g.shape(b).first().copied().unwrap_or(1)],
            )
        })
        .collect();
    for chunk in images.chunks(BATCH) {
        let mut samples = Vec::with_capacity(chunk.len());
        for &i in chunk {
            samples.push(ds.source.read(i).with_context(|| ds.name.clone())?);
        }
        let batch = pre.batch(&samples).with_context(|| ds.name.clone())?;
        let acts = engine.forward(&batch.data, samples.len(), float::Keep::All)?;
        for (b, r) in ranges.iter_mut() {
            let v = acts
                .blobs
                .get(b)
                .with_context(|| format!("float blob '{b}' missing"))?;
            let per_image = v.len() / samples.len().max(1);
            let per_channel = (per_image / r.len().max(1)).max(1);
            for img in v.chunks(per_image.max(1)) {
                for (m, ch) in r.iter_mut().zip(img.chunks(per_channel)) {
                    *m = ch.iter().fold(*m, |a, x| a.max(x.abs()));
                }
            }
        }
    }
    Ok((ranges, n))
}
