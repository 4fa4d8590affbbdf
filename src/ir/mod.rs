//! The intermediate representation: a DAG of typed ops over named blobs.
//!
//! Nothing here knows Caffe's protobuf types or does I/O. The front end (`caffe/`) lowers a net
//! into a [`Graph`]; every later stage (float engine, quantizer, code generator) reads only this.
//!
//! Conventions:
//! - Blob shapes exclude the batch dimension (Caffe's N): an image blob is `[C, H, W]`, the output
//!   of an inner product `[num_output]`.
//! - Blobs are in SSA form: every blob is written by exactly one node (in-place Caffe layers get a
//!   fresh output blob named after the layer, see `caffe::convert`).
//! - `nodes` are stored in a valid execution (topological) order.

pub mod equalize;
pub mod passes;
pub mod shape;
pub mod summary;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest number of elements nnquant accepts for one blob or weight tensor (per image).
/// Checked before anything is allocated so an absurd prototxt cannot exhaust memory.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// A dense float tensor in Caffe's layout (row-major over `shape`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Height/width pair, used for kernel, stride, pad and dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hw {
    pub h: usize,
    pub w: usize,
}

impl Hw {
    pub fn square(v: usize) -> Self {
        Hw { h: v, w: v }
    }
}

impl std::fmt::Display for Hw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.h == self.w {
            write!(f, "{}", self.h)
        } else {
            write!(f, "{}x{}", self.h, self.w)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvParams {
    pub num_output: usize,
    pub kernel: Hw,
    pub stride: Hw,
    pub pad: Hw,
    pub dilation: Hw,
    pub group: usize,
    pub bias_term: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InnerProductParams {
    pub num_output: usize,
    pub bias_term: bool,
    /// First axis (of the blob *with* the batch axis, Caffe's numbering) folded into the product.
    pub axis: usize,
    /// Weights stored as `[K, N]` instead of Caffe's default `[N, K]`.
    pub transpose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolMethod {
    Max,
    Ave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoundMode {
    Ceil,
    Floor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolParams {
    pub method: PoolMethod,
    pub kernel: Hw,
    pub stride: Hw,
    pub pad: Hw,
    pub global: bool,
    pub round: RoundMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormRegion {
    AcrossChannels,
    WithinChannel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrnParams {
    pub local_size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    pub region: NormRegion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EltwiseOp {
    Prod,
    Sum,
    Max,
}

/// An operation with its typed parameters. Learned parameters live in [`Node::weights`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// weights: `[O, I/group, KH, KW]` (+ bias `[O]`).
    Convolution(ConvParams),
    /// weights: `[N, K]` (or `[K, N]` when transposed) (+ bias `[N]`).
    InnerProduct(InnerProductParams),
    /// Caffe's Deconvolution (transposed convolution); weights: `[I, O/group, KH, KW]`
    /// (+ bias `[O]`); output size `stride·(in - 1) + dilation·(k - 1) + 1 - 2·pad`.
    Deconvolution(ConvParams),
    Pooling(PoolParams),
    ReLU {
        negative_slope: f32,
    },
    /// weights: slopes `[C]` (or `[1]` when channel_shared).
    PReLU {
        channel_shared: bool,
    },
    Softmax {
        axis: usize,
    },
    /// `1 / (1 + e^-x)`, elementwise.
    Sigmoid,
    /// `tanh(x)`, elementwise.
    TanH,
    Lrn(LrnParams),
    /// weights: mean `[C]`, variance `[C]`, scale factor `[1]` (Caffe's moving-average counter).
    BatchNorm {
        eps: f32,
    },
    /// weights: scale (shape of the covered axes) (+ bias).
    Scale {
        axis: usize,
        bias_term: bool,
    },
    /// weights: bias (shape of the covered axes).
    Bias {
        axis: usize,
    },
    Eltwise {
        op: EltwiseOp,
        coeffs: Vec<f32>,
    },
    /// `axis` counts the batch axis, as in Caffe (1 = channels).
    Concat {
        axis: usize,
    },
    Flatten {
        axis: usize,
        end_axis: i64,
    },
    Reshape {
        dims: Vec<i64>,
        axis: i64,
        num_axes: i64,
    },
    /// SSD's Permute: output axis `i` is input axis `order[i]`, over all axes including the
    /// batch axis (which must stay first).
    Permute {
        order: Vec<usize>,
    },
}

/// A layer with learned weights that the q7 graph runs as a dense product (see [`Op::dense`]).
#[derive(Debug, Clone, Copy)]
pub enum Dense<'a> {
    Convolution(&'a ConvParams),
    Deconvolution(&'a ConvParams),
    InnerProduct(&'a InnerProductParams),
}

impl Op {
    /// The op as a dense layer (Convolution, Deconvolution, InnerProduct), or `None`: the one
    /// exhaustive list of which ops are, for the places that treat those three apart from the
    /// rest (weights and MACs, folding, headroom, start formats).
    pub fn dense(&self) -> Option<Dense<'_>> {
        match self {
            Op::Convolution(c) => Some(Dense::Convolution(c)),
            Op::Deconvolution(c) => Some(Dense::Deconvolution(c)),
            Op::InnerProduct(p) => Some(Dense::InnerProduct(p)),
            Op::Pooling(_)
            | Op::ReLU { .. }
            | Op::PReLU { .. }
            | Op::Softmax { .. }
            | Op::Sigmoid
            | Op::TanH
            | Op::Lrn(_)
            | Op::BatchNorm { .. }
            | Op::Scale { .. }
            | Op::Bias { .. }
            | Op::Eltwise { .. }
            | Op::Concat { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. } => None,
        }
    }

    /// Caffe's layer type name, used in tables and error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Op::Convolution(_) => "Convolution",
            Op::InnerProduct(_) => "InnerProduct",
            Op::Deconvolution(_) => "Deconvolution",
            Op::Pooling(_) => "Pooling",
            Op::ReLU { .. } => "ReLU",
            Op::PReLU { .. } => "PReLU",
            Op::Softmax { .. } => "Softmax",
            Op::Sigmoid => "Sigmoid",
            Op::TanH => "TanH",
            Op::Lrn(_) => "LRN",
            Op::BatchNorm { .. } => "BatchNorm",
            Op::Scale { .. } => "Scale",
            Op::Bias { .. } => "Bias",
            Op::Eltwise { .. } => "Eltwise",
            Op::Concat { .. } => "Concat",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Permute { .. } => "Permute",
        }
    }

    /// A short human description of the parameters (for `inspect`).
    pub fn summary(&self) -> String {
        match self {
            Op::Convolution(c) | Op::Deconvolution(c) => {
                let mut s = format!("{} k{} s{} p{}", c.num_output, c.kernel, c.stride, c.pad);
                if c.group != 1 {
                    s += &format!(" g{}", c.group);
                }
                if c.dilation != Hw::square(1) {
                    s += &format!(" d{}", c.dilation);
                }
                s
            }
            Op::InnerProduct(p) => format!("{}", p.num_output),
            Op::Pooling(p) => {
                let m = match p.method {
                    PoolMethod::Max => "MAX",
                    PoolMethod::Ave => "AVE",
                };
                if p.global {
                    format!("{m} global")
                } else {
                    format!("{m} k{} s{} p{}", p.kernel, p.stride, p.pad)
                }
            }
            Op::ReLU { negative_slope } if *negative_slope != 0.0 => {
                format!("slope {negative_slope}")
            }
            Op::Eltwise { op, .. } => format!("{op:?}").to_uppercase(),
            Op::Concat { axis } => format!("axis {axis}"),
            Op::ReLU { .. }
            | Op::PReLU { .. }
            | Op::Softmax { .. }
            | Op::Sigmoid
            | Op::TanH
            | Op::Lrn(_)
            | Op::BatchNorm { .. }
            | Op::Scale { .. }
            | Op::Bias { .. }
            | Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. } => String::new(),
        }
    }
}

/// One operation in the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The Caffe layer name (unique in the graph).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Learned parameters in Caffe's blob order and layouts.
    pub weights: Vec<Tensor>,
}

impl Node {
    pub fn param_count(&self) -> usize {
        self.weights.iter().map(Tensor::len).sum()
    }
}

/// Caffe's `transform_param`: how raw pixels become the network's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Multiplied after the mean is subtracted (Caffe's order).
    pub scale: f32,
    /// Path of a BlobProto mean image, as written in the prototxt.
    pub mean_file: Option<String>,
    /// One value for all channels or one per channel.
    pub mean_values: Vec<f32>,
    pub crop_size: usize,
    pub force_color: bool,
    pub force_gray: bool,
    pub mirror: bool,
}

impl Default for Preprocess {
    /// Caffe's defaults: scale 1, no mean, no crop.
    fn default() -> Self {
        Preprocess {
            scale: 1.0,
            mean_file: None,
            mean_values: vec![],
            crop_size: 0,
            force_color: false,
            force_gray: false,
            mirror: false,
        }
    }
}

/// Where the model's TEST data come from when the prototxt names a data layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataLayerSource {
    /// `Data` layer: database path and backend (`LMDB` or `LEVELDB`).
    Db { source: String, backend: String },
    /// `ImageData` layer: list file of `path label` lines.
    ImageList {
        source: String,
        root_folder: String,
        new_height: usize,
        new_width: usize,
        is_color: bool,
    },
    /// `HDF5Data` layer: list file of .h5 paths.
    Hdf5List { source: String },
}

/// The network's input blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub blob: String,
    /// `[C, H, W]` (or whatever rank the model declares), without the batch axis.
    /// `None` when a data layer does not say (shape comes from the data then).
    pub shape: Option<Vec<usize>>,
    pub preprocess: Preprocess,
    pub data_layer: Option<DataLayerSource>,
    /// Name of the label top of the data layer, if any (stripped from the graph).
    pub label_blob: Option<String>,
}

/// A whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    pub input: Input,
    pub nodes: Vec<Node>,
    /// Blobs nobody consumes: the network's results.
    pub outputs: Vec<String>,
    /// Shape (without batch axis) of every blob, filled by [`shape::infer`].
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Whether a trailing Softmax (one whose output nobody reads) stays in the q7 graph, so the
    /// model outputs q7 probabilities (`quantize --softmax keep`), or is dropped (the default:
    /// it is monotonic, so the arg-max is unchanged, and the q7 logits are the output).
    #[serde(default)]
    pub keep_output_softmax: bool,
}

