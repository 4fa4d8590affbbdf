//! The quantized graph: int8 weights in kernel layouts (HWC), a q7 format for every blob, the
//! shifts of every layer. Serializable and self-contained: it is the heart of the `.nnq.json`
//! model file, and both the simulator and the code generator read only this.

use super::kernels::{Dims, Pair};
use super::lower_memo::{LowerKey, LowerMemo};
use super::qformat::QFormat;
use crate::ir::{Graph, Hw, Node, Op};
use crate::ops;
use crate::ops::Lowered;
/// Moved to their ops' modules; re-exported for the tests and tools that build tables.
pub use crate::ops::{
    deconv::weights as deconv_weights, lrn::table as lrn_table, lut::table as lut_table,
};
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Formats chosen for a model, in ARM's `arm-formats.json` schema: `activations_frac_bits` per
/// blob, `layers.<name>.{weight_frac_bits, bias_frac_bits}`. Unknown keys (`about`, `input`, …)
/// are ignored; `bias_lshift`/`out_rshift`, when present, are cross-checked against the shifts
/// nnquant computes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Formats {
    #[serde(default)]
    pub activations_frac_bits: BTreeMap<String, i32>,
    #[serde(default)]
    pub layers: BTreeMap<String, LayerFormat>,
    /// Activation equalization the formats were chosen for: producer layer → the power-of-two
    /// exponent of each of its output channels (`ir::equalize::apply_activation_scales`);
    /// `quantize --formats` applies them to the float weights before quantizing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub activation_scales: BTreeMap<String, Vec<i32>>,
    /// How every average pool divides (`truncate`, CMSIS-NN's, when the file does not say: ARM's
    /// formats file and files written before this field reproduce their bytes).
    #[serde(default, skip_serializing_if = "PoolRounding::is_truncate")]
    pub avepool_rounding: PoolRounding,
}

/// How a q7 average pool turns its window's sum into a mean (`kernels::ave_q7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolRounding {
    /// Truncated toward zero, as CMSIS-NN's legacy q7 pool (`--arm-compatible`).
    #[default]
    Truncate,
    /// Rounded to nearest, halves away from zero, as TFLM's int8 pool: no bias.
    Nearest,
}

impl PoolRounding {
    pub fn is_truncate(&self) -> bool {
        *self == PoolRounding::Truncate
    }

    /// The kernels' `round` argument.
    pub fn nearest(self) -> bool {
        self == PoolRounding::Nearest
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolRounding::Truncate => "truncate",
            PoolRounding::Nearest => "nearest",
        }
    }
}

/// Fraction bits of a layer's weights or biases: one count for the whole layer (a number in the
/// file, ARM's schema), or one per output channel (a list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Frac {
    Layer(i32),
    Channels(Vec<i32>),
}

impl Default for Frac {
    fn default() -> Frac {
        Frac::Layer(0)
    }
}

impl From<i32> for Frac {
    fn from(v: i32) -> Frac {
        Frac::Layer(v)
    }
}

impl Frac {
    /// The count of output channel `c` (any `c` for a per-layer count; per-channel lists are
    /// checked against the channel count before this is used).
    pub fn channel(&self, c: usize) -> i32 {
        match self {
            Frac::Layer(v) => *v,
            Frac::Channels(v) => v[c],
        }
    }

    /// Channel 0's count (the layer's for a per-layer count): what the search's coordinate
    /// reads.
    pub fn first(&self) -> i32 {
        match self {
            Frac::Layer(v) => *v,
            Frac::Channels(v) => v.first().copied().unwrap_or(0),
        }
    }

    /// Every channel moved by `d` fraction bits (the search moves a layer's channels together).
    pub fn offset(&self, d: i32) -> Frac {
        match self {
            Frac::Layer(v) => Frac::Layer(v + d),
            Frac::Channels(v) => Frac::Channels(v.iter().map(|x| x + d).collect()),
        }
    }

    /// All counts (one for a per-layer count).
    pub fn values(&self) -> &[i32] {
        match self {
            Frac::Layer(v) => std::slice::from_ref(v),
            Frac::Channels(v) => v,
        }
    }

