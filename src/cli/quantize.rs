//! `nnquant quantize`: search the Qm.n formats and write the quantized model and the report.

use super::data_args::{self, DataOpts, ModelArgs};
use super::ShapeArg;
use crate::data::{subset, ChannelOrder, Layout};
use crate::fixed::graph::{Formats, PoolRounding};
use crate::quantize::{self, DataSet};
use crate::search::{Holdout, Screen, Strategy};
use anyhow::{ensure, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Caffe net definition (.prototxt).
    #[arg(long)]
    pub model: PathBuf,
    /// Trained weights: binary .caffemodel or HDF5 .caffemodel.h5.
    #[arg(long)]
    pub weights: PathBuf,
    /// Calibration data (the format search runs on it); default: the prototxt's TEST data layer.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long)]
    pub calib_labels: Option<PathBuf>,
    /// Use at most this many calibration images.
    #[arg(long)]
    pub calib_limit: Option<usize>,
    /// Held-out evaluation data for the final figures.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    #[arg(long)]
    pub eval_labels: Option<PathBuf>,
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Without --eval: carve the evaluation set from the calibration data, e.g. 80:20.
    #[arg(long)]
    pub split: Option<String>,
    /// Layout of .npy image files.
    #[arg(long, default_value = "nhwc")]
    pub layout: Layout,
    /// Class names for folder trees.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Channel order fed to the network (default: as stored / Caffe's BGR for decoded files).
    #[arg(long)]
    pub channel_order: Option<ChannelOrder>,
    /// Mean file (BlobProto) replacing the prototxt's.
    #[arg(long)]
    pub mean_file: Option<PathBuf>,
    /// Input shape C,H,W when the prototxt does not give it.
    #[arg(long)]
    pub input_shape: Option<ShapeArg>,
    #[command(flatten)]
    pub pre: data_args::PreprocessFlags,
    /// Pin these formats (JSON: activations_frac_bits, layers.<name>.{weight_frac_bits,
    /// bias_frac_bits}; ARM's schema) instead of searching.
    #[arg(long)]
    pub formats: Option<PathBuf>,
    /// Search strategy.
    #[arg(long, value_enum, default_value = "default")]
    pub search: Strategy,
    /// One weight (and bias) format per conv/fc layer, as CMSIS-NN's legacy q7 kernels take
    /// them, instead of one per output channel (the default: each channel's own max-abs, with
    /// per-channel shifts). `--search arm` implies it; with `--formats` the file decides.
    #[arg(long)]
    pub per_layer: bool,
    /// CMSIS-NN's legacy q7 arithmetic throughout: `--per-layer` formats, and average pools
    /// that truncate their mean toward zero as CMSIS-NN's do (by default they round to nearest,
    /// which removes a downward bias of almost half a step after every ReLU → average pool).
    /// `--search arm` implies it; with `--formats` the file decides (`avepool_rounding`, absent
    /// = truncate, as in ARM's formats file).
    #[arg(long)]
    pub arm_compatible: bool,
    /// Screen the default search's candidates on a class-stratified subset of the calibration
    /// set and confirm the best on the whole set: `auto` (an eighth, at least 512 images, on
    /// sets of 1024 or more), `off`, or a number of images.
    #[arg(long, default_value = "auto", value_parser = Screen::parse)]
    pub screen: Screen,
    /// Cross-layer equalization before quantizing: power-of-two per-channel scales moved between
    /// each convolution and the convolutions it feeds (through a ReLU), so that per-tensor
    /// weight formats fit every channel (helps depthwise and BatchNorm-folded nets; the float
    /// model is unchanged). Not with --formats (the weights change).
    #[arg(long, conflicts_with = "formats")]
    pub equalize: bool,
    /// Activation equalization: every convolution that feeds only depthwise convolutions
    /// (through a ReLU) has each output channel scaled by a power of two (and the depthwise
    /// channel by its inverse) so that it fills its blob's shared q7 format, measured on up to 64
    /// calibration images; no blob's range grows (the producer's output before its ReLU is
    /// bounded too). Free for the weights with per-channel formats (their int8 values do not
    /// change), so `on` by default; not applied with `--per-layer` or `--search arm`. The
    /// exponents are recorded in the model's formats (`activation_scales`); with `--formats` the
    /// file's are applied instead. The float model is unchanged.
    #[arg(long, value_enum, default_value = "on")]
    pub act_equalize: OnOff,
    /// Bias correction in the search's layer-local pass: after a conv/fc layer's formats are
    /// chosen, its bias is shifted per output channel by the mean quantization error its output
    /// showed against float, kept where it lowers the layer's error (`on`, the default, or
    /// `off`). Recorded in the model's formats (`layers.<name>.bias_correction`).
    #[arg(long, value_enum, default_value = "on")]
    pub bias_correction: OnOff,
    /// Hold out a class-stratified part of the calibration set that the default search does not
    /// optimise on: a change is kept only if it does not make that part worse (a guard against
    /// overfitting). `auto` (a fifth, on sets of 250 images or more), `off`, or a number of
    /// images.
    #[arg(long, default_value = "auto", value_parser = Holdout::parse)]
    pub holdout: Holdout,
    /// A Softmax at the end of the network (nobody reads its output): `drop` it from the q7
    /// graph (the q7 logits are the output: the arg-max is the same, classifiers keep their
    /// figures), or `keep` it (q7 Softmax: the output is the probabilities, 0 to 15 fraction
    /// bits, for models whose output is used as probabilities).
    #[arg(long, value_enum, default_value = "drop")]
    pub softmax: SoftmaxRule,
    /// Quantized model file to write (.nnq.json).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Report (JSON); a Markdown twin is written beside it (.md).
    #[arg(long)]
    pub report: PathBuf,
    /// Include wall-clock timings in the report (makes it differ between runs).
    #[arg(long)]
    pub timestamps: bool,
    /// Print the report JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[arg(long, short)]
    pub quiet: bool,
}

