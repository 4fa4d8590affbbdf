//! Cross-layer equalization with power-of-two scales (after Nagel et al., "Data-Free
//! Quantization Through Weight Equalization and Bias Correction", ICCV 2019).
//!
//! Why: a per-tensor weight format is set by the layer's largest channel, so a layer whose
//! output channels have very different ranges (typical after BatchNorm folding, worst in
//! depthwise convolutions) keeps few significant bits in its small channels. For a producer
//! convolution P whose output reaches its consumers only through an optional ReLU, output channel
//! `o` of P can be divided by `s_o > 0` and input channel `o` of every consumer multiplied by
//! `s_o` without changing the network: ReLU is positively homogeneous, and `(w/s)·x·(s·v) =
//! w·x·v`. Choosing `s_o = sqrt(r1_o / r2_o)` (`r1`: range of P's channel `o`, `r2`: range of
//! the consumers' input channel `o`) gives both layers the same per-channel range.
//!
//! Scales are powers of two, so the rewrite is exact in f32: the float model's outputs stay
//! bit-identical (checked by a test), and nothing downstream (formats, kernels, firmware) changes.

use super::{Graph, Op};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// What equalization did to one producer and its consumers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairChange {
    pub producer: String,
    pub consumers: Vec<String>,
    /// Output channels of the producer whose scale is not 1.
    pub channels_scaled: usize,
    /// Largest / smallest per-channel weight range of the producer (ignoring all-zero channels),
    /// before and after: what a per-tensor format has to cover.
    pub producer_spread_before: f32,
    pub producer_spread_after: f32,
}

/// The result of [`equalize`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Equalization {
    pub rounds: usize,
    pub pairs: Vec<PairChange>,
}

/// Scales are limited to 2^-MAX_EXP ..= 2^MAX_EXP (a channel with a tiny range is not inflated
/// without bound).
const MAX_EXP: i32 = 8;
const ROUNDS: usize = 8;

/// How a consumer convolution reads its input channels.
#[derive(Clone, Copy)]
enum Reads {
    /// `group == 1`: weights `[O][C][KH][KW]`, input channel `o` is the slice `[:, o]`.
    Dense { outputs: usize, kernel: usize },
    /// Depthwise (`group == C == O`): weights `[C][1][KH][KW]`, channel `o` is row `o`.
    Depthwise { kernel: usize },
}

/// One producer → (ReLU) → consumers pair of the graph, by node index.
struct Pair {
    producer: usize,
    consumers: Vec<(usize, Reads)>,
    channels: usize,
}

fn conv_reads(g: &Graph, i: usize, channels: usize) -> Option<Reads> {
    let n = &g.nodes[i];
    let Op::Convolution(c) = &n.op else {
        return None;
    };
    let kernel = c.kernel.h * c.kernel.w;
    if n.inputs.len() != 1 || n.weights.is_empty() {
        return None;
    }
    if c.group == 1 {
        Some(Reads::Dense {
            outputs: c.num_output,
            kernel,
        })
    } else if c.group == channels && c.num_output == channels {
        Some(Reads::Depthwise { kernel })
    } else {
        None
    }
}

/// Every producer convolution whose output goes, through at most one ReLU (leaky or not: both
/// are positively homogeneous) and nothing else, only to convolutions.
fn pairs(g: &Graph) -> Vec<Pair> {
    let consumers_of = |blob: &str| -> Vec<usize> {
        (0..g.nodes.len())
            .filter(|&j| g.nodes[j].inputs.iter().any(|b| b == blob))
            .collect()
    };
    let mut out = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let Op::Convolution(c) = &n.op else { continue };
        if n.weights.is_empty() || n.outputs.len() != 1 {
            continue;
        }
        let channels = c.num_output;
        let mut blob = n.outputs[0].as_str();
        let mut readers = consumers_of(blob);
        if g.outputs.iter().any(|o| o == blob) {
            continue;
        }
        if let [r] = readers[..] {
            if matches!(g.nodes[r].op, Op::ReLU { .. }) && g.nodes[r].outputs.len() == 1 {
                blob = g.nodes[r].outputs[0].as_str();
                readers = consumers_of(blob);
                if g.outputs.iter().any(|o| o == blob) {
                    continue;
                }
            }
        }
        let consumers: Option<Vec<(usize, Reads)>> = readers
            .iter()
            .map(|&j| conv_reads(g, j, channels).map(|r| (j, r)))
            .collect();
        match consumers {
            Some(c) if !c.is_empty() => out.push(Pair {
                producer: i,
                consumers: c,
                channels,
            }),
            _ => {}
        }
    }
    out
}

