//! The fast path for the common case: a plain chain of Convolution / Pooling / ReLU /
//! InnerProduct layers (each layer reads the previous one's output, one graph output at the end),
//! run image by image in NHWC with fused epilogues.
//!
//! Why a separate path: the general engine ([`super::Engine`] with its NCHW kernels) must return
//! every blob for calibration and handle any graph; inference of a chain (evaluation, benchmarks)
//! only needs the logits. Here each image goes through per-thread scratch buffers (no allocation
//! per layer), convolutions are direct SIMD kernels ([`super::direct`]) writing NHWC, a ReLU that
//! follows a convolution / pooling / inner product is applied in that layer's epilogue, and the
//! inner product's weights are permuted once to read the NHWC activations in place.
//!
//! Caffe's semantics are kept exactly as in the NCHW kernels: pooling windows and AVE divisors
//! from the same rules (`super::pool::window`), MAX starting from `-FLT_MAX` with a strict `>`,
//! ReLU as `max(x,0) + slope·min(x,0)`. Only the order of the additions inside a convolution
//! differs (as it does between any two GEMMs).

use super::direct::{DirectConv, Isa};
use super::pool::window;
use crate::ir::{shape::pool_geometry, Graph, Op, PoolMethod};

/// What an activation is between stages: NHWC `(h, w, c)` or a flat vector.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Layout {
    Hwc { h: usize, w: usize, c: usize },
    Flat(usize),
}

impl Layout {
    fn len(self) -> usize {
        match self {
            Layout::Hwc { h, w, c } => h * w * c,
            Layout::Flat(n) => n,
        }
    }
}

enum Stage {
    /// Copy the `h × w × c` input into the interior of scratch pad buffer `slot`, then convolve.
    Conv {
        k: DirectConv,
        h: usize,
        w: usize,
        c: usize,
        pad: (usize, usize),
        slot: usize,
    },
    Pool(PoolNhwc),
    /// A ReLU that could not be fused (the graph's first layer): in place.
    Relu(f32),
    Dense {
        /// `[n][k]`, `k` in the order of the incoming layout.
        weights: Vec<f32>,
        bias: Vec<f32>,
        k: usize,
        n: usize,
        relu: Option<f32>,
    },
}

struct PoolNhwc {
    max: bool,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    relu: Option<f32>,
}

/// A chain graph compiled for NHWC inference.
pub(super) struct Chain {
    stages: Vec<Stage>,
    /// Input `C × H × W` (NCHW per image, as the engine is fed).
    input: (usize, usize, usize),
    /// Layout of the last stage's output (converted back to CHW when 3-D).
    out: Layout,
    /// Largest activation between stages, and each convolution's padded input size.
    max_len: usize,
    pad_lens: Vec<usize>,
    pub isa: Isa,
}

/// Per-thread buffers: two ping-pong activations and one zero-bordered input per convolution.
pub(super) struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    pads: Vec<Vec<f32>>,
}

fn relu(v: f32, slope: f32) -> f32 {
    v.max(0.0) + slope * v.min(0.0)
}

