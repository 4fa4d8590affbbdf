//! `nnquant quantize` as a library function: float pass on the calibration set, format search
//! with the simulator, final evaluation on a held-out set, the model file and the report.

pub mod channel_ranges;
pub mod datahash;
pub mod input;

use crate::data::{self, preprocess::Preprocessor, Sample, Source};
use crate::fixed::graph::{Formats, PoolRounding, QGraph};
use crate::fixed::qformat::InputScale;
use crate::fixed::sim::{self, Simulator};
use crate::float::{self, Engine};
use crate::ir::{self, Graph, Op};
use crate::metrics::{argmax, Accumulator};
use crate::model::{InputSpec, NnqModel, SourceInfo, SCHEMA as MODEL_SCHEMA};
use crate::report::histogram::HistogramAcc;
use crate::report::{
    self, Accuracy, BlobReport, DataInfo, LayerReport, ModelInfo, OutputReport, Report, Timing,
};
use crate::search::local::LocalRefs;
use crate::search::objective::{deq_logical, Compare};
use crate::search::{
    self, Calibration, FloatOutput, Holdout, InputPrep, Objective, Scorer, Screen, Strategy,
};
use anyhow::{bail, ensure, Context, Result};
use input::IntegerInput;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::Instant;

/// Images per float/simulator batch: bounds memory while keeping both cores busy.
const BATCH: usize = 256;

/// Images per batch when every blob of the batch is kept (the calibration statistics, the
/// evaluation's per-blob comparison): a ResNet-56 batch of 256 images holds ~1.4 GB of blobs,
/// each allocated afresh (and page-faulted in) per batch; 32 images keep every blob below the
/// allocator's mmap threshold, so the memory of one batch is reused by the next.
const ALL_BLOBS_BATCH: usize = 32;

/// Float values per parallel task of the calibration statistics (max |x|, histogram).
const STATS_PIECE: usize = 1 << 16;

pub struct Options {
    pub strategy: Strategy,
    /// The search's screening subset.
    pub screen: Screen,
    /// The search's held-out part.
    pub holdout: Holdout,
    /// Bias correction in the search's local pass.
    pub bias_correction: bool,
    /// Formats pinned by the user (`--formats`): no search.
    pub formats: Option<Formats>,
    /// Per-channel weight/bias start formats (`--per-layer` turns it off).
    pub per_channel: bool,
    /// How the searched model's average pools round (pinned formats carry their own).
    pub avepool_rounding: PoolRounding,
    pub quiet: bool,
    pub timing: bool,
    /// "rgb" or "bgr" as fed to the network.
    pub channel_order: String,
}

/// One data set with its description for the report.
pub struct DataSet<'a> {
    pub source: &'a mut dyn Source,
    pub name: String,
}

/// The blobs the firmware outputs, one per graph output: the output itself, or the input of a
/// trailing Softmax (which the q7 graph drops unless `g.keep_output_softmax`: it does not change
/// the arg-max). The quantized graph's outputs have these names, and each is compared with the
/// float blob of that name.
pub fn output_blobs(g: &Graph) -> Vec<String> {
    g.outputs
        .iter()
        .map(
            |out| match g.nodes.iter().find(|n| n.outputs.first() == Some(out)) {
                Some(n) if matches!(n.op, Op::Softmax { .. }) && !g.keep_output_softmax => {
                    n.inputs[0].clone()
                }
                _ => out.clone(),
            },
        )
        .collect()
}

/// A trailing Softmax the q7 graph keeps (`--softmax keep`) outputs probabilities with at most 7
/// fraction bits (steps of 1/128, up to 127/128): the calibration maximum alone (say 0.33, 8 bits)
/// would saturate every larger probability other images produce at 127/256.
fn cap_output_probabilities(g: &Graph, f: &mut Formats) {
    if !g.keep_output_softmax {
        return;
    }
    for out in &g.outputs {
        let Some(n) = g.nodes.iter().find(|n| n.outputs.first() == Some(out)) else {
            continue;
        };
        if matches!(n.op, Op::Softmax { .. }) {
            if let Some(v) = f.activations_frac_bits.get_mut(out) {
                *v = (*v).min(7);
            }
        }
    }
}