    /// Check the channel count: per-channel lists must have one count per output channel.
    pub(crate) fn check_len(&self, what: &str, out_c: usize) -> Result<()> {
        if let Frac::Channels(v) = self {
            ensure!(
                v.len() == out_c,
                "{what} lists {} per-channel fraction bits, but the layer has {out_c} output channels; give one number for the whole layer or one per output channel",
                v.len()
            );
        }
        Ok(())
    }
}

/// Formats of one parametric layer (Convolution or InnerProduct).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerFormat {
    /// A number (every output channel) or a list with one count per output channel.
    pub weight_frac_bits: Frac,
    /// May be omitted for a layer without bias; a number or one count per output channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_frac_bits: Option<Frac>,
    /// Optional expectation, checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_lshift: Option<i32>,
    /// Optional expectation, checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_rshift: Option<i32>,
    /// Bias correction (`search::local`): per output channel, a float value added to the bias
    /// before it is quantized, cancelling the mean quantization error the layer's output showed
    /// on the calibration images. Only for layers with a bias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_correction: Option<Vec<f32>>,
}

impl LayerFormat {
    /// Whether any count is per channel.
    pub fn per_channel(&self) -> bool {
        matches!(self.weight_frac_bits, Frac::Channels(_))
            || matches!(self.bias_frac_bits, Some(Frac::Channels(_)))
    }
}

impl Formats {
    pub fn from_json_str(s: &str) -> Result<Formats> {
        let f: Formats = serde_json::from_str(s)
            .context("parsing a formats JSON (activations_frac_bits, layers)")?;
        f.check_ranges()?;
        Ok(f)
    }

    /// Every fraction-bit count and expected shift within the ranges nnquant computes with
    /// (names are checked against the model by [`QGraph::quantize`]).
    pub fn check_ranges(&self) -> Result<()> {
        use super::validate::check_frac;
        for (b, v) in &self.activations_frac_bits {
            check_frac(&format!("activations_frac_bits.{b}"), *v)?;
        }
        for (l, lf) in &self.layers {
            for (c, v) in lf.weight_frac_bits.values().iter().enumerate() {
                check_frac(
                    &frac_name(l, "weight_frac_bits", &lf.weight_frac_bits, c),
                    *v,
                )?;
            }
            if let Some(b) = &lf.bias_frac_bits {
                for (c, v) in b.values().iter().enumerate() {
                    check_frac(&frac_name(l, "bias_frac_bits", b, c), *v)?;
                }
            }
            if let Some(c) = &lf.bias_correction {
                ensure!(
                    c.iter().all(|v| v.is_finite()),
                    "layers.{l}.bias_correction holds a value that is not a finite number"
                );
            }
            for (what, v) in [
                ("bias_lshift", lf.bias_lshift),
                ("out_rshift", lf.out_rshift),
            ] {
                if let Some(v) = v {
                    ensure!(
                        (0..=31).contains(&v),
                        "layers.{l}.{what} = {v} is outside 0..=31, the shifts the q7 kernels take"
                    );
                }
            }
            if lf.per_channel() {
                ensure!(
                    lf.bias_lshift.is_none() && lf.out_rshift.is_none(),
                    "layers.{l}: bias_lshift/out_rshift expectations are per layer, but its fraction bits are per channel; leave them out"
                );
            }
        }
        Ok(())
    }
    pub fn from_json_file(path: &Path) -> Result<Formats> {
        let s = crate::fsio::read_text(path, "the formats file")?;
        Self::from_json_str(&s).with_context(|| format!("in {}", path.display()))
    }
}

/// `layers.<l>.<what>` or `layers.<l>.<what>[c]` for per-channel lists (error messages).
fn frac_name(l: &str, what: &str, f: &Frac, c: usize) -> String {
    match f {
        Frac::Layer(_) => format!("layers.{l}.{what}"),
        Frac::Channels(_) => format!("layers.{l}.{what}[{c}]"),
    }
}

