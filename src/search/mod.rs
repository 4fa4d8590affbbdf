//! The per-layer Qm.n format search, driven by the bit-exact simulator.
//!
//! 1. **Start** (`--search none`): max-abs power-of-two formats from float statistics of the
//!    calibration set, clamped so that no layer needs a negative shift.
//! 2. **Search** in topological order over the fraction bits of the input, then for every
//!    Convolution/InnerProduct of weights, output activations and biases, scoring each candidate
//!    with the simulator on the calibration set (re-running only the layers from the changed one
//!    on, thanks to a cache of the earlier blobs).
//! 3. **Score**: correct top-1 (against labels, or against the float top-1 when there are none),
//!    then the mean KL divergence of the quantized softmax from the float softmax — a continuous
//!    tie-breaker so that a small calibration set does not decide by noise.
//!
//! `--search arm` reproduces ARM's `nn_quantizer.py` order and tolerance instead: per layer
//! weights → activations → biases, moving to more fraction bits while accuracy stays within
//! 0.001 % of the best so far, judged on accuracy alone.

pub mod score;

/// Sweeps of the default coordinate search (it stops early when a sweep changes nothing).
const MAX_PASSES: usize = 3;

use crate::fixed::graph::{Formats, LayerFormat, QGraph};
use crate::fixed::kernels;
use crate::fixed::qformat::{InputScale, QFormat};
use crate::fixed::sim::{Activations, Keep, Simulator};
use crate::ir::{Graph, Op};
use crate::report::{Score, SearchReport, TraceStep};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

pub use score::Scorer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Greedy coordinate search with the accuracy + KL objective (the default).
    Default,
    /// ARM nn_quantizer's order and tolerance, for comparison.
    Arm,
    /// The max-abs starting point, no search.
    None,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Default => "default",
            Strategy::Arm => "arm",
            Strategy::None => "none",
        }
    }
}

/// How raw uint8 pixels become the q7 input (the firmware does exactly this).
#[derive(Debug, Clone, PartialEq)]
pub struct InputPrep {
    /// Per-element HWC mean, per-channel mean, or empty.
    pub mean_u8: Vec<u8>,
    /// Caffe's `scale` (applied after the mean).
    pub scale: f32,
}

impl InputPrep {
    /// q7 HWC input of images of `image_len` bytes given as HWC uint8 pixels, at `frac_bits`.
    pub fn quantize(&self, pixels_hwc: &[u8], image_len: usize, frac_bits: i32) -> Result<Vec<i8>> {
        let s = InputScale::new(self.scale, frac_bits)?;
        let mut out = vec![0i8; pixels_hwc.len()];
        // A mean image applies per image; a per-channel mean broadcasts over the whole batch.
        let per = if self.mean_u8.len() == image_len {
            image_len
        } else {
            pixels_hwc.len()
        }
        .max(1);
        for (p, o) in pixels_hwc.chunks(per).zip(out.chunks_mut(per)) {
            kernels::input_u8_q7(p, &self.mean_u8, s.mul, s.rshift, o)
                .map_err(|e| anyhow::anyhow!("input preprocessing failed: {e:?}"))?;
        }
        Ok(out)
    }
}

/// Blobs whose format is chosen (the input and outputs of Convolution/InnerProduct); all other
/// blobs inherit or are rescaled by construction.
pub fn format_layers(g: &Graph) -> Vec<(String, String)> {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Convolution(_) | Op::InnerProduct(_)))
        .map(|n| (n.name.clone(), n.outputs[0].clone()))
        .collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Max-abs formats, clamped so that bias_lshift ≥ 0 and out_rshift ≥ 0 for every layer.
