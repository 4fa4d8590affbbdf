//! `nnquant build -c nnquant.toml`: quantize → codegen (→ verify) from one file, skipping steps
//! whose inputs have not changed since the last build (`pipeline::build`); here the flags and
//! the printing of each step.

use super::{codegen, quantize, verify};
use crate::pipeline::build;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The build file.
    #[arg(short, long, default_value = "nnquant.toml")]
    pub config: PathBuf,
    /// Also build and run the firmware and compare it with the simulator.
    #[arg(long)]
    pub verify: bool,
    /// Redo every step even if its inputs did not change.
    #[arg(long)]
    pub force: bool,
    #[arg(long, short)]
    pub quiet: bool,
}

/// Prints what `nnquant quantize` and `nnquant codegen` print, step by step.
struct Printer {
    quiet: bool,
}

impl build::Events for Printer {
    fn step(&mut self, what: &str) {
        if !self.quiet {
            println!("{what}");
        }
    }
    fn quantized(
        &mut self,
        o: &crate::pipeline::quantize::Options,
        report: &crate::report::Report,
    ) {
        quantize::print(o, report, false);
    }
    fn generated(
        &mut self,
        o: &crate::pipeline::codegen::Options,
        gen: &crate::pipeline::codegen::Generated,
    ) -> Result<()> {
        codegen::print(o, gen, false)
    }
}

pub fn run(a: Args) -> Result<ExitCode> {
    let o = build::Options {
        config: a.config,
        verify: a.verify,
        force: a.force,
        quiet: a.quiet,
    };
    match build::run(&o, &mut Printer { quiet: a.quiet })? {
        Some(r) => verify::print(&r, false),
        None => Ok(ExitCode::SUCCESS),
    }
}
