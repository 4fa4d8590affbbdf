//! `verify --trace`: the firmware prints every step's output (`trace <step> <hex>`, the feature
//! `trace` of the generated crate) before each image's `out` line; each is compared with the
//! simulator's blob of that step, and the first difference is named by image, step, blob and
//! element (with its HWC position), so a divergence points at the layer that caused it.

use crate::codegen::plan::Plan;
use crate::fixed::graph::QGraph;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// The simulator's output of every blob, per image.
pub struct Expected {
    pub blobs: BTreeMap<String, Vec<Vec<i8>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceResult {
    /// Step outputs compared (steps × images).
    pub compared: usize,
    pub first_divergence: Option<Divergence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    pub image: usize,
    /// Index in the firmware's `STEPS` (0: the input conversion).
    pub step: usize,
    pub step_name: String,
    pub blob: String,
    /// Byte index in the step's output (HWC order) and its position.
    pub element: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub simulator: i8,
    pub firmware: i8,
    /// Bytes of this step's output that differ.
    pub differing_bytes: usize,
}

fn hex_bytes(hex: &str) -> Option<Vec<i8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len() / 2)
        .map(|k| {
            u8::from_str_radix(hex.get(2 * k..2 * k + 2)?, 16)
                .ok()
                .map(|b| b as i8)
        })
        .collect()
}

/// The steps as the firmware numbers them: (name, output blob).
pub fn steps(g: &QGraph, plan: &Plan) -> Vec<(String, String)> {
    let mut v = vec![("input".to_string(), g.input.clone())];
    v.extend(
        plan.steps
            .iter()
            .map(|s| (s.name.clone(), s.output.clone())),
    );
    v
}

/// Compare the firmware's trace lines with the simulator's blobs.
pub fn compare(
    stdout: &str,
    expected: &Expected,
    g: &QGraph,
    plan: &Plan,
    images: usize,
) -> Result<TraceResult> {
    let steps = steps(g, plan);
    let (mut image, mut next_step, mut compared) = (0usize, 0usize, 0usize);
    let mut first = None;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["trace", k, hex] => {
                let k: usize = k
                    .parse()
                    .with_context(|| format!("firmware trace line with step '{k}'"))?;
                ensure!(
                    k == next_step && k < steps.len(),
                    "the firmware traced step {k} of image {image} where step {next_step} of {} was due",
                    steps.len()
                );
                next_step += 1;
                let (name, blob) = &steps[k];
                let got = hex_bytes(hex).with_context(|| {
                    format!("the firmware's trace of step {k} (image {image}) is not hex")
                })?;
                let want = expected
                    .blobs
                    .get(blob)
                    .and_then(|v| v.get(image))
                    .with_context(|| {
                        format!("no simulator output of blob '{blob}' (image {image})")
                    })?;
                ensure!(
                    got.len() == want.len(),
                    "the firmware traced {} bytes for step {k} '{name}' (image {image}), the simulator's blob '{blob}' has {}",
                    got.len(),
                    want.len()
                );
                compared += 1;
                if first.is_none() {
                    let diff: Vec<usize> = (0..got.len()).filter(|&i| got[i] != want[i]).collect();
                    if let Some(&e) = diff.first() {
                        let l = g.blobs.get(blob).map(|b| b.layout);
                        let (h, w, c) = match l {
                            Some(l) if l.h * l.w * l.c == got.len() && l.c > 0 && l.w > 0 => {
                                (e / (l.w * l.c), (e / l.c) % l.w, e % l.c)
                            }
                            _ => (0, 0, e),
                        };
                        first = Some(Divergence {
                            image,
                            step: k,
                            step_name: name.clone(),
                            blob: blob.clone(),
                            element: e,
                            h,
                            w,
                            c,
                            simulator: want[e],
                            firmware: got[e],
                            differing_bytes: diff.len(),
                        });
                    }
                }
            }
            ["out", ..] => {
                if next_step != steps.len() {
                    bail!(
                        "the firmware traced {next_step} of {} steps for image {image}; was it built with the feature `trace`?",
                        steps.len()
                    );
                }
                image += 1;
                next_step = 0;
            }
            _ => {}
        }
    }
    ensure!(
        image == images,
        "the firmware traced {image} images of {images}"
    );
    Ok(TraceResult {
        compared,
        first_divergence: first,
    })
}
