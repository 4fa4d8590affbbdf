//! `nnquant codegen`: the firmware crate of a quantized model.

use super::data_args::{open_data_for_quantized, DataFlags};
use crate::codegen::{self, target};
use crate::model::NnqModel;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The quantized model (.nnq.json) from `nnquant quantize`.
    pub model: PathBuf,
    /// Output directory of the generated crate.
    #[arg(long)]
    pub out: PathBuf,
    /// cortex-m4, cortex-m7, cortex-m3, cortex-m0, cortex-m33 or host.
    #[arg(long, default_value = "cortex-m4")]
    pub target: String,
    #[arg(long, default_value = "nnquant-firmware")]
    pub crate_name: String,
    /// Replace an existing directory that nnquant did not generate.
    #[arg(long)]
    pub force: bool,
    /// Embed this many test images (from --data) for the generated main.rs to run.
    #[arg(long, default_value_t = 0)]
    pub count: usize,
    #[command(flatten)]
    pub data: DataFlags,
    /// RAM the firmware may use, in bytes (`16384`, `16K`); default: the target's RAM.
    #[arg(long, value_parser = crate::codegen::target::parse_size)]
    pub ram_budget: Option<usize>,
    /// Flash the firmware may use, in bytes (`256K`, `1M`); default: the target's flash.
    #[arg(long, value_parser = crate::codegen::target::parse_size)]
    pub flash_budget: Option<usize>,
    /// Add the firmware's memory figures (and, for verify, the measured ones) to this
    /// report.json from `nnquant quantize`, so that `report diff` can gate on their growth.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the memory report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The command line of `nnquant codegen`: [`Args`] (which `nnquant build` also fills in) and the
/// options only the command line sets.
#[derive(Debug, clap::Args)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,
    #[command(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Default, clap::Args)]
pub struct Extra {
    /// Put the weights, biases and input mean in this linker section (`#[link_section]`, e.g.
    /// `.qspi_flash`); the board's linker script must place it. Default: `.rodata`.
    #[arg(long)]
    pub weights_section: Option<String>,
    /// Put the demo's arena `static` in this linker section (e.g. `.ccmram`); `ARENA_SECTION`
    /// tells a board project which one to use. Default: `.bss`.
    #[arg(long)]
    pub arena_section: Option<String>,
    /// Add a `[workspace]` table so that the crate builds on its own wherever it is written
    /// (leave it off for a crate inside a board project's workspace).
    #[arg(long)]
    pub standalone: bool,
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
pub fn test_images(m: &NnqModel, data: &DataFlags, count: usize) -> Result<TestImages> {
    if count == 0 {
        return Ok((vec![], vec![]));
    }
    let mut opts = data.opts();
    anyhow::ensure!(
        opts.path.is_some(),
        "--count needs --data (the images to embed)"
    );
    opts.limit = Some(opts.limit.map_or(count, |l| l.min(count)));
    let mut src = open_data_for_quantized(&opts)?;
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

pub fn run(a: Args) -> Result<ExitCode> {
    run_with(a, Extra::default())
}

pub fn run_cli(c: Cli) -> Result<ExitCode> {
    run_with(c.args, c.extra)
}

fn run_with(a: Args, x: Extra) -> Result<ExitCode> {
    let m = NnqModel::read(&a.model)?;
    let t = target::by_name(&a.target)?;
    let (images, _) = test_images(&m, &a.data, a.count)?;
    let gen = codegen::generate(
        &m,
        &codegen::Options {
            ram_budget: a.ram_budget,
            flash_budget: a.flash_budget,
            standalone: x.standalone,
            sections: codegen::Sections {
                weights: x.weights_section,
                arena: x.arena_section,
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
    let mem = &gen.memory;
    let mut out = crate::fsio::Outputs::new();
    out.dir(&a.out, codegen::write::crate_files(&files), a.force);
    if let Some(r) = &a.report {
        add_report_update(&mut out, r, figures(&a.target, mem))?;
    }
    out.commit()
        .with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(mem)?);
    } else {
        println!(
            "wrote {} ({} files) for {}",
            a.out.display(),
            files.len(),
            a.target
        );
        println!(
            "flash: {} B weights+biases, {} B input mean (about {} B with code); RAM: {} B arena (incl. {} B kernel scratch/rings), {} B scratch outside it (about {} B with the stack)",
            mem.flash_param_bytes,
            mem.flash_mean_bytes,
            mem.budget.flash_estimate,
            mem.arena_bytes,
            mem.arena_temp_bytes,
            mem.scratch_bytes,
            mem.budget.ram_estimate
        );
        for l in &mem.plan.per_layer {
            println!(
                "  {:<20} live {:>6} B: {}",
                l.layer,
                l.live_bytes,
                l.live.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
