//! The quantization report: one serde structure written as JSON (for CI) and rendered as Markdown
//! (for people), and the comparison of two reports (`nnquant report diff`).
//!
//! Reports are deterministic: same inputs → byte-identical files. Wall-clock figures are only
//! included when the user asks for them (`timing`), since they differ on every run.

pub mod diff;
pub mod histogram;
pub mod markdown;
pub mod svg;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "nnquant.report/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub model: ModelInfo,
    pub calibration: DataInfo,
    pub evaluation: DataInfo,
    /// Set when calibration and evaluation are the same data: their accuracy is not a held-out figure.
    pub same_data_warning: bool,
    pub accuracy: Accuracy,
    pub layers: Vec<LayerReport>,
    pub blobs: Vec<BlobReport>,
    pub search: SearchReport,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timing: Option<Timing>,
    /// Absent in reports of older versions.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub preprocessing: Option<PreprocessingReport>,
    /// What the figures say about the quantized model that the user must not miss (output SQNR
    /// or agreement collapsed; outputs the search does not score). Also printed on stderr.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub quality_warnings: Vec<String>,
    /// Cross-layer equalization (`quantize --equalize`): what it scaled, pair by pair.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub equalization: Option<crate::ir::equalize::Equalization>,
    /// Activation equalization (`quantize --act-equalize`, on by default with per-channel
    /// formats): the producer → depthwise pairs whose channels were scaled to fill their blob's
    /// format. Absent when nothing was scaled and in reports of older versions.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub activation_equalization: Option<crate::ir::equalize::ActivationEqualization>,
    /// Every output against float (absent in reports of older versions).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub outputs: Vec<OutputReport>,
    /// The firmware's memory (and, after `verify --report`, measured) figures, added by
    /// `codegen --report` / `verify --report` / `build`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub firmware: Option<FirmwareFigures>,
    /// The file name of the plots written beside the report (`svg`), which report.md links;
    /// absent in reports of older versions, which have none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plot: Option<String>,
}

/// Memory figures of the generated firmware for one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirmwareFigures {
    pub target: String,
    /// The static arena (activations, kernel scratch and rings).
    pub arena_bytes: usize,
    /// Kernel scratch outside the arena.
    pub scratch_bytes: usize,
    /// The plan's RAM estimate (arena + scratch + stack reserve) the budget gate checked.
    pub ram_estimate_bytes: usize,
    pub flash_param_bytes: usize,
    /// The flash estimate (weights, mean, test images, code reserve) the budget gate checked.
    pub flash_estimate_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub measured: Option<MeasuredFigures>,
}

/// What `verify` measured in QEMU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasuredFigures {
    pub stack_high_water_bytes: usize,
    /// `.data + .bss` + stack high-water.
    pub total_ram_bytes: usize,
    /// `.text + .rodata + .data` of the built firmware (with its embedded test images).
    pub flash_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub instructions_per_inference: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub per_step_instructions: Vec<(String, u64)>,
}

impl FirmwareFigures {
    /// Flash to compare between reports: the estimate (measured flash depends on the number of
    /// embedded test images).
    pub fn flash_bytes(&self) -> usize {
        self.flash_estimate_bytes
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub prototxt: String,
    pub prototxt_sha256: String,
    pub weights: String,
    pub weights_sha256: String,
    pub macs_per_image: u64,
    pub int8_param_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub source: String,
    pub images: usize,
    pub labelled: bool,
    /// SHA-256 of exactly the images and labels used, in order (`quantize::datahash`): equal
    /// hashes mean the same data, whatever the path. Absent in reports of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub images: usize,
    /// Fractions in [0, 1]; `None` when the evaluation data has no labels.
    pub float_top1: Option<f64>,
    pub quant_top1: Option<f64>,
    pub float_correct: Option<usize>,
    pub quant_correct: Option<usize>,
    /// Fraction of images where the quantized and float top-1 classes agree (several outputs or
    /// a regression objective: the lowest row agreement over the outputs, see `outputs`).
    pub top1_agreement: f64,
    /// SQNR of the output against float, in dB (several outputs: the lowest).
    pub output_sqnr_db: f64,
}

/// `[min, max]` over the output channels of a per-channel layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRanges {
    pub weight_frac_bits: [i32; 2],
    pub bias_frac_bits: [i32; 2],
    pub bias_lshift: [i32; 2],
    pub out_rshift: [i32; 2],
}

