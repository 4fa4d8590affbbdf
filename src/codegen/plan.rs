//! The static memory plan of the firmware: one arena, every materialised blob and every
//! temporary kernel buffer (convolution scratch, fused pool ring) at an offset chosen from its
//! lifetime, so that buffers are reused as soon as they are dead (instead of ARM's fixed
//! ping-pong buffers). Plans are made over the execution steps (`steps`): a fused
//! conv→ReLU→pool never materialises the convolution's output. ReLU and unpadded pooling run in
//! place and Flatten/Reshape alias their input whenever the input has no later reader.

use super::steps::{self, Step, StepKind};
use crate::fixed::graph::{QGraph, QOp};
use serde::Serialize;
use std::collections::BTreeMap;

/// Offsets are kept 4-byte aligned so that word-wise (DSP) access stays aligned.
const ALIGN: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    pub offset: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerLive {
    /// The step (fused layers joined by `+`).
    pub layer: String,
    /// Buffers live while the step runs (its inputs, output, temporaries, everything needed
    /// later).
    pub live: Vec<String>,
    pub live_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub arena_len: usize,
    /// Materialised blobs (a fused step's intermediate blobs have none).
    pub blobs: BTreeMap<String, Placement>,
    /// Temporary buffers, keyed `step.role` (`conv1+pool1.ring`, `conv2.scratch`).
    pub temps: BTreeMap<String, Placement>,
    /// Steps whose output shares its input's bytes (in-place ReLU/pool/Eltwise SUM, aliasing
    /// reshape/permute).
    pub in_place: Vec<String>,
    /// For each in-place step, which of its inputs the output overwrites (0 but for an Eltwise
    /// SUM whose second input is the one that dies there).
    pub in_place_input: BTreeMap<String, usize>,
    pub steps: Vec<Step>,
    pub per_layer: Vec<LayerLive>,
}

impl Plan {
    /// The step with the most live bytes (the one that sets a lower bound on the arena).
    pub fn largest_live(&self) -> Option<&LayerLive> {
        self.per_layer
            .iter()
            .max_by(|a, b| a.live_bytes.cmp(&b.live_bytes).then(b.layer.cmp(&a.layer)))
    }

