//! The `nnquant` command line: argument parsing and printing only; the work is in the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = nnquant::cli::Cli::parse();
    match nnquant::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One paragraph: the outermost context first, then each cause.
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
