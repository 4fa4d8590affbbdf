//! Lowering a Caffe `NetParameter` into the IR: TEST-phase filtering, V1 layers, input discovery,
//! removal of train-only layers, in-place layers into SSA blobs, typed op parameters.

use super::proto::{self, LayerParameter, NetParameter, NetStateRule, V1LayerParameter};
use crate::ir::{
    ConvParams, DataLayerSource, EltwiseOp, Graph, Hw, InnerProductParams, Input, LrnParams, Node,
    NormRegion, Op, PoolMethod, PoolParams, Preprocess, RoundMode,
};
use anyhow::{bail, ensure, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Layer types that nnquant lowers into ops.
pub const COMPUTE_TYPES: &[&str] = &[
    "Convolution",
    "Deconvolution",
    "InnerProduct",
    "Pooling",
    "ReLU",
    "PReLU",
    "Softmax",
    "Sigmoid",
    "TanH",
    "LRN",
    "BatchNorm",
    "Scale",
    "Bias",
    "Eltwise",
    "Concat",
    "Flatten",
    "Reshape",
    "Permute",
];
/// Layer types that are identities at inference time: their tops alias their bottom.
pub const ALIAS_TYPES: &[&str] = &["Dropout", "Split"];
/// Input layers.
pub const INPUT_TYPES: &[&str] = &["Input", "Data", "ImageData", "HDF5Data"];
/// Layers that only matter for training or evaluation and are dropped.
pub const TRAIN_ONLY_TYPES: &[&str] = &[
    "Accuracy",
    "SoftmaxWithLoss",
    "EuclideanLoss",
    "HingeLoss",
    "InfogainLoss",
    "MultinomialLogisticLoss",
    "SigmoidCrossEntropyLoss",
    "ContrastiveLoss",
    "Silence",
];

/// Every layer type `nnquant` accepts, for error messages.
pub fn supported_types() -> String {
    let mut all: Vec<&str> = COMPUTE_TYPES
        .iter()
        .chain(ALIAS_TYPES)
        .chain(INPUT_TYPES)
        .chain(TRAIN_ONLY_TYPES)
        .copied()
        .collect();
    all.sort_unstable();
    all.join(", ")
}

/// Caffe's NetState for inference: phase TEST, level 0, no stages.
fn rule_met(r: &NetStateRule) -> bool {
    if let Some(p) = r.phase {
        if p != proto::Phase::Test as i32 {
            return false;
        }
    }
    if r.min_level.is_some_and(|m| 0 < m) || r.max_level.is_some_and(|m| 0 > m) {
        return false;
    }
    // No stage is set for inference: a rule that demands one is not met.
    r.stage.is_empty()
}

fn included(include: &[NetStateRule], exclude: &[NetStateRule]) -> bool {
    if !include.is_empty() {
        include.iter().any(rule_met)
    } else {
        !exclude.iter().any(rule_met)
    }
}

/// Caffe's V1 enum type name → the modern string type.
fn v1_type_name(t: proto::v1_layer_parameter::LayerType) -> String {
    use proto::v1_layer_parameter::LayerType as T;
    match t {
        T::Absval => "AbsVal",
        T::Accuracy => "Accuracy",
        T::Argmax => "ArgMax",
        T::Bnll => "BNLL",
        T::Concat => "Concat",
        T::ContrastiveLoss => "ContrastiveLoss",
        T::Convolution => "Convolution",
        T::Data => "Data",
        T::Deconvolution => "Deconvolution",
        T::Dropout => "Dropout",
        T::DummyData => "DummyData",
        T::EuclideanLoss => "EuclideanLoss",
        T::Eltwise => "Eltwise",
        T::Exp => "Exp",
        T::Flatten => "Flatten",
        T::Hdf5Data => "HDF5Data",
        T::Hdf5Output => "HDF5Output",
        T::HingeLoss => "HingeLoss",
        T::Im2col => "Im2col",
        T::ImageData => "ImageData",
        T::InfogainLoss => "InfogainLoss",
        T::InnerProduct => "InnerProduct",
        T::Lrn => "LRN",
        T::MemoryData => "MemoryData",
        T::MultinomialLogisticLoss => "MultinomialLogisticLoss",
        T::Mvn => "MVN",
        T::Pooling => "Pooling",
        T::Power => "Power",
        T::Relu => "ReLU",
        T::Sigmoid => "Sigmoid",
        T::SigmoidCrossEntropyLoss => "SigmoidCrossEntropyLoss",
        T::Silence => "Silence",
        T::Softmax => "Softmax",
        T::SoftmaxLoss => "SoftmaxWithLoss",
        T::Split => "Split",
        T::Slice => "Slice",
        T::Tanh => "TanH",
        T::WindowData => "WindowData",
        T::Threshold => "Threshold",
        T::None => "NONE",
    }
    .to_string()
}

/// Bring a legacy V1 layer into the modern message (only the fields nnquant reads).
pub fn upgrade_v1(l: &V1LayerParameter) -> LayerParameter {
    LayerParameter {
        name: l.name.clone(),
        r#type: Some(v1_type_name(l.r#type())),
        bottom: l.bottom.clone(),
        top: l.top.clone(),
        blobs: l.blobs.clone(),
        include: l.include.clone(),
        exclude: l.exclude.clone(),
        transform_param: l.transform_param.clone(),
        concat_param: l.concat_param,
        convolution_param: l.convolution_param.clone(),
        data_param: l.data_param.clone(),
        dropout_param: l.dropout_param,
        eltwise_param: l.eltwise_param.clone(),
        hdf5_data_param: l.hdf5_data_param.clone(),
        image_data_param: l.image_data_param.clone(),
        inner_product_param: l.inner_product_param.clone(),
        lrn_param: l.lrn_param,
        pooling_param: l.pooling_param,
        relu_param: l.relu_param,
        softmax_param: l.softmax_param,
        ..Default::default()
    }
}

/// The layers of a net in file order, V1 layers upgraded.
pub fn layers_of(net: &NetParameter) -> Result<Vec<LayerParameter>> {
    ensure!(
        net.layer.is_empty() || net.layers.is_empty(),
        "the net mixes modern `layer` and legacy `layers` entries; Caffe rejects that too"
    );
    Ok(if net.layers.is_empty() {
        net.layer.clone()
    } else {
        net.layers.iter().map(upgrade_v1).collect()
    })
}

/// Pick `v` if set, else the first element of a repeated field, else `default`.
fn spatial(
    repeated: &[u32],
    single_h: Option<u32>,
    single_w: Option<u32>,
    default: u32,
    what: &str,
) -> Result<Hw> {
    let (h, w) = match (single_h, single_w) {
        (Some(h), Some(w)) => (h, w),
        (None, None) => match repeated {
            [] => (default, default),
            [v] => (*v, *v),
            [h, w] => (*h, *w),
            _ => bail!(
                "{what} has {} values; only 2-D (one or two values) is supported",
                repeated.len()
            ),
        },
        _ => bail!("{what}: give both the _h and _w forms or neither"),
    };
    Ok(Hw {
        h: h as usize,
        w: w as usize,
    })
}

fn conv_params(l: &LayerParameter) -> Result<ConvParams> {
    let c = l.convolution_param.clone().unwrap_or_default();
    ensure!(
        c.axis() == 1,
        "convolution axis {} is not supported (only 1)",
        c.axis()
    );
    let kernel = spatial(&c.kernel_size, c.kernel_h, c.kernel_w, 0, "kernel_size")?;
    ensure!(
        kernel.h > 0 && kernel.w > 0,
        "convolution needs kernel_size (or kernel_h and kernel_w)"
    );
    // Caffe: the _h/_w forms replace the repeated field; mixing both is an error.
    let pad = if c.pad_h.is_some() || c.pad_w.is_some() {
        ensure!(c.pad.is_empty(), "give either pad or pad_h/pad_w, not both");
        Hw {
            h: c.pad_h() as usize,
            w: c.pad_w() as usize,
        }
    } else {
        spatial(&c.pad, None, None, 0, "pad")?
    };
    let stride = spatial(&c.stride, c.stride_h, c.stride_w, 1, "stride")?;
    let dilation = spatial(&c.dilation, None, None, 1, "dilation")?;
    ensure!(
        stride.h > 0 && stride.w > 0 && dilation.h > 0 && dilation.w > 0,
        "stride and dilation must be positive"
    );
    Ok(ConvParams {
        num_output: c.num_output() as usize,
        kernel,
        stride,
        pad,
        dilation,
        group: c.group() as usize,
        bias_term: c.bias_term(),
    })
}

fn pool_params(l: &LayerParameter) -> Result<PoolParams> {
    let p = l.pooling_param.unwrap_or_default();
    use proto::pooling_parameter::{PoolMethod as PM, RoundMode as RM};
    let method = match p.pool() {
        PM::Max => PoolMethod::Max,
        PM::Ave => PoolMethod::Ave,
        PM::Stochastic => bail!("STOCHASTIC pooling is not supported (only MAX and AVE)"),
    };
    let global = p.global_pooling();
    let pick = |single: Option<u32>, h: Option<u32>, w: Option<u32>, default: u32| -> Result<Hw> {
        match (h, w) {
            (Some(h), Some(w)) => Ok(Hw {
                h: h as usize,
                w: w as usize,
            }),
            (None, None) => Ok(Hw::square(single.unwrap_or(default) as usize)),
            _ => bail!("pooling: give both the _h and _w forms or neither"),
        }
    };
    let kernel = pick(p.kernel_size, p.kernel_h, p.kernel_w, 0)?;
    ensure!(
        global || (kernel.h > 0 && kernel.w > 0),
        "pooling needs kernel_size (or kernel_h/kernel_w, or global_pooling)"
    );
    let pad = if p.pad_h.is_some() || p.pad_w.is_some() {
        Hw {
            h: p.pad_h() as usize,
            w: p.pad_w() as usize,
        }
    } else {
        Hw::square(p.pad() as usize)
    };
    Ok(PoolParams {
        method,
        kernel,
        stride: pick(p.stride, p.stride_h, p.stride_w, 1)?,
        pad,
        global,
        round: match p.round_mode() {
            RM::Ceil => RoundMode::Ceil,
            RM::Floor => RoundMode::Floor,
        },
    })
}

fn axis_u(axis: i32, what: &str) -> Result<usize> {
    ensure!(
        axis >= 1,
        "{what} axis {axis} is not supported (use a positive axis ≥ 1)"
    );
    Ok(axis as usize)
}

/// The typed op of a compute layer.
fn lower_op(l: &LayerParameter) -> Result<Op> {
    let ty = l.r#type();
    Ok(match ty {
        "Convolution" => Op::Convolution(conv_params(l)?),
        "Deconvolution" => Op::Deconvolution(conv_params(l)?),
        "InnerProduct" => {
            let p = l.inner_product_param.clone().unwrap_or_default();
            Op::InnerProduct(InnerProductParams {
                num_output: p.num_output() as usize,
                bias_term: p.bias_term(),
                axis: axis_u(p.axis(), "InnerProduct")?,
                transpose: p.transpose(),
            })
        }
        "Pooling" => Op::Pooling(pool_params(l)?),
        "ReLU" => Op::ReLU {
            negative_slope: l.relu_param.unwrap_or_default().negative_slope(),
        },
        "PReLU" => Op::PReLU {
            channel_shared: l.prelu_param.clone().unwrap_or_default().channel_shared(),
        },
        "Sigmoid" => Op::Sigmoid,
        "TanH" => Op::TanH,
        "Softmax" => Op::Softmax {
            axis: axis_u(l.softmax_param.unwrap_or_default().axis(), "Softmax")?,
        },
        "LRN" => {
            let p = l.lrn_param.unwrap_or_default();
            ensure!(
                p.local_size() % 2 == 1,
                "LRN local_size must be odd, got {}",
                p.local_size()
            );
            Op::Lrn(LrnParams {
                local_size: p.local_size() as usize,
                alpha: p.alpha(),
                beta: p.beta(),
                k: p.k(),
                region: match p.norm_region() {
                    proto::lrn_parameter::NormRegion::AcrossChannels => NormRegion::AcrossChannels,
                    proto::lrn_parameter::NormRegion::WithinChannel => NormRegion::WithinChannel,
                },
            })
        }
        "BatchNorm" => {
            let p = l.batch_norm_param.unwrap_or_default();
            if p.use_global_stats == Some(false) {
                bail!("BatchNorm with use_global_stats: false computes batch statistics; inference needs the stored statistics (set it to true or remove it)");
            }
            Op::BatchNorm { eps: p.eps() }
        }
        "Scale" => {
            ensure!(
                l.bottom.len() == 1,
                "Scale with a second bottom (scale taken from a blob) is not supported"
            );
            let p = l.scale_param.clone().unwrap_or_default();
            ensure!(
                p.num_axes() == 1,
                "Scale num_axes {} is not supported (only 1)",
                p.num_axes()
            );
            Op::Scale {
                axis: axis_u(p.axis(), "Scale")?,
                bias_term: p.bias_term(),
            }
        }
        "Bias" => {
            ensure!(
                l.bottom.len() == 1,
                "Bias with a second bottom is not supported"
            );
            let p = l.bias_param.clone().unwrap_or_default();
            ensure!(
                p.num_axes() == 1,
                "Bias num_axes {} is not supported (only 1)",
                p.num_axes()
            );
            Op::Bias {
                axis: axis_u(p.axis(), "Bias")?,
            }
        }
        "Eltwise" => {
            let p = l.eltwise_param.clone().unwrap_or_default();
            use proto::eltwise_parameter::EltwiseOp as E;
            let op = match p.operation() {
                E::Prod => EltwiseOp::Prod,
                E::Sum => EltwiseOp::Sum,
                E::Max => EltwiseOp::Max,
            };
            ensure!(
                p.coeff.is_empty() || op == EltwiseOp::Sum,
                "Eltwise coefficients are only allowed with SUM"
            );
            Op::Eltwise {
                op,
                coeffs: p.coeff.clone(),
            }
        }
        "Concat" => {
            let p = l.concat_param.unwrap_or_default();
            let axis = if p.axis.is_some() {
                p.axis()
            } else {
                p.concat_dim() as i32
            };
            Op::Concat {
                axis: axis_u(axis, "Concat")?,
            }
        }
        "Flatten" => {
            let p = l.flatten_param.unwrap_or_default();
            Op::Flatten {
                axis: axis_u(p.axis(), "Flatten")?,
                end_axis: p.end_axis() as i64,
            }
        }
        "Reshape" => {
            let p = l.reshape_param.clone().unwrap_or_default();
            Op::Reshape {
                dims: p.shape.clone().unwrap_or_default().dim,
                axis: p.axis() as i64,
                num_axes: p.num_axes() as i64,
            }
        }
        "Permute" => Op::Permute {
            order: permute_order(&l.permute_param.clone().unwrap_or_default().order)?,
        },
        other => bail!("unknown layer type '{other}'"),
    })
}

fn preprocess_of(t: Option<&proto::TransformationParameter>) -> Preprocess {
    let t = t.cloned().unwrap_or_default();
    Preprocess {
        scale: t.scale(),
        mean_file: t.mean_file.clone(),
        mean_values: t.mean_value.clone(),
        crop_size: t.crop_size() as usize,
        force_color: t.force_color(),
        force_gray: t.force_gray(),
        mirror: t.mirror(),
    }
}

fn dims_without_batch(dims: &[i64], what: &str) -> Result<Vec<usize>> {
    ensure!(
        dims.len() >= 2,
        "{what}: shape {dims:?} needs a batch axis and at least one more"
    );
    dims[1..]
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d > 0)
                .with_context(|| format!("{what}: dimension {d} is invalid"))
        })
        .collect()
}

