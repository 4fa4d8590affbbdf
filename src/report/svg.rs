//! The report's plots as one plain SVG written beside report.md (no script, generic font
//! families only): (1) the SQNR of every blob against float in network order and, where the
//! layer-local pass ran, each layer's SQNR before and after it; (2) one small chart per blob:
//! the histogram of its float values on the calibration set (log counts) with the chosen q7
//! range `[-2^(7-f), 2^(7-f)·127/128]` and the float max |x| drawn over it.
//!
//! Hand-written strings with every number formatted to one decimal (or a fixed number of
//! significant digits in labels): the same report gives the same bytes. Names are XML-escaped.
//! Tooltips are SVG `<title>` elements, which viewers show without script.

use super::{BlobReport, Report};
use std::fmt::Write;

const WIDTH: f64 = 1200.0;
const MARGIN: f64 = 20.0;
/// Bar charts: room for the y labels on the left, the rotated blob names below.
const CHART_LEFT: f64 = 60.0;
const CHART_PLOT_H: f64 = 200.0;
const CHART_LABELS_H: f64 = 100.0;
/// Small multiples.
const COLUMNS: usize = 5;
const CELL_H: f64 = 150.0;
const CELL_PLOT_TOP: f64 = 34.0;
const CELL_PLOT_H: f64 = 96.0;
/// Blob names longer than this are cut (the whole name is in the tooltip).
const NAME_CHARS: usize = 30;
const LABEL_CHARS: usize = 18;

const BAR: &str = "#4c78a8";
const BEFORE: &str = "#bab0ac";
const AFTER: &str = "#f58518";
const RANGE: &str = "#d62728";
const MAXABS: &str = "#1f77b4";
const HIST: &str = "#9ecae1";

/// XML text or attribute value.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// At most `n` characters (not bytes), with an ellipsis when cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}

/// A coordinate: one decimal, no negative zero, and a hand-edited report's non-finite numbers
/// drawn at 0 rather than written as `NaN`.
fn c(x: f64) -> String {
    let x = if x.is_finite() { x } else { 0.0 };
    let s = format!("{x:.1}");
    if s == "-0.0" {
        "0.0".into()
    } else {
        s
    }
}

/// A value in a label: four significant digits, trailing zeros cut; exponent form when very
/// large or small.
fn num(x: f64) -> String {
    if !x.is_finite() {
        return "?".into();
    }
    let a = x.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{x:.2e}");
    }
    let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// `2^k` for a fraction-bit count from a report (clamped: a hand-edited report may hold any i32).
fn pow2(k: i64) -> f64 {
    2f64.powi(k.clamp(-1000, 1000) as i32)
}

/// The q7 range of a blob with `f` fraction bits: `[-2^(7-f), 2^(7-f)·127/128]`.
pub fn q7_range(f: i32) -> (f64, f64) {
    let r = pow2(7 - f as i64);
    (-r, r * 127.0 / 128.0)
}

/// One bar of a bar chart: `values` side by side (e.g. before/after), each with its colour.
struct Group<'a> {
    label: &'a str,
    values: Vec<(f64, &'static str, String)>,
}

