//! The op registry: one module per op family, each the single place that holds (or delegates
//! to) everything nnquant does with that op:
//!
//! | stage | function | called from |
//! |---|---|---|
//! | shape rule | `shape` | `ir::shape::node_output_shapes` |
//! | float forward | `float` (builds the float engine's kernel; arithmetic in `float/`) | `float::kernel_for` |
//! | q7 lowering (formats → shifts, tables) | `lower` | `fixed::graph::QGraph::quantize` |
//! | validation of a model file | `check` | `fixed::validate::validate` |
//! | simulator (one image, `kernels.rs`) | `run` | `fixed::sim` |
//! | firmware (kernel call + its constants/arrays) | `emit` | `codegen::layer_contexts` |
//!
//! The closed lists are the enums `ir::Op` (Caffe's layers), `fixed::QOp` (q7 layers) and
//! `codegen::Call` (firmware kernel calls): every stage dispatches with an exhaustive `match`
//! (no `_ =>`, `clippy::wildcard_enum_match_arm` is on for the crate), one line per variant into
//! the op's module, so a new variant makes the compiler name each place it must be handled.
//! The arithmetic itself stays in `fixed/kernels.rs`, shared verbatim with the firmware.
//!
//! Convolution (`conv`) and InnerProduct (`inner_product`) follow the same pattern; their
//! simulator fast paths (the SIMD direct convolutions, the depthwise path, the i16 GEMM) are
//! prepared in `fixed::sim` beside those kernels (`conv_prep`, `fc_prep`), as are pooling's and
//! ReLU's; the convolution-fused ReLU/pool firmware steps are grouped in `codegen::steps`.

pub mod concat;
pub mod conv;
pub mod deconv;
pub mod eltwise;
pub mod inner_product;
pub mod lrn;
pub mod lut;
pub mod pool;
pub mod prelu;
pub mod relu;
pub mod reshape;
pub mod scale;
pub mod softmax;

use crate::codegen::{ArrayCtx, Param};
use crate::fixed::graph::{Hwc, QBlob, QGraph, QLayer, QOp};
use crate::ir::Node;
use anyhow::{ensure, Context as _, Result};

/// What lowering one node to q7 sees: its input blobs (already lowered) and its output.
pub struct Lower<'a> {
    pub node: &'a Node,
    pub ins: &'a [&'a QBlob],
    /// The output blob's name and (float) shape.
    pub out: &'a str,
    pub out_shape: &'a [usize],
    /// The output format the formats file gives, if any.
    pub given: Option<i32>,
    /// The Caffe name of the output blob (the formats file may use it), for messages.
    pub caffe_out: &'a str,
    /// The formats' rounding of average pools.
    pub avepool_rounding: crate::fixed::graph::PoolRounding,
}

/// A lowered layer: its q7 op, its output's fraction bits and layout.
pub type Lowered = (QOp, i32, Hwc);

impl Lower<'_> {
    /// `layer 'name' (Type)`, the prefix of every error.
    pub fn ctx(&self) -> String {
        format!("layer '{}' ({})", self.node.name, self.node.op.type_name())
    }

    pub fn in0(&self) -> &QBlob {
        self.ins[0]
    }

    /// The output format of an op that keeps its input's format (a given one must agree).
    pub fn forced(&self, what: &str) -> Result<i32> {
        let in_frac = self.in0().frac_bits;
        if let Some(v) = self.given {
            ensure!(v == in_frac, "{}: {what} keeps its input's format ({in_frac} fraction bits), but the formats give {v} for its output blob '{}'", self.ctx(), self.out);
        }
        Ok(in_frac)
    }

    /// The output format, which the formats file must give.
    pub fn required(&self) -> Result<i32> {
        self.given.with_context(|| {
            format!(
                "{}: the formats give no activations_frac_bits for its output blob '{}' (or '{}')",
                self.ctx(),
                self.out,
                self.caffe_out
            )
        })
    }

    /// Caffe's channels (axis 1) must be the innermost bytes of the first input: the C of an
    /// HWC feature map, or every value of a 1-D blob in logical order (per-channel ops).
    pub fn channels_innermost(&self) -> bool {
        let b = self.in0();
        let l = b.layout;
        crate::fixed::graph::hwc_of(&b.shape) == Some(l) && (b.shape.len() == 3 || l.h * l.w == 1)
    }
}

/// What checking one layer of a model file sees.
pub struct Check<'a> {
    pub g: &'a QGraph,
    pub l: &'a QLayer,
    pub out: &'a QBlob,
}

