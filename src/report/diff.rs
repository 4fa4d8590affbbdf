//! `nnquant report diff OLD NEW`: what changed between two reports, and the CI gate: whether
//! accuracy, agreement, SQNR or memory moved beyond the thresholds, and whether the comparison
//! means anything at all (both reports labelled, both measured on the same data).

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
    let data = match (&old.evaluation.sha256, &new.evaluation.sha256) {
        (Some(a), Some(b)) if a == b => format!("same (sha256 {})", &a[..a.len().min(16)]),
        (Some(_), Some(_)) => "**different**".to_string(),
        _ => "**unknown** (a report has no data hash)".to_string(),
    };
    let _ = writeln!(
        md,
        "Evaluation data: {data}; old `{}` ({} images), new `{}` ({} images).\n",
        old.evaluation.source, old.evaluation.images, new.evaluation.source, new.evaluation.images
    );
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

/// The thresholds of the gate (`None`: not gated) and what it may overlook.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Allowed drop of quantized top-1, percentage points.
    pub max_drop_pp: f64,
    pub max_sqnr_drop_db: Option<f64>,
    pub max_agreement_drop_pp: Option<f64>,
    pub max_ram_growth: Option<i64>,
    pub max_flash_growth: Option<i64>,
    /// Pass even when a report has no labelled accuracy (nothing to compare).
    pub allow_unlabelled: bool,
    /// Pass even when the evaluation data differ or are unknown (reports without a data hash).
    pub allow_data_change: bool,
}

/// Why the gate fails: one sentence per reason, empty when it passes.
pub fn gate(old: &Report, new: &Report, d: &DiffOutcome, l: &Limits) -> Vec<String> {
    let mut why = Vec::new();
    for (which, r) in [("old", old), ("new", new)] {
        if r.accuracy.quant_top1.is_none() && !l.allow_unlabelled {
            why.push(format!("the {which} report has no labelled accuracy (its evaluation data had no labels), so a drop cannot be measured; evaluate on labelled data or pass --allow-unlabelled"));
        }
    }
    match (&old.evaluation.sha256, &new.evaluation.sha256) {
        (Some(a), Some(b)) if a == b => {}
        _ if l.allow_data_change => {}
        (Some(_), Some(_)) => why.push(format!(
            "the reports were evaluated on different data ({} images of {} vs {} images of {}; the content hashes differ), so their figures are not comparable; pass --allow-data-change to compare anyway",
            old.evaluation.images, old.evaluation.source, new.evaluation.images, new.evaluation.source
        )),
        _ => why.push("a report has no evaluation data hash (made by an older nnquant), so it is unknown whether both were evaluated on the same data; quantize again or pass --allow-data-change".to_string()),
    }
    if let Some(p) = d.drop_pp.filter(|&p| p > l.max_drop_pp + 1e-9) {
        why.push(format!(
            "quantized top-1 dropped by {p:.2} pp (allowed {:.2} pp)",
            l.max_drop_pp
        ));
    }
    if let Some(m) = l.max_sqnr_drop_db {
        let drop = old.accuracy.output_sqnr_db - new.accuracy.output_sqnr_db;
        if drop > m + 1e-9 {
            why.push(format!(
                "output SQNR dropped by {drop:.2} dB (allowed {m:.2} dB)"
            ));
        }
    }
    if let Some(m) = l.max_agreement_drop_pp {
        let drop = (old.accuracy.top1_agreement - new.accuracy.top1_agreement) * 100.0;
        if drop > m + 1e-9 {
            why.push(format!(
                "top-1 agreement with float dropped by {drop:.2} pp (allowed {m:.2} pp)"
            ));
        }
    }
    if let (Some(g), Some(m)) = (d.ram_growth, l.max_ram_growth) {
        if g > m {
            why.push(format!("firmware RAM grew by {g} B (allowed {m} B)"));
        }
    }
    if let (Some(g), Some(m)) = (d.flash_growth, l.max_flash_growth) {
        if g > m {
            why.push(format!(
                "firmware flash estimate grew by {g} B (allowed {m} B)"
            ));
        }
    }
    why
}
