//! The static memory plan of the firmware: one arena, every blob at an offset chosen from its
//! lifetime, so that buffers are reused as soon as their blob is dead (instead of ARM's fixed
//! ping-pong buffers). ReLU and unpadded pooling run in place and Flatten/Reshape alias their
//! input whenever the input has no later reader.

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
    pub layer: String,
    /// Blobs live while the layer runs (its inputs, its output, and everything needed later).
    pub live: Vec<String>,
    pub live_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub arena_len: usize,
    pub blobs: BTreeMap<String, Placement>,
    /// Layers whose output shares its input's bytes (in-place ReLU, aliasing reshape).
    pub in_place: Vec<String>,
    pub per_layer: Vec<LayerLive>,
}

fn align(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// Plan the arena of a quantized graph. The input blob (q7) and every output live in the arena.
///
/// In-place pooling saves the pool's output buffer but keeps its (larger) input buffer alive until
/// the pooled blob dies, which helps some networks (ARM's CIFAR-10: 40,960 → 36,864 B) and hurts
/// others; both plans are made and the smaller arena wins (ties: out of place).
pub fn plan(g: &QGraph) -> Plan {
    let out_of_place = plan_with(g, false);
    let in_place = plan_with(g, true);
    if in_place.arena_len < out_of_place.arena_len {
        in_place
    } else {
        out_of_place
    }
}

fn plan_with(g: &QGraph, pool_in_place: bool) -> Plan {
    let n = g.layers.len();
    // Lifetime of every blob as [first step, last step]; step 0 is the input conversion, layer
    // i runs at step i + 1; outputs live to the end.
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    first.insert(&g.input, 0);
    last.insert(&g.input, 0);
    for (i, l) in g.layers.iter().enumerate() {
        for b in &l.inputs {
            last.insert(b, i + 1);
        }
        first.insert(&l.output, i + 1);
        last.entry(&l.output).or_insert(i + 1);
    }
    for o in &g.outputs {
        last.insert(o, n + 1);
    }
    // Buffers: alias chains share one buffer (the root blob's).
    let mut root: BTreeMap<&str, &str> = BTreeMap::new();
    let mut in_place = Vec::new();
    for (i, l) in g.layers.iter().enumerate() {
        // ReLU and reshape keep the bytes; pooling without padding can write its output over
        // its input (`kernels::pool_hwc_q7_in_place`).
        let aliasing = match &l.op {
            QOp::Relu | QOp::Reshape => true,
            QOp::MaxPool(q) | QOp::AvePool(q) => pool_in_place && q.pad.h == 0 && q.pad.w == 0,
            _ => false,
        };
        let src = l.inputs[0].as_str();
        if aliasing && last[src] == i + 1 && !g.outputs.iter().any(|o| o == src) {
            let r = root.get(src).copied().unwrap_or(src);
            root.insert(&l.output, r);
            in_place.push(l.name.clone());
        }
    }
    let root_of = |b: &str| -> String { root.get(b).copied().unwrap_or(b).to_string() };
    // Buffer lifetimes and sizes.
    let mut buffers: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new(); // root -> (start, end, len)
    for (b, &s) in &first {
        let r = root_of(b);
        let len = g.blob_len(b);
        let e = last[b];
        let entry = buffers.entry(r).or_insert((s, e, len));
        entry.0 = entry.0.min(s);
        entry.1 = entry.1.max(e);
        entry.2 = entry.2.max(len);
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
    let per_layer = g
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let step = i + 1;
            let mut live: Vec<String> = buffers
                .iter()
                .filter(|(_, &(s, e, _))| s <= step && step <= e)
                .map(|(r, _)| r.clone())
                .collect();
            live.sort();
            let live_bytes = live.iter().map(|r| buffers[r].2).sum();
            LayerLive {
                layer: l.name.clone(),
                live,
                live_bytes,
            }
        })
        .collect();
    Plan {
        arena_len,
        blobs,
        in_place,
        per_layer,
    }
}

/// Check that no two blobs that are live at the same time overlap (except aliases); used by tests
/// and as a guard before emitting code.
pub fn check(g: &QGraph, p: &Plan) -> Result<(), String> {
    let n = g.layers.len();
    let mut span: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    span.insert(&g.input, (0, 0));
    for (i, l) in g.layers.iter().enumerate() {
        span.entry(&l.output).or_insert((i + 1, i + 1));
        for b in &l.inputs {
            span.get_mut(b.as_str())
                .expect("inputs are produced earlier")
                .1 = i + 1;
        }
    }
    for o in &g.outputs {
        span.get_mut(o.as_str()).expect("outputs are produced").1 = n + 1;
    }
    let aliased: Vec<(&str, &str)> = g
        .layers
        .iter()
        .filter(|l| p.in_place.contains(&l.name))
        .map(|l| (l.inputs[0].as_str(), l.output.as_str()))
        .collect();
    let names: Vec<&str> = span.keys().copied().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let (sa, sb) = (span[a], span[b]);
            let (pa, pb) = (&p.blobs[*a], &p.blobs[*b]);
            let time = sa.0 <= sb.1 && sb.0 <= sa.1;
            let space = pa.offset < pb.offset + pb.len && pb.offset < pa.offset + pa.len;
            let alias = aliased
                .iter()
                .any(|&(x, y)| (x, y) == (*a, *b) || (y, x) == (*a, *b))
                || pa.offset == pb.offset && chain(&aliased, a, b);
            if time && space && !alias {
                return Err(format!(
                    "blobs '{a}' and '{b}' are live together but overlap in the arena"
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