/// What `quantize` does with a trailing Softmax (`--softmax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SoftmaxRule {
    /// Dropped: the output is the q7 logits (the arg-max is unchanged).
    #[default]
    Drop,
    /// Kept: the output is the q7 probabilities.
    Keep,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let m = ModelArgs {
        model: a.model.clone(),
        weights: a.weights.clone(),
        mean_file: a.mean_file.clone(),
        input_shape: a.input_shape.clone(),
        pre: a.pre.clone(),
    };
    let base = DataOpts {
        layout: a.layout,
        classes: a.classes.clone(),
        channel_order: a.channel_order,
        ..Default::default()
    };
    let calib_o = DataOpts {
        path: a.calib.clone(),
        labels: a.calib_labels.clone(),
        limit: a.calib_limit,
        ..base.clone()
    };
    let eval_o = DataOpts {
        path: a.eval.clone(),
        labels: a.eval_labels.clone(),
        limit: a.eval_limit,
        ..base
    };
    ensure!(a.eval.is_some() || a.split.is_some() || a.calib.is_none(),
        "give held-out evaluation data with --eval (or carve it from the calibration data with --split 80:20): searching and reporting on the same images overstates accuracy");
    let formats = a
        .formats
        .as_deref()
        .map(Formats::from_json_file)
        .transpose()?;
    let (mut g, mut sources) = if a.eval.is_some() {
        data_args::load_model_and_data(&m, &[&calib_o, &eval_o])?
    } else {
        data_args::load_model_and_data(&m, &[&calib_o])?
    };
    g.keep_output_softmax = a.softmax == SoftmaxRule::Keep;
    ensure!(
        !(a.equalize && a.formats.is_some()),
        "--equalize changes the weights, so formats chosen for the original weights (--formats / quantize.formats) would not fit them; use one or the other"
    );
    let equalization = if a.equalize {
        Some(crate::ir::equalize::equalize(&mut g)?)
    } else {
        None
    };
    let calib_name = data_args::data_name(&calib_o, &g);
    let (mut calib_src, mut eval_src, eval_name) = if a.eval.is_some() {
        let e = sources.pop().expect("two sources");
        let c = sources.pop().expect("two sources");
        (c, e, data_args::data_name(&eval_o, &g))
    } else if let Some(split) = &a.split {
        let c = sources.pop().expect("one source");
        let name = format!("{calib_name} split {split}");
        let c2 = data_args::open_data(&calib_o, &g)?;
        (
            data_args::split_part(c, split, subset::Part::First)?,
            data_args::split_part(c2, split, subset::Part::Second)?,
            format!("{name} (second part)"),
        )
    } else {
        // The model's own data layer for both: warned about below.
        let c = sources.pop().expect("one source");
        let e = data_args::open_data(&eval_o, &g)?;
        (c, e, calib_name.clone())
    };
    let calib_name = if a.split.is_some() && a.eval.is_none() {
        format!(
            "{calib_name} split {} (first part)",
            a.split.as_deref().unwrap_or("")
        )
    } else {
        calib_name
    };
    let pre = data_args::preprocessor(&m, &g)?;
    let mean = data_args::mean_tensor(&m, &g)?;
    quantize::check_fits(calib_src.as_mut(), &calib_name, &pre, &g)?;
    quantize::check_fits(eval_src.as_mut(), &eval_name, &pre, &g)?;
    let arm_compatible = a.arm_compatible || a.search == Strategy::Arm;
    let per_channel = !a.per_layer && !arm_compatible;
    let (act_scales, act_equalization) = quantize::channel_ranges::equalize(
        &mut g,
        formats.as_ref(),
        a.act_equalize == OnOff::On && per_channel,
        &mut DataSet {
            source: calib_src.as_mut(),
            name: calib_name.clone(),
        },
        &pre,
    )?;
    let order = match a.channel_order {
        Some(ChannelOrder::Bgr) => "bgr",
        Some(ChannelOrder::Rgb) => "rgb",
        None => "as stored",
    };
    let inputs = quantize::Inputs {
        graph: &g,
        prototxt: &a.model,
        weights: &a.weights,
        float_pre: &pre,
        mean: mean.as_ref(),
        preprocess_origin: data_args::preprocess_origin(&m, &g),
    };
    let opts = quantize::Options {
        strategy: a.search,
        screen: a.screen,
        holdout: a.holdout,
        bias_correction: a.bias_correction == OnOff::On,
        formats,
        per_channel,
        avepool_rounding: if arm_compatible {
            PoolRounding::Truncate
        } else {
            PoolRounding::Nearest
        },
        quiet: a.quiet,
        timing: a.timestamps,
        channel_order: order.into(),
    };
    let (mut model, mut report) = quantize::run(
        &inputs,
        &mut DataSet {
            source: calib_src.as_mut(),
            name: calib_name,
        },
        &mut DataSet {
            source: eval_src.as_mut(),
            name: eval_name,
        },
        &opts,
    )?;
    report.equalization = equalization;
    report.activation_equalization = act_equalization;
    model.formats.activation_scales = act_scales;
    // Everything computed: only now write, the model and the report's three files as one
    // transaction (all or none).
    let md_path = a.report.with_extension("md");
    let mut out = crate::fsio::Outputs::new();
    out.file(&a.output, model.to_json()?);
    crate::report::add_files(&mut out, &a.report, &mut report)?;
    out.commit()?;
    if a.json {
        print!("{}", report.to_json());
    } else if !a.quiet {
        let acc = &report.accuracy;
        let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.2} %", v * 100.0));
        println!(
            "{}: float top-1 {}, quantized top-1 {}, agreement {:.2} %, output SQNR {:.1} dB ({} images of {})",
            report.model.name, pct(acc.float_top1), pct(acc.quant_top1), acc.top1_agreement * 100.0, acc.output_sqnr_db, acc.images, report.evaluation.source
        );
        println!(
            "search {}: {} evaluations; wrote {}, {}, {}",
            report.search.strategy,
            report.search.evaluations,
            a.output.display(),
            a.report.display(),
            md_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A switch given as `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}
