//! The per-layer Qm.n format search, driven by the bit-exact simulator.
//!
//! 1. **Start** (`--search none`): max-abs power-of-two formats from float statistics of the
//!    calibration set, clamped so that no layer needs a negative shift.
//! 2. **Search** in topological order over the fraction bits of the input, then for every
//!    Convolution/InnerProduct of weights, output activations and biases, scoring each candidate
//!    with the simulator on the calibration set (re-running only the layers from the changed one
//!    on, thanks to a cache of the earlier blobs).
//! 3. **Score** ([`objective`]): for a classifier, correct top-1 (against labels, or against the
//!    float top-1 when there are none), then the mean KL divergence of the quantized softmax from
//!    the float softmax — a continuous tie-breaker so that a small calibration set does not
//!    decide by noise; for any other model (several outputs, feature maps, detector heads), the
//!    lowest SQNR over all outputs against float, then the mean cosine.
//! 4. **Guard** against overfitting: a class-stratified fifth of the calibration set is held out
//!    (`--holdout`); the search runs on the rest, and a change it accepts is kept only if the
//!    held-out part does not get worse (see [`guard`]: a paired test on top-1, else KL).
//!
//! `--search arm` reproduces ARM's `nn_quantizer.py` order and tolerance instead: per layer
//! weights → activations → biases, moving to more fraction bits while accuracy stays within
//! 0.001 % of the best so far, judged on accuracy alone.

pub mod headroom;
pub mod local;
pub mod objective;
pub mod score;
pub mod subset;

/// Sweeps of the default coordinate search (it stops early when a sweep changes nothing).
const MAX_PASSES: usize = 3;

/// Candidates per coordinate that a screened search may confirm on the whole calibration set
/// (the next only when the whole set rejected the previous one).
const CONFIRM: usize = 2;

use crate::fixed::graph::{Formats, Frac, LayerFormat, QGraph, QOp};
use crate::fixed::kernels;
use crate::fixed::lower_memo::LowerMemo;
use crate::fixed::qformat::{self, InputScale, QFormat};
use crate::fixed::sim::{Activations, Keep, Simulator};
use crate::ir::{Graph, Op};
use crate::report::{HoldoutReport, LocalReport, Score, SearchReport, TraceStep};
use anyhow::{bail, ensure, Context, Result};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

pub use objective::Objective;
pub use score::{FloatOutput, Scorer};
pub use subset::{Holdout, Screen};

/// The default runs its descent only when one sweep is estimated below this many
/// multiply-accumulates (about a minute of simulator time on two AVX2 cores): a sweep re-runs
/// the network from each coordinate's layer for every candidate, which on a deep net over
/// hundreds of images is tens of minutes (ResNet-56, 500 images: ~9·10¹² MACs).
pub const DESCENT_BUDGET_MACS: f64 = 4e12;

/// Estimated multiply-accumulates of one default descent sweep on `images` images (the screening
/// subset's size when candidates are screened): per conv/fc layer, its coordinates (weights,
/// activations, biases) × 2 candidates × the MACs of the network from that layer on.
pub fn descent_sweep_macs(g: &Graph, images: usize) -> f64 {
    let costs: Vec<u64> = g
        .nodes
        .iter()
        .map(|n| crate::ir::layer_cost(g, n).macs)
        .collect();
    let mut after: u64 = costs.iter().sum();
    let mut total = 0f64;
    for (n, c) in g.nodes.iter().zip(&costs) {
        if matches!(
            n.op,
            Op::Convolution(_) | Op::Deconvolution(_) | Op::InnerProduct(_)
        ) {
            total += 3.0 * 2.0 * after as f64 * images as f64;
        }
        after -= c;
    }
    total
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// The layer-local pass, then (when a sweep is estimated below [`DESCENT_BUDGET_MACS`]) a
    /// coordinate descent that refines every format by ±1 fraction bit, scored end to end.
    Default,
    /// The layer-local pass, then the full coordinate descent (candidates −2..+3 fraction bits,
    /// up to three sweeps) whatever the depth: the slowest and most thorough.
    Descent,
    /// ARM nn_quantizer's order and tolerance, for comparison.
    Arm,
    /// The layer-local pass only (see [`local`]): fast on deep nets, no coordinate descent.
    Local,
    /// The max-abs starting point, no search.
    None,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Default => "default",
            Strategy::Descent => "descent",
            Strategy::Arm => "arm",
            Strategy::Local => "local",
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
    ///
    /// Exactly `kernels::input_u8_q7` on each image (a mean image applies per image; a
    /// per-channel mean broadcasts over the batch), but from a table of that kernel's 511 results
    /// (`pixel − mean` lies in `−255..=255`) and in parallel: the search converts the whole
    /// calibration set for every candidate input format and every full evaluation, and the
    /// kernel's `i64` multiply, rounding and `i % mean_len` per pixel made that a visible serial
    /// step (4 % of ARM m4's quantize).
    pub fn quantize(&self, pixels_hwc: &[u8], image_len: usize, frac_bits: i32) -> Result<Vec<i8>> {
        use rayon::prelude::*;
        let s = InputScale::new(self.scale, frac_bits)?;
        let table = input_table(s)?;
        let mean = &self.mean_u8;
        // `mean[i % m]` over the flat batch is the per-image index for a mean image too
        // (`m == image_len`); the kernel refuses a batch that is not whole means.
        ensure!(
            mean.is_empty() || pixels_hwc.len().is_multiple_of(mean.len()),
            "input preprocessing failed: {} pixels are not whole images or pixels of the {}-value mean ({image_len} per image)",
            pixels_hwc.len(),
            mean.len()
        );
        let mut out = vec![0i8; pixels_hwc.len()];
        // Pieces of whole means, so that each piece starts at mean index 0.
        let piece = mean.len().max(1) * (1usize << 16).div_ceil(mean.len().max(1));
        out.par_chunks_mut(piece)
            .zip(pixels_hwc.par_chunks(piece))
            .for_each(|(o, p)| {
                if mean.is_empty() {
                    for (o, &p) in o.iter_mut().zip(p) {
                        *o = table[p as usize + 255];
                    }
                } else {
                    for ((o, &p), &m) in o.iter_mut().zip(p).zip(mean.iter().cycle()) {
                        *o = table[(p as usize + 255) - m as usize];
                    }
                }
            });
        Ok(out)
    }
}

