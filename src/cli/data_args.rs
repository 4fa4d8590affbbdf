//! Model and data flags shared by the subcommands, turned into the library's options
//! (`pipeline::inputs`: [`ModelSource`], [`DataOpts`]), which open them.

use super::ShapeArg;
use crate::data::{ChannelOrder, Layout};
pub use crate::pipeline::inputs::{DataOpts, ModelSource};
use anyhow::Result;
use std::path::PathBuf;

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
    #[command(flatten)]
    pub pre: PreprocessFlags,
}

/// `--scale` and `--mean-value`: the input preprocessing when the prototxt has none (a deploy
/// prototxt) or has the wrong one.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PreprocessFlags {
    /// Caffe's transform_param scale (multiplied after the mean is subtracted), replacing the
    /// prototxt's.
    #[arg(long, value_parser = crate::pipeline::inputs::parse_scale)]
    pub scale: Option<f32>,
    /// Caffe's transform_param mean_value: one value for all channels or one per channel
    /// (`104,117,123`), replacing the prototxt's mean (value or file).
    #[arg(long, value_parser = parse_mean_values, conflicts_with = "mean_file")]
    pub mean_value: Option<MeanValues>,
}

impl PreprocessFlags {
    pub fn given(&self) -> bool {
        self.scale.is_some() || self.mean_value.is_some()
    }
}

/// The values of `--mean-value`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanValues(pub Vec<f32>);

pub fn parse_mean_values(s: &str) -> Result<MeanValues> {
    crate::pipeline::inputs::parse_mean_values(s).map(MeanValues)
}

/// `--mean-file`, `--input-shape`, `--scale`, `--mean-value` for commands that take `--model`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShapeFlags {
    /// Mean file (BlobProto) replacing the prototxt's transform_param mean_file.
    #[arg(long)]
    pub mean_file: Option<PathBuf>,
    /// Input shape C,H,W when neither the prototxt nor the data tell it.
    #[arg(long)]
    pub input_shape: Option<ShapeArg>,
    #[command(flatten)]
    pub pre: PreprocessFlags,
}

/// One data set on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DataFlags {
    /// Data set: an LMDB directory, a .npy (uint8 or float32, NHWC or NCHW), a folder of class
    /// folders, MNIST *-idx3-ubyte, or CIFAR-10 .bin. Default: the prototxt's TEST data layer.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Labels (.npy or IDX) for --data, when not found beside it.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Layout of a .npy of images.
    #[arg(long, default_value = "nhwc")]
    pub layout: Layout,
    /// Class names, one per line, for a folder tree.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Channel order fed to the network (default: as stored; images decoded from files are BGR, as in Caffe).
    #[arg(long)]
    pub channel_order: Option<ChannelOrder>,
    /// Skip this many images.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    /// Use at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl DataFlags {
    pub fn opts(&self) -> DataOpts {
        DataOpts {
            path: self.data.clone(),
            labels: self.labels.clone(),
            layout: self.layout,
            classes: self.classes.clone(),
            channel_order: self.channel_order,
            offset: self.offset,
            limit: self.limit,
        }
    }
}

impl ModelArgs {
    /// The library's description of the model these flags name.
    pub fn source(&self) -> ModelSource {
        ModelSource {
            model: self.model.clone(),
            weights: self.weights.clone(),
            mean_file: self.mean_file.clone(),
            input_shape: self.input_shape.clone().map(|s| s.0),
            scale: self.pre.scale,
            mean_value: self.pre.mean_value.clone().map(|m| m.0),
        }
    }
}
