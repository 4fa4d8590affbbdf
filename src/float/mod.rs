//! The float reference engine: runs an [`ir::Graph`] in f32 with Caffe's exact semantics.
//!
//! Why it exists: the quantizer needs per-blob float statistics (calibration) and the report
//! needs the float accuracy it is compared against. It therefore favours *Caffe's* rules (pooling
//! windows, BatchNorm scale factor, LRN's running sum, ReLU's formula) over speed, but is still
//! batched (im2col + GEMM, one GEMM per chunk for inner product) and parallel across images.
//!
//! Layout: every blob is `N × product(shape)` f32 in NCHW order, shapes from `g.shapes` (without
//! the batch axis). Every op is per image, so a batch is cut into chunks of images that rayon runs
//! in parallel; each chunk walks the nodes in order and frees blobs after their last use.
//!
//! Fast path: when the graph is a plain chain of Convolution / Pooling / ReLU / InnerProduct and
//! only the outputs are wanted ([`Keep::Outputs`]), [`chain`] runs each image in NHWC with direct
//! SIMD convolutions ([`direct`]) instead; same Caffe rules, only the order of the additions
//! inside a convolution differs (outputs agree to ~1e-6 relative).

mod chain;
#[cfg(test)]
mod chain_tests;
pub(crate) mod conv;
pub(crate) mod deconv;
pub(crate) mod dense;
mod direct;
pub(crate) mod elementwise;
mod gemm;
pub(crate) mod layout;
#[cfg(test)]
mod model_tests;
mod nchw_direct;
pub(crate) mod norm;
pub(crate) mod pool;

use crate::ir::{self, Graph, Node, Op};
use crate::ops;
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::BTreeMap;

pub use direct::Isa;

/// Which blobs [`Engine::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Only the graph's outputs (intermediate blobs are freed as soon as possible).
    Outputs,
    /// Every blob, the input included (the quantizer needs per-blob statistics).
    All,
}

/// Blobs of one forward pass, each `batch × product(shape)` in NCHW order.
#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    pub blobs: BTreeMap<String, Vec<f32>>,
    pub batch: usize,
}

impl Activations {
    /// The values of one image of one blob.
    pub fn image(&self, blob: &str, i: usize) -> Option<&[f32]> {
        let v = self.blobs.get(blob)?;
        let per = v.len() / self.batch.max(1);
        v.get(i * per..(i + 1) * per)
    }
}