/// Per-output-channel formats of a conv/fc layer: each output channel's weights and bias have
/// their own fraction bits, so its bias shift and output shift are its own
/// (`bias_lshift[c] = in_frac + weight_frac_bits[c] - bias_frac_bits[c]`,
/// `out_rshift[c] = in_frac + weight_frac_bits[c] - out_frac`). Every list has one value per
/// output channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelFormats {
    pub weight_frac_bits: Vec<i32>,
    pub bias_frac_bits: Vec<i32>,
    pub bias_lshift: Vec<i32>,
    pub out_rshift: Vec<i32>,
}

/// The shifts the kernels take: slices of length 1 (per layer) or one per output channel.
fn shift_slices<'a>(
    pc: &'a Option<ChannelFormats>,
    bl: &'a i32,
    or: &'a i32,
) -> (&'a [i32], &'a [i32]) {
    match pc {
        Some(p) => (&p.bias_lshift, &p.out_rshift),
        None => (std::slice::from_ref(bl), std::slice::from_ref(or)),
    }
}

/// Serializable HWC dimensions (mirrors `kernels::Dims`, which must stay free of serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hwc {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Hwc {
    pub fn dims(self) -> Dims {
        Dims {
            h: self.h,
            w: self.w,
            c: self.c,
        }
    }
    pub fn len(self) -> usize {
        self.h * self.w * self.c
    }
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
}

/// `ir::Hw` as the kernels' `Pair`.
pub fn pair(hw: Hw) -> Pair {
    Pair { h: hw.h, w: hw.w }
}

/// A blob of the quantized graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QBlob {
    /// Caffe's logical shape without batch (`[C, H, W]`, `[N]`, …).
    pub shape: Vec<usize>,
    /// How the bytes are laid out: HWC of these dimensions. A flattened `[C·H·W]` blob keeps the
    /// HWC order of its source (flattening is free in memory); a 1-D blob is `1×1×N`.
    pub layout: Hwc,
    pub frac_bits: i32,
}

impl QBlob {
    /// One image's values in the logical (Caffe, C-major) order of `shape`, from their layout:
    /// HWC bytes are transposed, flat ones are already in that order.
    pub fn logical_order<'a, T: Copy + 'a>(&self, hwc: &'a [T]) -> impl Iterator<Item = T> + 'a {
        let l = self.layout;
        (0..l.len()).map(move |k| {
            // k = (c·h + y)·w + x in logical order; the bytes are (y·w + x)·c + ch.
            let (ch, yx) = (k / (l.h * l.w), k % (l.h * l.w));
            hwc[yx * l.c + ch]
        })
    }
}

/// Convolution in kernel layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QConv {
    pub in_dims: Hwc,
    pub out_dims: Hwc,
    pub kernel: Hw,
    pub pad: Hw,
    pub stride: Hw,
    /// Kernel dilation; model files written before it existed read as 1 × 1.
    #[serde(default = "dense_dilation")]
    pub dilation: Hw,
    pub groups: usize,
    /// `[out_c][kh][kw][in_c / groups]`.
    pub weights: Vec<i8>,
    /// `out_c` values (zeros when the layer has no bias).
    pub bias: Vec<i8>,
    pub weight_frac_bits: i32,
    pub bias_frac_bits: i32,
    pub bias_lshift: i32,
    pub out_rshift: i32,
    /// Per-channel formats; absent for per-layer formats (and in files written before they
    /// existed). When present, the scalar fields above repeat channel 0's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_channel: Option<ChannelFormats>,
}

impl QConv {
    /// `(bias_lshift, out_rshift)` as the kernels take them (length 1 or `out_c`).
    pub fn shifts(&self) -> (&[i32], &[i32]) {
        shift_slices(&self.per_channel, &self.bias_lshift, &self.out_rshift)
    }
}

impl QFc {
    /// `(bias_lshift, out_rshift)` as the kernels take them (length 1 or `out_len`).
    pub fn shifts(&self) -> (&[i32], &[i32]) {
        shift_slices(&self.per_channel, &self.bias_lshift, &self.out_rshift)
    }
}

/// The dilation of an ordinary convolution (serde default of [`QConv::dilation`]).
fn dense_dilation() -> Hw {
    Hw::square(1)
}

