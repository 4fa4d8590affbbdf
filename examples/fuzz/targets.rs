//! The fuzz targets: each feeds one input format to the code that reads it, and on success runs
//! what a command would run next (lowering and shape inference, weight attachment, the
//! simulator, code generation), so a reader that accepts what it should refuse is caught
//! downstream. A target returns the error (a clean refusal) or `Ok`; a panic is a finding.

use anyhow::{Context, Result};
use nnquant::caffe::{self, convert, prototxt, weights};
use nnquant::data::Source;
use nnquant::fixed::graph::{Formats, QGraph};
use nnquant::fixed::sim::{Keep, Simulator};
use nnquant::ir::Graph;
use std::path::{Path, PathBuf};

/// How a target's inputs are mutated.
#[derive(Clone, Copy)]
pub enum Kind {
    Binary,
    Text,
    Json,
    Toml,
}

pub struct Target {
    pub name: &'static str,
    pub kind: Kind,
    pub run: fn(&Ctx, &[u8]) -> Result<()>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "prototxt",
        kind: Kind::Text,
        run: prototxt_target,
    },
    Target {
        name: "caffemodel",
        kind: Kind::Binary,
        run: caffemodel_target,
    },
    Target {
        name: "hdf5",
        kind: Kind::Binary,
        run: hdf5_target,
    },
    Target {
        name: "blobproto",
        kind: Kind::Binary,
        run: blobproto_target,
    },
    Target {
        name: "datum",
        kind: Kind::Binary,
        run: datum_target,
    },
    Target {
        name: "lmdb",
        kind: Kind::Binary,
        run: lmdb_target,
    },
    Target {
        name: "npy",
        kind: Kind::Binary,
        run: npy_target,
    },
    Target {
        name: "nnq-json",
        kind: Kind::Json,
        run: nnq_json_target,
    },
    Target {
        name: "formats-json",
        kind: Kind::Json,
        run: formats_json_target,
    },
    Target {
        name: "nnquant-toml",
        kind: Kind::Toml,
        run: nnquant_toml_target,
    },
];

/// What the targets share: the demo model (float graph with weights, the project's own
/// `testdata/glyphs`) and a scratch directory for readers that take paths.
pub struct Ctx {
    pub glyphs: Graph,
    pub scratch: PathBuf,
}

pub fn demo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
}

impl Ctx {
    pub fn new(scratch: PathBuf) -> Result<Ctx> {
        let mut glyphs = caffe::load_model(
            &demo("glyphs.prototxt"),
            &caffe::LoadOptions {
                weights: Some(&demo("glyphs.caffemodel")),
                input_shape: Some(vec![3, 16, 16]),
            },
        )?;
        nnquant::ir::passes::fold_batchnorm(&mut glyphs)?;
        Ok(Ctx { glyphs, scratch })
    }

    /// Write `data` to a scratch file (for readers that take a path).
    fn file(&self, name: &str, data: &[u8]) -> Result<PathBuf> {
        let p = self.scratch.join(name);
        std::fs::write(&p, data)?;
        Ok(p)
    }
}

fn prototxt_target(_: &Ctx, data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data).context("not UTF-8")?;
    let net = prototxt::parse_net_text(text, "fuzz")?;
    let mut g = convert::lower(&net)?;
    if g.input.shape.is_none() {
        g.input.shape = Some(vec![3, 8, 8]);
    }
    nnquant::ir::shape::infer(&mut g)?;
    Ok(())
}

/// Weights are attached to a fresh copy of the demo graph: counts and shapes get checked.
fn attach(ctx: &Ctx, w: &weights::WeightSet) -> Result<()> {
    let mut g = ctx.glyphs.clone();
    caffe::attach_weights(&mut g, w)
}

fn caffemodel_target(ctx: &Ctx, data: &[u8]) -> Result<()> {
    attach(ctx, &weights::parse_caffemodel(data, "fuzz")?)
}

fn hdf5_target(ctx: &Ctx, data: &[u8]) -> Result<()> {
    attach(ctx, &weights::parse_hdf5(data.to_vec(), "fuzz")?)
}

fn blobproto_target(ctx: &Ctx, data: &[u8]) -> Result<()> {
    weights::read_blob_file(&ctx.file("mean.binaryproto", data)?)?;
    Ok(())
}

fn datum_target(_: &Ctx, data: &[u8]) -> Result<()> {
    caffe::datum::decode_datum(data, "fuzz")?;
    Ok(())
}

/// Read every sample of a source (at most 16).
fn drain(src: &mut dyn Source) -> Result<()> {
    let n = src.len().min(16);
    src.read_range(0..n)?;
    Ok(())
}

fn lmdb_target(ctx: &Ctx, data: &[u8]) -> Result<()> {
    let dir = ctx.scratch.join("lmdb");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("data.mdb"), data)?;
    let mut src = nnquant::data::lmdb::LmdbSource::open(&dir, Default::default(), None)?;
    drain(&mut src)
}

fn npy_target(ctx: &Ctx, data: &[u8]) -> Result<()> {
    let p = ctx.file("images.npy", data)?;
    let labels = nnquant::data::npy::read_labels(&p);
    let mut src = nnquant::data::npy::NpySource::open(&p, None, Default::default(), None)?;
    drain(&mut src)?;
    labels.map(|_| ())
}

/// A model file: read (validated), simulated on one image, turned into a firmware crate.
fn nnq_json_target(ctx: &Ctx, data: &[u8]) -> Result<()> {
    let p = ctx.file("model.nnq.json", data)?;
    let m = nnquant::model::NnqModel::read(&p)?;
    let sim = Simulator::new(&m.graph)?;
    sim.run(&vec![0i8; m.graph.input_dims().len()], 1, &Keep::Outputs)?;
    let target = nnquant::codegen::target::by_name("host")?;
    nnquant::codegen::generate(&m, &nnquant::codegen::Options::new(target, "fuzz", vec![]))?;
    Ok(())
}

/// A formats file pinned on the demo model: quantized and simulated on one image.
fn formats_json_target(ctx: &Ctx, data: &[u8]) -> Result<()> {
    let f = Formats::from_json_str(std::str::from_utf8(data).context("not UTF-8")?)?;
    let q = QGraph::quantize(&ctx.glyphs, &f)?;
    let sim = Simulator::new(&q)?;
    sim.run(&vec![0i8; q.input_dims().len()], 1, &Keep::Outputs)?;
    Ok(())
}

fn nnquant_toml_target(_: &Ctx, data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data).context("not UTF-8")?;
    nnquant::pipeline::build::parse_config(text, Path::new("fuzz.toml"))?;
    Ok(())
}