impl ChannelRanges {
    pub fn of(pc: &crate::fixed::graph::ChannelFormats) -> ChannelRanges {
        let r = |v: &[i32]| {
            [
                v.iter().copied().min().unwrap_or(0),
                v.iter().copied().max().unwrap_or(0),
            ]
        };
        ChannelRanges {
            weight_frac_bits: r(&pc.weight_frac_bits),
            bias_frac_bits: r(&pc.bias_frac_bits),
            bias_lshift: r(&pc.bias_lshift),
            out_rshift: r(&pc.out_rshift),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub name: String,
    pub op: String,
    pub input_frac_bits: i32,
    pub output_frac_bits: i32,
    pub weight_frac_bits: Option<i32>,
    pub bias_frac_bits: Option<i32>,
    pub bias_lshift: Option<u32>,
    pub out_rshift: Option<u32>,
    /// Weights and biases that hit the int8 limits when quantized.
    pub saturated_params: usize,
    /// The overflow proof (`fixed::headroom`): the largest |i32 accumulator| any int8 input can
    /// produce, and `log2(i32::MAX / that)` bits of headroom (conv, fc and Eltwise SUM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_worst_abs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_headroom_bits: Option<f64>,
    /// Per-channel formats: the range `[min, max]` over output channels of the weight and bias
    /// fraction bits and of the shifts (the scalar fields above are then channel 0's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_channel: Option<ChannelRanges>,
}

/// How raw pixels became the network's input, and what nnquant had to assume about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessingReport {
    /// Where scale and mean came from: "prototxt", "flags" (`--scale` / `--mean-value`
    /// overrides) or "none" (no transform_param and no flags: raw pixels).
    pub source: String,
    pub scale: f32,
    /// "none", "mean file", or the per-channel `mean_value`s as given.
    pub mean: String,
    /// Largest |rounded - exact| of the mean the integer input path subtracts (the firmware
    /// subtracts uint8 means; the float reference subtracts the exact ones).
    pub mean_rounding: f32,
    /// What the user should know (also printed on stderr).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub frac_bits: i32,
    pub float_max_abs: f64,
    /// Signal-to-quantization-noise ratio of this blob on the evaluation set, dB.
    pub sqnr_db: f64,
    /// Elements equal to -128 or 127 on the evaluation set (likely saturated).
    pub saturated: u64,
    pub elements: u64,
    /// The float values' histogram on the calibration set (absent in reports of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram: Option<histogram::Histogram>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchReport {
    pub strategy: String,
    /// Simulator runs on the whole calibration set.
    pub evaluations: usize,
    /// Size of the screening subset, when the search screened candidates on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_images: Option<usize>,
    /// Simulator runs on the screening subset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub screen_evaluations: usize,
    /// The objective (`classifier` or `regression`, see `search::objective`) and why it was
    /// chosen. Absent in reports of older versions (which always used the classifier's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub objective: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub objective_reason: String,
    /// Scores on the part of the calibration set the search ran on (all of it without a
    /// held-out part).
    pub start_score: Score,
    pub final_score: Score,
    /// The held-out part of the calibration set that guards the search against overfitting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<HoldoutReport>,
    /// The layer-local pass (`search::local`): per coordinate, the format it chose and the
    /// layer's output SQNR against float on its images before and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalReport>,
    /// Why the default search ran no coordinate descent after the local pass (its estimated
    /// cost), when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descent_skipped: Option<String>,
    pub trace: Vec<TraceStep>,
}

/// What the layer-local pass did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalReport {
    /// Calibration images (from the search part) it compared on.
    pub images: usize,
    /// Single-layer simulator runs.
    pub evaluations: usize,
    /// Whether the search kept its formats (the end-to-end objective on the search part
    /// preferred them and the held-out part did not get worse).
    pub accepted: bool,
    pub steps: Vec<LocalStep>,
}

/// One coordinate of the layer-local pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalStep {
    /// The conv/fc layer (the input blob for the input format).
    pub layer: String,
    /// "input", "weight", "activation" or "bias".
    pub param: String,
    pub start_frac_bits: i32,
    pub frac_bits: i32,
    /// SQNR of the layer's output (after its ReLU, where only a ReLU reads it) against float,
    /// with the layer's formats as they were before the pass reached it, and after this
    /// coordinate.
    pub sqnr_before_db: f64,
    pub sqnr_after_db: f64,
}