/// Fully connected in kernel layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QFc {
    pub in_len: usize,
    pub out_len: usize,
    /// `[out][in]`, `in` in the physical (HWC) order of the input blob.
    pub weights: Vec<i8>,
    pub bias: Vec<i8>,
    pub weight_frac_bits: i32,
    pub bias_frac_bits: i32,
    pub bias_lshift: i32,
    pub out_rshift: i32,
    /// Per-output formats, as for [`QConv::per_channel`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_channel: Option<ChannelFormats>,
}

/// Pooling geometry (output size from Caffe's rules, computed once by the IR).
/// A standalone Scale/Bias/BatchNorm ([`QOp::ScaleBias`], `ops::scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QScaleBias {
    pub scales: Vec<i8>,
    pub scale_frac: i32,
    pub bias: Vec<i8>,
    pub bias_frac: i32,
    pub bias_lshift: i32,
    pub out_rshift: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QPool {
    pub in_dims: Hwc,
    pub out_dims: Hwc,
    pub kernel: Hw,
    pub pad: Hw,
    pub stride: Hw,
    /// Average pools only (max pools keep the default): the mean's rounding.
    #[serde(default, skip_serializing_if = "PoolRounding::is_truncate")]
    pub rounding: PoolRounding,
}

/// A quantized operation; each maps to one function of `kernels.rs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QOp {
    Conv(QConv),
    Fc(QFc),
    MaxPool(QPool),
    AvePool(QPool),
    Relu,
    /// Eltwise SUM of two inputs (`kernels::add_q7`).
    Add {
        a_lshift: i32,
        b_lshift: i32,
        out_rshift: i32,
    },
    /// Channel concatenation, one `out_frac - in_frac` shift per input (`kernels::concat_hwc_q7`).
    Concat {
        shifts: Vec<i32>,
    },
    /// Flatten/Reshape that keeps the bytes (a copy).
    Reshape,
    /// SSD's Permute NCHW → NHWC (`order` 0, 2, 3, 1 over the batched axes) of a feature map: its
    /// HWC bytes already are the permuted tensor in C order, so this too is a copy; the output's
    /// layout is flat (`1×1×N`: bytes in the logical order of its `[H, W, C]` shape).
    Permute {
        order: Vec<usize>,
    },
    /// An elementwise function as a table over the 256 input codes (`kernels::lut_q7`): Sigmoid
    /// and TanH, computed in f64 at quantization for this layer's input and output formats.
    Lut {
        function: String,
        table: Vec<i8>,
    },
    /// PReLU (`kernels::prelu_q7`): negative values times `slopes[c]` (q7 with `slope_frac`
    /// fraction bits) over HWC channels; the output keeps the input's format.
    PRelu {
        slopes: Vec<i8>,
        slope_frac: i32,
    },
    /// Eltwise MAX of two inputs (`kernels::max_q7`), shifts as for [`QOp::Add`].
    Max {
        a_lshift: i32,
        b_lshift: i32,
        out_rshift: i32,
    },
    /// Softmax over contiguous rows of `row` values (`kernels::softmax_q7`, 0 to 15 output fraction bits): `exp_table[d]` =
    /// round(2^15 · e^(-d·2^-in_frac)) for the distance `d` of a value below its row's maximum.
    Softmax {
        row: usize,
        exp_table: Vec<u16>,
    },
    /// Caffe's Deconvolution (`kernels::deconv_hwc_q7`): geometry, formats and shifts as for a
    /// convolution; `weights` are `[out_c][kh][kw][in_c / groups]` ([`deconv_weights`]).
    Deconv(QConv),
    /// LRN (`kernels::lrn_q7`): `table` holds `(k + α/n · s · 2^(-2·in_frac))^-β · 2^table_frac`
    /// at `s = j << index_shift` (`n` = `size` across channels; within a channel `size²`, and
    /// `k` = 1 as Caffe builds it); `out_rshift = table_frac + in_frac - out_frac`.
    Lrn {
        size: usize,
        across: bool,
        index_shift: i32,
        table: Vec<u16>,
        table_frac: i32,
        out_rshift: i32,
    },
    /// Eltwise PROD of two inputs (`kernels::mul_q7`): `out_rshift = a_frac + b_frac - out_frac`.
    Mul {
        out_rshift: i32,
    },
    /// A Scale/Bias that could not be folded into a convolution (after a ReLU or pooling, say):
    /// per innermost channel (`kernels::scale_q7`), `scales` with `scale_frac` fraction bits,
    /// `bias` with `bias_frac`; `bias_lshift = in_frac + scale_frac - bias_frac`,
    /// `out_rshift = in_frac + scale_frac - out_frac`.
    ScaleBias(QScaleBias),
}

