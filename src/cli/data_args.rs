//! Model and data options shared by the subcommands, and opening them.

use super::ShapeArg;
use crate::caffe::{self, LoadOptions};
use crate::data::{self, subset, ChannelOrder, DataSpec, Layout, Source};
use crate::ir::Graph;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// The Caffe net definition (.prototxt).
    #[arg(long)]
    pub model: PathBuf,
    /// Trained weights: binary .caffemodel or HDF5 .caffemodel.h5 (detected by content).
    #[arg(long)]
    pub weights: PathBuf,
    /// Mean file (BlobProto) replacing the prototxt's transform_param mean_file.
    #[arg(long)]
    pub mean_file: Option<PathBuf>,
    /// Input shape C,H,W when neither the prototxt nor the data tell it.
    #[arg(long)]
    pub input_shape: Option<ShapeArg>,
}

/// One data set on the command line.
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

/// Load the model, taking the input shape from (in order) `--input-shape`, the prototxt, the
/// mean file, or the first image of the data (after Caffe's crop).
pub fn load_model(m: &ModelArgs, data: Option<&mut dyn Source>) -> Result<Graph> {
    let g = caffe::lower_file(&m.model)?;
    let mut input_shape = m.input_shape.clone().map(|s| s.0);
    if input_shape.is_none() && g.input.shape.is_none() {
        if let Some(src) = data {
            let s = src.read(0)?.image.shape().to_vec();
            input_shape = Some(s);
        } else if let Some(mf) = mean_file_of(m, &g) {
            if mf.exists() {
                let t = caffe::read_blob_file(&mf)?;
                input_shape = Some(if t.shape.len() == 4 {
                    t.shape[1..].to_vec()
                } else {
                    t.shape.clone()
                });
            }
        }
    }
    caffe::complete(
        g,
        &m.model,
        &LoadOptions {
            weights: Some(&m.weights),
            input_shape,
        },
    )
}

/// The mean file in force: `--mean-file`, else the prototxt's.
pub fn mean_file_of(m: &ModelArgs, g: &Graph) -> Option<PathBuf> {
    m.mean_file
        .clone()
        .or_else(|| g.input.preprocess.mean_file.as_ref().map(PathBuf::from))
}

/// A float preprocessor for the model's input (Caffe's transform_param).
pub fn preprocessor(m: &ModelArgs, g: &Graph) -> Result<data::preprocess::Preprocessor> {
    data::preprocess::Preprocessor::load(&g.input.preprocess, m.mean_file.as_deref())
}

pub fn display(p: &Path) -> String {
    p.display().to_string()
}