/// The search's and the report's objective for this graph's outputs (see `search::objective`).
pub fn objective(g: &Graph, labelled: bool) -> (Objective, String) {
    let shapes: Vec<Vec<usize>> = output_blobs(g)
        .iter()
        .map(|b| g.shape(b).to_vec())
        .collect();
    Objective::choose(&shapes, labelled)
}

/// The number of classes labels must index: the single output's size (several outputs: labels
/// are only used to stratify the search's subsets and are not checked).
fn label_classes(g: &Graph) -> usize {
    match output_blobs(g).as_slice() {
        [b] => g.shape(b).iter().product(),
        _ => usize::MAX,
    }
}

/// What the float pass over a data set yields.
pub struct Collected {
    pub images: usize,
    /// HWC uint8 pixels as the firmware receives them (cropped).
    pub pixels_hwc: Vec<u8>,
    pub labels: Option<Vec<usize>>,
    /// Per output blob ([`output_blobs`]): its float values, `images × len`, logical order.
    pub float_outs: Vec<Vec<f32>>,
    /// Max |x| over the set for every blob (only when asked).
    pub max_abs: BTreeMap<String, f32>,
    /// The histogram of every blob's values (only when asked; for the report's plots).
    pub histograms: BTreeMap<String, HistogramAcc>,
    /// Content hash of the images and labels ([`datahash`]).
    pub data_sha256: String,
}

fn label_of(s: &Sample, index: usize, classes: usize) -> Result<Option<usize>> {
    match s.label {
        None => Ok(None),
        Some(l) => {
            ensure!(
                l >= 0 && (l as usize) < classes,
                "image {index} has label {l}, outside the model's {classes} classes (0..{})",
                classes - 1
            );
            Ok(Some(l as usize))
        }
    }
}

/// Stream a data set through the float engine.
pub fn collect(
    ds: &mut DataSet,
    engine: &Engine,
    pre: &Preprocessor,
    int_in: &IntegerInput,
    stats: bool,
    quiet: bool,
) -> Result<Collected> {
    let g = engine.graph();
    let out_blobs = output_blobs(g);
    let classes = label_classes(g);
    let total = ds.source.len();
    ensure!(total > 0, "{}: the data set is empty", ds.name);
    let pb = crate::progress::bar(total as u64, "float", quiet);
    let mut c = Collected {
        images: 0,
        pixels_hwc: Vec::with_capacity(total * int_in.len()),
        labels: Some(vec![]),
        float_outs: vec![vec![]; out_blobs.len()],
        max_abs: BTreeMap::new(),
        histograms: BTreeMap::new(),
        data_sha256: String::new(),
    };
    let mut hasher = datahash::DataHasher::default();
    let batch_len = if stats { ALL_BLOBS_BATCH } else { BATCH };
    let mut start = 0;
    while start < total {
        let end = (start + batch_len).min(total);
        let samples = ds
            .source
            .read_range(start..end)
            .with_context(|| ds.name.clone())?;
        let batch = pre.batch(&samples).with_context(|| ds.name.clone())?;
        ensure!(
            batch.shape.as_slice() == g.shape(&g.input.blob),
            "{}: images become {:?} after preprocessing, but the model input is {:?}",
            ds.name,
            batch.shape,
            g.shape(&g.input.blob)
        );
        for (i, s) in samples.iter().enumerate() {
            hasher.add(s);
            int_in.push_hwc(s, start + i, &mut c.pixels_hwc)?;
            let l = label_of(s, start + i, classes)?;
            match (l, c.labels.as_mut()) {
                (Some(l), Some(v)) => v.push(l),
                _ => c.labels = None,
            }
        }
        let keep = if stats {
            float::Keep::All
        } else {
            float::Keep::Outputs
        };
        let acts = engine.forward(&batch.data, samples.len(), keep)?;
        if stats {
            // In parallel over pieces of every blob (one blob can hold most of the values);
            // both figures are exact whatever the pieces and their merge order
            // (`HistogramAcc`), so the thread count changes nothing.
            let pieces: Vec<(&String, &[f32])> = acts
                .blobs
                .iter()
                .flat_map(|(b, v)| v.chunks(STATS_PIECE).map(move |p| (b, p)))
                .collect();
            let per_piece: Vec<(&String, f32, HistogramAcc)> = pieces
                .par_iter()
                .map(|&(b, v)| {
                    let m = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                    (b, m, HistogramAcc::of(v))
                })
                .collect();
            for (b, m, h) in per_piece {
                let e = c.max_abs.entry(b.clone()).or_insert(0.0);
                *e = e.max(m);
                c.histograms.entry(b.clone()).or_default().merge(&h);
            }
        }
        for (b, v) in out_blobs.iter().zip(c.float_outs.iter_mut()) {
            v.extend_from_slice(
                acts.blobs
                    .get(b)
                    .with_context(|| format!("float output '{b}' missing"))?,
            );
        }
        c.images += samples.len();
        pb.set_position(end as u64);
        start = end;
    }
    pb.finish_and_clear();
    c.data_sha256 = hasher.finish();
    Ok(c)
}

