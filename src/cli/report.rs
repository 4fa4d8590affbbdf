//! `nnquant report diff OLD NEW [--max-drop PP]`: the CI gate on accuracy regressions.

use crate::report::{diff, Report};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Compare two reports; exit code 1 when quantized top-1 drops by more than --max-drop.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Allowed drop of quantized top-1, in percentage points.
        #[arg(long, default_value_t = 0.0)]
        max_drop: f64,
        /// Allowed growth of the firmware's RAM in bytes (measured when both reports have a
        /// measurement, else the plan's estimate); without it RAM is not gated.
        #[arg(long)]
        max_ram_growth: Option<i64>,
        /// Allowed growth of the firmware's flash estimate in bytes; without it flash is not
        /// gated.
        #[arg(long)]
        max_flash_growth: Option<i64>,
        /// Machine-readable summary instead of Markdown.
        #[arg(long)]
        json: bool,
    },
}

fn read(p: &PathBuf) -> Result<Report> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read the report {}", p.display()))?;
    Report::from_json(&text, &p.display().to_string())
}

pub fn run(c: Cmd) -> Result<ExitCode> {
    match c {
        Cmd::Diff {
            old,
            new,
            max_drop,
            max_ram_growth,
            max_flash_growth,
            json,
        } => {
            anyhow::ensure!(
                max_drop.is_finite() && max_drop >= 0.0,
                "--max-drop must be a non-negative number of percentage points"
            );
            let (o, n) = (read(&old)?, read(&new)?);
            let d = diff::diff(&o, &n);
            let acc_failed = d.drop_pp.is_some_and(|p| p > max_drop + 1e-9);
            if (max_ram_growth.is_some() || max_flash_growth.is_some())
                && (o.firmware.is_none() || n.firmware.is_none())
            {
                anyhow::bail!(
                    "--max-ram-growth/--max-flash-growth need firmware figures in both reports; add them with `nnquant codegen --report` or `nnquant verify --report`"
                );
            }
            let ram_failed = matches!((d.ram_growth, max_ram_growth), (Some(g), Some(m)) if g > m);
            let flash_failed =
                matches!((d.flash_growth, max_flash_growth), (Some(g), Some(m)) if g > m);
            let failed = acc_failed || ram_failed || flash_failed;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "old_quant_top1": o.accuracy.quant_top1,
                        "new_quant_top1": n.accuracy.quant_top1,
                        "drop_pp": d.drop_pp,
                        "max_drop_pp": max_drop,
                        "ram_growth_bytes": d.ram_growth,
                        "flash_growth_bytes": d.flash_growth,
                        "failed": failed,
                    }))?
                );
            } else {
                print!("{}", d.markdown);
                match d.drop_pp {
                    Some(p) if acc_failed => println!(
                        "\nFAIL: quantized top-1 dropped by {p:.2} pp (allowed {max_drop:.2} pp)"
                    ),
                    Some(p) => println!(
                        "\nOK: quantized top-1 change {:+.2} pp (allowed drop {max_drop:.2} pp)",
                        -p
                    ),
                    None => println!("\nOK: no labelled accuracy to compare"),
                }
                if ram_failed {
                    println!(
                        "FAIL: firmware RAM grew by {} B (allowed {} B)",
                        d.ram_growth.unwrap_or(0),
                        max_ram_growth.unwrap_or(0)
                    );
                }
                if flash_failed {
                    println!(
                        "FAIL: firmware flash estimate grew by {} B (allowed {} B)",
                        d.flash_growth.unwrap_or(0),
                        max_flash_growth.unwrap_or(0)
                    );
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
