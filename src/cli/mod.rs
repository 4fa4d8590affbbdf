//! Subcommands, one file each. Every subcommand returns an exit code or an error; `main` turns an
//! error into a one-paragraph message and exit code 2.

pub mod build;
mod codegen;
mod data_args;
mod eval;
mod inspect;
mod quantize;
mod report;
mod verify;

use anyhow::{ensure, Result};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "nnquant",
    version,
    about = "Caffe CNN → bit-exact int8 firmware for ARM Cortex-M"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the layers of a Caffe model: shapes, parameters, MACs, memory.
    Inspect(inspect::Args),
    /// Accuracy of the float model or of a quantized model (bit-exact simulator) on a data set.
    Eval(eval::Args),
    /// Search per-layer fixed-point formats and write the quantized model and a report.
    Quantize(Box<quantize::Args>),
    /// Work with reports.
    #[command(subcommand)]
    Report(report::Cmd),
    /// Generate the firmware crate (Tera templates) of a quantized model.
    Codegen(codegen::Cli),
    /// Build and run the firmware (QEMU or host) and compare every output byte with the simulator.
    Verify(verify::Cli),
    /// Quantize → codegen (→ verify) from one nnquant.toml, skipping unchanged steps.
    Build(build::Args),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    crate::allocator::tune();
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Quantize(a) => quantize::run(*a),
        Command::Report(c) => report::run(c),
        Command::Codegen(a) => codegen::run_cli(a),
        Command::Verify(a) => verify::run_cli(a),
        Command::Build(a) => build::run(a),
    }
}

/// A shape given on the command line as `C,H,W`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeArg(pub Vec<usize>);

impl std::str::FromStr for ShapeArg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_shape(s).map(ShapeArg)
    }
}

/// Parse `C,H,W` (or any rank) into a shape.
pub fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let v: Vec<usize> = s
        .split([',', 'x', '×'])
        .map(|p| {
            p.trim()
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("'{s}' is not a shape like 3,32,32"))
        })
        .collect::<Result<_>>()?;
    ensure!(
        !v.is_empty() && v.iter().all(|&d| d > 0),
        "'{s}' is not a shape like 3,32,32"
    );
    Ok(v)
}