/// Input described by a data-producing layer.
fn input_from_layer(l: &LayerParameter) -> Result<Input> {
    let ty = l.r#type();
    ensure!(!l.top.is_empty(), "input layer '{}' has no top", l.name());
    let mut preprocess = preprocess_of(l.transform_param.as_ref());
    let (shape, data_layer) = match ty {
        "Input" => {
            let shapes = l.input_param.clone().unwrap_or_default().shape;
            ensure!(
                !shapes.is_empty(),
                "Input layer '{}' declares no shape",
                l.name()
            );
            (
                Some(dims_without_batch(
                    &shapes[0].dim,
                    &format!("Input layer '{}'", l.name()),
                )?),
                None,
            )
        }
        "Data" => {
            let d = l.data_param.clone().unwrap_or_default();
            // The deprecated data_param copies of transform fields still count in old prototxts.
            if preprocess.mean_file.is_none() {
                preprocess.mean_file = d.mean_file.clone();
            }
            if d.scale.is_some() && preprocess.scale == 1.0 {
                preprocess.scale = d.scale();
            }
            let backend = d.backend().as_str_name().to_string();
            (
                None,
                Some(DataLayerSource::Db {
                    source: d.source().to_string(),
                    backend,
                }),
            )
        }
        "ImageData" => {
            let d = l.image_data_param.clone().unwrap_or_default();
            (
                None,
                Some(DataLayerSource::ImageList {
                    source: d.source().to_string(),
                    root_folder: d.root_folder().to_string(),
                    new_height: d.new_height() as usize,
                    new_width: d.new_width() as usize,
                    is_color: d.is_color(),
                }),
            )
        }
        "HDF5Data" => {
            let d = l.hdf5_data_param.clone().unwrap_or_default();
            (
                None,
                Some(DataLayerSource::Hdf5List {
                    source: d.source().to_string(),
                }),
            )
        }
        _ => unreachable!("only input types reach here"),
    };
    Ok(Input {
        blob: l.top[0].clone(),
        shape,
        preprocess,
        data_layer,
        label_blob: l.top.get(1).cloned(),
    })
}

