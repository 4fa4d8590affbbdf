//! `nnquant eval`: accuracy of the float model (Caffe semantics) or of a quantized model (the
//! bit-exact simulator) on a data set: flags into `crate::eval` calls, and the printing.

use super::data_args::{DataOpts, ModelArgs, ShapeFlags};
use crate::data::{subset, Source};
use crate::eval::{self, Evaluation};
use crate::metrics::Metrics;
use crate::model::NnqModel;
use crate::pipeline::inputs;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Caffe net definition (float evaluation).
    #[arg(long, required_unless_present = "quantized")]
    pub model: Option<PathBuf>,
    /// Trained weights (float evaluation).
    #[arg(long, required_unless_present = "quantized")]
    pub weights: Option<PathBuf>,
    /// A quantized model (.nnq.json) to evaluate with the bit-exact simulator instead.
    #[arg(long, conflicts_with_all = ["model", "weights"])]
    pub quantized: Option<PathBuf>,
    #[command(flatten)]
    pub shape: ShapeFlags,
    #[command(flatten)]
    pub data: super::data_args::DataFlags,
    /// Use only one part of a deterministic split of the data (see --part).
    #[arg(long)]
    pub split: Option<String>,
    /// Which part of --split: `calib` (first) or `eval` (second).
    #[arg(long, default_value = "eval")]
    pub part: String,
    /// Write every output of every image: float32 (float model) or int8 q values (quantized
    /// model; value = q / 2^frac_bits of the blob in the model file), each as `[images, *shape]`
    /// in the logical (Caffe, NCHW) order of its blob. One output: a .npy; several: a .npz with
    /// one array per output blob (a single-output model may also be written as .npz).
    #[arg(long)]
    pub save_outputs: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Serialize)]
struct EvalJson<'a> {
    model: String,
    data: String,
    kind: &'static str,
    images: usize,
    images_per_second: f64,
    metrics: Option<&'a Metrics>,
}

fn part(s: &str) -> Result<subset::Part> {
    Ok(match s {
        "calib" | "first" => subset::Part::First,
        "eval" | "second" => subset::Part::Second,
        o => bail!("--part '{o}': use calib or eval"),
    })
}

pub fn run(a: Args) -> Result<ExitCode> {
    let opts = a.data.opts();
    let (e, name) = if let Some(q) = &a.quantized {
        run_quantized(&a, q, &opts)?
    } else {
        run_float(&a, &opts)?
    };
    let metrics = e.metrics()?;
    if let Some(p) = &a.save_outputs {
        e.save_outputs(p)?;
    }
    let (kind, n, model_name) = (e.kind, e.images, e.model_name);
    let ips = n as f64 / e.seconds.max(1e-9);
    if a.json {
        let j = EvalJson {
            model: model_name,
            data: name,
            kind,
            images: n,
            images_per_second: ips,
            metrics: metrics.as_ref(),
        };
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!("{kind} model {model_name} on {name}: {n} images, {ips:.0} images/s");
        match &metrics {
            Some(m) => {
                println!(
                    "top-1 {}/{} = {:.2} %, top-5 {:.2} %",
                    m.top1_correct,
                    m.images,
                    m.top1 * 100.0,
                    m.top5 * 100.0
                );
                println!("\n{}", m.confusion_markdown());
            }
            None => println!("(no labels: accuracy not computed)"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn maybe_split(src: Box<dyn Source>, a: &Args) -> Result<Box<dyn Source>> {
    match &a.split {
        Some(s) => inputs::split_part(src, s, part(&a.part)?),
        None => Ok(src),
    }
}

/// The float model on the data: (evaluation, the data's name).
fn run_float(a: &Args, opts: &DataOpts) -> Result<(Evaluation, String)> {
    let m = ModelArgs {
        model: a.model.clone().context("--model is required")?,
        weights: a.weights.clone().context("--weights is required")?,
        mean_file: a.shape.mean_file.clone(),
        input_shape: a.shape.input_shape.clone(),
        pre: a.shape.pre.clone(),
    }
    .source();
    let (g, mut sources) = inputs::load_model_and_data(&m, &[opts])?;
    if let Some(w) =
        crate::quantize::missing_preprocessing_warning(inputs::preprocess_origin(&m, &g))
    {
        eprintln!("warning: {w}");
    }
    let name = inputs::data_name(opts, &g);
    let mut src = maybe_split(sources.remove(0), a)?;
    let pre = inputs::preprocessor(&m, &g)?;
    Ok((eval::float(&g, &pre, src.as_mut(), a.quiet)?, name))
}

/// The quantized model on the data through the simulator: (evaluation, the data's name).
fn run_quantized(a: &Args, q: &std::path::Path, opts: &DataOpts) -> Result<(Evaluation, String)> {
    ensure!(
        !a.shape.pre.given() && a.shape.mean_file.is_none(),
        "--scale, --mean-value and --mean-file apply to a Caffe model; a quantized model carries its preprocessing (input.scale, input.mean_u8): quantize again with the flags to change it"
    );
    let model = NnqModel::read(q)?;
    ensure!(
        opts.path.is_some(),
        "--quantized needs --data (the quantized model has no data layer)"
    );
    let src = inputs::open_data_for_quantized(opts)?;
    let mut src = maybe_split(src, a)?;
    let name = opts
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    Ok((eval::quantized(&model, src.as_mut(), a.quiet)?, name))
}