/// One node ready to run: its kernel with borrowed weights and precomputed geometry (built by
/// the op's module in `ops/`).
pub(crate) enum Kernel<'g> {
    Conv(conv::Conv<'g>),
    Deconv(deconv::Deconv<'g>),
    Dense(dense::Dense<'g>),
    Pool(pool::Pool),
    Relu(f32),
    /// Sigmoid or TanH (`elementwise::sigmoid` / `tanh`).
    Unary(fn(f32) -> f32),
    PRelu(elementwise::PRelu<'g>),
    Affine(elementwise::Affine<'g>),
    Eltwise(ir::EltwiseOp, &'g [f32]),
    BatchNorm(norm::BatchNorm),
    Lrn(norm::Lrn),
    Softmax(norm::Softmax),
    Concat(layout::Concat),
    /// Flatten and Reshape: NCHW memory is unchanged.
    Copy,
    /// Permute: (input shape, order without the batch axis, 0-based).
    Permute(Vec<usize>, Vec<usize>),
}

struct Step<'g> {
    kernel: Kernel<'g>,
    inputs: Vec<usize>,
    output: usize,
}

/// A graph checked and prepared for float inference. Build once, call [`Engine::forward`] often.
pub struct Engine<'g> {
    g: &'g Graph,
    names: Vec<&'g str>,
    /// Elements per image of each blob.
    sizes: Vec<usize>,
    steps: Vec<Step<'g>>,
    /// Index of the last step reading each blob (`None`: never read).
    last_use: Vec<Option<usize>>,
    is_output: Vec<bool>,
    /// Most images one parallel task runs through the graph; smaller keeps a chunk's blobs in
    /// cache, larger gives the inner-product GEMM more rows.
    pub chunk_images: usize,
    /// NHWC fast path for chain graphs (`None`: not a chain, or switched off); used by
    /// [`Engine::forward`] with [`Keep::Outputs`].
    chain: Option<chain::Chain>,
    /// Per step: the convolution on the direct SIMD kernels in the general path (`None`: the
    /// step's own kernel; all `None` when the fast path is off).
    direct: Vec<Option<nchw_direct::NchwDirect>>,
    /// The SIMD kernels of the fast path and of `direct` (`None`: off).
    isa: Option<Isa>,
}

impl<'g> Engine<'g> {
    /// Check that every node is computable (known op, weights attached with Caffe's shapes, one
    /// output, shapes inferred) and precompute each kernel's geometry.
    pub fn new(g: &'g Graph) -> Result<Self> {
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut names = Vec::new();
        let mut sizes = Vec::new();
        let mut blob = |name: &'g str, ids: &mut BTreeMap<&'g str, usize>| -> Result<usize> {
            if let Some(&i) = ids.get(name) {
                return Ok(i);
            }
            let shape = g
                .shapes
                .get(name)
                .with_context(|| format!("blob '{name}' has no inferred shape"))?;
            ids.insert(name, names.len());
            names.push(name);
            sizes.push(ir::shape::checked_count(shape)?);
            Ok(names.len() - 1)
        };
        blob(&g.input.blob, &mut ids)?;
        let mut steps = Vec::new();
        for node in &g.nodes {
            let ctx = || format!("layer '{}' ({})", node.name, node.op.type_name());
            let inputs = node
                .inputs
                .iter()
                .map(|b| {
                    ids.get(b.as_str()).copied().with_context(|| {
                        format!("input blob '{b}' is not produced before this layer")
                    })
                })
                .collect::<Result<Vec<_>>>()
                .with_context(ctx)?;
            ensure!(
                node.outputs.len() == 1,
                "{}: has {} outputs, the engine needs exactly one",
                ctx(),
                node.outputs.len()
            );
            let output = blob(&node.outputs[0], &mut ids).with_context(ctx)?;
            let kernel = kernel_for(g, node).with_context(ctx)?;
            steps.push(Step {
                kernel,
                inputs,
                output,
            });
        }
        let mut last_use = vec![None; names.len()];
        for (s, step) in steps.iter().enumerate() {
            for &i in &step.inputs {
                last_use[i] = Some(s);
            }
        }
        let mut is_output = vec![false; names.len()];
        for o in &g.outputs {
            let id = *ids
                .get(o.as_str())
                .with_context(|| format!("graph output '{o}' is not produced by any layer"))?;
            is_output[id] = true;
        }
        let mut e = Engine {
            g,
            names,
            sizes,
            steps,
            last_use,
            is_output,
            chunk_images: 8,
            chain: None,
            direct: Vec::new(),
            isa: None,
        };
        // Without AVX2 the portable tiles measured slower than the general path's
        // matrixmultiply on x86-64, so the fast path starts on only with SIMD kernels.
        match Isa::detect() {
            Isa::Portable => e.set_fast_path(None)?,
            isa @ Isa::Avx512 | isa @ Isa::Avx2 => e.set_fast_path(Some(isa))?,
        }
        Ok(e)
    }

    /// The SIMD kernels the fast path uses, or `None` when this graph runs on the general NCHW
    /// path (not a plain chain of Convolution/Pooling/ReLU/InnerProduct, a CPU without AVX2 or
    /// AVX-512 unless `set_fast_path(Some(Isa::Portable))` was called, or switched off).
    pub fn fast_path(&self) -> Option<Isa> {
        self.chain.as_ref().map(|c| c.isa)
    }

    /// Choose the fast path's kernels (`Some(isa)`, e.g. to measure AVX2 on an AVX-512 machine)
    /// or switch the fast path off (`None`: every call runs the general NCHW kernels).
    pub fn set_fast_path(&mut self, isa: Option<Isa>) -> Result<()> {
        if let Some(isa) = isa {
            ensure!(
                isa.available(),
                "this CPU cannot run {} kernels",
                isa.name()
            );
        }
        self.isa = isa;
        self.chain = isa.and_then(|isa| chain::Chain::build(self.g, isa));
        self.direct = self
            .g
            .nodes
            .iter()
            .map(|node| match (&node.op, isa) {
                (Op::Convolution(p), Some(isa)) => nchw_direct::NchwDirect::build(
                    p,
                    &node.weights,
                    self.g.shape(&node.inputs[0]),
                    self.g.shape(&node.outputs[0]),
                    isa,
                ),
                _ => None,
            })
            .collect();
        Ok(())
    }

    /// The SIMD kernels its convolutions run on (the fast path's, and the general path's
    /// group-1 convolutions), or `None` for the plain NCHW kernels.
    pub fn isa(&self) -> Option<Isa> {
        self.isa
    }

    /// The graph this engine runs.
    pub fn graph(&self) -> &'g Graph {
        self.g
    }

    /// Run `batch` images (`input`: `batch × product(input shape)`, NCHW) and return the graph's
    /// outputs or every blob. Parallel over chunks of images on the current rayon pool.
    pub fn forward(&self, input: &[f32], batch: usize, keep: Keep) -> Result<Activations> {
        let per = self.sizes[0];
        ensure!(
            input.len() == batch * per,
            "input has {} values, expected {batch} images × {per} ({:?})",
            input.len(),
            self.g.shape(&self.g.input.blob)
        );
        let chunk = self
            .chunk_images
            .max(1)
            .min(batch.div_ceil(rayon::current_num_threads()).max(1));
        if let (Keep::Outputs, Some(chain)) = (keep, &self.chain) {
            return Ok(self.forward_chain(chain, input, batch, chunk));
        }
        let parts: Vec<Vec<Option<Cow<[f32]>>>> = if batch == 0 {
            Vec::new()
        } else {
            input
                .par_chunks(chunk * per)
                .map(|x| self.run_chunk(x, x.len() / per, keep))
                .collect()
        };
        let mut blobs = BTreeMap::new();
        for (id, name) in self.names.iter().enumerate() {
            let wanted = match keep {
                Keep::All => true,
                Keep::Outputs => self.is_output[id],
            };
            if !wanted {
                continue;
            }
            let mut v = Vec::with_capacity(batch * self.sizes[id]);
            for p in &parts {
                v.extend_from_slice(p[id].as_deref().expect("kept blobs survive the chunk"));
            }
            blobs.insert(name.to_string(), v);
        }
        Ok(Activations { blobs, batch })
    }

    /// The fast path: chunks of images in parallel, each image through the NHWC chain with
    /// per-task scratch buffers.
    fn forward_chain(
        &self,
        chain: &chain::Chain,
        input: &[f32],
        batch: usize,
        chunk: usize,
    ) -> Activations {
        let (per, out_id) = (self.sizes[0], self.steps.last().map_or(0, |s| s.output));
        let out_per = self.sizes[out_id];
        let mut out = vec![0.0f32; batch * out_per];
        if batch > 0 {
            out.par_chunks_mut(chunk * out_per)
                .zip(input.par_chunks(chunk * per))
                .for_each_init(
                    || chain.scratch(),
                    |s, (y, x)| {
                        for (y, x) in y.chunks_exact_mut(out_per).zip(x.chunks_exact(per)) {
                            chain.run_image(x, y, s);
                        }
                    },
                );
        }
        let mut blobs = BTreeMap::new();
        blobs.insert(self.names[out_id].to_string(), out);
        Activations { blobs, batch }
    }

    /// Run `n` images through every step; returns the blob buffers (freed ones are `None`).
    fn run_chunk<'a>(&self, input: &'a [f32], n: usize, keep: Keep) -> Vec<Option<Cow<'a, [f32]>>> {
        let mut bufs: Vec<Option<Cow<[f32]>>> = vec![None; self.names.len()];
        bufs[0] = Some(Cow::Borrowed(input));
        for (s, step) in self.steps.iter().enumerate() {
            let mut out = vec![0.0f32; n * self.sizes[step.output]];
            {
                let ins: Vec<&[f32]> = step
                    .inputs
                    .iter()
                    .map(|&i| bufs[i].as_deref().expect("inputs are computed before use"))
                    .collect();
                match &self.direct[s] {
                    Some(d) => d.run(ins[0], n, &mut out),
                    None => self.run_step(&step.kernel, &ins, n, &mut out),
                }
            }
            bufs[step.output] = Some(Cow::Owned(out));
            if keep == Keep::Outputs {
                for &i in &step.inputs {
                    if self.last_use[i] == Some(s) && !self.is_output[i] {
                        bufs[i] = None;
                    }
                }
            }
        }
        bufs
    }

    fn run_step(&self, kernel: &Kernel, ins: &[&[f32]], n: usize, out: &mut [f32]) {
        let x = ins[0];
        match kernel {
            Kernel::Conv(k) => k.run(x, n, out),
            Kernel::Deconv(k) => k.run(x, n, out),
            Kernel::Dense(k) => k.run(x, n, out),
            Kernel::Pool(k) => k.run(x, n, out),
            Kernel::Relu(slope) => elementwise::relu(x, *slope, out),
            Kernel::Unary(f) => {
                for (y, &v) in out.iter_mut().zip(x.iter()) {
                    *y = f(v);
                }
            }
            Kernel::PRelu(k) => k.run(x, out),
            Kernel::Affine(k) => k.run(x, out),
            Kernel::Eltwise(op, coeffs) => elementwise::eltwise(*op, coeffs, ins, out),
            Kernel::BatchNorm(k) => k.run(x, out),
            Kernel::Lrn(k) => k.run(x, n, out),
            Kernel::Softmax(k) => k.run(x, out),
            Kernel::Concat(k) => k.run(ins, n, out),
            Kernel::Copy => out.copy_from_slice(x),
            Kernel::Permute(shape, order) => layout::permute(x, n, shape, order, out),
        }
    }
}