/// `kernels::input_u8_q7`'s result for every `pixel − mean` in `−255..=255` (index `+ 255`),
/// computed by the kernel itself: pixels `0..=255` against a mean of 255, then against 0.
fn input_table(s: InputScale) -> Result<[i8; 511]> {
    let pixels: Vec<u8> = (0..=255).collect();
    let mut below = [0i8; 256];
    let mut above = [0i8; 256];
    let fail = |e| anyhow::anyhow!("input preprocessing failed: {e:?}");
    kernels::input_u8_q7(&pixels, &[255], s.mul, s.rshift, &mut below).map_err(fail)?;
    kernels::input_u8_q7(&pixels, &[0], s.mul, s.rshift, &mut above).map_err(fail)?;
    let mut t = [0i8; 511];
    t[..256].copy_from_slice(&below); // d = p − 255: −255..=0
    t[255..].copy_from_slice(&above); // d = p: 0..=255
    Ok(t)
}

/// Blobs whose format is chosen (the input and outputs of Convolution/InnerProduct); all other
/// blobs inherit or are rescaled by construction.
pub fn format_layers(g: &Graph) -> Vec<(String, String)> {
    g.nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                Op::Convolution(_) | Op::Deconvolution(_) | Op::InnerProduct(_)
            )
        })
        .map(|n| (n.name.clone(), n.outputs[0].clone()))
        .collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

/// Max-abs formats, clamped so that bias_lshift ≥ 0 and out_rshift ≥ 0 for every layer
/// (per-layer weight formats; see [`start_formats_with`]).
pub fn start_formats(g: &Graph, blob_max_abs: &BTreeMap<String, f32>) -> Result<Formats> {
    start_formats_with(g, blob_max_abs, false)
}

/// [`start_formats`], with `per_channel`: every output channel of a conv/fc takes the weight and
/// bias formats of its own max-abs (clamped likewise per channel, and the overflow guard applied
/// per channel).
pub fn start_formats_with(
    g: &Graph,
    blob_max_abs: &BTreeMap<String, f32>,
    per_channel: bool,
) -> Result<Formats> {
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
            Op::Convolution(_) | Op::InnerProduct(_) if per_channel => {
                let out_max = act(out)?;
                let (lf, o) = channel_start(n, in_frac, out_max)?;
                f.layers.insert(n.name.clone(), lf);
                f.activations_frac_bits.insert(out.clone(), o);
                o
            }
            Op::Convolution(_) | Op::Deconvolution(_) | Op::InnerProduct(_) => {
                let w0 = QFormat::from_max_abs(max_abs(&n.weights[0].data))?.frac_bits;
                let bias_frac = match n.weights.get(1) {
                    Some(b) => Some(QFormat::from_max_abs(max_abs(&b.data))?.frac_bits),
                    None => None,
                };
                let out_max = act(out)?;
                let formats_with = |w: i32| {
                    let lf = LayerFormat {
                        weight_frac_bits: Frac::Layer(w),
                        bias_frac_bits: bias_frac.map(|bf| Frac::Layer(bf.min(w + in_frac))),
                        ..Default::default()
                    };
                    (lf, out_max.min(w + in_frac))
                };
                // The overflow guard: fewer weight fraction bits (a smaller bias_lshift and
                // smaller weights) until the accumulator provably cannot wrap.
                let (lf, o) = (0..=(w0 + qformat::MAX_FRAC_BITS).max(0))
                    .map(|d| formats_with(w0 - d))
                    .find(|(lf, o)| headroom::fits(n, lf, in_frac, *o))
                    .with_context(|| {
                        format!(
                            "layer '{}': no weight format keeps its i32 accumulator from wrapping",
                            n.name
                        )
                    })?;
                f.layers.insert(n.name.clone(), lf);
                f.activations_frac_bits.insert(out.clone(), o);
                o
            }
            Op::Eltwise { .. }
            | Op::Concat { .. }
            | Op::Sigmoid
            | Op::TanH
            | Op::Softmax { .. }
            | Op::Lrn(_)
            | Op::Scale { .. }
            | Op::Bias { .. }
            | Op::BatchNorm { .. } => {
                let o = act(out)?;
                f.activations_frac_bits.insert(out.clone(), o);
                o
            }
            Op::Pooling(_)
            | Op::ReLU { .. }
            | Op::PReLU { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. } => in_frac,
        };
        frac_of.insert(out.clone(), out_frac);
    }
    Ok(f)
}

