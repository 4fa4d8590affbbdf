//! The fast, batched, bit-exact q7 simulator.
//!
//! Why it can differ from `kernels.rs` and still be exact: every conv/fc output is
//! `sat_i8((bias_term + Σ x·w) >> s)` with the sum taken in wrapping `i32`, which is associative
//! and commutative, so any summation order gives the same bits.
//!
//! - Conv and fc run on the fastest [`SimdPath`] the CPU has (picked at [`Simulator::new`],
//!   forced with `NNQUANT_SIMD`): a direct convolution (`sim/direct.rs`: no im2col, the
//!   receptive field read from a padded image) on AVX-512 VNNI `vpdpbusd` (`sim/vnni.rs`) or on
//!   256-bit AVX-VNNI / AVX2 (`sim/avx256.rs`), or on aarch64 on `sdot` where the CPU has
//!   `dotprod`, else on plain NEON `smull` + `sadalp` (`sim/neon.rs`; tested under QEMU user
//!   mode by `tools/test_aarch64.sh`); elsewhere im2col + an `i16 × i16 → i32`
//!   dot-product GEMM (weights pre-widened and padded to a multiple of 16 with zeros, which add
//!   nothing), compiled twice and picked at run time so that AVX2 is used where the CPU has it.
//! - Pooling and ReLU use vectorizable versions (`sim/elementwise.rs`); Add and Concat call
//!   `kernels.rs` directly.
//!
//! Images run in parallel on rayon's pool. Property tests (`tests/fixed_sim_props.rs`) pin every
//! path the CPU supports to `kernels.rs`.

use super::graph::{self, pair, QDense, QGraph, QOp};
use super::kernels;
use crate::ops;
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::collections::BTreeMap;

#[cfg(target_arch = "x86_64")]
mod avx256;
mod depthwise;
mod direct;
mod elementwise;
#[cfg(target_arch = "aarch64")]
mod neon;
mod path;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use path::SimdPath;

/// q7 activations of a batch: per blob, `n` images one after the other, each HWC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activations {
    pub n: usize,
    pub blobs: BTreeMap<String, Vec<i8>>,
}

impl Activations {
    /// All images of a blob.
    pub fn get(&self, blob: &str) -> Option<&[i8]> {
        self.blobs.get(blob).map(Vec::as_slice)
    }
    /// Image `i` of a blob.
    pub fn image(&self, blob: &str, i: usize) -> Option<&[i8]> {
        let v = self.blobs.get(blob)?;
        let len = v.len() / self.n.max(1);
        v.get(i * len..(i + 1) * len)
    }
}

/// Which blobs a run returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// The graph's outputs only.
    Outputs,
    /// Every blob, including the input (tracing, SQNR, building a `run_from` cache).
    All,
    /// These blobs (plus the outputs).
    Blobs(Vec<String>),
}

const KB: usize = 16;

fn round_up(k: usize) -> usize {
    k.div_ceil(KB) * KB
}

/// The conv/fc arguments every path relies on: shifts in `0..=31`, weight and bias sizes.
fn check_dense(
    weights: &[i8],
    rows: usize,
    k: usize,
    bias: &[i8],
    bias_lshift: &[i32],
    out_rshift: &[i32],
    layer: &str,
) -> Result<()> {
    let ok =
        |v: &[i32]| (v.len() == 1 || v.len() == rows) && v.iter().all(|s| (0..=31).contains(s));
    ensure!(
        ok(bias_lshift) && ok(out_rshift) && bias_lshift.len() == out_rshift.len(),
        "layer '{layer}': shifts {bias_lshift:?}/{out_rshift:?} outside 0..=31 or not one (or one per output)"
    );
    ensure!(
        weights.len() == rows * k && bias.len() == rows,
        "layer '{layer}': weight/bias sizes do not match"
    );
    Ok(())
}

/// A conv or fc prepared for the GEMM: weights widened to `i16`, rows padded to `kp`.
struct Gemm {
    kp: usize,
    w: Vec<i16>,
    /// `(bias << bias_lshift) + round_term` per output.
    bias: Vec<i32>,
    /// `out_rshift` per output.
    rshift: Vec<u32>,
}