/// A bar chart of dB values at `top`; returns its height.
fn bar_chart(svg: &mut String, top: f64, title: &str, groups: &[Group]) -> f64 {
    let plot_w = WIDTH - CHART_LEFT - MARGIN;
    let y0 = top + 30.0;
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        c(MARGIN),
        c(top + 16.0),
        escape(title)
    );
    let finite = || {
        groups
            .iter()
            .flat_map(|g| g.values.iter().map(|v| v.0))
            .filter(|v| v.is_finite())
    };
    // dB axis in steps of 10 from min(0, lowest) to the highest, at most 60 (exact blobs
    // report 200 dB; their bars are cut and marked).
    let hi = finite().fold(10.0f64, f64::max);
    let lo = finite().fold(0.0f64, f64::min);
    let ymax = ((hi / 10.0).ceil() * 10.0).clamp(10.0, 60.0);
    let ymin = ((lo / 10.0).floor() * 10.0).max(-60.0);
    let y = |v: f64| y0 + (ymax - v.clamp(ymin, ymax)) / (ymax - ymin) * CHART_PLOT_H;
    let mut t = ymin;
    while t <= ymax {
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="1"/><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"##,
            c(CHART_LEFT),
            c(y(t)),
            c(CHART_LEFT + plot_w),
            c(y(t)),
            if t == 0.0 { "#888888" } else { "#e4e4e4" },
            c(CHART_LEFT - 4.0),
            c(y(t) + 3.5),
            num(t)
        );
        t += 10.0;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="10" text-anchor="middle" transform="rotate(-90 {} {})">SQNR (dB)</text>"#,
        c(16.0),
        c(y0 + CHART_PLOT_H / 2.0),
        c(16.0),
        c(y0 + CHART_PLOT_H / 2.0)
    );
    let n = groups.len().max(1) as f64;
    let slot = plot_w / n;
    // Names at least 11 px apart (every k-th on a deep net; each bar's tooltip names it).
    let every = (11.0 / slot).ceil().max(1.0) as usize;
    for (i, g) in groups.iter().enumerate() {
        let x = CHART_LEFT + slot * i as f64;
        let k = g.values.len().max(1) as f64;
        let w = slot * 0.8 / k;
        for (j, (v, colour, tip)) in g.values.iter().enumerate() {
            let bx = x + slot * 0.1 + w * j as f64;
            let (ya, yb) = (y(v.max(0.0)), y(v.min(0.0)));
            let _ = writeln!(
                svg,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{colour}"><title>{}</title></rect>"#,
                c(bx),
                c(ya),
                c(w),
                c(yb - ya),
                escape(tip)
            );
            if *v > ymax || !v.is_finite() {
                // Cut bar: a marker and its value above it.
                let _ = writeln!(
                    svg,
                    r#"<path d="M{} {}h{}l{} -5z" fill="{colour}"/><text x="{}" y="{}" font-size="9" text-anchor="middle">{}</text>"#,
                    c(bx),
                    c(y0 - 1.0),
                    c(w),
                    c(-w / 2.0),
                    c(bx + w / 2.0),
                    c(y0 - 8.0),
                    num(*v)
                );
            }
        }
        if i % every != 0 {
            continue;
        }
        let lx = x + slot / 2.0 + 3.0;
        let ly = y0 + CHART_PLOT_H + 8.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="9" text-anchor="end" transform="rotate(-60 {} {})">{}</text>"#,
            c(lx),
            c(ly),
            c(lx),
            c(ly),
            escape(&cut(g.label, LABEL_CHARS))
        );
    }
    30.0 + CHART_PLOT_H + CHART_LABELS_H
}

/// Per layer of the layer-local pass, in its order: SQNR before the pass reached the layer
/// (its first coordinate's "before") and after its last coordinate.
fn local_groups(r: &Report) -> Vec<Group<'_>> {
    let Some(l) = &r.search.local else {
        return vec![];
    };
    let mut groups: Vec<(&str, f64, f64)> = vec![];
    for s in &l.steps {
        match groups.last_mut() {
            Some(g) if g.0 == s.layer => g.2 = s.sqnr_after_db,
            _ => groups.push((&s.layer, s.sqnr_before_db, s.sqnr_after_db)),
        }
    }
    groups
        .into_iter()
        .map(|(name, before, after)| Group {
            label: name,
            values: vec![
                (
                    before,
                    BEFORE,
                    format!("{name}: {} dB before the layer-local pass", num(before)),
                ),
                (after, AFTER, format!("{name}: {} dB after it", num(after))),
            ],
        })
        .collect()
}