/// The float blobs the search's layer-local pass compares with ([`LocalRefs`]): `blobs` of
/// calibration images `images`, read again from the data set (a second float pass over a small
/// subset, so that the first pass need not keep every blob of every image).
pub fn local_refs(
    ds: &mut DataSet,
    engine: &Engine,
    pre: &Preprocessor,
    images: &[usize],
    blobs: &[String],
) -> Result<LocalRefs> {
    let mut refs = LocalRefs {
        images: images.to_vec(),
        blobs: blobs.iter().map(|b| (b.clone(), Vec::new())).collect(),
    };
    for chunk in images.chunks(ALL_BLOBS_BATCH) {
        let mut samples = Vec::with_capacity(chunk.len());
        for &i in chunk {
            samples.push(ds.source.read(i).with_context(|| ds.name.clone())?);
        }
        let batch = pre.batch(&samples).with_context(|| ds.name.clone())?;
        let acts = engine.forward(&batch.data, samples.len(), float::Keep::All)?;
        for (b, v) in refs.blobs.iter_mut() {
            v.extend_from_slice(
                acts.blobs
                    .get(b)
                    .with_context(|| format!("float blob '{b}' missing"))?,
            );
        }
    }
    Ok(refs)
}

/// Per-blob comparison of the simulator against float on one data set.
#[derive(Default)]
struct BlobAcc {
    signal: f64,
    noise: f64,
    saturated: u64,
    elements: u64,
    max_abs: f64,
}

/// Results of running final formats on the evaluation set.
pub struct Evaluation {
    /// Labelled top-1/top-5 of the classifier objective's output.
    pub float: Option<crate::metrics::Metrics>,
    pub quant: Option<crate::metrics::Metrics>,
    /// Classifier: images whose float and quantized top-1 agree; regression: the lowest row
    /// agreement over the outputs.
    pub agreement: f64,
    /// Every output ([`output_blobs`] order) against float.
    pub outputs: Vec<(String, Compare)>,
    pub images: usize,
    /// Content hash of the images and labels ([`datahash`]).
    pub data_sha256: String,
    blobs: BTreeMap<String, BlobAcc>,
}

