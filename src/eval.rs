//! Evaluation of a model on a data set: the float model (Caffe semantics) or a quantized model
//! (the bit-exact simulator), every output of every image kept in its logical (NCHW) order, the
//! accuracy figures from them, and `--save-outputs`' files. `cli::eval` only turns flags into
//! these calls and prints.

use crate::data::preprocess::Preprocessor;
use crate::data::Source;
use crate::fixed::sim::{self, Simulator};
use crate::float::{self, Engine};
use crate::ir::Graph;
use crate::metrics::{Accumulator, Metrics};
use crate::model::NnqModel;
use anyhow::{ensure, Context, Result};
use std::time::Instant;

/// Images per forward pass.
const BATCH: usize = 256;

/// One output's values over all images.
pub enum Data {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

/// One output blob over all images, in its logical (NCHW) order.
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// What one evaluation run produced.
pub struct Evaluation {
    /// `float` or `quantized`.
    pub kind: &'static str,
    pub model_name: String,
    /// Class count of the first output (its values per image).
    pub classes: usize,
    pub outputs: Vec<Output>,
    pub images: usize,
    pub labels: Vec<Option<i64>>,
    pub seconds: f64,
}

/// The float engine over `src`, preprocessed by `pre`.
pub fn float(
    g: &Graph,
    pre: &Preprocessor,
    src: &mut dyn Source,
    quiet: bool,
) -> Result<Evaluation> {
    let engine = Engine::new(g)?;
    let classes: usize = g.shape(&g.outputs[0]).iter().product();
    let total = src.len();
    let pb = crate::progress::bar(total as u64, "eval", quiet);
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
    Ok(Evaluation {
        kind: "float",
        model_name: g.name.clone(),
        classes,
        outputs,
        images: total,
        labels,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The simulator over `src` with the model's own input path (uint8 mean, scale, HWC).
pub fn quantized(model: &NnqModel, src: &mut dyn Source, quiet: bool) -> Result<Evaluation> {
    let qg = &model.graph;
    let sim = Simulator::new(qg)?;
    let total = src.len();
    let pb = crate::progress::bar(total as u64, "eval", quiet);
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
    Ok(Evaluation {
        kind: "quantized",
        model_name: model.name.clone(),
        classes: model.classes,
        outputs,
        images: total,
        labels,
        seconds: t.elapsed().as_secs_f64(),
    })
}

impl Evaluation {
    /// Top-1/top-5 and the confusion matrix of the first output, when every image is labelled.
    pub fn metrics(&self) -> Result<Option<Metrics>> {
        let classes = self.classes;
        if !self.labels.iter().all(Option::is_some) {
            return Ok(None);
        }
        let mut acc = Accumulator::new(classes);
        for (i, l) in self.labels.iter().enumerate() {
            let l = l.expect("checked");
            ensure!(
                l >= 0 && (l as usize) < classes,
                "image {i} has label {l}, outside the model's {classes} classes"
            );
            match &self.outputs[0].data {
                Data::F32(v) => acc.add(&v[i * classes..(i + 1) * classes], l as usize),
                Data::I8(v) => acc.add(&v[i * classes..(i + 1) * classes], l as usize),
            };
        }
        Ok(Some(acc.finish()))
    }

    /// `--save-outputs`: a .npy for one output, a .npz (one array per blob) for any number.
    pub fn save_outputs(&self, path: &std::path::Path) -> Result<()> {
        let n = self.images;
        let arrays = self
            .outputs
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
                self.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
            );
            arrays.into_iter().next().map(|a| a.1).unwrap_or_default()
        };
        let mut out = crate::fsio::Outputs::new();
        out.file(path, bytes);
        out.commit()
    }
}
