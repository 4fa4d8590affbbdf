//! `nnquant report diff OLD NEW [--max-drop PP] …`: the CI gate on regressions;
//! `nnquant report render R.json`: its Markdown and SVG twins again, from the JSON.

use crate::report::{diff, Report};
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Compare two reports; exit code 1 when a gate fails (quantized top-1 dropped by more than
    /// --max-drop, a report is unlabelled, the evaluation data differ, or a given SQNR /
    /// agreement / memory threshold is exceeded), 0 when all pass.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Allowed drop of quantized top-1, in percentage points.
        #[arg(long, default_value_t = 0.0)]
        max_drop: f64,
        /// Allowed drop of the output SQNR, in dB; without it SQNR is not gated.
        #[arg(long)]
        max_sqnr_drop: Option<f64>,
        /// Allowed drop of top-1 agreement with float, in percentage points; without it
        /// agreement is not gated.
        #[arg(long)]
        max_agreement_drop: Option<f64>,
        /// Allowed growth of the firmware's RAM in bytes (measured when both reports have a
        /// measurement, else the plan's estimate); without it RAM is not gated.
        #[arg(long)]
        max_ram_growth: Option<i64>,
        /// Allowed growth of the firmware's flash estimate in bytes; without it flash is not
        /// gated.
        #[arg(long)]
        max_flash_growth: Option<i64>,
        /// Pass although a report has no labelled accuracy (default: fail, nothing was compared).
        #[arg(long)]
        allow_unlabelled: bool,
        /// Pass although the reports were evaluated on different (or, for old reports, unknown)
        /// data (default: fail, the figures are not comparable).
        #[arg(long)]
        allow_data_change: bool,
        /// Machine-readable summary instead of Markdown.
        #[arg(long)]
        json: bool,
    },
    /// Write a report's Markdown (R.md) and plots (R.svg) beside it again from its JSON, e.g.
    /// for a report of an older version (its plots then have no histograms); the JSON is
    /// rewritten to name the plots.
    Render { report: PathBuf },
}

fn read(p: &std::path::Path) -> Result<Report> {
    let text = crate::fsio::read_text(p, "the report")?;
    Report::from_json(&text, &p.display().to_string())
}

fn non_negative(v: Option<f64>, flag: &str) -> Result<()> {
    if let Some(v) = v {
        anyhow::ensure!(
            v.is_finite() && v >= 0.0,
            "{flag} must be a non-negative number, got {v}"
        );
    }
    Ok(())
}

pub fn run(c: Cmd) -> Result<ExitCode> {
    match c {
        Cmd::Render { report } => {
            let mut r = read(&report)?;
            let mut out = crate::fsio::Outputs::new();
            crate::report::add_files(&mut out, &report, &mut r)?;
            out.commit()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Diff {
            old,
            new,
            max_drop,
            max_sqnr_drop,
            max_agreement_drop,
            max_ram_growth,
            max_flash_growth,
            allow_unlabelled,
            allow_data_change,
            json,
        } => {
            non_negative(Some(max_drop), "--max-drop")?;
            non_negative(max_sqnr_drop, "--max-sqnr-drop")?;
            non_negative(max_agreement_drop, "--max-agreement-drop")?;
            let (o, n) = (read(&old)?, read(&new)?);
            if (max_ram_growth.is_some() || max_flash_growth.is_some())
                && (o.firmware.is_none() || n.firmware.is_none())
            {
                anyhow::bail!(
                    "--max-ram-growth/--max-flash-growth need firmware figures in both reports; add them with `nnquant codegen --report` or `nnquant verify --report`"
                );
            }
            let d = diff::diff(&o, &n);
            let limits = diff::Limits {
                max_drop_pp: max_drop,
                max_sqnr_drop_db: max_sqnr_drop,
                max_agreement_drop_pp: max_agreement_drop,
                max_ram_growth,
                max_flash_growth,
                allow_unlabelled,
                allow_data_change,
            };
            let reasons = diff::gate(&o, &n, &d, &limits);
            let failed = !reasons.is_empty();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "old_quant_top1": o.accuracy.quant_top1,
                        "new_quant_top1": n.accuracy.quant_top1,
                        "drop_pp": d.drop_pp,
                        "max_drop_pp": max_drop,
                        "sqnr_drop_db": o.accuracy.output_sqnr_db - n.accuracy.output_sqnr_db,
                        "agreement_drop_pp": (o.accuracy.top1_agreement - n.accuracy.top1_agreement) * 100.0,
                        "same_data": matches!((&o.evaluation.sha256, &n.evaluation.sha256), (Some(a), Some(b)) if a == b),
                        "ram_growth_bytes": d.ram_growth,
                        "flash_growth_bytes": d.flash_growth,
                        "failed": failed,
                        "reasons": reasons,
                    }))?
                );
            } else {
                print!("{}", d.markdown);
                println!();
                for r in &reasons {
                    println!("FAIL: {r}");
                }
                if !failed {
                    match d.drop_pp {
                        Some(p) => println!(
                            "OK: quantized top-1 change {:+.2} pp (allowed drop {max_drop:.2} pp)",
                            0.0 - p
                        ),
                        None => {
                            println!("OK: no labelled accuracy to compare (--allow-unlabelled)")
                        }
                    }
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