/// Run float and simulator side by side over a data set.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    ds: &mut DataSet,
    engine: &Engine,
    pre: &Preprocessor,
    int_in: &IntegerInput,
    qg: &QGraph,
    prep: &InputPrep,
    objective: Objective,
    quiet: bool,
) -> Result<Evaluation> {
    let g = engine.graph();
    let out_blobs = output_blobs(g);
    let out_blob = &out_blobs[0];
    let classes = label_classes(g);
    let classifier = objective == Objective::Classifier;
    let mut outs: Vec<(String, Compare)> = out_blobs
        .iter()
        .map(|b| (b.clone(), Compare::default()))
        .collect();
    let total = ds.source.len();
    ensure!(total > 0, "{}: the data set is empty", ds.name);
    let sim = Simulator::new(qg)?;
    let in_frac = qg.frac_bits(&qg.input).context("input format")?;
    let pb = crate::progress::bar(total as u64, "evaluate", quiet);
    // Labelled top-1/top-5 only for the classifier objective's single output.
    let acc_classes = if classifier { classes } else { 0 };
    let (mut fa, mut qa) = (Accumulator::new(acc_classes), Accumulator::new(acc_classes));
    let mut labelled = true;
    let mut agree = 0usize;
    let mut blobs: BTreeMap<String, BlobAcc> = qg
        .blobs
        .keys()
        .map(|b| (b.clone(), BlobAcc::default()))
        .collect();
    let mut deq = Vec::new();
    let mut hasher = datahash::DataHasher::default();
    let mut start = 0;
    while start < total {
        let end = (start + ALL_BLOBS_BATCH).min(total);
        let samples = ds
            .source
            .read_range(start..end)
            .with_context(|| ds.name.clone())?;
        let n = samples.len();
        let batch = pre.batch(&samples)?;
        let mut px = Vec::with_capacity(n * int_in.len());
        for (i, s) in samples.iter().enumerate() {
            hasher.add(s);
            int_in.push_hwc(s, start + i, &mut px)?;
        }
        let q_in = prep.quantize(&px, int_in.len(), in_frac)?;
        let facts = engine.forward(&batch.data, n, float::Keep::All)?;
        let qacts = sim.run(&q_in, n, &sim::Keep::All)?;
        for (i, sample) in samples.iter().enumerate() {
            let f = facts.image(out_blob, i).context("float output")?;
            let q = qacts.image(out_blob, i).context("quantized output")?;
            agree += usize::from(argmax(f) == argmax(q));
            match label_of(sample, start + i, classes)? {
                Some(l) if classifier => {
                    fa.add(f, l);
                    qa.add(q, l);
                }
                _ => labelled = false,
            }
            for (b, cmp) in outs.iter_mut() {
                let fv = facts.image(b, i).context("float output")?;
                let qv = qacts.image(b, i).context("quantized output")?;
                let qb = qg.blobs.get(b).context("quantized output format")?;
                deq_logical(qv, qb.layout, qb.frac_bits, &mut deq);
                cmp.add(&Compare::image(g.shape(b), fv, &deq));
            }
        }
        // Every blob against float, blob by blob in parallel (each blob's sums still run over
        // the images in order, so the figures do not depend on the thread count).
        blobs
            .par_iter_mut()
            .for_each_init(Vec::new, |deq, (b, acc)| {
                let qb = &qg.blobs[b];
                for i in 0..n {
                    let (Some(fv), Some(qv)) = (facts.image(b, i), qacts.image(b, i)) else {
                        return;
                    };
                    deq_logical(qv, qb.layout, qb.frac_bits, deq);
                    for (x, y) in fv.iter().zip(deq.iter()) {
                        let x = *x as f64;
                        acc.signal += x * x;
                        acc.noise += (x - y) * (x - y);
                        acc.max_abs = acc.max_abs.max(x.abs());
                    }
                    acc.saturated += qv.iter().filter(|&&v| v == 127 || v == -128).count() as u64;
                    acc.elements += qv.len() as u64;
                }
            });
        pb.set_position(end as u64);
        start = end;
    }
    pb.finish_and_clear();
    let agreement = if classifier {
        agree as f64 / total as f64
    } else {
        outs.iter()
            .map(|(_, c)| c.agreement())
            .fold(f64::INFINITY, f64::min)
    };
    Ok(Evaluation {
        float: (labelled && classifier).then(|| fa.finish()),
        quant: (labelled && classifier).then(|| qa.finish()),
        agreement,
        outputs: outs,
        images: total,
        data_sha256: hasher.finish(),
        blobs,
    })
}

/// Where the input's scale and mean came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreprocessOrigin {
    /// The prototxt's `transform_param` (or `--mean-file`).
    Prototxt,
    /// `--scale` / `--mean-value` (build file: `model.scale`, `model.mean_value`).
    Flags,
    /// Nothing: a deploy prototxt without `transform_param` and no flags, so the network sees
    /// raw 0..255 pixels, which is rarely what it was trained on.
    Missing,
}

