//! `nnquant eval`: accuracy of the float model (Caffe semantics) or of a quantized model (the
//! bit-exact simulator) on a data set.

use super::data_args::{self, DataOpts, ModelArgs, ShapeFlags};
use crate::data::{subset, Source};
use crate::fixed::sim::{self, Simulator};
use crate::float::{self, Engine};
use crate::metrics::{Accumulator, Metrics};
use crate::model::NnqModel;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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

const BATCH: usize = 256;

fn part(s: &str) -> Result<subset::Part> {
    Ok(match s {
        "calib" | "first" => subset::Part::First,
        "eval" | "second" => subset::Part::Second,
        o => bail!("--part '{o}': use calib or eval"),
    })
}

pub fn run(a: Args) -> Result<ExitCode> {
    let opts = a.data.opts();
    let (kind, name, classes, outputs, n, labels, secs, model_name) = if let Some(q) = &a.quantized
    {
        run_quantized(&a, q, &opts)?
    } else {
        run_float(&a, &opts)?
    };
    let mut acc = Accumulator::new(classes);
    let labelled = labels.iter().all(Option::is_some);
    if labelled {
        for (i, l) in labels.iter().enumerate() {
            let l = l.expect("checked");
            ensure!(
                l >= 0 && (l as usize) < classes,
                "image {i} has label {l}, outside the model's {classes} classes"
            );
            match &outputs[0].data {
                Data::F32(v) => acc.add(&v[i * classes..(i + 1) * classes], l as usize),
                Data::I8(v) => acc.add(&v[i * classes..(i + 1) * classes], l as usize),
            };
        }
    }
    let metrics = labelled.then(|| acc.finish());
    if let Some(p) = &a.save_outputs {
        save_outputs(p, n, &outputs)?;
    }
    let ips = n as f64 / secs.max(1e-9);
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

enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// One output blob over all images, in its logical (NCHW) order.
struct Output {
    name: String,
    shape: Vec<usize>,
    data: Data,
}

/// `--save-outputs`: a .npy for one output, a .npz (one array per blob) for any number.
fn save_outputs(path: &std::path::Path, n: usize, outputs: &[Output]) -> Result<()> {
    let arrays = outputs
        .iter()
        .map(|o| {
            let shape: Vec<u64> = std::iter::once(n)
                .chain(o.shape.iter().copied())
                .map(|d| d as u64)
                .collect();
            let bytes = match &o.data {
                Data::F32(v) => crate::npy_out::encode(&shape, v),
                Data::I8(v) => crate::npy_out::encode(&shape, v),
            }?;
            Ok((o.name.clone(), bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let bytes = if npz {
        crate::npy_out::npz(&arrays)?
    } else {
        ensure!(
            arrays.len() == 1,
            "--save-outputs {}: the model has {} outputs ({}); give a .npz path to save them all (one array per output)",
            path.display(),
            arrays.len(),
            outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        arrays.into_iter().next().map(|a| a.1).unwrap_or_default()
    };
    let mut out = crate::fsio::Outputs::new();
    out.file(path, bytes);
    out.commit()
}

type Run = (
    &'static str,
    String,
    usize,
    Vec<Output>,
    usize,
    Vec<Option<i64>>,
    f64,
    String,
);

fn maybe_split(src: Box<dyn Source>, a: &Args) -> Result<Box<dyn Source>> {
    match &a.split {
        Some(s) => data_args::split_part(src, s, part(&a.part)?),
        None => Ok(src),
    }
}

fn run_float(a: &Args, opts: &DataOpts) -> Result<Run> {
    let m = ModelArgs {
        model: a.model.clone().context("--model is required")?,
        weights: a.weights.clone().context("--weights is required")?,
        mean_file: a.shape.mean_file.clone(),
        input_shape: a.shape.input_shape.clone(),
        pre: a.shape.pre.clone(),
    };
    let (g, mut sources) = data_args::load_model_and_data(&m, &[opts])?;
    if let Some(w) =
        crate::quantize::missing_preprocessing_warning(data_args::preprocess_origin(&m, &g))
    {
        eprintln!("warning: {w}");
    }
    let name = data_args::data_name(opts, &g);
    let mut src = maybe_split(sources.remove(0), a)?;
    let pre = data_args::preprocessor(&m, &g)?;
    let engine = Engine::new(&g)?;
    let classes: usize = g.shape(&g.outputs[0]).iter().product();
    let total = src.len();
    let pb = crate::progress::bar(total as u64, "eval", a.quiet);
    let mut outputs: Vec<Vec<f32>> = vec![Vec::new(); g.outputs.len()];
    let mut labels = Vec::with_capacity(total);
    let t = Instant::now();
    let mut start = 0;
    while start < total {
        let end = (start + BATCH).min(total);
        let samples = src.read_range(start..end)?;
        let b = pre.batch(&samples)?;
        ensure!(
            b.shape.as_slice() == g.shape(&g.input.blob),
            "images become {:?} after preprocessing but the model input is {:?}",
            b.shape,
            g.shape(&g.input.blob)
        );
        let acts = engine.forward(&b.data, samples.len(), float::Keep::Outputs)?;
        for (o, name) in outputs.iter_mut().zip(&g.outputs) {
            o.extend_from_slice(&acts.blobs[name]);
        }
        labels.extend(samples.iter().map(|s| s.label));
        pb.set_position(end as u64);
        start = end;
    }
    pb.finish_and_clear();
    let outputs = outputs
        .into_iter()
        .zip(&g.outputs)
        .map(|(data, o)| Output {
            name: o.clone(),
            shape: g.shape(o).to_vec(),
            data: Data::F32(data),
        })
        .collect();
    Ok((
        "float",
        name,
        classes,
        outputs,
        total,
        labels,
        t.elapsed().as_secs_f64(),
        g.name.clone(),
    ))
}

fn run_quantized(a: &Args, q: &std::path::Path, opts: &DataOpts) -> Result<Run> {
    ensure!(
        !a.shape.pre.given() && a.shape.mean_file.is_none(),
        "--scale, --mean-value and --mean-file apply to a Caffe model; a quantized model carries its preprocessing (input.scale, input.mean_u8): quantize again with the flags to change it"
    );
    let model = NnqModel::read(q)?;
    ensure!(
        opts.path.is_some(),
        "--quantized needs --data (the quantized model has no data layer)"
    );
    let src = data_args::open_data_for_quantized(opts)?;
    let mut src = maybe_split(src, a)?;
    let name = opts
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let qg = &model.graph;
    let sim = Simulator::new(qg)?;
    let classes = model.classes;
    let total = src.len();
    let pb = crate::progress::bar(total as u64, "eval", a.quiet);
    let mut outputs: Vec<Vec<i8>> = vec![Vec::new(); qg.outputs.len()];
    let mut labels = Vec::with_capacity(total);
    let t = Instant::now();
    let mut start = 0;
    while start < total {
        let end = (start + BATCH).min(total);
        let samples = src.read_range(start..end)?;
        let mut px = Vec::new();
        for (i, s) in samples.iter().enumerate() {
            model.input.pixels_hwc(&s.image, start + i, &mut px)?;
        }
        let prep = crate::search::InputPrep {
            mean_u8: model.input.mean_u8.clone(),
            scale: model.input.scale,
        };
        let q_in = prep.quantize(&px, model.input.len(), model.input.frac_bits)?;
        let acts = sim.run(&q_in, samples.len(), &sim::Keep::Outputs)?;
        for (o, name) in outputs.iter_mut().zip(&qg.outputs) {
            let b = &qg.blobs[name];
            for i in 0..samples.len() {
                let q = acts.image(name, i).context("output")?;
                o.extend(b.logical_order(q));
            }
        }
        labels.extend(samples.iter().map(|s| s.label));
        pb.set_position(end as u64);
        start = end;
    }
    pb.finish_and_clear();
    let outputs = outputs
        .into_iter()
        .zip(&qg.outputs)
        .map(|(data, o)| Output {
            name: o.clone(),
            shape: qg.blobs[o].shape.clone(),
            data: Data::I8(data),
        })
        .collect();
    Ok((
        "quantized",
        name,
        classes,
        outputs,
        total,
        labels,
        t.elapsed().as_secs_f64(),
        model.name.clone(),
    ))
}
