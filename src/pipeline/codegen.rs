//! `codegen`'s pipeline: the test images read, the firmware crate generated
//! (`crate::codegen::generate`) and written with its memory report, and the memory figures put
//! into a report, as one transaction. Also the report update `verify` shares.

use super::inputs::{self, DataOpts};
use crate::codegen::{self, target};
use crate::model::NnqModel;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Everything `codegen` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// The quantized model file.
    pub model: PathBuf,
    /// The crate's directory.
    pub out: PathBuf,
    /// The target's name (`target::by_name`).
    pub target: String,
    pub crate_name: String,
    /// Replace a directory nnquant did not generate.
    pub force: bool,
    /// Test images to embed (from `data`).
    pub count: usize,
    pub data: DataOpts,
    pub ram_budget: Option<usize>,
    pub flash_budget: Option<usize>,
    /// A report.json to add the memory figures to.
    pub report: Option<PathBuf>,
    /// A `[workspace]` table in the crate's Cargo.toml.
    pub standalone: bool,
    /// Linker sections for the weights and the arena.
    pub weights_section: Option<String>,
    pub arena_section: Option<String>,
}

/// What was written.
pub struct Generated {
    /// Files of the crate (memory.json included).
    pub files: usize,
    pub memory: codegen::MemoryReport,
}

/// Generate the crate and write it (and the report update).
pub fn run(a: &Options) -> Result<Generated> {
    let m = NnqModel::read(&a.model)?;
    let t = target::by_name(&a.target)?;
    let (images, _) = test_images(&m, &a.data, a.count)?;
    let gen = codegen::generate(
        &m,
        &codegen::Options {
            ram_budget: a.ram_budget,
            flash_budget: a.flash_budget,
            standalone: a.standalone,
            sections: codegen::Sections {
                weights: a.weights_section.clone(),
                arena: a.arena_section.clone(),
            },
            ..codegen::Options::new(t, &a.crate_name, images)
        },
    )?;
    let mut files = gen.files;
    files.insert(
        "memory.json".into(),
        serde_json::to_string_pretty(&gen.memory)? + "\n",
    );
    // The crate and the report update are one transaction: both or neither.
    let mem = gen.memory;
    let mut out = crate::fsio::Outputs::new();
    out.dir(&a.out, codegen::write::crate_files(&files), a.force);
    if let Some(r) = &a.report {
        add_report_update(&mut out, r, figures(&a.target, &mem))?;
    }
    out.commit()
        .with_context(|| format!("writing {}", a.out.display()))?;
    Ok(Generated {
        files: files.len(),
        memory: mem,
    })
}

/// Put the firmware's figures into a report.json from `nnquant quantize` (and re-render its
/// report.md beside it), both atomically.
pub fn attach_to_report(path: &std::path::Path, f: crate::report::FirmwareFigures) -> Result<()> {
    let mut out = crate::fsio::Outputs::new();
    add_report_update(&mut out, path, f)?;
    out.commit()
}

/// [`attach_to_report`] as part of a larger output transaction.
pub fn add_report_update(
    out: &mut crate::fsio::Outputs,
    path: &std::path::Path,
    f: crate::report::FirmwareFigures,
) -> Result<()> {
    let text = crate::fsio::read_text(path, "the report")?;
    let mut r = crate::report::Report::from_json(&text, &path.display().to_string())?;
    r.firmware = Some(f);
    out.file(path, r.to_json()).file(
        path.with_extension("md"),
        crate::report::markdown::render(&r),
    );
    Ok(())
}

/// The plan's figures of a generated crate, for a report.
pub fn figures(target: &str, mem: &codegen::MemoryReport) -> crate::report::FirmwareFigures {
    crate::report::FirmwareFigures {
        target: target.to_string(),
        arena_bytes: mem.arena_bytes,
        scratch_bytes: mem.scratch_bytes,
        ram_estimate_bytes: mem.budget.ram_estimate,
        flash_param_bytes: mem.flash_param_bytes,
        flash_estimate_bytes: mem.budget.flash_estimate,
        measured: None,
    }
}

/// Test images as the firmware receives them (cropped HWC uint8), with their labels.
pub type TestImages = (Vec<Vec<u8>>, Vec<Option<i64>>);

/// Read `count` images of `data`.
pub fn test_images(m: &NnqModel, data: &DataOpts, count: usize) -> Result<TestImages> {
    if count == 0 {
        return Ok((vec![], vec![]));
    }
    let mut opts = data.clone();
    anyhow::ensure!(
        opts.path.is_some(),
        "--count needs --data (the images to embed)"
    );
    opts.limit = Some(opts.limit.map_or(count, |l| l.min(count)));
    let mut src = inputs::open_data_for_quantized(&opts)?;
    let n = src.len();
    let samples = src.read_range(0..n)?;
    let mut images = Vec::with_capacity(n);
    for (i, s) in samples.iter().enumerate() {
        let mut px = Vec::new();
        m.input.pixels_hwc(&s.image, i, &mut px)?;
        images.push(px);
    }
    Ok((images, samples.iter().map(|s| s.label).collect()))
}