impl Gemm {
    fn new(
        weights: &[i8],
        rows: usize,
        k: usize,
        bias: &[i8],
        bias_lshift: &[i32],
        out_rshift: &[i32],
        layer: &str,
    ) -> Result<Gemm> {
        check_dense(weights, rows, k, bias, bias_lshift, out_rshift, layer)?;
        let kp = round_up(k);
        let mut w = vec![0i16; rows * kp];
        for r in 0..rows {
            for (d, s) in w[r * kp..r * kp + k]
                .iter_mut()
                .zip(&weights[r * k..(r + 1) * k])
            {
                *d = *s as i16;
            }
        }
        let at = |v: &[i32], o: usize| v[if v.len() == 1 { 0 } else { o }];
        let rshift: Vec<u32> = (0..rows).map(|o| at(out_rshift, o) as u32).collect();
        let bias = bias
            .iter()
            .enumerate()
            .map(|(o, &b)| {
                ((b as i32) << at(bias_lshift, o)).wrapping_add(kernels::round_term(rshift[o]))
            })
            .collect();
        Ok(Gemm {
            kp,
            w,
            bias,
            rshift,
        })
    }
}

enum Prep {
    Conv(Gemm),
    Fc(Gemm),
    /// A conv or fc for the AVX-512 VNNI kernel.
    #[cfg(target_arch = "x86_64")]
    Vnni(vnni::VConv),
    /// A conv or fc for the 256-bit kernel (AVX2 or AVX-VNNI).
    #[cfg(target_arch = "x86_64")]
    Y256(avx256::YConv),
    /// A conv or fc for the aarch64 NEON kernels (SDOT or plain NEON).
    #[cfg(target_arch = "aarch64")]
    Neon(neon::NConv),
    /// A depthwise conv, channel-parallel on every path (`sim/depthwise.rs`).
    Dw(depthwise::DwConv),
    /// A dilated non-depthwise conv: `kernels.rs` itself (no fast path; rare layers).
    Reference,
    Other,
}

/// `out[p·out_stride + o] = sat((bias[o] + col[p]·w[o]) >> s)` for `o` in `rows`. Fixed-size
/// array chunks keep the inner loop free of bounds checks so that it vectorizes.
#[inline(always)]
fn gemm_body(
    col: &[i16],
    n_px: usize,
    g: &Gemm,
    rows: std::ops::Range<usize>,
    out: &mut [i8],
    out_stride: usize,
    out_off: usize,
) {
    let kp = g.kp;
    let chunk = |v: &[i16], k: usize| -> [i16; KB] {
        v[k * KB..(k + 1) * KB].try_into().expect("KB chunk")
    };
    for p in 0..n_px {
        let c = &col[p * kp..(p + 1) * kp];
        let orow = &mut out[p * out_stride + out_off..];
        let mut o = rows.start;
        // Four output channels per pass over the column row.
        while o + 4 <= rows.end {
            let ws = &g.w[o * kp..(o + 4) * kp];
            let (w0, rest) = ws.split_at(kp);
            let (w1, rest) = rest.split_at(kp);
            let (w2, w3) = rest.split_at(kp);
            let mut a = [[0i32; KB]; 4];
            for k in 0..kp / KB {
                let x = chunk(c, k);
                let v = [chunk(w0, k), chunk(w1, k), chunk(w2, k), chunk(w3, k)];
                for (acc, wv) in a.iter_mut().zip(&v) {
                    for j in 0..KB {
                        acc[j] = acc[j].wrapping_add((x[j] as i32).wrapping_mul(wv[j] as i32));
                    }
                }
            }
            for (r, acc) in a.iter().enumerate() {
                let s = acc.iter().fold(g.bias[o + r], |s, v| s.wrapping_add(*v));
                orow[o + r] = kernels::sat_i8(s >> g.rshift[o + r]);
            }
            o += 4;
        }
        while o < rows.end {
            let w0 = &g.w[o * kp..(o + 1) * kp];
            let mut a = [0i32; KB];
            for k in 0..kp / KB {
                let (x, wv) = (chunk(c, k), chunk(w0, k));
                for j in 0..KB {
                    a[j] = a[j].wrapping_add((x[j] as i32).wrapping_mul(wv[j] as i32));
                }
            }
            let s = a.iter().fold(g.bias[o], |s, v| s.wrapping_add(*v));
            orow[o] = kernels::sat_i8(s >> g.rshift[o]);
            o += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2(
    col: &[i16],
    n_px: usize,
    g: &Gemm,
    rows: std::ops::Range<usize>,
    out: &mut [i8],
    out_stride: usize,
    out_off: usize,
) {
    gemm_body(col, n_px, g, rows, out, out_stride, out_off)
}

/// Dispatch to the AVX2 build of the same code when the CPU has it (identical integer results).
fn gemm(
    col: &[i16],
    n_px: usize,
    g: &Gemm,
    rows: std::ops::Range<usize>,
    out: &mut [i8],
    out_stride: usize,
    out_off: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { gemm_avx2(col, n_px, g, rows, out, out_stride, out_off) };
            return;
        }
    }
    gemm_body(col, n_px, g, rows, out, out_stride, out_off)
}

/// The simulator for one quantized graph (prepares widened weights once).
pub struct Simulator<'g> {
    g: &'g QGraph,
    prep: Vec<Prep>,
    path: SimdPath,
    /// The layers prepared to run (all but for [`Simulator::for_layers`]).
    prepared: std::ops::Range<usize>,
    /// Per layer, per input: the last earlier layer that writes that blob (`None`: the input,
    /// or a blob no layer writes). Blob names are looked up once here, not per image.
    sources: Vec<Vec<Option<usize>>>,
}