impl Chain {
    /// The chain plan of `g`, or `None` when the graph is not a chain of supported layers (the
    /// general engine then runs it). Weights were already checked by `kernel_for`.
    pub fn build(g: &Graph, isa: Isa) -> Option<Chain> {
        let [c, h, w] = g.shape(&g.input.blob)[..] else {
            return None;
        };
        let last = g.nodes.last()?;
        if g.outputs.len() != 1 || g.outputs[0] != *last.outputs.first()? {
            return None;
        }
        let mut layout = Layout::Hwc { h, w, c };
        let mut prev = g.input.blob.as_str();
        let mut stages: Vec<Stage> = Vec::new();
        let mut pad_lens = Vec::new();
        let mut max_len = layout.len();
        for node in &g.nodes {
            if node.inputs.len() != 1 || node.inputs[0] != prev || node.outputs.len() != 1 {
                return None;
            }
            prev = &node.outputs[0];
            let out_shape = g.shape(prev);
            match (&node.op, layout) {
                (Op::Convolution(p), Layout::Hwc { h, w, c }) => {
                    let k = DirectConv::caffe(isa, p, &node.weights, &[c, h, w], out_shape)?;
                    let [o, oh, ow] = out_shape[..] else {
                        return None;
                    };
                    pad_lens.push(k.padded_len());
                    let pad = k.pad();
                    stages.push(Stage::Conv {
                        k,
                        h,
                        w,
                        c,
                        pad,
                        slot: pad_lens.len() - 1,
                    });
                    layout = Layout::Hwc { h: oh, w: ow, c: o };
                }
                (Op::Pooling(p), Layout::Hwc { h, w, c }) => {
                    let [_, oh, ow] = out_shape[..] else {
                        return None;
                    };
                    let (kernel, stride, pad) = pool_geometry(p, h, w);
                    stages.push(Stage::Pool(PoolNhwc {
                        max: p.method == PoolMethod::Max,
                        h,
                        w,
                        c,
                        oh,
                        ow,
                        kernel: (kernel.h, kernel.w),
                        stride: (stride.h, stride.w),
                        pad: (pad.h, pad.w),
                        relu: None,
                    }));
                    layout = Layout::Hwc { h: oh, w: ow, c };
                }
                (Op::ReLU { negative_slope }, _) => {
                    let s = *negative_slope;
                    match stages.last_mut() {
                        Some(Stage::Conv { k, .. }) if k.relu.is_none() => k.relu = Some(s),
                        Some(Stage::Pool(pl)) if pl.relu.is_none() => pl.relu = Some(s),
                        Some(Stage::Dense { relu, .. }) if relu.is_none() => *relu = Some(s),
                        _ => stages.push(Stage::Relu(s)),
                    }
                }
                (Op::InnerProduct(p), _) => {
                    if p.axis != 1 {
                        return None;
                    }
                    let (k, n) = (layout.len(), p.num_output);
                    let src = &node.weights[0].data;
                    // Caffe's K index is CHW; ours is the incoming layout's order.
                    let caffe_k = |i: usize| match layout {
                        Layout::Hwc { h, w, c } => {
                            let (pix, ch) = (i / c, i % c);
                            ch * h * w + pix
                        }
                        Layout::Flat(_) => i,
                    };
                    let mut weights = vec![0.0f32; n * k];
                    for j in 0..n {
                        for i in 0..k {
                            let ck = caffe_k(i);
                            weights[j * k + i] = if p.transpose {
                                src[ck * n + j]
                            } else {
                                src[j * k + ck]
                            };
                        }
                    }
                    let bias = if p.bias_term {
                        node.weights[1].data.clone()
                    } else {
                        vec![0.0; n]
                    };
                    stages.push(Stage::Dense {
                        weights,
                        bias,
                        k,
                        n,
                        relu: None,
                    });
                    layout = Layout::Flat(n);
                }
                _ => return None,
            }
            max_len = max_len.max(layout.len());
            if layout.len() != out_shape.iter().product::<usize>() {
                return None;
            }
        }
        Some(Chain {
            stages,
            input: (c, h, w),
            out: layout,
            max_len,
            pad_lens,
            isa,
        })
    }