    /// Bytes of kernel scratch and ring buffers live at once, at most (part of the arena).
    pub fn temp_bytes(&self) -> usize {
        self.steps
            .iter()
            .map(|s| s.temps.iter().map(|t| t.len).sum::<usize>())
            .max()
            .unwrap_or(0)
    }
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// Plan the arena of a quantized graph for a target with (`dsp`) or without the DSP kernels.
/// The input blob (q7), every output and every kernel temporary live in the arena.
///
/// Fusion and in-place pooling trade buffers against lifetimes, so all four combinations are
/// planned and the smallest arena wins (ties: fused, then out-of-place pooling).
pub fn plan(g: &QGraph, dsp: bool) -> Plan {
    let mut best: Option<Plan> = None;
    for (fuse, pool_in_place) in [(true, false), (true, true), (false, false), (false, true)] {
        let p = plan_with(g, steps::steps(g, dsp, fuse), pool_in_place);
        if best.as_ref().is_none_or(|b| p.arena_len < b.arena_len) {
            best = Some(p);
        }
    }
    best.expect("four plans were made")
}

fn plan_with(g: &QGraph, steps: Vec<Step>, pool_in_place: bool) -> Plan {
    let n = steps.len();
    // Lifetime of every materialised blob as [first step, last step]; step 0 is the input
    // conversion, step i runs at i + 1; outputs live to the end.
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    first.insert(&g.input, 0);
    last.insert(&g.input, 0);
    for (i, s) in steps.iter().enumerate() {
        for b in &s.inputs {
            last.insert(b, i + 1);
        }
        first.insert(&s.output, i + 1);
        last.entry(&s.output).or_insert(i + 1);
    }
    for o in &g.outputs {
        last.insert(o, n + 1);
    }
    // Alias chains share one buffer (the root blob's).
    let mut root: BTreeMap<&str, &str> = BTreeMap::new();
    let mut in_place = Vec::new();
    let mut in_place_input = BTreeMap::new();
    for (i, s) in steps.iter().enumerate() {
        if s.kind != StepKind::Layer {
            continue;
        }
        // An input can give its bytes to the output when this step is its last reader.
        let dies = |k: usize| {
            let b = s.inputs[k].as_str();
            last[b] == i + 1 && !g.outputs.iter().any(|o| o == b)
        };
        // ReLU, reshape and permute keep the bytes; pooling without padding can write its
        // output over its input (`kernels::pool_hwc_q7_in_place`); an Eltwise SUM over either
        // input (`kernels::add_q7_in_place`: elementwise, and the sum commutes), unless both
        // inputs are one blob.
        let src = match &g.layers[s.layers[0]].op {
            QOp::Relu
            | QOp::Reshape
            | QOp::Permute { .. }
            | QOp::Lut { .. }
            | QOp::PRelu { .. }
            | QOp::Softmax { .. } => Some(0).filter(|_| dies(0)),
            QOp::MaxPool(q) | QOp::AvePool(q) => {
                Some(0).filter(|_| pool_in_place && q.pad.h == 0 && q.pad.w == 0 && dies(0))
            }
            QOp::Add { .. } if s.inputs.len() == 2 && s.inputs[0] != s.inputs[1] => {
                (0..2).find(|&k| dies(k))
            }
            QOp::Conv(_)
            | QOp::Fc(_)
            | QOp::Add { .. }
            | QOp::Concat { .. }
            | QOp::Max { .. }
            | QOp::Deconv(_)
            | QOp::Lrn { .. }
            | QOp::Mul { .. }
            | QOp::ScaleBias { .. } => None,
        };
        if let Some(k) = src {
            let src = s.inputs[k].as_str();
            let r = root.get(src).copied().unwrap_or(src);
            root.insert(&s.output, r);
            in_place.push(s.name.clone());
            in_place_input.insert(s.name.clone(), k);
        }
    }
    let root_of = |b: &str| -> String { root.get(b).copied().unwrap_or(b).to_string() };
    // Buffers: root blobs and temporaries -> (start, end, len).
    let mut buffers: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for (b, &s) in &first {
        let r = root_of(b);
        let len = g.blob_len(b);
        let e = last[b];
        let entry = buffers.entry(r).or_insert((s, e, len));
        entry.0 = entry.0.min(s);
        entry.1 = entry.1.max(e);
        entry.2 = entry.2.max(len);
    }
    for (i, s) in steps.iter().enumerate() {
        for t in s.temps.iter().filter(|t| t.len > 0) {
            buffers.insert(format!("{}.{}", s.name, t.role), (i + 1, i + 1, t.len));
        }
    }
    // Greedy: largest first (ties by start, then name, for determinism), lowest offset that does
    // not overlap any placed buffer whose lifetime intersects.
    let mut order: Vec<(&String, &(usize, usize, usize))> = buffers.iter().collect();
    order.sort_by(|a, b| {
        b.1 .2
            .cmp(&a.1 .2)
            .then(a.1 .0.cmp(&b.1 .0))
            .then(a.0.cmp(b.0))
    });
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (start, end, offset, len)
    let mut offsets: BTreeMap<String, usize> = BTreeMap::new();
    for (name, &(s, e, len)) in order {
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .filter(|p| p.0 <= e && s <= p.1)
            .map(|p| (p.2, p.2 + align(p.3)))
            .collect();
        conflicts.sort();
        let mut off = 0;
        for (a, b) in conflicts {
            if off + len <= a {
                break;
            }
            off = off.max(b);
        }
        placed.push((s, e, off, len));
        offsets.insert(name.clone(), off);
    }
    let arena_len = align(placed.iter().map(|p| p.2 + p.3).max().unwrap_or(0));
    let blobs: BTreeMap<String, Placement> = first
        .keys()
        .map(|b| {
            (
                b.to_string(),
                Placement {
                    offset: offsets[&root_of(b)],
                    len: g.blob_len(b),
                },
            )
        })
        .collect();
    let temps: BTreeMap<String, Placement> = steps
        .iter()
        .flat_map(|s| {
            s.temps
                .iter()
                .filter(|t| t.len > 0)
                .map(move |t| format!("{}.{}", s.name, t.role))
        })
        .map(|k| {
            let len = buffers[&k].2;
            (
                k.clone(),
                Placement {
                    offset: offsets[&k],
                    len,
                },
            )
        })
        .collect();
    let per_layer = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let step = i + 1;
            let mut live: Vec<String> = buffers
                .iter()
                .filter(|(_, &(a, e, _))| a <= step && step <= e)
                .map(|(r, _)| r.clone())
                .collect();
            live.sort();
            let live_bytes = live.iter().map(|r| buffers[r].2).sum();
            LayerLive {
                layer: s.name.clone(),
                live,
                live_bytes,
            }
        })
        .collect();
    Plan {
        arena_len,
        blobs,
        temps,
        in_place,
        in_place_input,
        steps,
        per_layer,
    }
}