/// One blob's small chart, its top-left corner at (x, y).
fn cell(svg: &mut String, x: f64, y: f64, w: f64, b: &BlobReport) {
    let (qlo, qhi) = q7_range(b.frac_bits);
    let h = b.histogram.as_ref();
    let max_abs = h.map_or(b.float_max_abs, |h| h.max_abs as f64);
    // The x axis covers the histogram's range and the q7 range, symmetric around 0.
    let hist_hi = h.map_or(0.0, |h| h.hi.abs().max(h.lo.abs()));
    let xr = [hist_hi, -qlo, max_abs]
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let xr = if xr > 0.0 { xr } else { 1.0 };
    let (px, pw) = (x + 6.0, w - 12.0);
    let top = y + CELL_PLOT_TOP;
    let base = top + CELL_PLOT_H;
    let sx = |v: f64| px + (v.clamp(-xr, xr) + xr) / (2.0 * xr) * pw;
    let tip = format!(
        "{}: frac bits {}, q7 range [{}, {}], float max |x| {} (calibration), SQNR {} dB, {} of {} values at the int8 limits (evaluation)",
        b.name,
        b.frac_bits,
        num(qlo),
        num(qhi),
        num(max_abs),
        num(b.sqnr_db),
        b.saturated,
        b.elements
    );
    let _ = writeln!(svg, "<g><title>{}</title>", escape(&tip));
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" font-weight="bold">{}</text>"#,
        c(px),
        c(y + 12.0),
        escape(&cut(&b.name, NAME_CHARS))
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="10">f={} range ±{} · SQNR {} dB</text>"#,
        c(px),
        c(y + 26.0),
        b.frac_bits,
        num(-qlo),
        num(b.sqnr_db)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#fafafa" stroke="#cccccc" stroke-width="0.5"/>"##,
        c(px),
        c(top),
        c(pw),
        c(CELL_PLOT_H)
    );
    match h.filter(|h| !h.counts.is_empty() && h.lo.is_finite() && h.hi.is_finite() && h.lo < h.hi)
    {
        Some(h) => {
            // log counts: a bin of n values is log(1 + n) / log(1 + most) of the height; one
            // step path over all bins (consecutive equal heights merged).
            let most = h.counts.iter().copied().max().unwrap_or(0);
            let scale = if most > 0 {
                CELL_PLOT_H / (1.0 + most as f64).ln()
            } else {
                0.0
            };
            let bw = (h.hi - h.lo) / h.counts.len() as f64;
            let mut d = format!("M{} {}", c(sx(h.lo)), c(base));
            let mut last = c(base);
            for (i, &n) in h.counts.iter().enumerate() {
                let yy = c(base - (1.0 + n as f64).ln() * scale);
                if yy != last {
                    let _ = write!(d, "H{}V{}", c(sx(h.lo + bw * i as f64)), yy);
                    last = yy;
                }
            }
            let _ = write!(d, "H{}V{}Z", c(sx(h.hi)), c(base));
            let _ = writeln!(svg, r#"<path d="{d}" fill="{HIST}" stroke="none"/>"#);
        }
        None => {
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" font-size="9" fill="#888888" text-anchor="middle">no histogram in this report</text>"##,
                c(px + pw / 2.0),
                c(top + CELL_PLOT_H / 2.0)
            );
        }
    }
    // Zero, the q7 range (solid), the float max |x| (dashed).
    let vline = |svg: &mut String, v: f64, colour: &str, extra: &str| {
        let _ = writeln!(
            svg,
            r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="{colour}" stroke-width="1.2"{extra}/>"#,
            c(sx(v)),
            c(top),
            c(base)
        );
    };
    vline(svg, 0.0, "#888888", r#" stroke-opacity="0.5""#);
    vline(svg, qlo, RANGE, "");
    vline(svg, qhi, RANGE, "");
    if max_abs > 0.0 {
        vline(svg, -max_abs, MAXABS, r#" stroke-dasharray="3 2""#);
        vline(svg, max_abs, MAXABS, r#" stroke-dasharray="3 2""#);
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="9">{}</text><text x="{}" y="{}" font-size="9" text-anchor="end">{}</text>"#,
        c(px),
        c(base + 11.0),
        num(-xr),
        c(px + pw),
        c(base + 11.0),
        num(xr)
    );
    let _ = writeln!(svg, "</g>");
}

/// The whole SVG document.
pub fn render(r: &Report) -> String {
    let blobs: Vec<Group> = r
        .blobs
        .iter()
        .map(|b| Group {
            label: &b.name,
            values: vec![(
                b.sqnr_db,
                BAR,
                format!(
                    "{}: {} dB (frac bits {})",
                    b.name,
                    num(b.sqnr_db),
                    b.frac_bits
                ),
            )],
        })
        .collect();
    let local = local_groups(r);
    let chart_h = 30.0 + CHART_PLOT_H + CHART_LABELS_H;
    let rows = r.blobs.len().div_ceil(COLUMNS);
    let height = 40.0
        + chart_h
        + if local.is_empty() { 0.0 } else { chart_h }
        + 50.0
        + rows as f64 * CELL_H
        + MARGIN;

    let mut svg = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">"#,
        w = c(WIDTH),
        h = c(height)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{}" height="{}" fill="#ffffff"/>"##,
        c(WIDTH),
        c(height)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="18" font-weight="bold">nnquant report: {}</text>"#,
        c(MARGIN),
        c(28.0),
        escape(&r.model.name)
    );
    let mut y = 40.0;
    y += bar_chart(
        &mut svg,
        y,
        &format!(
            "SQNR of every blob, float → q7, in network order (evaluation set, {} images)",
            r.evaluation.images
        ),
        &blobs,
    );
    if !local.is_empty() {
        let images = r.search.local.as_ref().map_or(0, |l| l.images);
        y += bar_chart(
            &mut svg,
            y,
            &format!("Layer-local pass: SQNR of each layer's output before (grey) and after (orange) ({images} calibration images)"),
            &local,
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">Each blob: histogram of its float values on the calibration set (log counts)</text>"#,
        c(MARGIN),
        c(y + 16.0)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="10"><tspan fill="{RANGE}">red: the q7 range [−2^(7−f), 2^(7−f)·127/128]</tspan>; <tspan fill="{MAXABS}">blue dashed: ±float max |x| (calibration)</tspan>; f = the blob's fraction bits; SQNR on the evaluation set</text>"#,
        c(MARGIN),
        c(y + 34.0)
    );
    y += 50.0;
    let cw = (WIDTH - 2.0 * MARGIN) / COLUMNS as f64;
    for (i, b) in r.blobs.iter().enumerate() {
        let (row, col) = (i / COLUMNS, i % COLUMNS);
        cell(
            &mut svg,
            MARGIN + col as f64 * cw,
            y + row as f64 * CELL_H,
            cw,
            b,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::histogram::{Histogram, HistogramAcc};
    use crate::report::*;

    fn score() -> Score {
        Score {
            correct: 1,
            images: 2,
            kl: 0.0,
            sqnr_db: None,
            cosine: None,
        }
    }

    fn blob(name: &str, f: i32, sqnr: f64, h: Option<Histogram>) -> BlobReport {
        BlobReport {
            name: name.into(),
            shape: vec![4, 2, 2],
            frac_bits: f,
            float_max_abs: 1.5,
            sqnr_db: sqnr,
            saturated: 3,
            elements: 100,
            histogram: h,
        }
    }

    fn report(model: &str, blobs: Vec<BlobReport>, local: Option<LocalReport>) -> Report {
        let data = DataInfo {
            source: "d".into(),
            images: 10,
            labelled: false,
            sha256: None,
        };
        Report {
            schema: SCHEMA.into(),
            model: ModelInfo {
                name: model.into(),
                prototxt: "p".into(),
                prototxt_sha256: String::new(),
                weights: "w".into(),
                weights_sha256: String::new(),
                macs_per_image: 0,
                int8_param_bytes: 0,
            },
            calibration: data.clone(),
            evaluation: data,
            same_data_warning: false,
            accuracy: Accuracy {
                images: 10,
                float_top1: None,
                quant_top1: None,
                float_correct: None,
                quant_correct: None,
                top1_agreement: 1.0,
                output_sqnr_db: 20.0,
            },
            layers: vec![],
            blobs,
            search: SearchReport {
                strategy: "none".into(),
                evaluations: 0,
                screen_images: None,
                screen_evaluations: 0,
                objective: String::new(),
                objective_reason: String::new(),
                start_score: score(),
                final_score: score(),
                holdout: None,
                local,
                descent_skipped: None,
                trace: vec![],
            },
            timing: None,
            preprocessing: None,
            quality_warnings: vec![],
            equalization: None,
            activation_equalization: None,
            outputs: vec![],
            firmware: None,
            plot: None,
        }
    }

    fn step(layer: &str, before: f64, after: f64) -> LocalStep {
        LocalStep {
            layer: layer.into(),
            param: "weight".into(),
            start_frac_bits: 3,
            frac_bits: 4,
            sqnr_before_db: before,
            sqnr_after_db: after,
        }
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg)
            .unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{svg}"))
    }

    #[test]
    fn a_full_report_is_well_formed_xml_without_nan() {
        let hist = HistogramAcc::of(&[0.0, 0.5, -1.25, 3.0, 3.0, -0.01]).finish();
        let zeros = HistogramAcc::of(&[0.0; 10]).finish();
        let mut blobs = vec![
            blob("data", 7, 200.0, Some(hist.clone())),
            blob("conv1", 5, 31.25, Some(hist)),
            blob("zeros", 3, 0.0, Some(zeros)),
            blob("old", 4, -12.0, None),
            blob("extreme", i32::MIN, f64::NAN, None),
            blob("wide", 64, f64::INFINITY, None),
        ];
        // A hand-edited report: a histogram with no bins, one with its range reversed.
        blobs.push(blob(
            "empty",
            2,
            10.0,
            Some(Histogram {
                lo: -1.0,
                hi: 1.0,
                max_abs: 0.5,
                counts: vec![],
                nonfinite: 0,
            }),
        ));
        blobs.push(blob(
            "reversed",
            2,
            10.0,
            Some(Histogram {
                lo: 1.0,
                hi: -1.0,
                max_abs: 0.5,
                counts: vec![1, 2],
                nonfinite: 0,
            }),
        ));
        let local = LocalReport {
            images: 128,
            evaluations: 9,
            accepted: true,
            steps: vec![
                step("data", 40.0, 41.0),
                step("conv1", 20.0, 22.0),
                step("conv1", 22.0, 25.5),
            ],
        };
        let r = report("net", blobs, Some(local));
        let svg = render(&r);
        // The same report gives the same bytes.
        assert_eq!(svg, render(&r.clone()));
        let doc = parse(&svg);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        for bad in ["NaN", "inf", "-0.0"] {
            assert!(!svg.contains(bad), "{bad} in the SVG");
        }
        // One cell (group with a tooltip) per blob, and the local pass as a second chart with
        // one before/after pair per layer (conv1's two coordinates merged: 20 → 25.5).
        let cells = root.children().filter(|n| n.has_tag_name("g")).count();
        assert_eq!(cells, 8);
        let tips: Vec<&str> = root
            .descendants()
            .filter(|n| n.has_tag_name("title"))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            tips.contains(&"conv1: 20 dB before the layer-local pass"),
            "{tips:?}"
        );
        assert!(tips.contains(&"conv1: 25.5 dB after it"), "{tips:?}");
        assert!(tips.iter().any(|t| t.starts_with("data: 200 dB")));
    }

    #[test]
    fn names_are_escaped() {
        let name = r#"a<b&"c">'d"#;
        let svg = render(&report(name, vec![blob(name, 3, 10.0, None)], None));
        assert!(!svg.contains(name));
        assert!(svg.contains("a&lt;b&amp;&quot;c&quot;&gt;&apos;d"));
        let doc = parse(&svg);
        let texts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        assert!(texts.contains(&name), "{texts:?}");
        assert!(texts.contains(&format!("nnquant report: {name}").as_str()));
        // Long names with multi-byte characters are cut by characters, not bytes.
        let long = "ü".repeat(50);
        let svg = render(&report("m", vec![blob(&long, 3, 10.0, None)], None));
        parse(&svg);
        assert!(svg.contains(&format!("{}…", "ü".repeat(NAME_CHARS - 1))));
    }

    /// x of a vertical line in the first cell, by colour.
    fn line_xs(svg: &str, colour: &str) -> Vec<String> {
        let doc = parse(svg);
        let cell = doc
            .root_element()
            .children()
            .find(|n| n.has_tag_name("g"))
            .expect("a cell");
        cell.children()
            .filter(|n| n.has_tag_name("line") && n.attribute("stroke") == Some(colour))
            .map(|n| {
                assert_eq!(n.attribute("x1"), n.attribute("x2"), "vertical");
                n.attribute("x1").unwrap().to_string()
            })
            .collect()
    }

    #[test]
    fn the_range_and_max_abs_lines_are_at_their_values() {
        // f = 5: the q7 range is [-4, 4·127/128]; max |x| 6 → histogram range [-8, 8), the
        // x axis ±8. The first cell's plot spans x = 26 .. 246 (20 margin + 6, cell width
        // 1160/5 = 232 less 12), so v lands at 26 + (v + 8)/16 · 220.
        let h = HistogramAcc::of(&[6.0, -2.0, 0.5]).finish();
        assert_eq!((h.lo, h.hi), (-8.0, 8.0));
        let svg = render(&report("m", vec![blob("b", 5, 20.0, Some(h))], None));
        assert_eq!(line_xs(&svg, RANGE), ["81.0", "190.6"]); // -4, 3.96875
        assert_eq!(line_xs(&svg, MAXABS), ["53.5", "218.5"]); // ∓6
        assert_eq!(q7_range(5), (-4.0, 3.96875));
        // A coarser format than the histogram's: the axis widens to the range (f = 2: ±32).
        let h = HistogramAcc::of(&[6.0]).finish();
        let svg = render(&report("m", vec![blob("b", 2, 20.0, Some(h))], None));
        assert_eq!(line_xs(&svg, RANGE), ["26.0", "245.1"]); // -32, 31.75
                                                             // The histogram's path spans its own range [-8, 8) only: x 26 + 24/64·220 .. 26 + 40/64·220.
        let doc = parse(&svg);
        let d = doc
            .descendants()
            .find(|n| n.has_tag_name("path") && n.attribute("fill") == Some(HIST))
            .and_then(|n| n.attribute("d"))
            .unwrap()
            .to_string();
        assert!(d.starts_with("M108.5 "), "{d}");
        assert!(d.contains("H163.5V"), "{d}");
    }

    #[test]
    fn numbers_in_labels() {
        assert_eq!(num(200.0), "200");
        assert_eq!(num(31.25), "31.25");
        assert_eq!(num(3.96875), "3.969");
        assert_eq!(num(-0.0001), "-1.00e-4");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "?");
        assert_eq!(c(-0.01), "0.0");
        assert_eq!(c(f64::INFINITY), "0.0");
    }
}
