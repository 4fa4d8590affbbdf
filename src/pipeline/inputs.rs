//! The model and data a command reads, opened the way every command does: the Caffe model
//! (prototxt, weights, `--scale`/`--mean-value`/`--mean-file`/`--input-shape` overrides) with
//! its input shape found, BatchNorm folded; data sets by path or from the prototxt's data layer,
//! windowed and split; the preprocessing in force and where it came from. `cli::data_args`
//! only turns the flags into [`ModelSource`] and [`DataOpts`].

use crate::caffe::{self, LoadOptions};
use crate::data::{self, subset, ChannelOrder, DataSpec, Layout, Source};
use crate::ir::Graph;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The Caffe model and the preprocessing overrides given for it.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The net definition (.prototxt).
    pub model: PathBuf,
    /// Trained weights: binary .caffemodel or HDF5 (detected by content).
    pub weights: PathBuf,
    /// Mean file (BlobProto) replacing the prototxt's.
    pub mean_file: Option<PathBuf>,
    /// Input shape when neither the prototxt nor the data tell it.
    pub input_shape: Option<Vec<usize>>,
    /// transform_param scale replacing the prototxt's.
    pub scale: Option<f32>,
    /// transform_param mean_value (one, or one per channel) replacing the prototxt's mean.
    pub mean_value: Option<Vec<f32>>,
}

impl ModelSource {
    /// Whether `scale` or `mean_value` override the prototxt.
    pub fn preprocess_given(&self) -> bool {
        self.scale.is_some() || self.mean_value.is_some()
    }
}

/// A transform_param scale (`--scale`, a build file's `model.scale`): positive and finite.
pub fn parse_scale(s: &str) -> Result<f32> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--scale '{s}' is not a number"))?;
    anyhow::ensure!(
        v.is_finite() && v > 0.0,
        "--scale {s} must be a positive finite number"
    );
    Ok(v)
}

/// transform_param mean values (`--mean-value`, `model.mean_value`): `v` or `v,v,v`, each in
/// 0..=255.
pub fn parse_mean_values(s: &str) -> Result<Vec<f32>> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && (0.0..=255.0).contains(v))
                .with_context(|| {
                    format!(
                        "--mean-value '{s}': '{}' is not a number in 0..=255",
                        p.trim()
                    )
                })
        })
        .collect::<Result<_>>()?;
    Ok(v)
}

/// One data set, resolved.
#[derive(Debug, Clone, Default)]
pub struct DataOpts {
    pub path: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    pub layout: Layout,
    pub classes: Option<PathBuf>,
    pub channel_order: Option<ChannelOrder>,
    pub offset: usize,
    pub limit: Option<usize>,
}

/// Open a data set: the given path, or the model's own TEST data layer; then `--offset/--limit`.
pub fn open_data(opts: &DataOpts, g: &Graph) -> Result<Box<dyn Source>> {
    let color = data::ColorMode::from_preprocess(&g.input.preprocess)?;
    let src: Box<dyn Source> = match &opts.path {
        Some(p) => data::open(&DataSpec {
            path: p.clone(),
            labels: opts.labels.clone(),
            layout: opts.layout,
            classes: opts.classes.clone(),
            channel_order: opts.channel_order,
            color,
        })?,
        None => {
            let layer = g.input.data_layer.as_ref().context(
                "no data given and the model has no data layer to read: pass --data PATH (an LMDB directory, a .npy, a folder of class folders, MNIST idx or CIFAR-10 .bin)",
            )?;
            data::layer::open_layer(
                layer,
                &data::layer::LayerOptions {
                    color,
                    channel_order: opts.channel_order,
                },
            )?
        }
    };
    if opts.offset == 0 && opts.limit.is_none() {
        return Ok(src);
    }
    Ok(Box::new(subset::Subset::window(
        src,
        opts.offset,
        opts.limit,
    )?))
}

/// Open data for a quantized model, which has no prototxt data layer and no preprocessing of
/// decoded images beyond Caffe's defaults (images are read as they are; the model file says how
/// the firmware transforms them).
pub fn open_data_for_quantized(opts: &DataOpts) -> Result<Box<dyn Source>> {
    let g = Graph {
        name: String::new(),
        input: crate::ir::Input {
            blob: "data".into(),
            shape: None,
            preprocess: Default::default(),
            data_layer: None,
            label_blob: None,
        },
        nodes: vec![],
        outputs: vec![],
        shapes: Default::default(),
        keep_output_softmax: false,
    };
    open_data(opts, &g)
}

/// Carve one part of a split.
pub fn split_part(
    src: Box<dyn Source>,
    split: &str,
    part: subset::Part,
) -> Result<Box<dyn Source>> {
    Ok(Box::new(subset::Subset::split(
        src,
        subset::parse_split(split)?,
        part,
    )?))
}

