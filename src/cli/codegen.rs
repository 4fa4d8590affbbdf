//! `nnquant codegen`: the firmware crate of a quantized model (`pipeline::codegen`); here the
//! flags and the memory summary printed.

use super::data_args::DataFlags;
use crate::pipeline::codegen as pipeline;
use anyhow::Result;
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

/// The command line of `nnquant codegen`: [`Args`] (what a build file also sets) and the
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

pub fn run_cli(c: Cli) -> Result<ExitCode> {
    run_with(c.args, c.extra)
}

impl Args {
    /// The library's options for these flags (and the command line's extra ones).
    pub fn options(&self, x: Extra) -> pipeline::Options {
        pipeline::Options {
            model: self.model.clone(),
            out: self.out.clone(),
            target: self.target.clone(),
            crate_name: self.crate_name.clone(),
            force: self.force,
            count: self.count,
            data: self.data.opts(),
            ram_budget: self.ram_budget,
            flash_budget: self.flash_budget,
            report: self.report.clone(),
            standalone: x.standalone,
            weights_section: x.weights_section,
            arena_section: x.arena_section,
        }
    }
}

fn run_with(a: Args, x: Extra) -> Result<ExitCode> {
    let o = a.options(x);
    let gen = pipeline::run(&o)?;
    print(&o, &gen, a.json)?;
    Ok(ExitCode::SUCCESS)
}

/// What was written and the memory figures (or the memory report as JSON).
pub(super) fn print(o: &pipeline::Options, gen: &pipeline::Generated, json: bool) -> Result<()> {
    let mem = &gen.memory;
    if json {
        println!("{}", serde_json::to_string_pretty(mem)?);
    } else {
        println!(
            "wrote {} ({} files) for {}",
            o.out.display(),
            gen.files,
            o.target
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
    Ok(())
}