/// Lower a parsed net into a graph without weights and without shapes.
pub fn lower(net: &NetParameter) -> Result<Graph> {
    let layers = layers_of(net)?;
    let layers: Vec<&LayerParameter> = layers
        .iter()
        .filter(|l| included(&l.include, &l.exclude))
        .collect();

    let mut input: Option<Input> = None;
    if !net.input.is_empty() {
        ensure!(
            net.input.len() == 1,
            "nets with {} inputs are not supported (one input only)",
            net.input.len()
        );
        let shape = if let Some(s) = net.input_shape.first() {
            dims_without_batch(&s.dim, "input_shape")?
        } else if net.input_dim.len() >= 2 {
            dims_without_batch(&net.input_dim, "input_dim")?
        } else {
            bail!(
                "net input '{}' has no input_shape or input_dim",
                net.input[0]
            );
        };
        input = Some(Input {
            blob: net.input[0].clone(),
            shape: Some(shape),
            preprocess: preprocess_of(None),
            data_layer: None,
            label_blob: None,
        });
    }

    let mut names = BTreeSet::new();
    // Caffe blob name -> current SSA blob name.
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut ssa_names: BTreeSet<String> = BTreeSet::new();
    let mut dropped_blobs: BTreeMap<String, String> = BTreeMap::new();
    let mut nodes = Vec::new();
    if let Some(i) = &input {
        current.insert(i.blob.clone(), i.blob.clone());
        ssa_names.insert(i.blob.clone());
    }

    for l in layers {
        let name = l.name().to_string();
        let ty = l.r#type().to_string();
        ensure!(!name.is_empty(), "a layer of type '{ty}' has no name");
        ensure!(
            names.insert(name.clone()),
            "two layers are named '{name}'; layer names must be unique"
        );
        let ctx = || format!("layer '{name}' ({ty})");

        if INPUT_TYPES.contains(&ty.as_str()) {
            ensure!(input.is_none(), "layer '{name}': the net already has an input; nets with several inputs are not supported");
            let i = input_from_layer(l).with_context(ctx)?;
            current.insert(i.blob.clone(), i.blob.clone());
            ssa_names.insert(i.blob.clone());
            if let Some(lb) = &i.label_blob {
                dropped_blobs.insert(lb.clone(), name.clone());
            }
            input = Some(i);
            continue;
        }
        if TRAIN_ONLY_TYPES.contains(&ty.as_str()) {
            for t in &l.top {
                dropped_blobs.insert(t.clone(), name.clone());
            }
            continue;
        }
        let bottoms: Vec<String> = l
            .bottom
            .iter()
            .map(|b| match current.get(b) {
                Some(s) => Ok(s.clone()),
                None => match dropped_blobs.get(b) {
                    Some(by) => bail!("layer '{name}' reads blob '{b}', which comes from '{by}', a layer nnquant drops for inference (labels, losses, accuracy)"),
                    None => bail!("layer '{name}' reads blob '{b}', which no earlier layer produces (Caffe needs layers in execution order: a misspelt blob name, or a cycle?)"),
                },
            })
            .collect::<Result<_>>()?;
        ensure!(
            !bottoms.is_empty(),
            "layer '{name}' ({ty}) has no bottom blob"
        );

        if ALIAS_TYPES.contains(&ty.as_str()) {
            for t in &l.top {
                current.insert(t.clone(), bottoms[0].clone());
            }
            continue;
        }
        if !COMPUTE_TYPES.contains(&ty.as_str()) {
            bail!(
                "layer '{name}' has type '{ty}', which nnquant does not support. Supported layer types: {}",
                supported_types()
            );
        }
        let op = lower_op(l).with_context(ctx)?;
        ensure!(
            l.top.len() == 1,
            "layer '{name}' ({ty}) has {} tops; exactly one is supported",
            l.top.len()
        );
        let top = &l.top[0];
        // SSA: a blob written a second time (in place) gets a fresh name, the layer's own if free.
        let out = if ssa_names.contains(top) {
            let mut cand = name.clone();
            if ssa_names.contains(&cand) || current.contains_key(&cand) && cand != *top {
                cand = format!("{top}@{name}");
            }
            ensure!(
                !ssa_names.contains(&cand),
                "layer '{name}': cannot name its output blob uniquely"
            );
            cand
        } else {
            top.clone()
        };
        ssa_names.insert(out.clone());
        current.insert(top.clone(), out.clone());
        nodes.push(Node {
            name,
            op,
            inputs: bottoms,
            outputs: vec![out],
            weights: vec![],
        });
    }

    let input = input.context("the net has no input: add an Input layer, net-level input/input_shape, or a Data/ImageData/HDF5Data layer for the TEST phase")?;
    ensure!(!nodes.is_empty(), "the net has no layers to compute");
    // Results: blobs produced but never consumed.
    let consumed: BTreeSet<&String> = nodes.iter().flat_map(|n| n.inputs.iter()).collect();
    let outputs: Vec<String> = nodes
        .iter()
        .flat_map(|n| n.outputs.iter())
        .filter(|o| !consumed.contains(o))
        .cloned()
        .collect();
    Ok(Graph {
        name: net.name().to_string(),
        input,
        nodes,
        outputs,
        shapes: BTreeMap::new(),
        keep_output_softmax: false,
    })
}

/// SSD's rule: the listed axes first, then the unlisted ones in order; nnquant supports 4-D
/// blobs (NCHW) whose batch axis stays first.
fn permute_order(listed: &[u32]) -> Result<Vec<usize>> {
    const AXES: usize = 4;
    let mut order: Vec<usize> = Vec::with_capacity(AXES);
    for &a in listed {
        let a = a as usize;
        if a >= AXES || order.contains(&a) {
            bail!("Permute order {listed:?} is not a permutation of the 4 axes of an NCHW blob");
        }
        order.push(a);
    }
    for a in 0..AXES {
        if !order.contains(&a) {
            order.push(a);
        }
    }
    if order[0] != 0 {
        bail!("Permute order {listed:?} moves the batch axis; nnquant runs one image at a time");
    }
    Ok(order)
}