/// The overfitting guard: a class-stratified part of the calibration set the search never
/// optimises on; a change the search part accepts is kept only if it does not make this part
/// worse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutReport {
    pub images: usize,
    pub start_score: Score,
    pub final_score: Score,
    /// Changes the search part accepted but the held-out part rejected.
    pub rejected: usize,
    /// Simulator runs on the held-out part (its start, then one per change the search part
    /// accepted).
    pub evaluations: usize,
}

/// One output of the quantized model against the float blob of the same name (evaluation set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub sqnr_db: f64,
    /// Mean over images of the cosine similarity of the quantized output to float.
    pub cosine: f64,
    /// Fraction of rows whose arg-max agrees with float: the whole output for a vector, each
    /// position's channels for a `[C, H, W]` map, each last-axis row otherwise.
    pub agreement: f64,
    pub rows_per_image: usize,
}

/// What the search maximises on the calibration set. Classifier objective: correct top-1 (or
/// agreement with float when there are no labels), then the smaller divergence from float as a
/// tie-breaker. Regression objective (`search.objective`): the lowest output SQNR, then the mean
/// cosine; `correct` then counts the images whose every output row keeps the float arg-max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub correct: usize,
    pub images: usize,
    /// Mean KL divergence of the softmax of quantized outputs from float (nats); classifier
    /// objective only (0 otherwise).
    pub kl: f64,
    /// Regression objective: the lowest SQNR (dB) over the outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqnr_db: Option<f64>,
    /// Regression objective: the mean over outputs of the mean per-image cosine similarity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    pub layer: String,
    /// "weight", "bias" or "activation".
    pub param: String,
    pub frac_bits: i32,
    pub score: Score,
    pub accepted: bool,
    /// Scored on the screening subset (`accepted` then means "best on the subset so far").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub screen: bool,
    /// Scored on the held-out part (`accepted`: it did not get worse there).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holdout: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub float_seconds: f64,
    pub search_seconds: f64,
    /// The search's simulator time on the screening subset and on the whole calibration set.
    #[serde(default)]
    pub search_screen_seconds: f64,
    #[serde(default)]
    pub search_full_seconds: f64,
    /// The search's simulator time on the held-out part.
    #[serde(default)]
    pub search_holdout_seconds: f64,
    /// The layer-local pass: its float reference pass and its single-layer runs.
    #[serde(default)]
    pub search_local_seconds: f64,
    pub eval_seconds: f64,
    /// The simulator's conv/fc code path (`avx512-vnni`, `avx2`, …).
    #[serde(default)]
    pub simd_path: String,
    /// The float engine's convolution kernels (`avx512f`, `avx2+fma`, or `general`: the plain
    /// NCHW GEMM).
    #[serde(default)]
    pub float_path: String,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serialises") + "\n"
    }

    pub fn from_json(text: &str, origin: &str) -> anyhow::Result<Report> {
        let r: Report = serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin} is not an nnquant report ({e})"))?;
        anyhow::ensure!(
            r.schema == SCHEMA,
            "{origin} has report schema '{}', this nnquant reads '{SCHEMA}'",
            r.schema
        );
        Ok(r)
    }
}

/// A report's files, added to one output transaction (all or none): `R.json`, its Markdown twin
/// `R.md` and its plots `R.svg` beside it (`r.plot` names the SVG, so that report.md, also when
/// re-rendered from the JSON, links it).
pub fn add_files(
    out: &mut crate::fsio::Outputs,
    json_path: &std::path::Path,
    r: &mut Report,
) -> anyhow::Result<()> {
    let md_path = json_path.with_extension("md");
    let svg_path = json_path.with_extension("svg");
    anyhow::ensure!(
        json_path != md_path && json_path != svg_path,
        "the report path {} would be overwritten by its Markdown or SVG twin (written beside it as .md and .svg): give the report a .json name",
        json_path.display()
    );
    r.plot = svg_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    out.file(json_path, r.to_json())
        .file(md_path, markdown::render(r))
        .file(svg_path, svg::render(r));
    Ok(())
}

/// SQNR in dB of `quant` (already dequantized) against `reference`.
pub fn sqnr_db(signal_power: f64, noise_power: f64) -> f64 {
    if noise_power <= 0.0 {
        return 200.0; // exact: report a large finite number so JSON stays valid
    }
    if signal_power <= 0.0 {
        return 0.0;
    }
    (10.0 * (signal_power / noise_power).log10()).clamp(-200.0, 200.0)
}