/// The per-channel start of a conv/fc reading `in_frac` and writing a blob whose max-abs format
/// is `out_max`: channel `c`'s weights take the format of their own max-abs, its bias that of its
/// own value, clamped so that `bias_lshift[c] ≥ 0`; the output takes `out_max`, lowered (as for
/// per-layer formats) until `out_rshift[c] ≥ 0` for every channel. Channels whose accumulator
/// could wrap then take fewer weight fraction bits, one channel at a time.
fn channel_start(n: &crate::ir::Node, in_frac: i32, out_max: i32) -> Result<(LayerFormat, i32)> {
    let (no, transpose) = match n.op.dense() {
        Some(crate::ir::Dense::Convolution(c)) => (c.num_output, false),
        Some(crate::ir::Dense::InnerProduct(p)) => (p.num_output, p.transpose),
        Some(crate::ir::Dense::Deconvolution(_)) | None => {
            unreachable!("channel_start is called for conv/fc only")
        }
    };
    let w = &n.weights[0].data;
    ensure!(
        no > 0 && w.len().is_multiple_of(no),
        "layer '{}': {} weights for {no} outputs",
        n.name,
        w.len()
    );
    let k = w.len() / no;
    let ch_max = |o: usize| {
        (0..k).fold(0f32, |m, i| {
            let v = if transpose {
                w[i * no + o]
            } else {
                w[o * k + i]
            };
            m.max(v.abs())
        })
    };
    let w0: Vec<i32> = (0..no)
        .map(|o| Ok(QFormat::from_max_abs(ch_max(o))?.frac_bits))
        .collect::<Result<_>>()?;
    let b0: Option<Vec<i32>> = match n.weights.get(1) {
        Some(b) => Some(
            b.data
                .iter()
                .map(|v| Ok(QFormat::from_max_abs(v.abs())?.frac_bits))
                .collect::<Result<_>>()?,
        ),
        None => None,
    };
    let formats_with = |w: &[i32]| {
        let bias = b0.as_ref().map(|b| {
            Frac::Channels(
                b.iter()
                    .zip(w)
                    .map(|(bf, wf)| (*bf).min(wf + in_frac))
                    .collect(),
            )
        });
        let lf = LayerFormat {
            weight_frac_bits: Frac::Channels(w.to_vec()),
            bias_frac_bits: bias,
            ..Default::default()
        };
        let o = w.iter().fold(out_max, |o, wf| o.min(wf + in_frac));
        (lf, o)
    };
    let mut wf = w0;
    // The overflow guard, per channel: each step lowers the channels that could still wrap.
    for _ in 0..=(2 * qformat::MAX_FRAC_BITS) {
        let (lf, o) = formats_with(&wf);
        match headroom::fits_per_output(n, &lf, in_frac, o) {
            Some(fit) if !fit.iter().all(|&f| f) => {
                for (w, ok) in wf.iter_mut().zip(fit) {
                    if !ok {
                        *w -= 1;
                    }
                }
            }
            _ => return Ok((lf, o)),
        }
    }
    bail!(
        "layer '{}': no weight format keeps its i32 accumulator from wrapping",
        n.name
    )
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
        // Per-channel counts move together: the coordinate is channel 0's count.
        Param::Weight => f.layers.get(layer).map(|l| l.weight_frac_bits.first()),
        Param::Bias => f
            .layers
            .get(layer)
            .and_then(|l| l.bias_frac_bits.as_ref().map(Frac::first)),
    }
}

fn set(f: &mut Formats, layer: &str, out_blob: &str, p: Param, v: i32) {
    match p {
        Param::Input | Param::Activation => {
            f.activations_frac_bits.insert(out_blob.to_string(), v);
        }
        Param::Weight => {
            let l = f.layers.get_mut(layer).expect("layer has a format");
            l.weight_frac_bits = l.weight_frac_bits.offset(v - l.weight_frac_bits.first());
        }
        Param::Bias => {
            let l = f.layers.get_mut(layer).expect("layer has a format");
            l.bias_frac_bits = Some(match &l.bias_frac_bits {
                Some(b) => b.offset(v - b.first()),
                None => Frac::Layer(v),
            });
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
    /// Screening subset for the default strategy.
    pub screen: Screen,
    /// Held-out part for the default strategy.
    pub holdout: Holdout,
    /// Float blobs for the layer-local pass (default and local strategies; without them the
    /// pass is skipped).
    pub local: Option<&'a local::LocalRefs>,
    /// Bias correction in the local pass.
    pub bias_correction: bool,
}

/// Wall time of the search's phases (reported only with `--timestamps`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchTimes {
    /// Scoring candidates on the screening subset.
    pub screen_seconds: f64,
    /// Scoring on the whole search part (the start, confirmations, cache refreshes).
    pub full_seconds: f64,
    /// Scoring on the held-out part (its start and the check of every accepted change).
    pub holdout_seconds: f64,
    /// The layer-local pass (its single-layer runs; the check of its proposal end to end is
    /// counted under the parts it ran on).
    pub local_seconds: f64,
}

/// Which part of the calibration set a [`Set`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The images the search optimises on (the whole set without a held-out part).
    Search,
    /// The screening subset of the search part.
    Screen,
    /// The held-out part.
    Held,
}

/// Images the search scores on, the blobs the accepted formats produce on them (the prefix
/// cache that lets a candidate for layer `k` re-run only layers `k..`) and their score.
struct Set<'a> {
    pixels: Cow<'a, [u8]>,
    scorer: Cow<'a, Scorer>,
    cache: Activations,
    score: Score,
    /// Per image, whether the accepted formats get it right (for paired comparisons).
    hits: Vec<bool>,
    /// For the trace, the timing and the counts.
    part: Part,
}

impl Set<'_> {
    /// Make `acts`, the blobs of layers `k..` (all blobs when `k == 0`) of accepted formats
    /// scoring `score`, part of the cache.
    fn accept(&mut self, k: usize, s: Scored, acts: Activations) {
        if k == 0 {
            self.cache = acts;
        } else {
            self.cache.blobs.extend(acts.blobs);
        }
        self.score = s.score;
        self.hits = s.hits;
    }

    /// The accepted formats' score with its per-image hits.
    fn scored(&self) -> Scored {
        Scored {
            score: self.score,
            hits: self.hits.clone(),
        }
    }
}