impl PreprocessOrigin {
    pub fn name(self) -> &'static str {
        match self {
            PreprocessOrigin::Prototxt => "prototxt",
            PreprocessOrigin::Flags => "flags",
            PreprocessOrigin::Missing => "none",
        }
    }
}

/// The warning for missing preprocessing, if it applies.
pub fn missing_preprocessing_warning(origin: PreprocessOrigin) -> Option<String> {
    (origin == PreprocessOrigin::Missing).then(|| {
        "the prototxt has no transform_param (no mean, scale 1) and neither --scale nor --mean-value was given: the network sees raw 0..255 pixels; if it was trained on normalised input, pass --mean-value/--scale (or --mean-file)".to_string()
    })
}

/// The report's account of the input preprocessing, with its warnings.
pub fn preprocessing_report(
    origin: PreprocessOrigin,
    p: &ir::Preprocess,
    int_in: &IntegerInput,
) -> report::PreprocessingReport {
    let mean = if !p.mean_values.is_empty() {
        format!("mean_value {:?}", p.mean_values)
    } else if !int_in.mean_u8.is_empty() {
        "mean file".to_string()
    } else {
        "none".to_string()
    };
    let mut warnings: Vec<String> = missing_preprocessing_warning(origin).into_iter().collect();
    if int_in.mean_rounding > 0.0 {
        warnings.push(format!(
            "the {mean} is not integral: the firmware subtracts uint8 means, so it was rounded to {:?} (largest change {}), while the float reference subtracts the exact values",
            if p.mean_values.is_empty() { "the nearest integers".to_string() } else { format!("{:?}", int_in.mean_u8) },
            int_in.mean_rounding
        ));
    }
    report::PreprocessingReport {
        source: origin.name().into(),
        scale: if p.scale == 0.0 { 1.0 } else { p.scale },
        mean,
        mean_rounding: int_in.mean_rounding,
        warnings,
    }
}

/// Everything `quantize` needs besides the data.
pub struct Inputs<'a> {
    /// Inference graph with weights (BatchNorm etc. already folded).
    pub graph: &'a Graph,
    pub prototxt: &'a std::path::Path,
    pub weights: &'a std::path::Path,
    pub float_pre: &'a Preprocessor,
    pub mean: Option<&'a ir::Tensor>,
    pub preprocess_origin: PreprocessOrigin,
}

