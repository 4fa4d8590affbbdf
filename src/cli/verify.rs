//! `nnquant verify`: build and run the generated firmware and compare it with the simulator
//! (`pipeline::verify`); here the flags, the figures printed and the exit code (1: mismatch).

use super::data_args::DataFlags;
use crate::pipeline::verify as pipeline;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The quantized model (.nnq.json).
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataFlags,
    /// Number of images to run on the target.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// cortex-m4, cortex-m7, cortex-m3, cortex-m33 or host.
    #[arg(long, default_value = "cortex-m4")]
    pub target: String,
    /// Count executed instructions per inference with a QEMU TCG plugin nnquant builds.
    #[arg(long)]
    pub count_instructions: bool,
    /// Where to generate the firmware crate (default: a cache directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
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
    #[arg(long)]
    pub json: bool,
}

/// The command line of `nnquant verify`: [`Args`] (what a build file also sets) and the
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
    /// Seconds the firmware run (QEMU or host) may take before it is killed; default 300 plus
    /// 2 per image (5 per image with --trace).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<f64>,
    /// The firmware also prints every step's output; name the first layer and element that
    /// differ from the simulator (slower: use a small --count).
    #[arg(long)]
    pub trace: bool,
    /// No progress display.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_timeout(v: &str) -> Result<f64> {
    match v.trim().parse::<f64>() {
        Ok(t) if t.is_finite() && t > 0.0 && t <= 1e6 => Ok(t),
        _ => anyhow::bail!("'{v}' is not a number of seconds between 0 and 1000000"),
    }
}

pub fn run_cli(c: Cli) -> Result<ExitCode> {
    run_with(c.args, c.extra)
}

impl Args {
    /// The library's options for these flags (and the command line's extra ones).
    pub fn options(&self, x: Extra) -> pipeline::Options {
        pipeline::Options {
            model: self.model.clone(),
            data: self.data.opts(),
            count: self.count,
            target: self.target.clone(),
            count_instructions: self.count_instructions,
            work_dir: self.work_dir.clone(),
            ram_budget: self.ram_budget,
            flash_budget: self.flash_budget,
            report: self.report.clone(),
            timeout: x.timeout,
            trace: x.trace,
            quiet: x.quiet,
        }
    }
}

fn run_with(a: Args, x: Extra) -> Result<ExitCode> {
    let r = pipeline::run(&a.options(x))?;
    print(&r, a.json)
}

/// The comparison and the figures (or the result as JSON); exit code 1 on a mismatch.
pub(super) fn print(r: &crate::verify::VerifyResult, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        println!(
            "{}: {}/{} images byte-identical to the simulator, {} mismatching bytes, checksum {}",
            r.target, r.matching_images, r.images, r.mismatching_bytes, r.checksum
        );
        if let Some(s) = &r.sizes {
            println!("firmware: .text {} B, .rodata {} B, .data {} B, .bss {} B (arena {} B, weights {} B)", s.text, s.rodata, s.data, s.bss, r.arena_bytes, r.flash_param_bytes);
        }
        if let (Some(total), Some(s), Some(h)) = (r.total_ram, &r.sizes, r.stack_high_water) {
            println!(
                "total RAM: {total} B (arena {} B incl. {} B kernel scratch/rings, scratch {} B, stack high-water {h} B, other statics {} B)",
                r.arena_bytes,
                r.arena_temp_bytes,
                r.scratch_bytes,
                (s.data + s.bss).saturating_sub(r.arena_bytes)
            );
        }
        if let Some(n) = r.instructions_per_inference {
            println!(
                "instructions per inference: {:.2} M ({n} executed)",
                n as f64 / 1e6
            );
            if !r.per_step_instructions.is_empty() {
                println!("| step | instructions | share |");
                println!("|---|---:|---:|");
                for s in &r.per_step_instructions {
                    println!(
                        "| {} | {} | {:.1} % |",
                        s.step,
                        s.instructions,
                        100.0 * s.instructions as f64 / n.max(1) as f64
                    );
                }
            }
        }
        if let Some(t) = &r.trace {
            match &t.first_divergence {
                None => println!(
                    "trace: every step of every image byte-identical to the simulator ({} step outputs)",
                    t.compared
                ),
                Some(d) => println!(
                    "trace: first divergence at image {}, step {} '{}' (blob '{}'), element {} (h {}, w {}, c {}): simulator {}, firmware {}; {} bytes of that step differ",
                    d.image, d.step, d.step_name, d.blob, d.element, d.h, d.w, d.c, d.simulator, d.firmware, d.differing_bytes
                ),
            }
        }
        if let Some(mm) = &r.first_mismatch {
            println!(
                "first mismatch: image {}, bytes (index, simulator, firmware): {:?}",
                mm.image, mm.bytes
            );
        }
    }
    Ok(if pipeline::identical(r) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
