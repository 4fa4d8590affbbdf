//! `nnquant quantize`: search the Qm.n formats and write the quantized model and the report
//! (`pipeline::quantize`); here the flags and the summary printed.

use super::data_args::{self, DataOpts, ModelArgs};
use super::ShapeArg;
use crate::data::{ChannelOrder, Layout};
use crate::pipeline::quantize as pipeline;
use crate::search::{Holdout, Screen, Strategy};
use anyhow::Result;
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

impl Args {
    /// The library's options for these flags.
    pub fn options(&self) -> pipeline::Options {
        let m = ModelArgs {
            model: self.model.clone(),
            weights: self.weights.clone(),
            mean_file: self.mean_file.clone(),
            input_shape: self.input_shape.clone(),
            pre: self.pre.clone(),
        };
        let base = DataOpts {
            layout: self.layout,
            classes: self.classes.clone(),
            channel_order: self.channel_order,
            ..Default::default()
        };
        pipeline::Options {
            model: m.source(),
            calib: DataOpts {
                path: self.calib.clone(),
                labels: self.calib_labels.clone(),
                limit: self.calib_limit,
                ..base.clone()
            },
            eval: DataOpts {
                path: self.eval.clone(),
                labels: self.eval_labels.clone(),
                limit: self.eval_limit,
                ..base
            },
            split: self.split.clone(),
            formats: self.formats.clone(),
            strategy: self.search,
            per_layer: self.per_layer,
            arm_compatible: self.arm_compatible,
            screen: self.screen,
            holdout: self.holdout,
            equalize: self.equalize,
            act_equalize: self.act_equalize == OnOff::On,
            bias_correction: self.bias_correction == OnOff::On,
            keep_softmax: self.softmax == SoftmaxRule::Keep,
            channel_order: self.channel_order,
            output: self.output.clone(),
            report: self.report.clone(),
            timestamps: self.timestamps,
            quiet: self.quiet,
        }
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let o = a.options();
    let report = pipeline::run(&o)?;
    print(&o, &report, a.json);
    Ok(ExitCode::SUCCESS)
}

/// The report as JSON, or (unless quiet) its headline figures and the files written.
pub(super) fn print(a: &pipeline::Options, report: &crate::report::Report, json: bool) {
    if json {
        print!("{}", report.to_json());
    } else if !a.quiet {
        let md_path = a.report.with_extension("md");
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
}

/// A switch given as `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}