/// A score with, per image, whether the image counts as correct.
#[derive(Debug, Clone)]
struct Scored {
    score: Score,
    hits: Vec<bool>,
}

impl Scored {
    /// Whether this beats `other` on the same images by the guard's paired comparison.
    fn beats(&self, other: &Scored) -> bool {
        score::beats(&self.score, &self.hits, &other.score, &other.hits)
    }
}

/// Scores formats with the simulator and counts the evaluations.
struct Evaluator<'a> {
    g: &'a Graph,
    prep: &'a InputPrep,
    /// The blobs the prefix cache holds (see [`cached_blobs`]).
    cached: Vec<String>,
    evaluations: usize,
    screen_evaluations: usize,
    holdout_evaluations: usize,
    /// Single-layer runs of the local pass.
    local_evaluations: usize,
    times: SearchTimes,
    /// Lowered conv/fc layers of `g` by their formats: a candidate re-quantizes only the layer
    /// whose formats it changes.
    memo: LowerMemo,
}

impl Evaluator<'_> {
    fn quantize(&self, f: &Formats) -> Result<QGraph> {
        QGraph::quantize_memo(self.g, f, Some(&self.memo))
    }

    /// Score the quantized formats `qg` on `set`, whose cache holds the blobs of formats equal to
    /// them before layer `k` (`k == 0`: from the input, no cache needed). With `keep`, also
    /// return the blobs of layers `k..` (every blob when `k == 0`) so that accepting them needs
    /// no re-run.
    fn eval(
        &mut self,
        qg: &QGraph,
        k: usize,
        set: &Set,
        keep: bool,
    ) -> Result<(Scored, Activations)> {
        let t = Instant::now();
        let sim = Simulator::new(qg)?;
        let acts = if k == 0 {
            let in_frac = qg.frac_bits(&qg.input).context("input format")?;
            let input = self
                .prep
                .quantize(&set.pixels, qg.blob_len(&qg.input), in_frac)?;
            let keep = if keep {
                Keep::Blobs(self.cached.clone())
            } else {
                Keep::Outputs
            };
            sim.run(&input, set.scorer.images, &keep)?
        } else {
            let keep = if keep {
                let later: BTreeSet<&str> =
                    qg.layers[k..].iter().map(|l| l.output.as_str()).collect();
                Keep::Blobs(
                    self.cached
                        .iter()
                        .filter(|b| later.contains(b.as_str()))
                        .cloned()
                        .collect(),
                )
            } else {
                Keep::Outputs
            };
            sim.run_from(k, &set.cache, &keep)?
        };
        let (score, hits) = set.scorer.score_with_hits(qg, &acts)?;
        let s = Scored { score, hits };
        let secs = t.elapsed().as_secs_f64();
        match set.part {
            Part::Screen => {
                self.screen_evaluations += 1;
                self.times.screen_seconds += secs;
            }
            Part::Search => {
                self.evaluations += 1;
                self.times.full_seconds += secs;
            }
            Part::Held => {
                self.holdout_evaluations += 1;
                self.times.holdout_seconds += secs;
            }
        }
        Ok((s, acts))
    }

    /// A set scored with formats `f` from scratch.
    fn set<'s>(
        &mut self,
        f: &Formats,
        pixels: Cow<'s, [u8]>,
        scorer: Cow<'s, Scorer>,
        part: Part,
    ) -> Result<Set<'s>> {
        let mut set = Set {
            pixels,
            scorer,
            cache: Activations::default(),
            score: Score {
                correct: 0,
                images: 0,
                kl: 0.0,
                sqnr_db: None,
                cosine: None,
            },
            hits: Vec::new(),
            part,
        };
        let (score, acts) = self.eval(&self.quantize(f)?, 0, &set, true)?;
        set.accept(0, score, acts);
        Ok(set)
    }
}

/// A SHA-256 over a stream of integers: the arithmetic key's digest, so that remembering the
/// keys of a coordinate's candidates costs 32 bytes each instead of 8 bytes per weight (an fc
/// layer with a 300k-value output has tens of millions of weights).
struct KeyHasher {
    h: sha2::Sha256,
    buf: Vec<u8>,
}

impl KeyHasher {
    fn push(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
        if self.buf.len() >= 1 << 16 {
            sha2::Digest::update(&mut self.h, &self.buf);
            self.buf.clear();
        }
    }

    fn extend(&mut self, it: impl IntoIterator<Item = i64>) {
        for v in it {
            self.push(v);
        }
    }

    fn finish(mut self) -> [u8; 32] {
        sha2::Digest::update(&mut self.h, &self.buf);
        sha2::Digest::finalize(self.h).into()
    }
}

