//! `nnquant report diff OLD NEW`: what changed between two reports, and whether accuracy dropped
//! by more than a threshold (the CI gate).

use super::Report;
use std::fmt::Write;

pub struct DiffOutcome {
    pub markdown: String,
    /// Quantized top-1 drop in percentage points (positive = worse); `None` without labels.
    pub drop_pp: Option<f64>,
    /// Growth of the firmware's RAM / flash in bytes (negative = smaller); `None` unless both
    /// reports carry firmware figures.
    pub ram_growth: Option<i64>,
    pub flash_growth: Option<i64>,
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.2} %", v * 100.0))
}

fn fb(v: Option<i32>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn diff(old: &Report, new: &Report) -> DiffOutcome {
    let mut md = String::new();
    let drop_pp = match (old.accuracy.quant_top1, new.accuracy.quant_top1) {
        (Some(a), Some(b)) => Some((a - b) * 100.0),
        _ => None,
    };
    let _ = writeln!(
        md,
        "## Accuracy\n\n| | old | new | change |\n|---|---|---|---|"
    );
    let row = |md: &mut String, name: &str, a: Option<f64>, b: Option<f64>| {
        let ch = match (a, b) {
            (Some(a), Some(b)) => format!("{:+.2} pp", (b - a) * 100.0),
            _ => "n/a".into(),
        };
        let _ = writeln!(md, "| {name} | {} | {} | {ch} |", pct(a), pct(b));
    };
    row(
        &mut md,
        "float top-1",
        old.accuracy.float_top1,
        new.accuracy.float_top1,
    );
    row(
        &mut md,
        "quantized top-1",
        old.accuracy.quant_top1,
        new.accuracy.quant_top1,
    );
    row(
        &mut md,
        "top-1 agreement",
        Some(old.accuracy.top1_agreement),
        Some(new.accuracy.top1_agreement),
    );
    let _ = writeln!(
        md,
        "| output SQNR | {:.2} dB | {:.2} dB | {:+.2} dB |",
        old.accuracy.output_sqnr_db,
        new.accuracy.output_sqnr_db,
        new.accuracy.output_sqnr_db - old.accuracy.output_sqnr_db
    );

    let mut fmt_rows = Vec::new();
    for n in &new.layers {
        match old.layers.iter().find(|o| o.name == n.name) {
            None => fmt_rows.push(format!(
                "| {} | (new layer) | w {} b {} out {} |",
                n.name,
                fb(n.weight_frac_bits),
                fb(n.bias_frac_bits),
                n.output_frac_bits
            )),
            Some(o)
                if (o.weight_frac_bits, o.bias_frac_bits, o.output_frac_bits)
                    != (n.weight_frac_bits, n.bias_frac_bits, n.output_frac_bits) =>
            {
                fmt_rows.push(format!(
                    "| {} | w {} b {} out {} | w {} b {} out {} |",
                    n.name,
                    fb(o.weight_frac_bits),
                    fb(o.bias_frac_bits),
                    o.output_frac_bits,
                    fb(n.weight_frac_bits),
                    fb(n.bias_frac_bits),
                    n.output_frac_bits
                ));
            }
            _ => {}
        }
    }
    for o in &old.layers {
        if !new.layers.iter().any(|n| n.name == o.name) {
            fmt_rows.push(format!(
                "| {} | w {} b {} out {} | (removed) |",
                o.name,
                fb(o.weight_frac_bits),
                fb(o.bias_frac_bits),
                o.output_frac_bits
            ));
        }
    }
    let _ = writeln!(md, "\n## Formats (fraction bits)\n");
    if fmt_rows.is_empty() {
        let _ = writeln!(md, "No format changed.");
    } else {
        let _ = writeln!(md, "| layer | old | new |\n|---|---|---|");
        for r in fmt_rows {
            let _ = writeln!(md, "{r}");
        }
    }

    let _ = writeln!(
        md,
        "\n## SQNR per blob (dB)\n\n| blob | old | new | change |\n|---|---|---|---|"
    );
    for n in &new.blobs {
        if let Some(o) = old.blobs.iter().find(|o| o.name == n.name) {
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | {:+.2} |",
                n.name,
                o.sqnr_db,
                n.sqnr_db,
                n.sqnr_db - o.sqnr_db
            );
        }
    }
    let (mut ram_growth, mut flash_growth) = (None, None);
    if let (Some(a), Some(b)) = (&old.firmware, &new.firmware) {
        // Measured RAM only when both reports have a measurement (like for like).
        let both = a.measured.is_some() && b.measured.is_some();
        let ram = |f: &crate::report::FirmwareFigures| match (&f.measured, both) {
            (Some(m), true) => m.total_ram_bytes as i64,
            _ => f.ram_estimate_bytes as i64,
        };
        let (ra, rb) = (ram(a), ram(b));
        let (fa, fb) = (a.flash_bytes() as i64, b.flash_bytes() as i64);
        ram_growth = Some(rb - ra);
        flash_growth = Some(fb - fa);
        let _ = writeln!(
            md,
            "\n## Firmware memory ({} → {})\n\n| | old | new | change |\n|---|---|---|---|\n| RAM{} | {ra} B | {rb} B | {:+} B |\n| flash estimate | {fa} B | {fb} B | {:+} B |",
            a.target,
            b.target,
            if both { " (measured)" } else { " (estimate)" },
            rb - ra,
            fb - fa
        );
    }
    DiffOutcome {
        markdown: md,
        drop_pp,
        ram_growth,
        flash_growth,
    }
}