impl Graph {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Shape of a blob (panics only on an internal inconsistency: shapes are inferred for every
    /// blob when the graph is built).
    pub fn shape(&self, blob: &str) -> &[usize] {
        &self.shapes[blob]
    }

    /// Index of the node producing each blob (the input blob has none).
    pub fn producers(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                m.insert(o.as_str(), i);
            }
        }
        m
    }

    /// Number of consumers of each blob.
    pub fn consumer_counts(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for n in &self.nodes {
            for i in &n.inputs {
                *m.entry(i.as_str()).or_insert(0) += 1;
            }
        }
        m
    }
}

/// Per-layer cost figures used by `inspect` and reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerCost {
    pub params: usize,
    pub weights: usize,
    pub biases: usize,
    pub macs: u64,
}

/// The learned blobs a node needs, as Caffe lays them out, given its input shape (without batch).
/// Order is Caffe's blob order; optional blobs (bias) appear only when the op uses them.
pub fn expected_weight_shapes(op: &Op, input: &[usize]) -> Vec<Vec<usize>> {
    let channels = input.first().copied().unwrap_or(0);
    match op {
        Op::Convolution(c) => {
            let mut v = vec![vec![
                c.num_output,
                channels / c.group.max(1),
                c.kernel.h,
                c.kernel.w,
            ]];
            if c.bias_term {
                v.push(vec![c.num_output]);
            }
            v
        }
        Op::Deconvolution(c) => {
            let mut v = vec![vec![
                channels,
                c.num_output / c.group.max(1),
                c.kernel.h,
                c.kernel.w,
            ]];
            if c.bias_term {
                v.push(vec![c.num_output]);
            }
            v
        }
        Op::InnerProduct(p) => {
            let k: usize = input
                .get(p.axis.saturating_sub(1)..)
                .map_or(0, |s| s.iter().product());
            let w = if p.transpose {
                vec![k, p.num_output]
            } else {
                vec![p.num_output, k]
            };
            let mut v = vec![w];
            if p.bias_term {
                v.push(vec![p.num_output]);
            }
            v
        }
        Op::PReLU { channel_shared } => vec![vec![if *channel_shared { 1 } else { channels }]],
        Op::BatchNorm { .. } => vec![vec![channels], vec![channels], vec![1]],
        Op::Scale { axis, bias_term } => {
            let d = input.get(axis - 1).copied().unwrap_or(0);
            if *bias_term {
                vec![vec![d], vec![d]]
            } else {
                vec![vec![d]]
            }
        }
        Op::Bias { axis } => vec![vec![input.get(axis - 1).copied().unwrap_or(0)]],
        Op::Pooling(_)
        | Op::ReLU { .. }
        | Op::Softmax { .. }
        | Op::Sigmoid
        | Op::TanH
        | Op::Lrn(_)
        | Op::Eltwise { .. }
        | Op::Concat { .. }
        | Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. } => vec![],
    }
}