/// Everything a quantized graph's simulated outputs and their score depend on: the input and
/// output formats, and per layer the weights, the shifted biases `bias << bias_lshift` and the
/// shifts (pooling, ReLU and reshapes have no format-dependent parameters); as a digest.
fn arithmetic_key(qg: &QGraph) -> [u8; 32] {
    let mut key = KeyHasher {
        h: <sha2::Sha256 as sha2::Digest>::new(),
        buf: Vec::with_capacity(1 << 16),
    };
    key.extend(
        std::iter::once(&qg.input)
            .chain(&qg.outputs)
            .map(|b| qg.frac_bits(b).map_or(i64::MIN, i64::from)),
    );
    let dense = |key: &mut KeyHasher, w: &[i8], b: &[i8], lshift: &[i32], rshift: &[i32]| {
        key.extend(dense_key(w, b, lshift, rshift))
    };
    for l in &qg.layers {
        match &l.op {
            QOp::Conv(c) | QOp::Deconv(c) => {
                let (bl, or) = c.shifts();
                dense(&mut key, &c.weights, &c.bias, bl, or)
            }
            QOp::Lrn {
                index_shift,
                table,
                out_rshift,
                ..
            } => {
                key.extend([*index_shift, *out_rshift].map(i64::from));
                key.extend(table.iter().map(|&v| i64::from(v)));
            }
            QOp::Mul { out_rshift } => key.push(i64::from(*out_rshift)),
            QOp::ScaleBias(s) => dense(
                &mut key,
                &s.scales,
                &s.bias,
                &[s.bias_lshift],
                &[s.out_rshift],
            ),
            QOp::Fc(f) => {
                let (bl, or) = f.shifts();
                dense(&mut key, &f.weights, &f.bias, bl, or)
            }
            QOp::Add {
                a_lshift,
                b_lshift,
                out_rshift,
            }
            | QOp::Max {
                a_lshift,
                b_lshift,
                out_rshift,
            } => key.extend([*a_lshift, *b_lshift, *out_rshift].map(i64::from)),
            QOp::Lut { table, .. } => key.extend(table.iter().map(|&v| i64::from(v))),
            QOp::PRelu { slopes, slope_frac } => {
                key.push(i64::from(*slope_frac));
                key.extend(slopes.iter().map(|&v| i64::from(v)));
            }
            QOp::Softmax { row, exp_table } => {
                key.push(*row as i64);
                key.extend(exp_table.iter().map(|&v| i64::from(v)));
            }
            QOp::Concat { shifts } => key.extend(shifts.iter().map(|&s| i64::from(s))),
            QOp::AvePool(p) => key.push(i64::from(p.rounding.nearest())),
            QOp::MaxPool(_) | QOp::Relu | QOp::Reshape | QOp::Permute { .. } => {}
        }
    }
    key.finish()
}

/// The values that decide a dense layer's (conv, fc, scale) integer arithmetic: its output
/// shifts, its weights, and its biases as the accumulator starts them (`bias << bias_lshift`,
/// shifts of length 1 or one per output channel), so that formats giving the same integers are
/// recognised as the same computation (here and in the local pass's `layer_key`).
pub(crate) fn dense_key<'a>(
    w: &'a [i8],
    b: &'a [i8],
    lshift: &'a [i32],
    rshift: &'a [i32],
) -> impl Iterator<Item = i64> + 'a {
    let start = move |(c, &v): (usize, &i8)| {
        let l = lshift[if lshift.len() == 1 { 0 } else { c }];
        i64::from((v as i32).wrapping_shl(l as u32))
    };
    rshift
        .iter()
        .map(|&r| i64::from(r))
        .chain(w.iter().map(|&v| i64::from(v)))
        .chain(b.iter().enumerate().map(start))
}

/// The blobs a prefix cache must hold so that any conv/fc layer `k` can be re-run from it: those
/// that layers `k..` read but earlier layers (or the input) produce. Keeping only these instead
/// of every blob (a conv's output before its ReLU and pooling, say) divides the cache's memory
/// by several (ARM's model: 4 of 10 blobs, and not the 32 KB conv1 output).
fn cached_blobs(qg: &QGraph) -> Vec<String> {
    let mut keep = BTreeSet::new();
    for (k, l) in qg.layers.iter().enumerate() {
        if !matches!(l.op, QOp::Conv(_) | QOp::Deconv(_) | QOp::Fc(_)) {
            continue;
        }
        let later: BTreeSet<&str> = qg.layers[k..].iter().map(|l| l.output.as_str()).collect();
        for m in &qg.layers[k..] {
            for b in &m.inputs {
                if !later.contains(b.as_str()) {
                    keep.insert(b.clone());
                }
            }
        }
    }
    keep.insert(qg.input.clone());
    keep.into_iter().collect()
}

/// Index of the QGraph layer that produces `blob`... equivalently the first layer affected.
fn qlayer_index(qg: &QGraph, layer_name: &str) -> usize {
    qg.layers
        .iter()
        .position(|l| l.name == layer_name)
        .unwrap_or(0)
}

fn trace_step(
    layer: &str,
    out: &str,
    param: Param,
    c: i32,
    s: Score,
    accepted: bool,
    part: Part,
) -> TraceStep {
    TraceStep {
        layer: if layer.is_empty() { out } else { layer }.to_string(),
        param: param.name().into(),
        frac_bits: c,
        score: s,
        accepted,
        screen: part == Part::Screen,
        holdout: part == Part::Held,
    }
}

/// The pixels of images `idx` (HWC uint8, `len` bytes each).
fn pick_pixels(pixels: &[u8], len: usize, idx: &[usize]) -> Vec<u8> {
    idx.iter()
        .flat_map(|&i| &pixels[i * len..(i + 1) * len])
        .copied()
        .collect()
}

/// The overfitting guard: whether the change to `qg` (layers `k..` differ from the accepted
/// formats), which the search part accepted, may be kept. The rule: the held-out part must not
/// get *worse* by a paired comparison ([`score::beats`]): a classifier change is refused when it
/// breaks significantly more held-out images than it fixes (McNemar at 95 %), or, when the
/// top-1 difference is within chance, when it moves the held-out outputs away from float (a
/// larger KL); a regression change when the lowest SQNR (then the cosine) drops. A held-out
/// fifth is too small for a change to have to *win* there (most real gains are a few images or
/// a small KL step that noise can hide, and a plain "not fewer correct" would refuse good changes
/// for one unlucky image), but a change that fits the search part while the held-out part moves
/// away from float is what overfitting looks like. Without a held-out part every change is kept.
fn guard(
    ev: &mut Evaluator,
    held: Option<&mut Set>,
    qg: &QGraph,
    k: usize,
    rejected: &mut usize,
    step: impl FnOnce(Score, bool) -> TraceStep,
    trace: &mut Vec<TraceStep>,
) -> Result<bool> {
    let Some(held) = held else { return Ok(true) };
    let (s, acts) = ev.eval(qg, k, held, true)?;
    let ok = !held.scored().beats(&s);
    trace.push(step(s.score, ok));
    if ok {
        held.accept(k, s, acts);
    } else {
        *rejected += 1;
    }
    Ok(ok)
}

