//! The firmware's execution steps: the graph's layers in order, with a convolution and the
//! single-reader ReLU / pooling / ReLU chain after it fused into one step, so that the
//! convolution's output is never materialised (a row ring buffer feeds the pool,
//! `kernels::conv_pool_hwc_q7`) or a ReLU happens in the requantization
//! (`kernels::conv_hwc_q7_scratch`). Each step lists the temporary buffers its kernel needs
//! (patch scratch, ring) so that the memory plan can place them in the arena for that step only.

use crate::fixed::graph::{QGraph, QOp};
use crate::fixed::kernels::{self, Dims};
use serde::Serialize;

/// What one step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// One layer as it is (a convolution gets patch scratch).
    Layer,
    /// Convolution with the following ReLU in its requantization.
    ConvRelu,
    /// Convolution → (ReLU) → max/average pool → (ReLU).
    ConvPool { relu_conv: bool, relu_out: bool },
}

/// A temporary buffer a step's kernel needs while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Temp {
    /// `scratch` (convolution patches) or `ring` (convolution rows of a fused pool).
    pub role: &'static str,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// The fused layers' names joined by `+`.
    pub name: String,
    /// Indices into `QGraph::layers`, in order.
    pub layers: Vec<usize>,
    pub kind: StepKind,
    pub inputs: Vec<String>,
    pub output: String,
    pub temps: Vec<Temp>,
}

fn dims(d: crate::fixed::graph::Hwc) -> Dims {
    Dims {
        h: d.h,
        w: d.w,
        c: d.c,
    }
}

/// How many layers read `blob`, and whether it is a graph output.
fn readers(g: &QGraph, blob: &str) -> usize {
    let n = g
        .layers
        .iter()
        .map(|l| l.inputs.iter().filter(|b| *b == blob).count())
        .sum::<usize>();
    n + g.outputs.iter().filter(|o| *o == blob).count()
}

/// Layer `i + 1` when it is the only reader of layer `i`'s output (and that output is not a
/// graph output): the condition for fusing the two.
fn sole_next(g: &QGraph, i: usize) -> Option<usize> {
    let next = g.layers.get(i + 1)?;
    let out = &g.layers[i].output;
    (next.inputs.len() == 1 && &next.inputs[0] == out && readers(g, out) == 1).then_some(i + 1)
}

/// Group the layers into steps. `fuse = false` gives one step per layer (used to compare
/// plans); `dsp` decides the size of the convolution scratch.
pub fn steps(g: &QGraph, dsp: bool, fuse: bool) -> Vec<Step> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < g.layers.len() {
        let l = &g.layers[i];
        let mut layers = vec![i];
        let mut kind = StepKind::Layer;
        let mut temps = Vec::new();
        if let QOp::Conv(c) = &l.op {
            let ksize = c.kernel.h * c.kernel.w * (c.in_dims.c / c.groups.max(1));
            temps.push(Temp {
                role: "scratch",
                len: kernels::conv_scratch_len(ksize, dsp),
            });
            let is = |j: Option<usize>, relu: bool| {
                j.map(|j| &g.layers[j].op).is_some_and(|op| {
                    if relu {
                        matches!(op, QOp::Relu)
                    } else {
                        matches!(op, QOp::MaxPool(_) | QOp::AvePool(_))
                    }
                })
            };
            if fuse {
                let mut j = sole_next(g, i);
                let relu_conv = is(j, true);
                if relu_conv {
                    layers.push(i + 1);
                    j = sole_next(g, i + 1);
                }
                if is(j, false) {
                    let p = j.expect("checked");
                    let (QOp::MaxPool(q) | QOp::AvePool(q)) = &g.layers[p].op else {
                        unreachable!("checked to be a pool")
                    };
                    layers.push(p);
                    temps.push(Temp {
                        role: "ring",
                        len: kernels::conv_pool_ring_len(dims(c.out_dims), q.kernel.h),
                    });
                    let r = sole_next(g, p);
                    let relu_out = is(r, true);
                    if relu_out {
                        layers.push(p + 1);
                    }
                    kind = StepKind::ConvPool {
                        relu_conv,
                        relu_out,
                    };
                } else if relu_conv {
                    kind = StepKind::ConvRelu;
                }
            }
        }
        let last = *layers.last().expect("at least one layer");
        out.push(Step {
            name: layers
                .iter()
                .map(|&k| g.layers[k].name.as_str())
                .collect::<Vec<_>>()
                .join("+"),
            kind,
            inputs: l.inputs.clone(),
            output: g.layers[last].output.clone(),
            temps,
            layers,
        });
        i = last + 1;
    }
    out
}