impl<'a> Check<'a> {
    pub fn name(&self) -> &'a str {
        &self.l.name
    }

    pub fn blob(&self, b: &str) -> Result<&'a QBlob> {
        self.g
            .blobs
            .get(b)
            .with_context(|| format!("layer '{}': blob '{b}' is not among the blobs", self.l.name))
    }

    /// The layer takes exactly `n` inputs.
    pub fn arity(&self, n: usize) -> Result<()> {
        ensure!(
            self.l.inputs.len() == n,
            "layer '{}': takes {n} input(s), the file gives {}",
            self.l.name,
            self.l.inputs.len()
        );
        Ok(())
    }

    /// The first input's name and blob.
    pub fn in0(&self) -> Result<(&'a str, &'a QBlob)> {
        let n = self.l.inputs.first().map(String::as_str).unwrap_or("");
        Ok((n, self.blob(n)?))
    }

    /// One input whose layout the output keeps (elementwise ops): returns it.
    pub fn unary_same_layout(&self) -> Result<&'a QBlob> {
        self.arity(1)?;
        let (n, inp) = self.in0()?;
        crate::fixed::validate::same_layout(
            self.name(),
            "the output's layout",
            self.out.layout,
            n,
            inp,
        )?;
        Ok(inp)
    }

    /// The output keeps the input's format.
    pub fn same_format(&self, inp: &QBlob, what: &str) -> Result<()> {
        ensure!(
            self.out.frac_bits == inp.frac_bits,
            "layer '{}': {what}keeps its input's format ({} fraction bits), its output '{}' has {}",
            self.name(),
            inp.frac_bits,
            self.l.output,
            self.out.frac_bits
        );
        Ok(())
    }

    /// One input whose layout and format the output keeps (ReLU, Reshape).
    pub fn keeps_input(&self) -> Result<()> {
        let inp = self.unary_same_layout()?;
        self.same_format(inp, "")
    }

    /// Two inputs with the output's layout: returns them.
    pub fn binary_same_layout(&self) -> Result<(&'a QBlob, &'a QBlob)> {
        self.arity(2)?;
        let (a, b) = (self.blob(&self.l.inputs[0])?, self.blob(&self.l.inputs[1])?);
        let v = crate::fixed::validate::same_layout;
        v(
            self.name(),
            "input a's layout",
            a.layout,
            &self.l.output,
            self.out,
        )?;
        v(
            self.name(),
            "input b's layout",
            b.layout,
            &self.l.output,
            self.out,
        )?;
        Ok((a, b))
    }

    pub fn shift(&self, what: &str, v: i32) -> Result<()> {
        crate::fixed::validate::check_shift(self.name(), what, v)
    }
}

/// One layer on one image in the simulator: its input bytes, in the layer's input order.
pub struct Run<'a> {
    pub g: &'a QGraph,
    pub l: &'a QLayer,
    pub ins: Vec<&'a [i8]>,
}

impl Run<'_> {
    /// The second input (binary ops); a missing one is a length error as the kernels report.
    pub fn in1(&self) -> Result<&[i8], crate::fixed::kernels::KernelError> {
        self.ins
            .get(1)
            .copied()
            .ok_or(crate::fixed::kernels::KernelError::Length)
    }

    pub fn in_layout(&self, i: usize) -> Hwc {
        self.g.blobs[&self.l.inputs[i]].layout
    }

    pub fn out_blob(&self) -> &QBlob {
        &self.g.blobs[&self.l.output]
    }
}

/// One firmware step's kernel call being emitted: the constants (`params`, in `parameter.rs`)
/// and arrays (flash, `weights.rs`) it needs, named after the layer's prefix `p`.
pub struct Emit<'a> {
    pub g: &'a QGraph,
    pub l: &'a QLayer,
    pub p: &'a str,
    /// The step runs over its input's buffer (the plan decided).
    pub in_place: bool,
    /// For an in-place binary op, the input the result is written over.
    pub in_place_input: Option<usize>,
    pub params: &'a mut Vec<Param>,
    pub arrays: &'a mut Vec<ArrayCtx>,
}

impl Emit<'_> {
    /// A constant `{p}_{name}: ty = value` in `parameter.rs`.
    pub fn param(&mut self, name: &str, ty: &'static str, value: String) {
        self.params.push(Param {
            name: format!("{}_{name}", self.p),
            ty,
            value,
        });
    }

    /// `(in place, copy)` as the plan decided.
    pub fn pick<T>(&self, in_place: T, copy: T) -> T {
        if self.in_place {
            in_place
        } else {
            copy
        }
    }

    pub fn in_name(&self, i: usize) -> &str {
        &self.l.inputs[i]
    }

    /// A conv/fc's shifts: constants for per-layer formats `(weight_frac_bits,
    /// bias_frac_bits, bias_lshift, out_rshift)`, else the per-channel shift arrays.
    pub fn dense_shifts(
        &mut self,
        per_channel: &Option<crate::fixed::graph::ChannelFormats>,
        (wf, bf, bl, or): (i32, i32, i32, i32),
    ) {
        match per_channel {
            None => {
                self.param("BIAS_LSHIFT", "i32", bl.to_string());
                self.param("OUT_RSHIFT", "i32", or.to_string());
                self.param("WEIGHT_FRAC_BITS", "i32", wf.to_string());
                self.param("BIAS_FRAC_BITS", "i32", bf.to_string());
            }
            Some(pc) => {
                self.arrays
                    .extend(crate::codegen::channel_arrays(self.p, &self.l.name, pc))
            }
        }
    }

    /// The layer's `{p}_BIAS` array.
    pub fn bias(&mut self, bias: &[i8], frac: i32) {
        self.arrays.push(ArrayCtx::i8(
            format!("{}_BIAS", self.p),
            format!(
                "`{}` biases [{}], {} fraction bits.",
                self.l.name,
                bias.len(),
                frac
            ),
            bias,
        ));
    }
}