pub fn start_formats(g: &Graph, blob_max_abs: &BTreeMap<String, f32>) -> Result<Formats> {
    let act = |b: &str| -> Result<i32> {
        let m = *blob_max_abs
            .get(b)
            .with_context(|| format!("no float statistics for blob '{b}'"))?;
        Ok(QFormat::from_max_abs(m)?.frac_bits)
    };
    let mut f = Formats::default();
    f.activations_frac_bits
        .insert(g.input.blob.clone(), act(&g.input.blob)?);
    // Formats flow along the graph: the input format of a layer is the format of the blob it
    // reads, which pooling/ReLU/flatten pass through unchanged.
    let mut frac_of: BTreeMap<String, i32> = f.activations_frac_bits.clone();
    for n in &g.nodes {
        let in_frac = *frac_of
            .get(&n.inputs[0])
            .with_context(|| format!("no format for blob '{}'", n.inputs[0]))?;
        let out = &n.outputs[0];
        let out_frac = match &n.op {
            Op::Convolution(_) | Op::InnerProduct(_) => {
                let w = QFormat::from_max_abs(max_abs(&n.weights[0].data))?.frac_bits;
                let mut lf = LayerFormat {
                    weight_frac_bits: w,
                    ..Default::default()
                };
                if let Some(b) = n.weights.get(1) {
                    let bf = QFormat::from_max_abs(max_abs(&b.data))?.frac_bits;
                    lf.bias_frac_bits = Some(bf.min(w + in_frac));
                }
                let o = act(out)?.min(w + in_frac);
                f.layers.insert(n.name.clone(), lf);
                f.activations_frac_bits.insert(out.clone(), o);
                o
            }
            Op::Eltwise { .. } | Op::Concat { .. } => {
                let o = act(out)?;
                f.activations_frac_bits.insert(out.clone(), o);
                o
            }
            _ => in_frac,
        };
        frac_of.insert(out.clone(), out_frac);
    }
    Ok(f)
}

/// One coordinate of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Input,
    Weight,
    Activation,
    Bias,
}

impl Param {
    fn name(self) -> &'static str {
        match self {
            Param::Input => "input",
            Param::Weight => "weight",
            Param::Activation => "activation",
            Param::Bias => "bias",
        }
    }
}

fn get(f: &Formats, layer: &str, out_blob: &str, p: Param) -> Option<i32> {
    match p {
        Param::Input | Param::Activation => f.activations_frac_bits.get(out_blob).copied(),
        Param::Weight => f.layers.get(layer).map(|l| l.weight_frac_bits),
        Param::Bias => f.layers.get(layer).and_then(|l| l.bias_frac_bits),
    }
}

fn set(f: &mut Formats, layer: &str, out_blob: &str, p: Param, v: i32) {
    match p {
        Param::Input | Param::Activation => {
            f.activations_frac_bits.insert(out_blob.to_string(), v);
        }
        Param::Weight => {
            f.layers
                .get_mut(layer)
                .expect("layer has a format")
                .weight_frac_bits = v
        }
        Param::Bias => {
            f.layers
                .get_mut(layer)
                .expect("layer has a format")
                .bias_frac_bits = Some(v)
        }
    }
}

/// Progress callback: (step, total steps, message).
pub type Progress<'a> = &'a (dyn Fn(usize, usize, &str) + Sync);

/// Everything the search needs about the calibration set.
pub struct Calibration<'a> {
    pub pixels_hwc: &'a [u8],
    pub images: usize,
    pub prep: &'a InputPrep,
    pub scorer: &'a Scorer,
}

/// State of the search: current formats, their score and a cache of every blob they produce.
struct Evaluator<'a> {
    g: &'a Graph,
    cal: &'a Calibration<'a>,
    evaluations: usize,
}

impl Evaluator<'_> {
    fn quantize(&self, f: &Formats) -> Result<QGraph> {
        QGraph::quantize(self.g, f)
    }

    /// Full run, keeping all blobs (for the cache).
    fn full(&mut self, f: &Formats) -> Result<(Score, Activations)> {
        let qg = self.quantize(f)?;
        let in_frac = qg.frac_bits(&qg.input).context("input format")?;
        let input = self
            .cal
            .prep
            .quantize(self.cal.pixels_hwc, qg.blob_len(&qg.input), in_frac)?;
        let sim = Simulator::new(&qg)?;
        let acts = sim.run(&input, self.cal.images, &Keep::All)?;
        self.evaluations += 1;
        let s = self.cal.scorer.score(&qg, &acts)?;
        Ok((s, acts))
    }

    /// Re-run the layers from `k` on with accepted formats and update the cache with their blobs
    /// (the earlier blobs are unchanged), returning the score.
    fn refresh(&mut self, f: &Formats, k: usize, cache: &mut Activations) -> Result<Score> {
        if k == 0 {
            let (s, acts) = self.full(f)?;
            *cache = acts;
            return Ok(s);
        }
        let qg = self.quantize(f)?;
        let sim = Simulator::new(&qg)?;
        let later: Vec<String> = qg.layers[k..].iter().map(|l| l.output.clone()).collect();
        let acts = sim.run_from(k, cache, &Keep::Blobs(later))?;
        self.evaluations += 1;
        let s = self.cal.scorer.score(&qg, &acts)?;
        cache.blobs.extend(acts.blobs);
        Ok(s)
    }

    /// Score of formats that differ from the cached ones only from layer `k` on.
    fn partial(&mut self, f: &Formats, k: usize, cache: &Activations) -> Result<Score> {
        let qg = self.quantize(f)?;
        let sim = Simulator::new(&qg)?;
        let acts = sim.run_from(k, cache, &Keep::Outputs)?;
        self.evaluations += 1;
        self.cal.scorer.score(&qg, &acts)
    }
}