/// Check a node's weights against Caffe's layouts and build its kernel.
fn kernel_for<'g>(g: &'g Graph, node: &'g Node) -> Result<Kernel<'g>> {
    let input = g.shape(&node.inputs[0]);
    let output = g.shape(&node.outputs[0]);
    let expected = ir::expected_weight_shapes(&node.op, input);
    if node.weights.len() != expected.len() {
        if node.weights.is_empty() {
            bail!(
                "has no weights attached (load the model with its .caffemodel / .h5 weights file)"
            );
        }
        bail!(
            "has {} weight blobs, expected {} {:?}",
            node.weights.len(),
            expected.len(),
            expected
        );
    }
    for (i, (w, e)) in node.weights.iter().zip(&expected).enumerate() {
        ensure!(
            w.shape == *e && w.data.len() == w.shape.iter().product::<usize>(),
            "weight blob {i} has shape {:?}, expected {e:?}",
            w.shape
        );
    }
    let w = node.weights.as_slice();
    if !matches!(node.op, Op::Eltwise { .. } | Op::Concat { .. }) {
        ensure!(
            node.inputs.len() == 1,
            "has {} inputs, expected one",
            node.inputs.len()
        );
    }
    Ok(match &node.op {
        Op::Convolution(p) => ops::conv::float(p, input, output, w)?,
        Op::Deconvolution(p) => ops::deconv::float(p, input, output, w)?,
        Op::InnerProduct(p) => ops::inner_product::float(p, input, w)?,
        Op::Pooling(p) => ops::pool::float(p, input, output)?,
        Op::ReLU { negative_slope } => ops::relu::float(*negative_slope),
        Op::Sigmoid => ops::lut::float(ops::lut::Function::Sigmoid),
        Op::TanH => ops::lut::float(ops::lut::Function::TanH),
        Op::PReLU { channel_shared } => ops::prelu::float(*channel_shared, input, w)?,
        Op::Softmax { axis } => ops::softmax::float(*axis, input)?,
        Op::Lrn(p) => ops::lrn::float(p, input)?,
        Op::BatchNorm { eps } => ops::scale::float_batchnorm(*eps, input, w)?,
        Op::Scale { axis, bias_term } => ops::scale::float_scale(input, *axis, *bias_term, w)?,
        Op::Bias { axis } => ops::scale::float_bias(input, *axis, w)?,
        Op::Eltwise { op, coeffs } => ops::eltwise::float(*op, coeffs, g, &node.inputs)?,
        Op::Concat { axis } => {
            let shapes: Vec<&[usize]> = node.inputs.iter().map(|b| g.shape(b)).collect();
            ops::concat::float(*axis, &shapes)?
        }
        Op::Flatten { .. } | Op::Reshape { .. } => ops::reshape::float_reshape(input, output)?,
        Op::Permute { order } => ops::reshape::float_permute(order, input),
    })
}
