//! `quantize`'s pipeline: the model and the calibration/evaluation data opened (or the
//! evaluation part carved by a split), cross-layer and activation equalization, the format
//! search and evaluation (`crate::quantize::run`), then the model file and the report's files
//! written as one transaction.

use super::inputs::{self, DataOpts, ModelSource};
use crate::data::{subset, ChannelOrder};
use crate::fixed::graph::{Formats, PoolRounding};
use crate::quantize::{self, DataSet};
use crate::report::Report;
use crate::search::{Holdout, Screen, Strategy};
use anyhow::{ensure, Result};
use std::path::PathBuf;

/// Everything `quantize` is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: ModelSource,
    /// Calibration data (path `None`: the prototxt's TEST data layer).
    pub calib: DataOpts,
    /// Held-out evaluation data (path `None`: carved by `split`, or the data layer).
    pub eval: DataOpts,
    /// Without evaluation data: the calibration data split like `80:20`.
    pub split: Option<String>,
    /// Pinned formats (JSON) instead of a search.
    pub formats: Option<PathBuf>,
    pub strategy: Strategy,
    /// One weight format per layer instead of per output channel.
    pub per_layer: bool,
    /// CMSIS-NN's legacy arithmetic: per-layer formats and truncating average pools (implied
    /// by the `arm` strategy).
    pub arm_compatible: bool,
    pub screen: Screen,
    pub holdout: Holdout,
    /// Cross-layer equalization first.
    pub equalize: bool,
    /// Activation equalization (applied only with per-channel formats).
    pub act_equalize: bool,
    /// Bias correction in the layer-local pass.
    pub bias_correction: bool,
    /// A trailing Softmax stays in the q7 graph.
    pub keep_softmax: bool,
    /// The channel order asked for (recorded in the report).
    pub channel_order: Option<ChannelOrder>,
    /// The model file to write.
    pub output: PathBuf,
    /// The report (JSON; `.md` and `.svg` beside it).
    pub report: PathBuf,
    /// Wall-clock timings in the report.
    pub timestamps: bool,
    /// No progress display.
    pub quiet: bool,
}

/// Quantize, evaluate and write the model file and the report; returns the report written.
pub fn run(a: &Options) -> Result<Report> {
    ensure!(a.eval.path.is_some() || a.split.is_some() || a.calib.path.is_none(),
        "give held-out evaluation data with --eval (or carve it from the calibration data with --split 80:20): searching and reporting on the same images overstates accuracy");
    let (m, calib_o, eval_o) = (&a.model, &a.calib, &a.eval);
    let formats = a
        .formats
        .as_deref()
        .map(Formats::from_json_file)
        .transpose()?;
    let (mut g, mut sources) = if eval_o.path.is_some() {
        inputs::load_model_and_data(m, &[calib_o, eval_o])?
    } else {
        inputs::load_model_and_data(m, &[calib_o])?
    };
    g.keep_output_softmax = a.keep_softmax;
    ensure!(
        !(a.equalize && a.formats.is_some()),
        "--equalize changes the weights, so formats chosen for the original weights (--formats / quantize.formats) would not fit them; use one or the other"
    );
    let equalization = if a.equalize {
        Some(crate::ir::equalize::equalize(&mut g)?)
    } else {
        None
    };
    let calib_name = inputs::data_name(calib_o, &g);
    let (mut calib_src, mut eval_src, eval_name) = if eval_o.path.is_some() {
        let e = sources.pop().expect("two sources");
        let c = sources.pop().expect("two sources");
        (c, e, inputs::data_name(eval_o, &g))
    } else if let Some(split) = &a.split {
        let c = sources.pop().expect("one source");
        let name = format!("{calib_name} split {split}");
        let c2 = inputs::open_data(calib_o, &g)?;
        (
            inputs::split_part(c, split, subset::Part::First)?,
            inputs::split_part(c2, split, subset::Part::Second)?,
            format!("{name} (second part)"),
        )
    } else {
        // The model's own data layer for both: warned about below.
        let c = sources.pop().expect("one source");
        let e = inputs::open_data(eval_o, &g)?;
        (c, e, calib_name.clone())
    };
    let calib_name = if a.split.is_some() && eval_o.path.is_none() {
        format!(
            "{calib_name} split {} (first part)",
            a.split.as_deref().unwrap_or("")
        )
    } else {
        calib_name
    };
    let pre = inputs::preprocessor(m, &g)?;
    let mean = inputs::mean_tensor(m, &g)?;
    quantize::check_fits(calib_src.as_mut(), &calib_name, &pre, &g)?;
    quantize::check_fits(eval_src.as_mut(), &eval_name, &pre, &g)?;
    let arm_compatible = a.arm_compatible || a.strategy == Strategy::Arm;
    let per_channel = !a.per_layer && !arm_compatible;
    let (act_scales, act_equalization) = quantize::channel_ranges::equalize(
        &mut g,
        formats.as_ref(),
        a.act_equalize && per_channel,
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
        prototxt: &m.model,
        weights: &m.weights,
        float_pre: &pre,
        mean: mean.as_ref(),
        preprocess_origin: inputs::preprocess_origin(m, &g),
    };
    let opts = quantize::Options {
        strategy: a.strategy,
        screen: a.screen,
        holdout: a.holdout,
        bias_correction: a.bias_correction,
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
    let mut out = crate::fsio::Outputs::new();
    out.file(&a.output, model.to_json()?);
    crate::report::add_files(&mut out, &a.report, &mut report)?;
    out.commit()?;
    Ok(report)
}