/// Index of the QGraph layer that produces `blob`... equivalently the first layer affected.
fn qlayer_index(qg: &QGraph, layer_name: &str) -> usize {
    qg.layers
        .iter()
        .position(|l| l.name == layer_name)
        .unwrap_or(0)
}

/// Run the search. Returns the chosen formats and the search report.
pub fn search(
    g: &Graph,
    start: Formats,
    strategy: Strategy,
    cal: &Calibration,
    progress: Progress,
) -> Result<(Formats, SearchReport)> {
    let mut ev = Evaluator {
        g,
        cal,
        evaluations: 0,
    };
    let (start_score, mut cache) = ev
        .full(&start)
        .context("the starting formats do not quantize")?;
    let mut best = start.clone();
    let mut best_score = start_score;
    let mut trace = Vec::new();
    if strategy == Strategy::None {
        return Ok((
            best,
            SearchReport {
                strategy: strategy.name().into(),
                evaluations: ev.evaluations,
                start_score,
                final_score: best_score,
                trace,
            },
        ));
    }
    // The coordinates in topological order.
    let mut coords: Vec<(String, String, Param)> =
        vec![(String::new(), g.input.blob.clone(), Param::Input)];
    for (layer, out) in format_layers(g) {
        let has_bias = start
            .layers
            .get(&layer)
            .is_some_and(|l| l.bias_frac_bits.is_some());
        coords.push((layer.clone(), out.clone(), Param::Weight));
        coords.push((layer.clone(), out.clone(), Param::Activation));
        if has_bias {
            coords.push((layer, out, Param::Bias));
        }
    }
    // Coordinate descent: sweep all coordinates in topological order, and sweep again while a
    // sweep changed something (a later layer's new format can make an earlier choice better).
    let passes = if strategy == Strategy::Arm {
        1
    } else {
        MAX_PASSES
    };
    let total = coords.len() * passes;
    for pass in 0..passes {
        let mut changed = false;
        for (i, (layer, out, param)) in coords.iter().enumerate() {
            let step = pass * coords.len() + i;
            progress(
                step,
                total,
                &format!(
                    "{} {}",
                    if layer.is_empty() { out } else { layer },
                    param.name()
                ),
            );
            let base = get(&best, layer, out, *param).context("format missing")?;
            let qg = ev.quantize(&best)?;
            let k = if *param == Param::Input {
                0
            } else {
                qlayer_index(&qg, layer)
            };
            // ARM tries only more fraction bits (more precision, saturating the largest values).
            // The default also tries one fewer (more headroom), which pays off where values beyond
            // the calibration maximum are expected, or where shifts limit the next layer.
            let candidates: Vec<i32> = match strategy {
                Strategy::Arm => (1..=3).map(|d| base + d).collect(),
                _ => vec![base - 2, base - 1, base + 1, base + 2, base + 3],
            };
            let mut arm_ref = best_score;
            for c in candidates {
                let mut f = best.clone();
                set(&mut f, layer, out, *param, c);
                // Candidates needing a negative shift are invalid by construction: skip them.
                if ev.quantize(&f).is_err() {
                    continue;
                }
                let s = if *param == Param::Input {
                    ev.full(&f)?.0
                } else {
                    ev.partial(&f, k, &cache)?
                };
                let accept = match strategy {
                    Strategy::Arm => score::arm_not_worse(&s, &arm_ref),
                    _ => score::better(&s, &best_score),
                };
                trace.push(TraceStep {
                    layer: if layer.is_empty() {
                        out.clone()
                    } else {
                        layer.clone()
                    },
                    param: param.name().into(),
                    frac_bits: c,
                    score: s,
                    accepted: accept,
                });
                if accept {
                    best = f;
                    best_score = s;
                    arm_ref = s;
                } else if strategy == Strategy::Arm {
                    break; // ARM stops at the first candidate that loses accuracy.
                }
            }
            if get(&best, layer, out, *param) != Some(base) {
                changed = true;
                best_score = ev.refresh(&best, k, &mut cache)?;
            }
        }
        if !changed {
            break;
        }
    }
    progress(total, total, "done");
    if ev.quantize(&best).is_err() {
        bail!("internal error: the search ended on formats that do not quantize");
    }
    Ok((
        best,
        SearchReport {
            strategy: strategy.name().into(),
            evaluations: ev.evaluations,
            start_score,
            final_score: best_score,
            trace,
        },
    ))
}