/// Per-thread scratch.
#[derive(Default)]
struct Scratch {
    col: Vec<i16>,
    img: Vec<u8>,
    #[cfg(target_arch = "x86_64")]
    img16: Vec<i16>,
    sum: Vec<i32>,
    rowmax: Vec<i8>,
    /// Per layer of the range being run, its output for the current image (reused).
    outs: Vec<Vec<i8>>,
}

impl<'g> Simulator<'g> {
    /// The simulator on the fastest path this CPU has, or the one `NNQUANT_SIMD` names.
    pub fn new(g: &'g QGraph) -> Result<Simulator<'g>> {
        Self::with_path(g, SimdPath::selected()?)
    }

    /// The simulator on the portable GEMM path.
    #[doc(hidden)]
    pub fn new_portable(g: &'g QGraph) -> Result<Simulator<'g>> {
        Self::with_path(g, SimdPath::Portable)
    }

    /// The simulator on a given path (tests pin every supported path to `kernels.rs`).
    pub fn with_path(g: &'g QGraph, path: SimdPath) -> Result<Simulator<'g>> {
        ensure!(
            path.supported(),
            "simulator path {path} is not supported by this CPU"
        );
        Self::build(g, path, 0..g.layers.len())
    }

    /// A simulator that can run only layers `range` (`run_range` within it): the search's
    /// layer-local pass runs one layer per candidate, and preparing (checking, packing) every
    /// layer of a deep net each time would cost more than the run.
    pub fn for_layers(g: &'g QGraph, range: std::ops::Range<usize>) -> Result<Simulator<'g>> {
        ensure!(
            range.start <= range.end && range.end <= g.layers.len(),
            "layers {range:?}: the graph has {} layers",
            g.layers.len()
        );
        Self::build(g, SimdPath::selected()?, range)
    }

    /// The code path this simulator's conv/fc layers run on.
    pub fn path(&self) -> SimdPath {
        self.path
    }

    fn build(
        g: &'g QGraph,
        path: SimdPath,
        prepared: std::ops::Range<usize>,
    ) -> Result<Simulator<'g>> {
        let mut prep = Vec::new();
        for (i, l) in g.layers.iter().enumerate() {
            if !prepared.contains(&i) {
                prep.push(Prep::Other);
                continue;
            }
            prep.push(match l.op.dense() {
                Some(QDense::Conv(c)) => conv_prep(path, c, &l.name)?,
                Some(QDense::Fc(f)) => fc_prep(path, f, &l.name)?,
                Some(QDense::Deconv(_)) | None => Prep::Other,
            });
        }
        // One pass in layer order: each input's writer is the last writer seen so far (this
        // runs for every candidate of the search's layer-local pass).
        let mut writer: std::collections::HashMap<&str, usize> = Default::default();
        let mut sources = Vec::with_capacity(g.layers.len());
        for (li, l) in g.layers.iter().enumerate() {
            sources.push(
                l.inputs
                    .iter()
                    .map(|b| writer.get(b.as_str()).copied())
                    .collect(),
            );
            writer.insert(l.output.as_str(), li);
        }
        Ok(Simulator {
            g,
            prep,
            path,
            sources,
            prepared,
        })
    }

    pub fn graph(&self) -> &QGraph {
        self.g
    }

    /// Run the whole graph on `n` q7 HWC input images (`input.len() == n · input_len`).
    pub fn run(&self, input: &[i8], n: usize, keep: &Keep) -> Result<Activations> {
        let len = self.g.blob_len(&self.g.input);
        ensure!(
            input.len() == n * len,
            "input has {} bytes, expected {n} images × {len}",
            input.len()
        );
        // The input is read in place: no cache holding a copy of it.
        let input_blob = self.g.input.as_str();
        let lookup = |b: &str, i: usize| -> Option<&[i8]> {
            (b == input_blob).then(|| &input[i * len..(i + 1) * len])
        };
        self.run_images(0..self.g.layers.len(), n, &lookup, keep)
    }

    /// Run layers `k..` given a cache holding (at least) every blob those layers read that an
    /// earlier layer (or the input) produced — typically the `Keep::All` result of an earlier
    /// run. The format search uses this to re-evaluate a candidate for layer `k` cheaply.
    pub fn run_from(&self, k: usize, cache: &Activations, keep: &Keep) -> Result<Activations> {
        self.run_range(k..self.g.layers.len(), cache, keep)
    }

    /// Run layers `range` only, like [`Simulator::run_from`]; the search's layer-local scoring
    /// runs one layer at a time. Kept blobs that the range does not produce come from `cache`;
    /// [`Keep::Blobs`] returns exactly the blobs it names when the range ends before the last
    /// layer (the graph's outputs are not computed then).
    pub fn run_range(
        &self,
        range: std::ops::Range<usize>,
        cache: &Activations,
        keep: &Keep,
    ) -> Result<Activations> {
        let g = self.g;
        let (k, end) = (range.start, range.end);
        ensure!(
            k <= end && end <= g.layers.len(),
            "run_from({k}..{end}): the graph has {} layers",
            g.layers.len()
        );
        ensure!(
            k == end || (self.prepared.start <= k && end <= self.prepared.end),
            "run_from({k}..{end}): only layers {:?} were prepared",
            self.prepared
        );
        let n = cache.n;
        let produced_later: std::collections::BTreeSet<&str> =
            g.layers[k..end].iter().map(|l| l.output.as_str()).collect();
        for l in &g.layers[k..end] {
            for b in &l.inputs {
                if !produced_later.contains(b.as_str()) {
                    let v = cache.get(b).with_context(|| {
                        format!(
                            "run_from({k}): blob '{b}' (read by layer '{}') is not in the cache",
                            l.name
                        )
                    })?;
                    ensure!(
                        v.len() == n * g.blob_len(b),
                        "run_from({k}): cached blob '{b}' has the wrong size"
                    );
                }
            }
        }
        self.run_images(k..end, n, &|b: &str, i: usize| cache.image(b, i), keep)
    }

    /// Layers `range` on `n` images whose other blobs `lookup(blob, image)` gives; images run in
    /// parallel and write their kept blobs straight into the result.
    fn run_images<'a>(
        &self,
        range: std::ops::Range<usize>,
        n: usize,
        lookup: &(dyn Fn(&str, usize) -> Option<&'a [i8]> + Sync),
        keep: &Keep,
    ) -> Result<Activations> {
        let g = self.g;
        let whole = range.end == g.layers.len();
        let mut kept: Vec<String> = match keep {
            Keep::Outputs => g.outputs.clone(),
            Keep::All => g.blobs.keys().cloned().collect(),
            Keep::Blobs(b) if whole => b.iter().chain(&g.outputs).cloned().collect(),
            Keep::Blobs(b) => b.clone(),
        };
        kept.sort();
        kept.dedup();
        for b in &kept {
            ensure!(g.blobs.contains_key(b), "unknown blob '{b}'");
        }
        // Where each kept blob comes from: the last layer of the range that writes it, else
        // `lookup`.
        let kept_src: Vec<Option<usize>> = kept
            .iter()
            .map(|b| {
                g.layers[range.clone()]
                    .iter()
                    .rposition(|l| &l.output == b)
                    .map(|p| range.start + p)
            })
            .collect();
        let mut out = Activations {
            n,
            blobs: kept
                .iter()
                .map(|b| (b.clone(), vec![0i8; n * g.blob_len(b)]))
                .collect(),
        };
        // Image `i`'s slice of every kept blob, in `kept` order.
        let mut per_image: Vec<Vec<&mut [i8]>> = (0..n).map(|_| Vec::new()).collect();
        // `blobs` iterates in key order, which is `kept`'s (sorted, deduplicated).
        for (b, all) in out.blobs.iter_mut() {
            let len = g.blob_len(b);
            if len == 0 {
                per_image.iter_mut().for_each(|v| v.push(&mut []));
            } else {
                for (v, part) in per_image.iter_mut().zip(all.chunks_mut(len)) {
                    v.push(part);
                }
            }
        }
        per_image.into_par_iter().enumerate().try_for_each_init(
            Scratch::default,
            |s, (i, dst)| {
                self.image(range.clone(), lookup, i, s)?;
                for ((b, src), d) in kept.iter().zip(&kept_src).zip(dst) {
                    let v = match src {
                        Some(li) => &s.outs[li - range.start][..],
                        None => lookup(b, i).unwrap_or(&[]),
                    };
                    ensure!(v.len() == d.len(), "blob '{b}': no value for image {i}");
                    d.copy_from_slice(v);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Image `i` through layers `range`: layer `li`'s output ends in `s.outs[li - range.start]`.
    fn image<'a>(
        &self,
        range: std::ops::Range<usize>,
        lookup: &(dyn Fn(&str, usize) -> Option<&'a [i8]> + Sync),
        i: usize,
        s: &mut Scratch,
    ) -> Result<()> {
        let g = self.g;
        let start = range.start;
        s.outs.resize_with(range.len(), Vec::new);
        for (li, l) in g
            .layers
            .iter()
            .enumerate()
            .take(range.end)
            .skip(range.start)
        {
            // This layer's buffer is taken out while the earlier outputs are read.
            let mut y = std::mem::take(&mut s.outs[li - start]);
            y.clear();
            y.resize(g.blob_len(&l.output), 0);
            let outs = &s.outs;
            let get = |j: usize| -> &[i8] {
                match self.sources[li][j] {
                    Some(p) if p >= start => &outs[p - start],
                    _ => lookup(&l.inputs[j], i).unwrap_or(&[]),
                }
            };
            let x = get(0);
            let r = match (&l.op, &self.prep[li]) {
                (QOp::Conv(_), Prep::Dw(d)) => {
                    d.run(x, &mut y, &mut s.sum);
                    Ok(())
                }
                (QOp::Conv(c), Prep::Reference) => ops::conv::reference(x, c, &mut y),
                (QOp::Conv(c), Prep::Conv(gm)) => {
                    conv_fast(x, c, gm, &mut y, &mut s.col);
                    Ok(())
                }
                #[cfg(target_arch = "x86_64")]
                (QOp::Conv(_) | QOp::Fc(_), Prep::Vnni(v)) => {
                    v.run(x, &mut y, &mut s.img);
                    Ok(())
                }
                #[cfg(target_arch = "x86_64")]
                (QOp::Conv(_) | QOp::Fc(_), Prep::Y256(v)) => {
                    v.run(x, &mut y, &mut s.img, &mut s.img16);
                    Ok(())
                }
                #[cfg(target_arch = "aarch64")]
                (QOp::Conv(_) | QOp::Fc(_), Prep::Neon(v)) => {
                    v.run(x, &mut y, &mut s.img);
                    Ok(())
                }
                (QOp::Fc(_), Prep::Fc(gm)) => {
                    s.col.clear();
                    s.col.extend(x.iter().map(|&v| v as i16));
                    s.col.resize(gm.kp, 0);
                    gemm(&s.col, 1, gm, 0..y.len(), &mut y, 0, 0);
                    Ok(())
                }
                (QOp::MaxPool(p), _) => elementwise::maxpool(
                    self.path.elementwise_avx512(),
                    x,
                    p.in_dims.dims(),
                    pair(p.kernel),
                    pair(p.pad),
                    pair(p.stride),
                    &mut y,
                    p.out_dims.dims(),
                    &mut s.rowmax,
                ),
                (QOp::AvePool(p), _) => elementwise::avepool(
                    self.path.elementwise_avx512(),
                    x,
                    p.in_dims.dims(),
                    pair(p.kernel),
                    pair(p.pad),
                    pair(p.stride),
                    &mut y,
                    p.out_dims.dims(),
                    &mut s.sum,
                    p.rounding.nearest(),
                ),
                (QOp::Relu, _) => {
                    elementwise::relu(self.path.elementwise_avx512(), x, &mut y);
                    Ok(())
                }
                (
                    QOp::Reshape
                    | QOp::Permute { .. }
                    | QOp::Lut { .. }
                    | QOp::PRelu { .. }
                    | QOp::Max { .. }
                    | QOp::Softmax { .. }
                    | QOp::Add { .. }
                    | QOp::Concat { .. }
                    | QOp::Deconv(_)
                    | QOp::Lrn { .. }
                    | QOp::Mul { .. }
                    | QOp::ScaleBias { .. },
                    _,
                ) => reference_layer(g, l, (0..l.inputs.len()).map(get).collect(), &mut y),
                _ => bail!("layer '{}': internal error, unprepared op", l.name),
            };
            if let Err(e) = r {
                bail!("layer '{}': kernel refused its arguments ({e:?})", l.name);
            }
            s.outs[li - start] = y;
        }
        Ok(())
    }
}

/// A conv/fc for `path`: checked, then prepared for its direct-convolution kernel, or widened for
/// the portable GEMM (`gemm` wraps it as a conv or an fc) when the path has none. `k`: the
/// layer's reduction length; the shifts are checked before `spec` is used.
/// A convolution prepared for `path`: the channel-parallel depthwise path, `kernels.rs` itself
/// for dilated layers that are not depthwise, else the path's direct kernel or the GEMM.
fn conv_prep(path: SimdPath, c: &graph::QConv, layer: &str) -> Result<Prep> {
    ensure!(
        c.groups > 0
            && c.in_dims.c.is_multiple_of(c.groups)
            && c.out_dims.c.is_multiple_of(c.groups),
        "layer '{}': bad groups",
        layer
    );

    let k = c.kernel.h * c.kernel.w * c.in_dims.c / c.groups;
    let dilated = c.dilation.h != 1 || c.dilation.w != 1;
    Ok(
        if kernels::is_depthwise(c.in_dims.c, c.out_dims.c, c.groups) || dilated {
            let (bls, ors) = c.shifts();
            check_dense(&c.weights, c.out_dims.c, k, &c.bias, bls, ors, layer)?;
            ensure!(
                c.dilation.h > 0 && c.dilation.w > 0,
                "layer '{}': dilation must be positive",
                layer
            );
            match depthwise::DwConv::new(c) {
                Some(d) => Prep::Dw(d),
                None => Prep::Reference,
            }
        } else {
            let spec = direct::ConvSpec {
                ind: c.in_dims,
                outd: c.out_dims,
                kernel: (c.kernel.h, c.kernel.w),
                stride: (c.stride.h, c.stride.w),
                pad: (c.pad.h, c.pad.w),
                groups: c.groups,
                weights: &c.weights,
                bias: &c.bias,
                bias_lshift: c.shifts().0,
                out_rshift: c.shifts().1,
            };
            let dense = k;
            dense_prep(path, &spec, dense, layer, Prep::Conv)?
        },
    )
}

/// A fully connected layer prepared for `path`: a 1×1 convolution of a 1×1 image.
fn fc_prep(path: SimdPath, f: &graph::QFc, layer: &str) -> Result<Prep> {
    let one = |c| graph::Hwc { h: 1, w: 1, c };
    let spec = direct::ConvSpec {
        ind: one(f.in_len),
        outd: one(f.out_len),
        kernel: (1, 1),
        stride: (1, 1),
        pad: (0, 0),
        groups: 1,
        weights: &f.weights,
        bias: &f.bias,
        bias_lshift: f.shifts().0,
        out_rshift: f.shifts().1,
    };
    let dense = f.in_len;
    dense_prep(path, &spec, dense, layer, Prep::Fc)
}

fn dense_prep(
    path: SimdPath,
    spec: &direct::ConvSpec,
    k: usize,
    layer: &str,
    gemm: fn(Gemm) -> Prep,
) -> Result<Prep> {
    let (bias_lshift, out_rshift) = (spec.bias_lshift, spec.out_rshift);
    let rows = spec.outd.c;
    check_dense(
        spec.weights,
        rows,
        k,
        spec.bias,
        bias_lshift,
        out_rshift,
        layer,
    )?;
    if spec.stride.0 > 0 && spec.stride.1 > 0 {
        if let Some(d) = direct_prep(path, spec) {
            return Ok(d);
        }
    }
    let g = Gemm::new(
        spec.weights,
        rows,
        k,
        spec.bias,
        bias_lshift,
        out_rshift,
        layer,
    )?;
    Ok(gemm(g))
}

/// A conv/fc (checked by `dense_prep`) prepared for `path`'s direct-convolution kernel, or
/// `None` for the portable GEMM.
fn direct_prep(path: SimdPath, c: &direct::ConvSpec) -> Option<Prep> {
    #[cfg(target_arch = "x86_64")]
    {
        let y256 = |isa| Some(Prep::Y256(avx256::YConv::new(isa, c)));
        match path {
            SimdPath::Avx512Vnni => Some(Prep::Vnni(vnni::VConv::new(c))),
            SimdPath::AvxVnni => y256(avx256::Isa::AvxVnni),
            SimdPath::Avx512VnniYmm => y256(avx256::Isa::Avx512VnniYmm),
            SimdPath::Avx2 => y256(avx256::Isa::Avx2),
            SimdPath::NeonDotprod | SimdPath::Neon | SimdPath::Portable => None,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let dotprod = match path {
            SimdPath::NeonDotprod => true,
            SimdPath::Neon => false,
            SimdPath::Avx512Vnni
            | SimdPath::AvxVnni
            | SimdPath::Avx512VnniYmm
            | SimdPath::Avx2
            | SimdPath::Portable => return None,
        };
        Some(Prep::Neon(neon::NConv::new(c).with_dotprod(dotprod)))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (path, c);
        None
    }
}

/// Convolution of one image: im2col per group (i16, zero padding, rows padded to `kp`), GEMM.
fn conv_fast(x: &[i8], c: &super::graph::QConv, gm: &Gemm, y: &mut [i8], col: &mut Vec<i16>) {
    let (id, od) = (c.in_dims, c.out_dims);
    let cin_g = id.c / c.groups;
    let cout_g = od.c / c.groups;
    let n_px = od.h * od.w;
    let kp = gm.kp;
    for grp in 0..c.groups {
        col.clear();
        col.resize(n_px * kp, 0);
        for oy in 0..od.h {
            for ox in 0..od.w {
                let row = &mut col[(oy * od.w + ox) * kp..][..kp];
                for ky in 0..c.kernel.h {
                    let iy = (oy * c.stride.h + ky) as isize - c.pad.h as isize;
                    if iy < 0 || iy >= id.h as isize {
                        continue;
                    }
                    for kx in 0..c.kernel.w {
                        let ix = (ox * c.stride.w + kx) as isize - c.pad.w as isize;
                        if ix < 0 || ix >= id.w as isize {
                            continue;
                        }
                        let src =
                            &x[(iy as usize * id.w + ix as usize) * id.c + grp * cin_g..][..cin_g];
                        let dst = &mut row[(ky * c.kernel.w + kx) * cin_g..][..cin_g];
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = *s as i16;
                        }
                    }
                }
            }
        }
        gemm(col, n_px, gm, grp * cout_g..(grp + 1) * cout_g, y, od.c, 0);
    }
}

/// The reference path: `kernels.rs` image by image, whole graph, every blob kept. Slow; for
/// tests and for cross-checking the simulator.
pub fn run_reference(g: &QGraph, input: &[i8], n: usize) -> Result<Activations> {
    let len = g.blob_len(&g.input);
    ensure!(
        input.len() == n * len,
        "input has {} bytes, expected {n} × {len}",
        input.len()
    );
    let mut out = Activations {
        n,
        blobs: BTreeMap::new(),
    };
    out.blobs.insert(g.input.clone(), input.to_vec());
    for l in &g.layers {
        out.blobs.insert(
            l.output.clone(),
            Vec::with_capacity(n * g.blob_len(&l.output)),
        );
    }
    for i in 0..n {
        let mut local: BTreeMap<&str, Vec<i8>> = BTreeMap::new();
        local.insert(g.input.as_str(), input[i * len..(i + 1) * len].to_vec());
        for l in &g.layers {
            let mut y = vec![0i8; g.blob_len(&l.output)];
            let ins = l
                .inputs
                .iter()
                .map(|b| local[b.as_str()].as_slice())
                .collect();
            let r = reference_layer(g, l, ins, &mut y);
            if let Err(e) = r {
                bail!("layer '{}': kernel refused its arguments ({e:?})", l.name);
            }
            local.insert(l.output.as_str(), y);
        }
        for (b, v) in local {
            if b != g.input.as_str() {
                out.blobs
                    .get_mut(b)
                    .expect("inserted above")
                    .extend_from_slice(&v);
            }
        }
    }
    Ok(out)
}

/// One layer on one image straight from `kernels.rs`: the reference of every op, and the
/// simulator's only path for the ops without a faster one (all but conv/fc/pooling/ReLU: they
/// are cheap next to the convolutions). `ins`: the layer's inputs in order.
fn reference_layer(
    g: &QGraph,
    l: &graph::QLayer,
    ins: Vec<&[i8]>,
    y: &mut [i8],
) -> kernels::KResult {
    let r = ops::Run { g, l, ins };
    let x = r.ins[0];
    match &l.op {
        QOp::Conv(c) => ops::conv::run(&r, c, y),
        QOp::Fc(f) => ops::inner_product::run(&r, f, y),
        QOp::MaxPool(p) => ops::pool::run(p, true, x, y),
        QOp::AvePool(p) => ops::pool::run(p, false, x, y),
        QOp::Deconv(c) => ops::deconv::run(&r, c, y),
        QOp::Relu => ops::relu::run(&r, y),
        QOp::Reshape | QOp::Permute { .. } => ops::reshape::run(&r, y),
        QOp::Lut { table, .. } => ops::lut::run(&r, table, y),
        QOp::PRelu { slopes, slope_frac } => ops::prelu::run(&r, slopes, *slope_frac, y),
        QOp::Softmax { row, exp_table } => ops::softmax::run(&r, *row, exp_table, y),
        QOp::Add {
            a_lshift,
            b_lshift,
            out_rshift,
        } => ops::eltwise::run_add(&r, (*a_lshift, *b_lshift, *out_rshift), y),
        QOp::Max {
            a_lshift,
            b_lshift,
            out_rshift,
        } => ops::eltwise::run_max(&r, (*a_lshift, *b_lshift, *out_rshift), y),
        QOp::Mul { out_rshift } => ops::eltwise::run_mul(&r, *out_rshift, y),
        QOp::Lrn {
            size,
            across,
            index_shift,
            table,
            out_rshift,
            ..
        } => ops::lrn::run(&r, *size, *across, *index_shift, table, *out_rshift, y),
        QOp::ScaleBias(s) => ops::scale::run(&r, s, y),
        QOp::Concat { shifts } => ops::concat::run(&r, shifts, y),
    }
}