/// Largest |w| of each output channel of a convolution (`[O][…]` weights).
fn out_ranges(w: &[f32], channels: usize) -> Vec<f32> {
    let per = w.len() / channels.max(1);
    w.chunks(per.max(1))
        .take(channels)
        .map(|c| c.iter().fold(0f32, |m, v| m.max(v.abs())))
        .collect()
}

fn spread(r: &[f32]) -> f32 {
    let nz: Vec<f32> = r.iter().copied().filter(|&v| v > 0.0).collect();
    let max = nz.iter().fold(0f32, |m, &v| m.max(v));
    let min = nz.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    if nz.is_empty() {
        1.0
    } else {
        max / min
    }
}

/// Equalize every producer/consumer pair of `g`, a few rounds (a layer can be the consumer of one
/// pair and the producer of the next). Returns what changed, producer by producer.
pub fn equalize(g: &mut Graph) -> Result<Equalization> {
    let ps = pairs(g);
    let mut before: Vec<f32> = Vec::with_capacity(ps.len());
    for p in &ps {
        before.push(spread(&out_ranges(
            &g.nodes[p.producer].weights[0].data,
            p.channels,
        )));
    }
    // Accumulated exponent of every pair's channels (for the report).
    let mut total: Vec<Vec<i32>> = ps.iter().map(|p| vec![0; p.channels]).collect();
    let mut rounds = 0;
    for _ in 0..ROUNDS {
        rounds += 1;
        let mut changed = false;
        for (k, p) in ps.iter().enumerate() {
            let r1 = out_ranges(&g.nodes[p.producer].weights[0].data, p.channels);
            let mut r2 = vec![0f32; p.channels];
            for &(j, reads) in &p.consumers {
                let w = &g.nodes[j].weights[0].data;
                match reads {
                    Reads::Dense { outputs, kernel } => {
                        for o in 0..outputs {
                            for (ch, r) in r2.iter_mut().enumerate() {
                                let s = &w[(o * p.channels + ch) * kernel..][..kernel];
                                *r = s.iter().fold(*r, |m, v| m.max(v.abs()));
                            }
                        }
                    }
                    Reads::Depthwise { kernel } => {
                        for (ch, r) in r2.iter_mut().enumerate() {
                            let s = &w[ch * kernel..][..kernel];
                            *r = s.iter().fold(*r, |m, v| m.max(v.abs()));
                        }
                    }
                }
            }
            // s_o = 2^e: r1/s = r2·s at e = round(log2(r1/r2) / 2).
            let exps: Vec<i32> = r1
                .iter()
                .zip(&r2)
                .map(|(&a, &b)| {
                    if a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite() {
                        ((a / b).log2() / 2.0)
                            .round()
                            .clamp(-MAX_EXP as f32, MAX_EXP as f32) as i32
                    } else {
                        0
                    }
                })
                .collect();
            if exps.iter().all(|&e| e == 0) {
                continue;
            }
            changed = true;
            let pn = &mut g.nodes[p.producer];
            let per = pn.weights[0].data.len() / p.channels;
            for (o, &e) in exps.iter().enumerate() {
                let inv = (-e as f32).exp2();
                for v in &mut pn.weights[0].data[o * per..(o + 1) * per] {
                    *v *= inv;
                }
                if let Some(b) = pn.weights.get_mut(1) {
                    b.data[o] *= inv;
                }
                total[k][o] += e;
            }
            for &(j, reads) in &p.consumers {
                let w = &mut g.nodes[j].weights[0].data;
                match reads {
                    Reads::Dense { outputs, kernel } => {
                        for o in 0..outputs {
                            for (ch, &e) in exps.iter().enumerate() {
                                let s = (e as f32).exp2();
                                for v in &mut w[(o * p.channels + ch) * kernel..][..kernel] {
                                    *v *= s;
                                }
                            }
                        }
                    }
                    Reads::Depthwise { kernel } => {
                        for (ch, &e) in exps.iter().enumerate() {
                            let s = (e as f32).exp2();
                            for v in &mut w[ch * kernel..][..kernel] {
                                *v *= s;
                            }
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let pairs = ps
        .iter()
        .zip(&before)
        .zip(&total)
        .map(|((p, &b), t)| PairChange {
            producer: g.nodes[p.producer].name.clone(),
            consumers: p
                .consumers
                .iter()
                .map(|&(j, _)| g.nodes[j].name.clone())
                .collect(),
            channels_scaled: t.iter().filter(|&&e| e != 0).count(),
            producer_spread_before: b,
            producer_spread_after: spread(&out_ranges(
                &g.nodes[p.producer].weights[0].data,
                p.channels,
            )),
        })
        .collect();
    Ok(Equalization { rounds, pairs })
}

/// What activation equalization did to one producer and its depthwise consumers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationChange {
    pub producer: String,
    pub consumers: Vec<String>,
    /// The blob the consumers read (the producer's output or its ReLU's).
    pub blob: String,
    pub channels: usize,
    /// Output channels of the producer scaled up (by 2^1 … 2^MAX_EXP).
    pub channels_scaled: usize,
    /// Mean over the channels of (channel max-abs / blob max-abs), before and after: how much
    /// of the blob's shared format the channels use.
    pub range_use_before: f32,
    pub range_use_after: f32,
}

/// The result of [`equalize_activations`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ActivationEqualization {
    /// Calibration images the channel ranges were measured on.
    pub images: usize,
    pub pairs: Vec<ActivationChange>,
}

/// Ranges [`equalize_activations`] needs, by blob: the per-channel max-abs of every blob a
/// depthwise-only pair reads and of its producer's output (before the ReLU), and of the
/// producer's input.
pub type ChannelRanges = std::collections::BTreeMap<String, Vec<f32>>;

/// The pairs whose consumers are all depthwise: `(pair, blob the consumers read)`.
fn depthwise_pairs(g: &Graph) -> Vec<(Pair, String)> {
    pairs(g)
        .into_iter()
        .filter(|p| {
            p.consumers
                .iter()
                .all(|(_, r)| matches!(r, Reads::Depthwise { .. }))
        })
        .map(|p| {
            let blob = g.nodes[p.consumers[0].0].inputs[0].clone();
            (p, blob)
        })
        .collect()
}

/// The blobs whose per-channel max-abs [`equalize_activations`] needs (NCHW channel axis 0 of
/// each image's `[C, H, W]`): what the depthwise consumers read, and the producers' inputs.
pub fn activation_blobs(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = depthwise_pairs(g)
        .into_iter()
        .flat_map(|(p, blob)| {
            let n = &g.nodes[p.producer];
            [blob, n.outputs[0].clone(), n.inputs[0].clone()]
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Activation equalization for a convolution that feeds (through at most one ReLU) only
/// depthwise convolutions: output channel `o` of the producer is multiplied by `2^e_o` and
/// depthwise channel `o` divided by it, so that every channel fills the blob's shared q7 format
/// (`e_o = floor(log2(M / m_o))`, `m_o` the channel's max-abs, `M` the blob's; the same bound
/// for the producer's own output before the ReLU, so that no blob's range grows: a start
/// format from a blob's max-abs stays what it was).
///
/// Why: a q7 blob has one format for all its channels, set by its widest channel; after
/// BatchNorm folding some channels span a few percent of it and keep only a few significant
/// bits. With per-channel weight formats both rewritten layers keep exactly their int8 weights
/// (a power of two only moves a channel's fraction bits), so the gain is free: each scaled
/// channel's activation rounding noise falls by `6.02·e_o` dB. Not for per-layer formats (the
/// scaled channels would set the layer's weight format). `e_o` is limited so that the
/// producer's channel keeps `weight_frac + in_frac ≥ out_frac` (else the output format would
/// have to be lowered for the whole blob) and the consumer's fraction bits stay below 24.
///
/// Returns the exponents by producer (what [`apply_activation_scales`] takes, recorded in the
/// formats file) and the report; the graph is rewritten.
pub fn equalize_activations(
    g: &mut Graph,
    ranges: &ChannelRanges,
    images: usize,
) -> Result<(Scales, ActivationEqualization)> {
    use crate::fixed::qformat::QFormat;
    let frac = |m: f32| QFormat::from_max_abs(m).map(|q| q.frac_bits);
    let mut report = ActivationEqualization {
        images,
        pairs: Vec::new(),
    };
    let mut scales = Scales::new();
    for (p, blob) in depthwise_pairs(g) {
        let pn = &g.nodes[p.producer];
        let (Some(m), Some(pre), Some(inp)) = (
            ranges.get(&blob),
            ranges.get(&pn.outputs[0]),
            ranges.get(&pn.inputs[0]),
        ) else {
            continue;
        };
        if m.len() != p.channels || pre.len() != p.channels {
            continue;
        }
        let big = m.iter().fold(0f32, |a, &v| a.max(v));
        let big_pre = pre.iter().fold(0f32, |a, &v| a.max(v));
        let in_max = inp.iter().fold(0f32, |a, &v| a.max(v));
        if !(big > 0.0 && big.is_finite() && in_max > 0.0 && in_max.is_finite()) {
            continue;
        }
        let (out_frac, in_frac) = (frac(big)?, frac(in_max)?);
        let w_prod = out_ranges(&pn.weights[0].data, p.channels);
        let mut exps = vec![0i32; p.channels];
        for (o, e) in exps.iter_mut().enumerate() {
            if !(m[o] > 0.0 && w_prod[o] > 0.0) {
                continue;
            }
            let want = ((big / m[o]).log2().floor() as i32)
                .min((big_pre / pre[o].max(m[o])).log2().floor() as i32);
            // The producer's channel: weight_frac - e + in_frac >= out_frac.
            let room_prod = frac(w_prod[o])? + in_frac - out_frac;
            // Every consumer's channel: weight_frac + e < 24.
            let mut room_cons = MAX_EXP;
            for &(j, reads) in &p.consumers {
                if let Reads::Depthwise { kernel } = reads {
                    let w = &g.nodes[j].weights[0].data[o * kernel..][..kernel];
                    let r = w.iter().fold(0f32, |a, v| a.max(v.abs()));
                    if r > 0.0 {
                        room_cons = room_cons.min(23 - frac(r)?);
                    }
                }
            }
            *e = want.min(room_prod).min(room_cons).clamp(0, MAX_EXP);
        }
        let use_of = |e: &[i32]| {
            m.iter()
                .zip(e)
                .map(|(v, &e)| v * (e as f32).exp2() / big)
                .sum::<f32>()
                / p.channels as f32
        };
        report.pairs.push(ActivationChange {
            producer: pn.name.clone(),
            consumers: p
                .consumers
                .iter()
                .map(|&(j, _)| g.nodes[j].name.clone())
                .collect(),
            blob,
            channels: p.channels,
            channels_scaled: exps.iter().filter(|&&e| e != 0).count(),
            range_use_before: use_of(&vec![0; p.channels]),
            range_use_after: use_of(&exps),
        });
        if exps.iter().any(|&e| e != 0) {
            scales.insert(pn.name.clone(), exps);
        }
    }
    apply_activation_scales(g, &scales)?;
    Ok((scales, report))
}

/// Power-of-two exponents of activation equalization, by producer layer.
pub type Scales = std::collections::BTreeMap<String, Vec<i32>>;

/// Scale output channel `o` of each named producer by `2^e[o]` and channel `o` of its depthwise
/// consumers by `2^-e[o]` (see [`equalize_activations`]). A producer that does not feed only
/// depthwise convolutions, a wrong channel count or an exponent outside `0..=MAX_EXP` is an
/// error that names it (a formats file for another model).
pub fn apply_activation_scales(g: &mut Graph, scales: &Scales) -> Result<()> {
    let pairs = depthwise_pairs(g);
    for (name, exps) in scales {
        let Some((p, _)) = pairs
            .iter()
            .find(|(p, _)| &g.nodes[p.producer].name == name)
        else {
            anyhow::bail!(
                "activation_scales.{name}: no convolution of that name feeds only depthwise convolutions in this model"
            );
        };
        anyhow::ensure!(
            exps.len() == p.channels,
            "activation_scales.{name} has {} exponents for {} channels",
            exps.len(),
            p.channels
        );
        anyhow::ensure!(
            exps.iter().all(|e| (0..=MAX_EXP).contains(e)),
            "activation_scales.{name} holds an exponent outside 0..={MAX_EXP}"
        );
        let pn = &mut g.nodes[p.producer];
        let per = pn.weights[0].data.len() / p.channels;
        for (o, &e) in exps.iter().enumerate() {
            let s = (e as f32).exp2();
            for v in &mut pn.weights[0].data[o * per..(o + 1) * per] {
                *v *= s;
            }
            if let Some(b) = pn.weights.get_mut(1) {
                b.data[o] *= s;
            }
        }
        for &(j, reads) in &p.consumers {
            if let Reads::Depthwise { kernel } = reads {
                let w = &mut g.nodes[j].weights[0].data;
                for (o, &e) in exps.iter().enumerate() {
                    let s = (-e as f32).exp2();
                    for v in &mut w[o * kernel..][..kernel] {
                        *v *= s;
                    }
                }
            }
        }
    }
    Ok(())
}