pub fn run(
    inp: &Inputs,
    calib: &mut DataSet,
    eval: &mut DataSet,
    opts: &Options,
) -> Result<(NnqModel, Report)> {
    let g = inp.graph;
    let engine = Engine::new(g)?;
    let first = calib.source.read(0).with_context(|| calib.name.clone())?;
    let int_in = IntegerInput::new(&g.input.preprocess, inp.mean, first.image.shape())?;
    ensure!(
        int_in.shape.as_slice() == g.shape(&g.input.blob),
        "{}: images are {:?} ({:?} after the crop) but the model input is {:?}",
        calib.name,
        first.image.shape(),
        int_in.shape,
        g.shape(&g.input.blob)
    );
    let prep = InputPrep {
        mean_u8: int_in.mean_u8.clone(),
        scale: int_in.scale,
    };

    let t0 = Instant::now();
    let mut cal = collect(calib, &engine, inp.float_pre, &int_in, true, opts.quiet)?;
    let float_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let (objective, objective_reason) = objective(g, cal.labels.is_some());
    // The float outputs move into the scorer (one copy: for large outputs they dominate).
    let float_outputs = output_blobs(g)
        .into_iter()
        .zip(std::mem::take(&mut cal.float_outs))
        .map(|(b, v)| FloatOutput::new(b.clone(), g.shape(&b).to_vec(), v))
        .collect();
    let scorer = Scorer::new(objective, float_outputs, cal.images, cal.labels.as_deref())?;
    let t_local = Instant::now();
    let local = match (&opts.formats, opts.strategy) {
        (None, Strategy::Default | Strategy::Descent | Strategy::Local) => Some(local_refs(
            calib,
            &engine,
            inp.float_pre,
            &search::local::local_images(scorer.targets(), opts.holdout),
            &search::local::reference_blobs(g),
        )?),
        _ => None,
    };
    let local_seconds = t_local.elapsed().as_secs_f64();
    let calibration = Calibration {
        pixels_hwc: &cal.pixels_hwc,
        images: cal.images,
        prep: &prep,
        scorer: &scorer,
        screen: opts.screen,
        holdout: opts.holdout,
        local: local.as_ref(),
        bias_correction: opts.bias_correction,
    };
    let (start, strategy) = match &opts.formats {
        Some(f) => (f.clone(), Strategy::None),
        None => {
            let mut f = search::start_formats_with(g, &cal.max_abs, opts.per_channel)?;
            f.avepool_rounding = opts.avepool_rounding;
            cap_output_probabilities(g, &mut f);
            (f, opts.strategy)
        }
    };
    let pb = crate::progress::bar(0, "search", opts.quiet);
    let progress = |step: usize, total: usize, msg: &str| {
        pb.set_length(total as u64);
        pb.set_position(step as u64);
        pb.set_message(msg.to_string());
    };
    let (formats, mut search_report, search_times) =
        search::search(g, start, strategy, &calibration, &progress)?;
    search_report.objective_reason = objective_reason;
    drop(scorer);
    pb.finish_and_clear();
    let search_seconds = t1.elapsed().as_secs_f64();
    let qg = QGraph::quantize(g, &formats)?;

    let t2 = Instant::now();
    let ev = evaluate(
        eval,
        &engine,
        inp.float_pre,
        &int_in,
        &qg,
        &prep,
        objective,
        opts.quiet,
    )?;
    let eval_seconds = t2.elapsed().as_secs_f64();

    let in_frac = qg.frac_bits(&qg.input).context("input format")?;
    let scale = InputScale::new(int_in.scale, in_frac)?;
    let out_blob = qg.outputs.first().context("no output")?.clone();
    let classes = qg.blob_len(&out_blob);
    let source = SourceInfo {
        prototxt: inp.prototxt.display().to_string(),
        prototxt_sha256: crate::model::sha256_file(inp.prototxt)?,
        weights: inp.weights.display().to_string(),
        weights_sha256: crate::model::sha256_file(inp.weights)?,
    };
    let model = NnqModel {
        schema: MODEL_SCHEMA.into(),
        name: g.name.clone(),
        source: source.clone(),
        input: InputSpec {
            shape_chw: int_in.shape.to_vec(),
            channel_order: opts.channel_order.clone(),
            mean_u8: int_in.mean_u8.clone(),
            scale: int_in.scale,
            frac_bits: in_frac,
            mul: scale.mul,
            rshift: scale.rshift,
            crop_size: g.input.preprocess.crop_size,
        },
        classes,
        formats: formats.clone(),
        graph: qg.clone(),
    };
    // The model as written must pass what `NnqModel::read` checks (and this yields the
    // overflow proof of every layer for the report).
    let preprocessing = preprocessing_report(inp.preprocess_origin, &g.input.preprocess, &int_in);
    let heads = model
        .validate()
        .context("internal error: the quantized model fails its own validation")?;
    let summary = ir::summary::summarize(g);
    // Per output: SQNR as the per-blob table computes it (CHW order, the same sums as before),
    // cosine and row agreement.
    let outputs: Vec<OutputReport> = ev
        .outputs
        .iter()
        .map(|(b, c)| OutputReport {
            name: b.clone(),
            shape: g.shape(b).to_vec(),
            sqnr_db: ev
                .blobs
                .get(b)
                .map_or(c.sqnr_db(), |a| report::sqnr_db(a.signal, a.noise)),
            cosine: c.mean_cosine(),
            agreement: c.agreement(),
            rows_per_image: c.rows / c.images.max(1),
        })
        .collect();
    let worst_sqnr = outputs
        .iter()
        .map(|o| o.sqnr_db)
        .fold(f64::INFINITY, f64::min);
    let mut report = Report {
        schema: report::SCHEMA.into(),
        model: ModelInfo {
            name: g.name.clone(),
            prototxt: source.prototxt,
            prototxt_sha256: source.prototxt_sha256,
            weights: source.weights,
            weights_sha256: source.weights_sha256,
            macs_per_image: summary.totals.macs,
            int8_param_bytes: summary.totals.int8_param_bytes,
        },
        calibration: DataInfo {
            source: calib.name.clone(),
            images: cal.images,
            labelled: cal.labels.is_some(),
            sha256: Some(cal.data_sha256.clone()),
        },
        evaluation: DataInfo {
            source: eval.name.clone(),
            images: ev.images,
            labelled: ev.quant.is_some(),
            sha256: Some(ev.data_sha256.clone()),
        },
        same_data_warning: calib.name == eval.name,
        accuracy: Accuracy {
            images: ev.images,
            float_top1: ev.float.as_ref().map(|m| m.top1),
            quant_top1: ev.quant.as_ref().map(|m| m.top1),
            float_correct: ev.float.as_ref().map(|m| m.top1_correct),
            quant_correct: ev.quant.as_ref().map(|m| m.top1_correct),
            top1_agreement: ev.agreement,
            output_sqnr_db: worst_sqnr,
        },
        layers: layer_reports(&qg, g, &heads),
        // Network order: the input, then every layer's output.
        blobs: std::iter::once(&qg.input)
            .chain(qg.layers.iter().map(|l| &l.output))
            .filter_map(|b| {
                let a = ev.blobs.get(b)?;
                let qb = &qg.blobs[b];
                Some(BlobReport {
                    name: b.clone(),
                    shape: qb.shape.clone(),
                    frac_bits: qb.frac_bits,
                    float_max_abs: round6(a.max_abs),
                    sqnr_db: round6(report::sqnr_db(a.signal, a.noise)),
                    saturated: a.saturated,
                    elements: a.elements,
                    histogram: cal.histograms.get(b).map(HistogramAcc::finish),
                })
            })
            .collect(),
        search: search_report,
        timing: opts.timing.then_some(Timing {
            float_seconds,
            search_seconds,
            search_screen_seconds: search_times.screen_seconds,
            search_full_seconds: search_times.full_seconds,
            search_holdout_seconds: search_times.holdout_seconds,
            search_local_seconds: search_times.local_seconds + local_seconds,
            eval_seconds,
            simd_path: crate::fixed::SimdPath::selected()?.name().into(),
            float_path: engine.isa().map_or("general", float::Isa::name).into(),
        }),
        preprocessing: Some(preprocessing),
        quality_warnings: vec![],
        equalization: None,
        activation_equalization: None,
        outputs,
        firmware: None,
        plot: None,
    };
    report.quality_warnings = quality_warnings(&report);
    if !opts.quiet {
        for w in &report.preprocessing.as_ref().expect("set above").warnings {
            eprintln!("warning: {w}");
        }
    }
    if !opts.quiet {
        for w in &report.quality_warnings {
            eprintln!("warning: {w}");
        }
    }
    if report.same_data_warning && !opts.quiet {
        eprintln!("warning: calibration and evaluation use the same data ({}); the reported accuracy is not a held-out figure", calib.name);
    }
    Ok((model, report))
}

