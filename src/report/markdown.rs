//! The Markdown rendering of a report (the human-readable twin of the JSON file).

use super::Report;
use std::fmt::Write;

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.2} %", v * 100.0))
}

fn dims(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

/// A score as the search's objective reads it.
fn score(s: &super::Score) -> String {
    match (s.sqnr_db, s.cosine) {
        (Some(db), Some(c)) => format!("lowest SQNR {db:.3} dB, cosine {c:.5}"),
        _ => format!("{}/{} correct, KL {:.5}", s.correct, s.images, s.kl),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn render(r: &Report) -> String {
    let mut md = String::new();
    let a = &r.accuracy;
    let _ = writeln!(md, "# nnquant report: {}\n", r.model.name);
    for w in &r.quality_warnings {
        let _ = writeln!(md, "> **Warning:** {w}\n");
    }
    if r.same_data_warning {
        let _ = writeln!(md, "> **Warning:** calibration and evaluation use the same data; the accuracy below is not a held-out figure.\n");
    }
    let _ = writeln!(md, "| | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| model | `{}` + `{}` |",
        r.model.prototxt, r.model.weights
    );
    let _ = writeln!(
        md,
        "| calibration | `{}` ({} images) |",
        r.calibration.source, r.calibration.images
    );
    let _ = writeln!(
        md,
        "| evaluation | `{}` ({} images{}) |",
        r.evaluation.source,
        r.evaluation.images,
        r.evaluation
            .sha256
            .as_deref()
            .map_or(String::new(), |h| format!(
                ", sha256 {}",
                &h[..h.len().min(16)]
            ))
    );
    if let Some(p) = &r.preprocessing {
        let _ = writeln!(
            md,
            "| preprocessing | scale {}, mean {} (from {}) |",
            p.scale, p.mean, p.source
        );
    }
    let _ = writeln!(md, "| float top-1 | {} |", pct(a.float_top1));
    let _ = writeln!(md, "| quantized top-1 | {} |", pct(a.quant_top1));
    let _ = writeln!(
        md,
        "| top-1 agreement with float | {:.2} % |",
        a.top1_agreement * 100.0
    );
    let _ = writeln!(
        md,
        "| output SQNR | {:.2} dB{} |",
        a.output_sqnr_db,
        if r.outputs.len() > 1 {
            " (lowest output)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "| MACs per image | {} |", r.model.macs_per_image);
    let _ = writeln!(
        md,
        "| int8 weights + biases | {} B |",
        r.model.int8_param_bytes
    );
    let _ = writeln!(
        md,
        "| search | {} ({} evaluations) |",
        r.search.strategy, r.search.evaluations
    );

    if let Some(plot) = &r.plot {
        // Angle brackets: the file name may hold spaces or parentheses.
        let _ = writeln!(
            md,
            "\nPlots: [{plot}](<{plot}>) (every blob's SQNR against float, and its histogram with the chosen q7 range)."
        );
    }
    if let Some(p) = &r.preprocessing {
        for w in &p.warnings {
            let _ = writeln!(md, "\n> **Warning:** {w}");
        }
    }
    if !r.outputs.is_empty() {
        let _ = writeln!(md, "\n## Outputs (evaluation set, against the float blob of the same name)\n\nAgreement: rows whose arg-max equals float's (a vector is one row, a C×H×W map one row per position, otherwise one per last-axis slice).\n\n| output | shape | SQNR dB | cosine | agreement | rows per image |\n|---|---|---|---|---|---|");
        for o in &r.outputs {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.5} | {:.2} % | {} |",
                o.name,
                dims(&o.shape),
                o.sqnr_db,
                o.cosine,
                o.agreement * 100.0,
                o.rows_per_image
            );
        }
    }
    let _ = writeln!(md, "\n## Layers\n\nAccumulator headroom: bits the worst-case i32 accumulator over all int8 inputs stays below the i32 limit (the overflow proof).\n\n| layer | op | in frac | out frac | weight frac | bias frac | bias_lshift | out_rshift | saturated params | acc headroom (bits) |\n|---|---|---|---|---|---|---|---|---|---|");
    for l in &r.layers {
        // Per-channel layers show the range over their output channels.
        let pc =
            |f: fn(&crate::report::ChannelRanges) -> [i32; 2], one: String| match &l.per_channel {
                Some(p) => {
                    let [lo, hi] = f(p);
                    format!("{lo}..{hi} per channel")
                }
                None => one,
            };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.name,
            l.op,
            l.input_frac_bits,
            l.output_frac_bits,
            pc(|p| p.weight_frac_bits, opt(l.weight_frac_bits)),
            pc(|p| p.bias_frac_bits, opt(l.bias_frac_bits)),
            pc(|p| p.bias_lshift, opt(l.bias_lshift)),
            pc(|p| p.out_rshift, opt(l.out_rshift)),
            l.saturated_params,
            l.acc_headroom_bits
                .map_or("-".into(), |b| format!("{b:.2}"))
        );
    }
    let _ = writeln!(md, "\n## Activations (evaluation set)\n\n| blob | shape | frac bits | float max |x| | SQNR dB | at int8 limits |\n|---|---|---|---|---|---|");
    for b in &r.blobs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.4} | {:.2} | {} / {} |",
            b.name,
            dims(&b.shape),
            b.frac_bits,
            b.float_max_abs,
            b.sqnr_db,
            b.saturated,
            b.elements
        );
    }
    let s = &r.search;
    let screened = match s.screen_images {
        Some(n) => format!(
            "; {} evaluations on the whole search part, {} on a class-stratified screening subset of {n} images (each change is confirmed on the whole search part)",
            s.evaluations, s.screen_evaluations
        ),
        None => String::new(),
    };
    let objective = if s.objective.is_empty() {
        String::new()
    } else {
        format!("objective: {} ({})\n\n", s.objective, s.objective_reason)
    };
    let holdout = match &s.holdout {
        Some(h) => format!(
            "\n\nheld-out part ({} images, not searched on; a change is kept only if it does not make this part worse): start {}; final {}; {} change(s) refused, {} evaluations",
            h.images,
            score(&h.start_score),
            score(&h.final_score),
            h.rejected,
            h.evaluations
        ),
        None => String::new(),
    };
    if let Some(l) = &s.local {
        let _ = writeln!(
            md,
            "\n## Layer-local pass\n\nEach format chosen against the float blob of the layer's output on {} images of the search part ({} single-layer runs); proposal {}. SQNR of the layer's output (after its ReLU where only a ReLU reads it) with the layer's formats before the pass reached it, and after each coordinate.\n\n| layer | param | start frac | chosen frac | SQNR before dB | SQNR after dB |\n|---|---|---|---|---|---|",
            l.images,
            l.evaluations,
            if l.accepted { "kept" } else { "not kept (the end-to-end objective or the held-out part refused it)" }
        );
        if let Some(why) = &s.descent_skipped {
            let _ = writeln!(md, "\nNo coordinate descent: {why}.\n");
        }
        for st in &l.steps {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.2} | {:.2} |",
                st.layer,
                st.param,
                st.start_frac_bits,
                st.frac_bits,
                st.sqnr_before_db,
                st.sqnr_after_db
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Search ({})\n\n{objective}search part ({} images): start {}; final {}{screened}{holdout}\n\n| layer | param | frac bits | scored on | score | accepted |\n|---|---|---|---|---|---|",
        s.strategy,
        s.final_score.images,
        score(&s.start_score),
        score(&s.final_score)
    );
    for t in &s.trace {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            t.layer,
            t.param,
            t.frac_bits,
            if t.screen {
                "screen"
            } else if t.holdout {
                "held-out"
            } else {
                "search part"
            },
            score(&t.score),
            match (t.accepted, t.screen, t.holdout) {
                (true, true, _) => "best on screen",
                (true, false, true) => "not worse",
                (false, false, true) => "refused",
                (true, false, false) => "yes",
                _ => "",
            }
        );
    }
    if let Some(f) = &r.firmware {
        let _ = writeln!(
            md,
            "\n## Firmware ({})\n\n| | bytes |\n|---|---|\n| arena (static) | {} |\n| kernel scratch outside the arena | {} |\n| RAM estimate (with stack reserve) | {} |\n| weights + biases (flash) | {} |\n| flash estimate (with code reserve) | {} |",
            f.target, f.arena_bytes, f.scratch_bytes, f.ram_estimate_bytes, f.flash_param_bytes, f.flash_estimate_bytes
        );
        if let Some(m) = &f.measured {
            let _ = writeln!(
                md,
                "| measured stack high-water | {} |\n| measured total RAM | {} |\n| measured flash (.text + .rodata + .data) | {} |",
                m.stack_high_water_bytes, m.total_ram_bytes, m.flash_bytes
            );
            if let Some(n) = m.instructions_per_inference {
                let _ = writeln!(md, "\nExecuted instructions per inference: {n}\n\n| step | instructions |\n|---|---|");
                for (s, n) in &m.per_step_instructions {
                    let _ = writeln!(md, "| {s} | {n} |");
                }
            }
        }
    }
    if let Some(e) = &r.equalization {
        let _ = writeln!(
            md,
            "\n## Cross-layer equalization\n\n{} producer/consumer pairs, {} rounds; power-of-two channel scales (the float model is unchanged).\n\n| producer | consumers | channels scaled | weight range spread before | after |\n|---|---|---:|---:|---:|",
            e.pairs.len(),
            e.rounds
        );
        for p in &e.pairs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.1} |",
                p.producer,
                p.consumers.join(", "),
                p.channels_scaled,
                p.producer_spread_before,
                p.producer_spread_after
            );
        }
    }
    if let Some(e) = &r.activation_equalization {
        let _ = writeln!(
            md,
            "\n## Activation equalization\n\n{} convolutions feeding depthwise ones, channel ranges from {} calibration images; power-of-two channel scales (the float model is unchanged, the int8 weights too). Range use: mean channel max-abs / blob max-abs.\n\n| producer | depthwise consumers | blob | channels scaled | range use before | after |\n|---|---|---|---:|---:|---:|",
            e.pairs.len(),
            e.images
        );
        for p in &e.pairs {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {}/{} | {:.2} | {:.2} |",
                p.producer,
                p.consumers.join(", "),
                p.blob,
                p.channels_scaled,
                p.channels,
                p.range_use_before,
                p.range_use_after
            );
        }
    }
    if let Some(t) = &r.timing {
        let _ = writeln!(
            md,
            "\n## Timing\n\nfloat {:.2} s (kernels {}), search {:.2} s (local pass {:.2} s; simulator: screening {:.2} s, search part {:.2} s, held-out part {:.2} s; path {}), evaluation {:.2} s",
            t.float_seconds,
            t.float_path,
            t.search_seconds,
            t.search_local_seconds,
            t.search_screen_seconds,
            t.search_full_seconds,
            t.search_holdout_seconds,
            t.simd_path,
            t.eval_seconds
        );
    }
    md
}