/// MACs, parameter and weight counts of a node (per image).
pub fn layer_cost(g: &Graph, n: &Node) -> LayerCost {
    let out_elems: u64 = n
        .outputs
        .first()
        .map(|o| g.shape(o).iter().product::<usize>() as u64)
        .unwrap_or(0);
    // From the declared shapes, so that counts are known without a weights file.
    let shapes = expected_weight_shapes(&n.op, g.shape(&n.inputs[0]));
    let count = |i: usize| shapes.get(i).map_or(0, |s| s.iter().product::<usize>());
    let (weights, biases) = match n.op.dense() {
        Some(_) => (count(0), count(1)),
        None => (0, 0),
    };
    let macs = match n.op.dense() {
        Some(Dense::Convolution(c)) => {
            let in_c = g.shape(&n.inputs[0])[0] / c.group;
            out_elems * (in_c * c.kernel.h * c.kernel.w) as u64
        }
        // Every input value meets every weight of its group once (the scatter form).
        Some(Dense::Deconvolution(c)) => {
            let in_elems: u64 = g.shape(&n.inputs[0]).iter().product::<usize>() as u64;
            in_elems * (c.num_output / c.group.max(1) * c.kernel.h * c.kernel.w) as u64
        }
        Some(Dense::InnerProduct(p)) => weights as u64 / p.num_output.max(1) as u64 * out_elems,
        None => 0,
    };
    LayerCost {
        params: (0..shapes.len()).map(count).sum(),
        weights,
        biases,
        macs,
    }
}