/// Below this output SQNR (dB) the quantized model hardly follows the float one.
pub const COLLAPSED_SQNR_DB: f64 = 10.0;
/// Below this float/quantized top-1 agreement the outputs' arg-max is not to be trusted.
pub const COLLAPSED_AGREEMENT: f64 = 0.5;

/// Warnings a user must see: an output of the quantized model collapsed (low SQNR, or low
/// agreement of its arg-max with float), each output named.
fn quality_warnings(r: &Report) -> Vec<String> {
    let mut w = Vec::new();
    let several = r.outputs.len() > 1;
    for o in &r.outputs {
        if o.sqnr_db < COLLAPSED_SQNR_DB {
            w.push(format!(
                "the quantized output '{}' has an SQNR of {:.1} dB against float (< {COLLAPSED_SQNR_DB} dB): the quantized model barely follows the float one; check the per-blob SQNR and saturation below",
                o.name, o.sqnr_db
            ));
        }
        if o.agreement < COLLAPSED_AGREEMENT {
            let what = if o.rows_per_image > 1 {
                format!(
                    "on only {:.1} % of the rows of output '{}' ({} per image)",
                    o.agreement * 100.0,
                    o.name,
                    o.rows_per_image
                )
            } else if several {
                format!(
                    "on only {:.1} % of the evaluation images for output '{}'",
                    o.agreement * 100.0,
                    o.name
                )
            } else {
                format!(
                    "on only {:.1} % of the evaluation images",
                    o.agreement * 100.0
                )
            };
            w.push(format!(
                "float and quantized top-1 agree {what} (< {:.0} %)",
                COLLAPSED_AGREEMENT * 100.0
            ));
        }
    }
    w
}