/// A q7 layer with weights: the dense products (see [`QOp::dense`]).
#[derive(Debug, Clone, Copy)]
pub enum QDense<'a> {
    Conv(&'a QConv),
    Deconv(&'a QConv),
    Fc(&'a QFc),
}

impl QOp {
    /// The op as a layer with weights (conv, deconv, fc), or `None`: the one exhaustive list
    /// for the places that treat those three apart from the rest.
    pub fn dense(&self) -> Option<QDense<'_>> {
        match self {
            QOp::Conv(c) => Some(QDense::Conv(c)),
            QOp::Deconv(c) => Some(QDense::Deconv(c)),
            QOp::Fc(f) => Some(QDense::Fc(f)),
            QOp::MaxPool(_)
            | QOp::AvePool(_)
            | QOp::Relu
            | QOp::Add { .. }
            | QOp::Concat { .. }
            | QOp::Reshape
            | QOp::Permute { .. }
            | QOp::Lut { .. }
            | QOp::PRelu { .. }
            | QOp::Max { .. }
            | QOp::Softmax { .. }
            | QOp::Lrn { .. }
            | QOp::Mul { .. }
            | QOp::ScaleBias { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QLayer {
    pub name: String,
    pub op: QOp,
    pub inputs: Vec<String>,
    pub output: String,
}

/// The quantized network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QGraph {
    pub name: String,
    /// The input blob (q7 HWC after `kernels::input_u8_q7`).
    pub input: String,
    pub blobs: BTreeMap<String, QBlob>,
    /// In execution order.
    pub layers: Vec<QLayer>,
    /// The network's results. A trailing Softmax is dropped (its input becomes the output):
    /// it is monotonic, so the firmware's arg-max is unchanged, and q7 logits are what CMSIS's
    /// examples report too; unless the float graph says to keep it
    /// (`Graph::keep_output_softmax`, `quantize --softmax keep`): then the q7 probabilities are
    /// the output.
    pub outputs: Vec<String>,
}

/// Which format keys of the file a blob answers to: its own name, and for SSA names
/// `top@layer` the Caffe blob name `top`.
fn caffe_name(blob: &str) -> &str {
    blob.split_once('@').map_or(blob, |(t, _)| t)
}

pub fn hwc_of(shape: &[usize]) -> Option<Hwc> {
    match *shape {
        [c, h, w] => Some(Hwc { h, w, c }),
        [n] => Some(Hwc { h: 1, w: 1, c: n }),
        _ => None,
    }
}

pub(crate) fn check_shift(layer: &str, what: &str, v: i32, formula: &str) -> Result<()> {
    ensure!(
        (0..=31).contains(&v),
        "layer '{layer}': {what} = {formula} = {v} is outside 0..=31; the q7 kernels cannot shift that way. Choose other formats for this layer"
    );
    Ok(())
}

impl QGraph {
    /// Quantize a float graph with the given formats. The graph must already be in inference
    /// form (BatchNorm/Scale folded: `ir::passes::fold_batchnorm`).
    pub fn quantize(g: &Graph, f: &Formats) -> Result<QGraph> {
        Self::quantize_memo(g, f, None)
    }

    /// [`QGraph::quantize`], taking conv/deconv/fc layers whose lowering inputs are unchanged
    /// from `memo` (which must only ever see this `g`): the search's candidates differ in one
    /// layer's formats.
    pub fn quantize_memo(g: &Graph, f: &Formats, memo: Option<&LowerMemo>) -> Result<QGraph> {
        f.check_ranges()?;
        // Which activation keys got used, to report names that match nothing.
        let mut used: BTreeSet<&str> = BTreeSet::new();
        let mut lookup = |blob: &str| -> Option<i32> {
            for k in [blob, caffe_name(blob)] {
                if let Some((key, v)) = f.activations_frac_bits.get_key_value(k) {
                    used.insert(key.as_str());
                    return Some(*v);
                }
            }
            None
        };
        let mut blobs: BTreeMap<String, QBlob> = BTreeMap::new();
        let in_shape = g.shape(&g.input.blob).to_vec();
        let in_layout = hwc_of(&in_shape).with_context(|| {
            format!(
                "input blob '{}' has shape {in_shape:?}; q7 needs C×H×W or N",
                g.input.blob
            )
        })?;
        let in_frac = lookup(&g.input.blob).with_context(|| {
            format!(
                "the formats give no activations_frac_bits for the input blob '{}'",
                g.input.blob
            )
        })?;
        blobs.insert(
            g.input.blob.clone(),
            QBlob {
                shape: in_shape,
                layout: in_layout,
                frac_bits: in_frac,
            },
        );
        let consumers = g.consumer_counts();
        let mut layers = Vec::new();
        let mut outputs = g.outputs.clone();
        let mut dropped = BTreeSet::new();
        let mut used_layers = BTreeSet::new();

        for (node, n) in g.nodes.iter().enumerate() {
            let ctx = || format!("layer '{}' ({})", n.name, n.op.type_name());
            ensure!(
                n.outputs.len() == 1,
                "{}: exactly one output is supported",
                ctx()
            );
            let out = &n.outputs[0];
            if matches!(n.op, Op::Softmax { .. })
                && !consumers.contains_key(out.as_str())
                && !g.keep_output_softmax
            {
                for o in outputs.iter_mut().filter(|o| *o == out) {
                    *o = n.inputs[0].clone();
                }
                dropped.insert(out.clone());
                continue;
            }
            let ins: Vec<&QBlob> = n
                .inputs
                .iter()
                .map(|b| {
                    blobs
                        .get(b)
                        .with_context(|| format!("{}: input blob '{b}' is unknown", ctx()))
                })
                .collect::<Result<_>>()?;
            let out_shape = g.shape(out).to_vec();
            let given = lookup(out);
            // The output format: forced for format-preserving ops, from the file otherwise
            // (`ops::Lower::forced`, `required`).
            let x = crate::ops::Lower {
                node: n,
                ins: &ins,
                out,
                out_shape: &out_shape,
                given,
                caffe_out: caffe_name(out),
                avepool_rounding: f.avepool_rounding,
            };
            let required = || x.required();
            // The layer's entry of the formats file (layers with weights; the three arms that
            // read it mark it as used).
            let layer_format = || -> Result<&LayerFormat> {
                f.layers.get(&n.name).with_context(|| format!("{}: the formats have no layers.{} entry (weight_frac_bits, bias_frac_bits)", ctx(), n.name))
            };
            // With a memo, a layer with weights is lowered once per distinct key: everything its
            // lowering reads besides the node. Errors are not kept, so they come back the same.
            let memoized = |lower: &dyn Fn() -> Result<Lowered>| match memo {
                Some(m) => m.get_or(
                    &LowerKey {
                        node,
                        ins: &ins,
                        given,
                        avepool_rounding: f.avepool_rounding,
                        layer_format: f.layers.get(&n.name),
                    },
                    lower,
                ),
                None => lower(),
            };
            if matches!(
                n.op,
                Op::Convolution(_) | Op::InnerProduct(_) | Op::Deconvolution(_)
            ) {
                used_layers.insert(n.name.as_str());
            }
            let (op, frac, layout) = match &n.op {
                Op::Convolution(c) => memoized(&|| {
                    let out_frac = required()?;
                    ops::conv::lower(&x, c, layer_format()?, out_frac)
                })?,
                Op::InnerProduct(p) => {
                    memoized(&|| ops::inner_product::lower(&x, p, layer_format))?
                }
                Op::Pooling(p) => ops::pool::lower(&x, p)?,
                Op::ReLU { negative_slope } => ops::relu::lower(&x, *negative_slope)?,
                Op::Flatten { .. } | Op::Reshape { .. } => ops::reshape::lower_reshape(&x)?,
                Op::Permute { order } => ops::reshape::lower_permute(&x, order)?,
                Op::Eltwise { op, coeffs } => ops::eltwise::lower(&x, *op, coeffs)?,
                Op::Concat { axis } => ops::concat::lower(&x, *axis)?,
                Op::Sigmoid => ops::lut::lower(&x, ops::lut::Function::Sigmoid)?,
                Op::TanH => ops::lut::lower(&x, ops::lut::Function::TanH)?,
                Op::PReLU { channel_shared } => ops::prelu::lower(&x, *channel_shared)?,
                Op::Softmax { axis } => ops::softmax::lower(&x, *axis)?,
                Op::Deconvolution(c) => memoized(&|| {
                    let out_frac = required()?;
                    ops::deconv::lower(&x, c, layer_format()?, out_frac)
                })?,
                Op::Lrn(p) => ops::lrn::lower(&x, p)?,
                Op::Scale { .. } | Op::Bias { .. } | Op::BatchNorm { .. } => ops::scale::lower(&x)?,
            };
            blobs.insert(
                out.clone(),
                QBlob {
                    shape: out_shape,
                    layout,
                    frac_bits: frac,
                },
            );
            layers.push(QLayer {
                name: n.name.clone(),
                op,
                inputs: n.inputs.clone(),
                output: out.clone(),
            });
        }

        let unknown: Vec<&String> = f
            .activations_frac_bits
            .keys()
            .filter(|k| {
                !used.contains(k.as_str())
                    && !dropped.contains(*k)
                    && !blobs.keys().any(|b| caffe_name(b) == k.as_str())
            })
            .collect();
        ensure!(
            unknown.is_empty(),
            "activations_frac_bits names blob(s) {unknown:?} that match no blob of the model; known blobs: {:?}",
            blobs.keys().collect::<Vec<_>>()
        );
        let unknown: Vec<&String> = f
            .layers
            .keys()
            .filter(|k| !used_layers.contains(k.as_str()))
            .collect();
        ensure!(
            unknown.is_empty(),
            "the formats name layer(s) {unknown:?} that are not Convolution/InnerProduct layers of the model; those are: {used_layers:?}"
        );
        Ok(QGraph {
            name: g.name.clone(),
            input: g.input.blob.clone(),
            blobs,
            layers,
            outputs,
        })
    }

    /// Format of a blob.
    pub fn frac_bits(&self, blob: &str) -> Option<i32> {
        self.blobs.get(blob).map(|b| b.frac_bits)
    }

    /// Number of q7 elements of a blob per image.
    pub fn blob_len(&self, blob: &str) -> usize {
        self.blobs.get(blob).map_or(0, |b| b.layout.len())
    }

    /// Values of all outputs together (the firmware writes them one after the other, in the
    /// order of `outputs`).
    pub fn outputs_len(&self) -> usize {
        self.outputs.iter().map(|o| self.blob_len(o)).sum()
    }

    /// The outputs of image `i`, concatenated in the order of `outputs` (what the firmware writes).
    pub fn output_bytes(&self, acts: &super::sim::Activations, i: usize) -> Option<Vec<i8>> {
        let mut v = Vec::with_capacity(self.outputs_len());
        for o in &self.outputs {
            v.extend_from_slice(acts.image(o, i)?);
        }
        Some(v)
    }

    /// The input's HWC dimensions.
    pub fn input_dims(&self) -> Hwc {
        self.blobs[&self.input].layout
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn from_json(s: &str) -> Result<QGraph> {
        serde_json::from_str(s).context("parsing a quantized graph")
    }
}

/// Quantized bias and shifts of a conv/fc layer, with every check: one entry per output channel
/// (all equal for per-layer formats).
pub(crate) fn shifts(
    n: &Node,
    lf: &LayerFormat,
    in_frac: i32,
    out_frac: i32,
    out_n: usize,
) -> Result<(Vec<i8>, ChannelFormats)> {
    let name = &n.name;
    let bias_f = n.weights.get(1);
    if let Some(b) = &lf.bias_frac_bits {
        b.check_len(&format!("layers.{name}.bias_frac_bits"), out_n)?;
    }
    if let Some(b) = bias_f {
        ensure!(
            b.data.len() == out_n,
            "layer '{name}' has {} biases for {out_n} outputs",
            b.data.len()
        );
    }
    if let Some(corr) = &lf.bias_correction {
        ensure!(
            bias_f.is_some(),
            "layer '{name}' has no bias, so it cannot take a bias_correction"
        );
        ensure!(
            corr.len() == out_n,
            "layer '{name}': bias_correction has {} values for {out_n} output channels",
            corr.len()
        );
    }
    let mut bias = vec![0i8; out_n];
    let mut pc = ChannelFormats {
        weight_frac_bits: Vec::with_capacity(out_n),
        bias_frac_bits: Vec::with_capacity(out_n),
        bias_lshift: Vec::with_capacity(out_n),
        out_rshift: Vec::with_capacity(out_n),
    };
    let at = |c: usize| {
        if lf.per_channel() {
            format!(" (output channel {c})")
        } else {
            String::new()
        }
    };
    for (c, b) in bias.iter_mut().enumerate() {
        let wf = lf.weight_frac_bits.channel(c);
        let acc_frac = wf + in_frac;
        let bf = match (bias_f, &lf.bias_frac_bits) {
            (Some(bv), Some(bf)) => {
                let bf = bf.channel(c);
                let corr = lf.bias_correction.as_ref().map_or(0.0, |v| v[c]);
                *b = QFormat::new(bf).quantize(bv.data[c] + corr);
                bf
            }
            (Some(_), None) => {
                bail!("layer '{name}' has a bias but the formats give no bias_frac_bits")
            }
            (None, bf) => bf.as_ref().map_or(acc_frac, |f| f.channel(c)),
        };
        let (bias_lshift, out_rshift) = (acc_frac - bf, acc_frac - out_frac);
        check_shift(
            name,
            "bias_lshift",
            bias_lshift,
            &format!(
                "weight_frac {wf} + input_frac {in_frac} - bias_frac {bf}{}",
                at(c)
            ),
        )?;
        check_shift(
            name,
            "out_rshift",
            out_rshift,
            &format!(
                "weight_frac {wf} + input_frac {in_frac} - output_frac {out_frac}{}",
                at(c)
            ),
        )?;
        pc.weight_frac_bits.push(wf);
        pc.bias_frac_bits.push(bf);
        pc.bias_lshift.push(bias_lshift);
        pc.out_rshift.push(out_rshift);
    }
    ensure!(out_n > 0, "layer '{name}' has no outputs");
    if let Some(e) = lf.bias_lshift {
        ensure!(
            e == pc.bias_lshift[0],
            "layer '{name}': the formats say bias_lshift {e}, but its formats give {}",
            pc.bias_lshift[0]
        );
    }
    if let Some(e) = lf.out_rshift {
        ensure!(
            e == pc.out_rshift[0],
            "layer '{name}': the formats say out_rshift {e}, but its formats give {}",
            pc.out_rshift[0]
        );
    }
    Ok((bias, pc))
}

impl ChannelFormats {
    /// Whether every channel has the same formats (then the layer is per-layer).
    pub fn uniform(&self) -> bool {
        let same = |v: &[i32]| v.windows(2).all(|w| w[0] == w[1]);
        same(&self.weight_frac_bits)
            && same(&self.bias_frac_bits)
            && same(&self.bias_lshift)
            && same(&self.out_rshift)
    }

    /// The fields of [`QConv`] / [`QFc`]: channel 0's scalars, and the lists unless every
    /// channel agrees (per-layer formats keep today's model file).
    pub(crate) fn into_fields(self) -> (i32, i32, i32, i32, Option<ChannelFormats>) {
        let first = (
            self.weight_frac_bits[0],
            self.bias_frac_bits[0],
            self.bias_lshift[0],
            self.out_rshift[0],
        );
        let pc = (!self.uniform()).then_some(self);
        (first.0, first.1, first.2, first.3, pc)
    }
}