/// Load the model: lower the prototxt, open the data (which may come from its data layer), then
/// take the input shape from (in order) `--input-shape`, the prototxt, the first image of the
/// data (after Caffe's crop), or the mean file; attach weights and fold BatchNorm/Scale/Bias.
pub fn load_model_and_data(
    m: &ModelSource,
    data: &[&DataOpts],
) -> Result<(Graph, Vec<Box<dyn Source>>)> {
    let mut g = caffe::lower_file(&m.model)?;
    apply_preprocess_flags(m, &mut g);
    let mut sources = Vec::new();
    for d in data {
        sources.push(open_data(d, &g)?);
    }
    let mut input_shape = m.input_shape.clone();
    let mut shape_origin = None;
    if input_shape.is_none() && g.input.shape.is_none() {
        if let Some(src) = sources.first_mut() {
            let s = src.read(0)?.image.shape().to_vec();
            shape_origin = Some(format!(
                "the input shape {} was taken from the first image of {}",
                crate::ir::summary::shape_text(&s),
                src.describe()
            ));
            input_shape = Some(s);
        } else if let Some(mf) = mean_file_of(m, &g).filter(|p| p.exists()) {
            let t = caffe::read_blob_file(&mf)?;
            input_shape = Some(if t.shape.len() == 4 {
                t.shape[1..].to_vec()
            } else {
                t.shape.clone()
            });
        }
    }
    let mut g = caffe::complete(
        g,
        &m.model,
        &LoadOptions {
            weights: Some(&m.weights),
            input_shape,
        },
    )
    .map_err(|e| match &shape_origin {
        Some(o) => e.context(format!("{o}; do the images fit this model?")),
        None => e,
    })?;
    crate::ir::passes::fold_batchnorm(&mut g)?;
    Ok((g, sources))
}

/// `--scale` / `--mean-value` replace the prototxt's transform_param values (a mean value
/// replaces its mean file too: one mean at a time).
fn apply_preprocess_flags(m: &ModelSource, g: &mut Graph) {
    let p = &mut g.input.preprocess;
    if let Some(s) = m.scale {
        p.scale = s;
    }
    if let Some(v) = &m.mean_value {
        p.mean_values = v.clone();
        p.mean_file = None;
    }
}

/// Where the preprocessing in force came from (see [`crate::quantize::PreprocessOrigin`]).
pub fn preprocess_origin(m: &ModelSource, g: &Graph) -> crate::quantize::PreprocessOrigin {
    use crate::quantize::PreprocessOrigin;
    let p = &g.input.preprocess;
    let identity = (p.scale == 1.0 || p.scale == 0.0)
        && p.mean_values.is_empty()
        && p.mean_file.is_none()
        && m.mean_file.is_none();
    if m.preprocess_given() {
        PreprocessOrigin::Flags
    } else if identity && g.input.data_layer.is_none() {
        PreprocessOrigin::Missing
    } else {
        PreprocessOrigin::Prototxt
    }
}

/// The mean file in force: `--mean-file`, else the prototxt's.
pub fn mean_file_of(m: &ModelSource, g: &Graph) -> Option<PathBuf> {
    m.mean_file
        .clone()
        .or_else(|| g.input.preprocess.mean_file.as_ref().map(PathBuf::from))
}

/// A float preprocessor for the model's input (Caffe's transform_param).
pub fn preprocessor(m: &ModelSource, g: &Graph) -> Result<data::preprocess::Preprocessor> {
    data::preprocess::Preprocessor::load(&g.input.preprocess, m.mean_file.as_deref())
}

/// A data set's name for reports: its path, or the prototxt's data layer.
pub fn data_name(d: &DataOpts, g: &Graph) -> String {
    let base = match (&d.path, &g.input.data_layer) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(l)) => format!("{l:?}"),
        (None, None) => "?".into(),
    };
    match (d.offset, d.limit) {
        (0, None) => base,
        (o, None) => format!("{base}[{o}..]"),
        (o, Some(l)) => format!("{base}[{o}..{}]", o + l),
    }
}

/// The mean tensor in force (for the integer input path), if any.
pub fn mean_tensor(m: &ModelSource, g: &Graph) -> Result<Option<crate::ir::Tensor>> {
    match mean_file_of(m, g) {
        Some(p) => {
            if !p.exists() {
                anyhow::bail!(
                    "the mean file {} does not exist; pass --mean-file PATH",
                    p.display()
                );
            }
            Ok(Some(caffe::read_blob_file(&p)?))
        }
        None => Ok(None),
    }
}