/// Round for stable, diffable JSON (the values are deterministic anyway; this keeps them short).
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn layer_reports(
    qg: &QGraph,
    g: &Graph,
    heads: &BTreeMap<String, crate::fixed::headroom::Headroom>,
) -> Vec<LayerReport> {
    use crate::fixed::graph::QDense;
    qg.layers
        .iter()
        .map(|l| {
            let in_frac = qg.blobs[&l.inputs[0]].frac_bits;
            let out_frac = qg.blobs[&l.output].frac_bits;
            let per_channel = match l.op.dense() {
                Some(QDense::Conv(c)) => c.per_channel.as_ref(),
                Some(QDense::Fc(f)) => f.per_channel.as_ref(),
                Some(QDense::Deconv(_)) | None => None,
            }
            .map(crate::report::ChannelRanges::of);
            let (w, b, bl, or, sat) = match l.op.dense() {
                Some(QDense::Conv(c) | QDense::Deconv(c)) => (
                    Some(c.weight_frac_bits),
                    Some(c.bias_frac_bits),
                    Some(c.bias_lshift as u32),
                    Some(c.out_rshift as u32),
                    saturated(&c.weights) + saturated(&c.bias),
                ),
                Some(QDense::Fc(f)) => (
                    Some(f.weight_frac_bits),
                    Some(f.bias_frac_bits),
                    Some(f.bias_lshift as u32),
                    Some(f.out_rshift as u32),
                    saturated(&f.weights) + saturated(&f.bias),
                ),
                None => (None, None, None, None, 0),
            };
            LayerReport {
                name: l.name.clone(),
                op: g
                    .node(&l.name)
                    .map_or("?", |n| n.op.type_name())
                    .to_string(),
                input_frac_bits: in_frac,
                output_frac_bits: out_frac,
                weight_frac_bits: w,
                bias_frac_bits: b,
                bias_lshift: bl,
                out_rshift: or,
                saturated_params: sat,
                acc_worst_abs: heads.get(&l.name).map(|h| h.worst_abs),
                acc_headroom_bits: heads.get(&l.name).map(|h| h.bits),
                per_channel,
            }
        })
        .collect()
}

fn saturated(v: &[i8]) -> usize {
    v.iter().filter(|&&x| x == 127 || x == -128).count()
}

/// Refuse a data set whose images do not fit the model, before any work.
pub fn check_fits(src: &mut dyn Source, name: &str, pre: &Preprocessor, g: &Graph) -> Result<()> {
    let s = src.read(0).with_context(|| name.to_string())?;
    let shape = pre.output_shape(s.image.shape())?;
    if shape.as_slice() != g.shape(&g.input.blob) {
        bail!(
            "{name}: images are {}×{}×{} ({}×{}×{} after preprocessing) but the model input is {:?}",
            s.image.channels, s.image.height, s.image.width, shape[0], shape[1], shape[2], g.shape(&g.input.blob)
        );
    }
    let _ = data::preprocess::u8_batch(std::slice::from_ref(&s))?;
    Ok(())
}
