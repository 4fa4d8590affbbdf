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
