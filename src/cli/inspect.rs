//! `nnquant inspect`: the layer table of a model.

use super::ShapeArg;
use crate::caffe::{self, LoadOptions};
use crate::ir::summary;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Caffe net definition (.prototxt).
    pub model: PathBuf,
    /// Trained weights: binary .caffemodel or HDF5 .caffemodel.h5 (detected by content).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Input shape C,H,W when the prototxt's data layer cannot tell it.
    #[arg(long)]
    pub input_shape: Option<ShapeArg>,
    /// Mean file (BlobProto); its shape gives the input shape when the prototxt does not.
    #[arg(long)]
    pub mean_file: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut input_shape = a.input_shape.clone().map(|s| s.0);
    if input_shape.is_none() {
        if let Some(m) = &a.mean_file {
            let t = caffe::read_blob_file(m)?;
            // A mean blob is 1×C×H×W (Caffe's layout); drop the leading batch axis.
            input_shape = Some(if t.shape.len() == 4 {
                t.shape[1..].to_vec()
            } else {
                t.shape.clone()
            });
        }
    }
    let g = caffe::load_model(
        &a.model,
        &LoadOptions {
            weights: a.weights.as_deref(),
            input_shape,
        },
    )?;
    let s = summary::summarize(&g);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "model {} — input '{}' {}",
            s.name,
            s.input_blob,
            summary::shape_text(&s.input_shape)
        );
        print!("{}", summary::table(&s));
        println!("outputs: {}", s.outputs.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