    /// Fresh buffers for one thread (the pad borders are zero and stay zero).
    pub fn scratch(&self) -> Scratch {
        Scratch {
            a: vec![0.0; self.max_len],
            b: vec![0.0; self.max_len],
            pads: self.pad_lens.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One image: `x` is `C×H×W` (NCHW), `y` the graph output of one image in Caffe's order.
    pub fn run_image(&self, x: &[f32], y: &mut [f32], s: &mut Scratch) {
        match self.isa {
            // SAFETY: `build` is only given an ISA the CPU has (`Isa::available`).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.run_image_avx512(x, y, s) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.run_image_avx2(x, y, s) },
            _ => self.run_image_body(x, y, s),
        }
    }

    /// The pooling, copy and inner-product loops compiled for the ISA's vector width (the
    /// results are the same: Rust never fuses a multiply and an add on its own).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_image_avx512(&self, x: &[f32], y: &mut [f32], s: &mut Scratch) {
        self.run_image_body(x, y, s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_image_avx2(&self, x: &[f32], y: &mut [f32], s: &mut Scratch) {
        self.run_image_body(x, y, s)
    }

    #[inline(always)]
    fn run_image_body(&self, x: &[f32], y: &mut [f32], s: &mut Scratch) {
        let (c, h, w) = self.input;
        let Scratch { a, b, pads } = s;
        let (mut cur, mut next) = (a, b);
        for ch in 0..c {
            for p in 0..h * w {
                cur[p * c + ch] = x[ch * h * w + p];
            }
        }
        for stage in &self.stages {
            match stage {
                Stage::Conv {
                    k,
                    h,
                    w,
                    c,
                    pad,
                    slot,
                } => {
                    let padded = &mut pads[*slot];
                    let wp = w + 2 * pad.1;
                    for r in 0..*h {
                        padded[((r + pad.0) * wp + pad.1) * c..][..w * c]
                            .copy_from_slice(&cur[r * w * c..][..w * c]);
                    }
                    k.run(padded, next);
                    std::mem::swap(&mut cur, &mut next);
                }
                Stage::Pool(p) => {
                    p.run(cur, next);
                    std::mem::swap(&mut cur, &mut next);
                }
                Stage::Relu(slope) => {
                    for v in cur.iter_mut() {
                        *v = relu(*v, *slope);
                    }
                }
                Stage::Dense {
                    weights,
                    bias,
                    k,
                    n,
                    relu: r,
                } => {
                    let xin = &cur[..*k];
                    for (j, (wr, &bj)) in weights.chunks_exact(*k).zip(bias).enumerate() {
                        let dot = dot8(wr, xin);
                        next[j] = match r {
                            Some(s) => relu(dot + bj, *s),
                            None => dot + bj,
                        };
                    }
                    let _ = n;
                    std::mem::swap(&mut cur, &mut next);
                }
            }
        }
        match self.out {
            Layout::Hwc { h, w, c } => {
                for p in 0..h * w {
                    for ch in 0..c {
                        y[ch * h * w + p] = cur[p * c + ch];
                    }
                }
            }
            Layout::Flat(n) => y[..n].copy_from_slice(&cur[..n]),
        }
    }
}

/// Dot product with eight partial sums (lets the compiler vectorise without reassociating).
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One window tap on `L` channels: Caffe's MAX (`if v > m { m = v }`) or the AVE running sum.
#[inline(always)]
fn pool_step<const L: usize>(max: bool, acc: &mut [f32; L], src: &[f32; L]) {
    for k in 0..L {
        if max {
            acc[k] = if src[k] > acc[k] { src[k] } else { acc[k] };
        } else {
            acc[k] += src[k];
        }
    }
}

impl PoolNhwc {
    /// Caffe's pooling on one NHWC image, vectorised over channels.
    #[inline(always)]
    fn run(&self, x: &[f32], y: &mut [f32]) {
        let c = self.c;
        for py in 0..self.oh {
            let (hs, he) = window(py, self.kernel.0, self.stride.0, self.pad.0, self.h);
            for px in 0..self.ow {
                let (ws, we) = window(px, self.kernel.1, self.stride.1, self.pad.1, self.w);
                let pool_size = ((he - hs) * (we - ws)) as f32;
                let (hs, ws) = (hs.max(0) as usize, ws.max(0) as usize);
                let he = he.min(self.h as isize).max(0) as usize;
                let we = we.min(self.w as isize).max(0) as usize;
                let dst = &mut y[(py * self.ow + px) * c..][..c];
                // Blocks of 16 channels accumulate in registers over the window (a store per
                // tap would be re-read by the next one); then the remaining channels.
                let mut c0 = 0;
                while c0 + 16 <= c {
                    let mut acc = [if self.max { -f32::MAX } else { 0.0 }; 16];
                    for r in hs..he {
                        for col in ws..we {
                            let src: &[f32; 16] = x[(r * self.w + col) * c + c0..][..16]
                                .try_into()
                                .expect("16 lanes");
                            pool_step(self.max, &mut acc, src);
                        }
                    }
                    if !self.max {
                        acc = acc.map(|a| a / pool_size);
                    }
                    dst[c0..c0 + 16].copy_from_slice(&acc);
                    c0 += 16;
                }
                for ch in c0..c {
                    let mut acc = [if self.max { -f32::MAX } else { 0.0 }];
                    for r in hs..he {
                        for col in ws..we {
                            pool_step(self.max, &mut acc, &[x[(r * self.w + col) * c + ch]]);
                        }
                    }
                    dst[ch] = if self.max { acc[0] } else { acc[0] / pool_size };
                }
                if let Some(s) = self.relu {
                    for d in dst.iter_mut() {
                        *d = relu(*d, s);
                    }
                }
            }
        }
    }
}