/// Check that no two buffers that are live at the same time overlap (except aliases) and that
/// everything fits in the arena; used by tests and as a guard before emitting code.
pub fn check(g: &QGraph, p: &Plan) -> Result<(), String> {
    let n = p.steps.len();
    // name -> (start, end, placement)
    let mut span: BTreeMap<String, (usize, usize, &Placement)> = BTreeMap::new();
    let blob = |b: &str| {
        p.blobs
            .get(b)
            .ok_or_else(|| format!("blob '{b}' has no place in the arena"))
    };
    span.insert(g.input.clone(), (0, 0, blob(&g.input)?));
    for (i, s) in p.steps.iter().enumerate() {
        for b in &s.inputs {
            let e = span
                .get_mut(b.as_str())
                .ok_or_else(|| format!("step '{}' reads '{b}' before it is written", s.name))?;
            e.1 = i + 1;
        }
        let pl = blob(&s.output)?;
        span.entry(s.output.clone()).or_insert((i + 1, i + 1, pl));
        for t in s.temps.iter().filter(|t| t.len > 0) {
            let k = format!("{}.{}", s.name, t.role);
            let pl = p
                .temps
                .get(&k)
                .ok_or_else(|| format!("temporary '{k}' has no place"))?;
            if pl.len < t.len {
                return Err(format!("temporary '{k}' is too short"));
            }
            span.insert(k, (i + 1, i + 1, pl));
        }
    }
    for o in &g.outputs {
        span.get_mut(o.as_str())
            .ok_or_else(|| format!("output '{o}' is never written"))?
            .1 = n + 1;
    }
    let aliased: Vec<(&str, &str)> = p
        .steps
        .iter()
        .filter_map(|s| {
            let k = *p.in_place_input.get(&s.name)?;
            Some((s.inputs.get(k)?.as_str(), s.output.as_str()))
        })
        .collect();
    let names: Vec<&String> = span.keys().collect();
    for (i, a) in names.iter().enumerate() {
        let (sa0, sa1, pa) = span[*a];
        if pa.offset + pa.len > p.arena_len {
            return Err(format!("'{a}' ends past the arena"));
        }
        for b in &names[i + 1..] {
            let (sb0, sb1, pb) = span[*b];
            let time = sa0 <= sb1 && sb0 <= sa1;
            let space = pa.offset < pb.offset + pb.len && pb.offset < pa.offset + pa.len;
            let alias = pa.offset == pb.offset && chain(&aliased, a, b);
            if time && space && !alias {
                return Err(format!(
                    "'{a}' and '{b}' are live together but overlap in the arena"
                ));
            }
        }
    }
    Ok(())
}

fn chain(aliased: &[(&str, &str)], a: &str, b: &str) -> bool {
    let root = |x: &str| {
        let mut x = x.to_string();
        while let Some(&(src, _)) = aliased.iter().find(|&&(_, d)| d == x) {
            x = src.to_string();
        }
        x
    };
    root(a) == root(b)
}