/// Run the search. Returns the chosen formats, the search report and the phases' wall time.
///
/// The default strategy is a coordinate descent over the fraction bits (input, then per
/// conv/fc: weights, activations, biases; candidates −2..+3 around the current value; sweeps
/// until one changes nothing, at most [`MAX_PASSES`]). On calibration sets of at least
/// [`subset::MIN_SCREENED`] images (or as `--screen` says) it **screens** every candidate on a class-stratified eighth of
/// the set and scores only the screen's best on the whole set, accepting it only if it is better
/// there too: the whole set decides every change (which also guards against choices that fit the
/// subset by chance), at about a quarter of the simulator work.
pub fn search(
    g: &Graph,
    start: Formats,
    strategy: Strategy,
    cal: &Calibration,
    progress: Progress,
) -> Result<(Formats, SearchReport, SearchTimes)> {
    let mut ev = Evaluator {
        g,
        prep: cal.prep,
        cached: cached_blobs(
            &QGraph::quantize(g, &start).context("the starting formats do not quantize")?,
        ),
        evaluations: 0,
        screen_evaluations: 0,
        holdout_evaluations: 0,
        local_evaluations: 0,
        times: SearchTimes::default(),
        memo: LowerMemo::default(),
    };
    ensure!(
        cal.images > 0 && cal.pixels_hwc.len().is_multiple_of(cal.images),
        "calibration pixels do not divide into {} images",
        cal.images
    );
    let image_len = cal.pixels_hwc.len() / cal.images;
    // The held-out part (default strategy only: ARM's search is reproduced as it was) and the
    // search part, the rest.
    let held_idx = match strategy {
        Strategy::Default | Strategy::Descent | Strategy::Local => cal
            .holdout
            .size(cal.images)
            .map(|n| subset::stratified(cal.scorer.targets(), n)),
        Strategy::Arm | Strategy::None => None,
    };
    let (full, held) = match &held_idx {
        Some(h) => {
            let rest = subset::complement(h, cal.images);
            let full = ev.set(
                &start,
                Cow::Owned(pick_pixels(cal.pixels_hwc, image_len, &rest)),
                Cow::Owned(cal.scorer.subset(&rest)),
                Part::Search,
            );
            let held = ev.set(
                &start,
                Cow::Owned(pick_pixels(cal.pixels_hwc, image_len, h)),
                Cow::Owned(cal.scorer.subset(h)),
                Part::Held,
            );
            (full, Some(held))
        }
        None => (
            ev.set(
                &start,
                Cow::Borrowed(cal.pixels_hwc),
                Cow::Borrowed(cal.scorer),
                Part::Search,
            ),
            None,
        ),
    };
    let mut full = full.context("the starting formats do not quantize")?;
    let mut held = held.transpose()?;
    let start_score = full.score;
    let held_start = held.as_ref().map(|h| h.score);
    let mut held_rejected = 0;
    let mut best = start.clone();
    let mut trace = Vec::new();
    let screen_size = match strategy {
        Strategy::Default | Strategy::Descent => cal.screen.size(full.scorer.images),
        Strategy::Arm | Strategy::Local | Strategy::None => None,
    };
    let mut screen = match screen_size {
        Some(size) => {
            let idx = subset::stratified(full.scorer.targets(), size);
            let pixels = pick_pixels(&full.pixels, image_len, &idx);
            let scorer = full.scorer.subset(&idx);
            Some(ev.set(&start, Cow::Owned(pixels), Cow::Owned(scorer), Part::Screen)?)
        }
        None => None,
    };
    // The layer-local pass: a proposal the end-to-end objective and the guard must accept.
    let mut local_report = None;
    if let (Strategy::Default | Strategy::Descent | Strategy::Local, Some(refs)) =
        (strategy, cal.local)
    {
        progress(0, 1, "local pass");
        let t = Instant::now();
        let (f, steps) = local::local_pass(
            &mut ev,
            g,
            &best,
            refs,
            (cal.pixels_hwc, image_len),
            cal.bias_correction,
        )?;
        ev.times.local_seconds += t.elapsed().as_secs_f64();
        let mut accepted = false;
        if f != best {
            let q = ev.quantize(&f)?;
            let (s, acts) = ev.eval(&q, 0, &full, true)?;
            let better = s.beats(&full.scored());
            let local_step = |part: Part| {
                move |s: Score, ok: bool| TraceStep {
                    layer: "(local pass)".into(),
                    param: "all".into(),
                    frac_bits: 0,
                    score: s,
                    accepted: ok,
                    screen: part == Part::Screen,
                    holdout: part == Part::Held,
                }
            };
            trace.push(local_step(Part::Search)(s.score, better));
            if better
                && guard(
                    &mut ev,
                    held.as_mut(),
                    &q,
                    0,
                    &mut held_rejected,
                    local_step(Part::Held),
                    &mut trace,
                )?
            {
                full.accept(0, s, acts);
                if let Some(scr) = screen.as_mut() {
                    let (s, acts) = ev.eval(&q, 0, scr, true)?;
                    scr.accept(0, s, acts);
                }
                best = f;
                accepted = true;
            }
        }
        local_report = Some(LocalReport {
            images: refs.images.len(),
            evaluations: ev.local_evaluations,
            accepted,
            steps,
        });
    }
    let report = |ev: &Evaluator,
                  full: &Set,
                  held: &Option<Set>,
                  held_rejected: usize,
                  trace: Vec<TraceStep>,
                  screen: &Option<Set>| SearchReport {
        strategy: strategy.name().into(),
        evaluations: ev.evaluations,
        screen_images: screen.as_ref().map(|s| s.scorer.images),
        screen_evaluations: ev.screen_evaluations,
        objective: cal.scorer.objective.name().into(),
        objective_reason: String::new(),
        start_score,
        final_score: full.score,
        holdout: held.as_ref().zip(held_start).map(|(h, s)| HoldoutReport {
            images: h.scorer.images,
            start_score: s,
            final_score: h.score,
            rejected: held_rejected,
            evaluations: ev.holdout_evaluations,
        }),
        local: local_report.clone(),
        descent_skipped: None,
        trace,
    };
    let sweep = descent_sweep_macs(
        g,
        screen
            .as_ref()
            .map_or(full.scorer.images, |s| s.scorer.images),
    );
    let descent_skipped = (strategy == Strategy::Default
        && cal.local.is_some()
        && sweep > DESCENT_BUDGET_MACS)
        .then(|| {
            format!(
                "one descent sweep would cost about {sweep:.2e} multiply-accumulates (budget {DESCENT_BUDGET_MACS:.0e}): the local pass alone decides; `--search descent` runs it anyway"
            )
        });
    if matches!(strategy, Strategy::None | Strategy::Local) || descent_skipped.is_some() {
        let mut r = report(&ev, &full, &held, held_rejected, trace, &screen);
        r.descent_skipped = descent_skipped;
        return Ok((best, r, ev.times));
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
    //
    // Steps that cannot change anything are skipped, which leaves the result as it was: the
    // descent ends once every coordinate has been tried against the current formats (a full
    // cycle after the last change, plus the changed coordinate around its new value), and a
    // candidate whose arithmetic equals the current formats' or an earlier candidate's (say
    // bias 3 fraction bits shifted left by 2 vs 4 bits by 1, where the rounding agrees) is
    // not run again: equal arithmetic, equal bytes, equal score.
    let n_coords = coords.len();
    let mut last_change: Option<usize> = None;
    for step in 0..total {
        let since = last_change.map_or(step + 1, |c| step - c);
        if since > n_coords {
            break;
        }
        let (layer, out, param) = &coords[step % n_coords];
        {
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
            // The default also tries fewer (more headroom), which pays off where values beyond
            // the calibration maximum are expected, or where shifts limit the next layer.
            // A candidate needing a negative shift is invalid by construction and skipped. Only
            // the candidates' formats are kept (each is quantized again when it is scored): for
            // a layer with tens of millions of weights, holding five quantized graphs at once
            // would cost more than the rest of the search.
            let mut seen = vec![arithmetic_key(&qg)];
            drop(qg);
            let candidates: Vec<Formats> = match strategy {
                Strategy::Arm => (1..=3).map(|d| base + d).collect(),
                // After the local pass the formats are near their best: the default refines.
                Strategy::Default if cal.local.is_some() => vec![base - 1, base + 1],
                Strategy::Default | Strategy::Descent | Strategy::Local | Strategy::None => {
                    vec![base - 2, base - 1, base + 1, base + 2, base + 3]
                }
            }
            .into_iter()
            .filter_map(|c| {
                let mut f = best.clone();
                set(&mut f, layer, out, *param, c);
                let q = ev.quantize(&f).ok()?;
                let key = arithmetic_key(&q);
                let new = !seen.contains(&key);
                seen.push(key);
                new.then_some(f)
            })
            .collect();
            let value = |f: &Formats| get(f, layer, out, *param).expect("format set above");
            let step_of = |f: &Formats, part: Part| {
                let v = value(f);
                move |s: Score, ok: bool| trace_step(layer, out, *param, v, s, ok, part)
            };
            if let Some(scr) = screen.as_mut() {
                // Screen every candidate on the subset; confirm on the whole search part the
                // (at most CONFIRM) candidates that beat the current formats there, most similar
                // to float (lowest KL, or highest SQNR) first: that figure is continuous, so on
                // a subset it ranks candidates far more reliably than a difference of a few
                // correct images. The first one the search part (and the held-out part) accepts
                // ends the coordinate (the others were screened against the formats it replaced).
                let mut ahead: Vec<(Formats, Scored, Activations)> = Vec::new();
                for f in candidates {
                    let (s, acts) = ev.eval(&ev.quantize(&f)?, k, scr, true)?;
                    let promising = score::better(&s.score, &scr.score)
                        || score::distance(&s.score) < score::distance(&scr.score);
                    trace.push(step_of(&f, Part::Screen)(s.score, promising));
                    if promising {
                        ahead.push((f, s, acts));
                    }
                }
                ahead.sort_by(|a, b| {
                    score::distance(&a.1.score).total_cmp(&score::distance(&b.1.score))
                });
                ahead.truncate(CONFIRM);
                for (f, s_screen, acts_screen) in ahead {
                    let q = ev.quantize(&f)?;
                    let (s, acts) = ev.eval(&q, k, &full, true)?;
                    let accept = score::better(&s.score, &full.score);
                    trace.push(step_of(&f, Part::Search)(s.score, accept));
                    if accept
                        && guard(
                            &mut ev,
                            held.as_mut(),
                            &q,
                            k,
                            &mut held_rejected,
                            step_of(&f, Part::Held),
                            &mut trace,
                        )?
                    {
                        full.accept(k, s, acts);
                        scr.accept(k, s_screen, acts_screen);
                        best = f;
                        break;
                    }
                }
            } else {
                let mut best_score = full.score;
                let mut arm_ref = full.score;
                for f in candidates {
                    let q = ev.quantize(&f)?;
                    let (s, _) = ev.eval(&q, k, &full, false)?;
                    let accept = match strategy {
                        Strategy::Arm => score::arm_not_worse(&s.score, &arm_ref),
                        Strategy::Default
                        | Strategy::Descent
                        | Strategy::Local
                        | Strategy::None => score::better(&s.score, &best_score),
                    };
                    trace.push(step_of(&f, Part::Search)(s.score, accept));
                    let accept = accept
                        && guard(
                            &mut ev,
                            held.as_mut(),
                            &q,
                            k,
                            &mut held_rejected,
                            step_of(&f, Part::Held),
                            &mut trace,
                        )?;
                    if accept {
                        best = f;
                        arm_ref = s.score;
                        best_score = s.score;
                    } else if strategy == Strategy::Arm {
                        break; // ARM stops at the first candidate that loses accuracy.
                    }
                }
                if get(&best, layer, out, *param) != Some(base) {
                    // Refresh the cache from layer `k` on with the accepted formats.
                    let (s, acts) = ev.eval(&ev.quantize(&best)?, k, &full, true)?;
                    full.accept(k, s, acts);
                }
            }
            if get(&best, layer, out, *param) != Some(base) {
                last_change = Some(step);
            }
        }
    }
    progress(total, total, "done");
    if ev.quantize(&best).is_err() {
        bail!("internal error: the search ended on formats that do not quantize");
    }
    let r = report(&ev, &full, &held, held_rejected, trace, &screen);
    Ok((best, r, ev.times))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::graph::{Hwc, QBlob, QConv, QLayer};
    use crate::ir::Hw;

    /// The table-driven, parallel input conversion equals `kernels::input_u8_q7` run image by
    /// image, for every kind of mean and for exact, power-of-two and other scales; a batch that
    /// is not whole means is refused as the kernel refuses it.
    #[test]
    fn input_prep_equals_the_kernel_image_by_image() {
        let image_len = 4 * 5 * 3;
        let images = 1500; // more than one parallel piece
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        let pixels: Vec<u8> = (0..images * image_len).map(|_| next()).collect();
        let mean_image: Vec<u8> = (0..image_len).map(|_| next()).collect();
        for mean in [vec![], vec![104, 117, 123], mean_image] {
            for scale in [1.0f32, 0.00390625, 1.0 / 255.0, 0.017, 3.0] {
                for frac in [-3, 0, 2, 5, 7] {
                    let prep = InputPrep {
                        mean_u8: mean.clone(),
                        scale,
                    };
                    let got = prep.quantize(&pixels, image_len, frac).unwrap();
                    let s = InputScale::new(scale, frac).unwrap();
                    let mut want = vec![0i8; pixels.len()];
                    for (p, o) in pixels.chunks(image_len).zip(want.chunks_mut(image_len)) {
                        kernels::input_u8_q7(p, &mean, s.mul, s.rshift, o).unwrap();
                    }
                    assert_eq!(
                        got,
                        want,
                        "mean of {} values, scale {scale}, frac {frac}",
                        mean.len()
                    );
                }
            }
        }
        let prep = InputPrep {
            mean_u8: vec![1, 2, 3],
            scale: 1.0,
        };
        assert!(prep.quantize(&pixels[..7], image_len, 0).is_err());
    }

    fn conv(bias: Vec<i8>, bias_lshift: i32) -> QOp {
        QOp::Conv(QConv {
            in_dims: Hwc { h: 1, w: 1, c: 1 },
            out_dims: Hwc { h: 1, w: 1, c: 2 },
            kernel: Hw { h: 1, w: 1 },
            pad: Hw { h: 0, w: 0 },
            stride: Hw { h: 1, w: 1 },
            dilation: Hw { h: 1, w: 1 },
            groups: 1,
            weights: vec![3, -4],
            bias,
            weight_frac_bits: 0,
            bias_frac_bits: 0,
            bias_lshift,
            out_rshift: 1,
            per_channel: None,
        })
    }

    /// x -> conv c1 -> a -> relu r -> b -> conv c2 -> y
    fn chain(bias: Vec<i8>, bias_lshift: i32) -> QGraph {
        let blob = |c| QBlob {
            shape: vec![c, 1, 1],
            layout: Hwc { h: 1, w: 1, c },
            frac_bits: 0,
        };
        let layer = |name: &str, op, i: &str, o: &str| QLayer {
            name: name.into(),
            op,
            inputs: vec![i.into()],
            output: o.into(),
        };
        QGraph {
            name: "t".into(),
            input: "x".into(),
            blobs: [("x", 1), ("a", 2), ("b", 2), ("y", 2)]
                .into_iter()
                .map(|(n, c)| (n.to_string(), blob(c)))
                .collect(),
            layers: vec![
                layer("c1", conv(bias.clone(), bias_lshift), "x", "a"),
                layer("r", QOp::Relu, "a", "b"),
                layer("c2", conv(bias, bias_lshift), "b", "y"),
            ],
            outputs: vec!["y".into()],
        }
    }

    #[test]
    fn the_cache_keeps_only_what_a_conv_rerun_reads() {
        // c1 re-runs from the input, c2 from the ReLU's output; conv c1's own output is not
        // needed by any re-run.
        assert_eq!(cached_blobs(&chain(vec![1, 2], 0)), vec!["b", "x"]);
    }

    #[test]
    fn equal_arithmetic_gives_equal_keys() {
        // bias 2 << 1 is bias 4 << 0: the same integer arithmetic, one run serves both.
        assert_eq!(
            arithmetic_key(&chain(vec![2, -1], 1)),
            arithmetic_key(&chain(vec![4, -2], 0))
        );
        assert_ne!(
            arithmetic_key(&chain(vec![2, -1], 1)),
            arithmetic_key(&chain(vec![4, -1], 0))
        );
    }
}
