//! The report's plots: `quantize` writes report.svg beside report.md (linked from it) in the
//! same transaction, the same bytes on every run and whatever the thread count; every blob of
//! the report carries the histogram of its calibration values; reports from before the
//! histograms and the plots still read (`report diff`, `codegen --report`, `report render`).

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The demo model quantized without a search into `dir`, with `threads` rayon threads.
fn quantize_with_threads(dir: &Path, threads: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_nnquant"))
        .args(["quantize", "--model"])
        .arg(demo_file("glyphs.prototxt"))
        .arg("--weights")
        .arg(demo_file("glyphs.caffemodel"))
        .arg("--calib")
        .arg(demo_file("calib_u8_hwc.npy"))
        .arg("--eval")
        .arg(demo_file("test_u8_hwc.npy"))
        .args(["--search", "none", "--quiet", "-o"])
        .arg(dir.join("m.nnq.json"))
        .arg("--report")
        .arg(dir.join("r.json"))
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn quantize_writes_the_plots_beside_the_report() {
    let f = Fixture::new();
    let (_, r) = quantized_demo(&f.path(""));
    let svg_path = f.path("r.svg");
    let svg = std::fs::read_to_string(&svg_path).expect("r.svg written beside r.json");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(!svg.contains("<script"), "no script");
    // Linked from the Markdown by a relative link, and named in the JSON.
    let md = std::fs::read_to_string(f.path("r.md")).unwrap();
    assert!(md.contains("[r.svg](<r.svg>)"), "{md}");
    let report = json(&r);
    assert_eq!(report["plot"], "r.svg");
    // Every blob: a histogram of its values on the 200 calibration images (the counts add up
    // to images × elements), over a power-of-two range around its max |x|, and a cell in the
    // SVG with its name.
    let calib_images = report["calibration"]["images"].as_u64().unwrap();
    let blobs = report["blobs"].as_array().unwrap();
    assert_eq!(blobs[0]["name"], "data", "network order: the input first");
    for b in blobs {
        let name = b["name"].as_str().unwrap();
        let h = &b["histogram"];
        let counts: Vec<u64> = h["counts"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no histogram"))
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(counts.len(), 128, "{name}");
        let per_image: u64 = b["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .product();
        assert_eq!(
            counts.iter().sum::<u64>(),
            calib_images * per_image,
            "{name}"
        );
        let (lo, hi) = (h["lo"].as_f64().unwrap(), h["hi"].as_f64().unwrap());
        let max_abs = h["max_abs"].as_f64().unwrap();
        assert_eq!(lo, -hi, "{name}");
        assert_eq!(hi.log2().fract(), 0.0, "{name}: {hi} is a power of two");
        assert!(
            max_abs < hi && max_abs >= hi / 2.0,
            "{name}: {max_abs} in [{hi}/2, {hi})"
        );
        assert!(
            doc.descendants()
                .any(|n| n.has_tag_name("text") && n.text() == Some(name)),
            "{name} not in the SVG"
        );
    }
    // ReLU outputs have no negative values: the lower half of their bins is empty.
    let relu1 = blobs.iter().find(|b| b["name"] == "relu1").unwrap();
    let neg: u64 = relu1["histogram"]["counts"].as_array().unwrap()[..64]
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(neg, 0);
}

#[test]
fn the_plots_are_the_same_bytes_whatever_the_thread_count() {
    let f = Fixture::new();
    let (a, b, c) = (f.path("a"), f.path("b"), f.path("c"));
    quantize_with_threads(&a, "2");
    quantize_with_threads(&b, "2");
    quantize_with_threads(&c, "1");
    for name in ["r.svg", "r.json", "r.md"] {
        let want = std::fs::read(a.join(name)).unwrap();
        assert_eq!(
            want,
            std::fs::read(b.join(name)).unwrap(),
            "{name} differs between runs"
        );
        assert_eq!(
            want,
            std::fs::read(c.join(name)).unwrap(),
            "{name} differs with one thread"
        );
    }
}

#[test]
fn reports_from_before_the_plots_still_read() {
    let f = Fixture::new();
    let (m, r) = quantized_demo(&f.path(""));
    // The report as older versions wrote it: no histograms, no plot.
    let mut old = json(&r);
    old.as_object_mut().unwrap().remove("plot");
    for b in old["blobs"].as_array_mut().unwrap() {
        b.as_object_mut().unwrap().remove("histogram");
    }
    let old_path = f.write("old.json", serde_json::to_string_pretty(&old).unwrap());
    let o = nnquant(&[&"report", &"diff", &old_path, &r]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    // codegen --report re-renders the old report's Markdown: no link to plots it never had;
    // the new report's Markdown keeps its link.
    for (report, linked) in [(&old_path, false), (&r, true)] {
        let out = f.path(&format!("fw-{linked}"));
        let o = nnquant(&[&"codegen", &m, &"--out", &out, &"--report", report]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        let md = std::fs::read_to_string(report.with_extension("md")).unwrap();
        assert_eq!(md.contains("Plots: ["), linked, "{md}");
        assert!(md.contains("## Firmware"), "re-rendered");
    }
    // `report render` gives the old report its plots: every blob's cell, without histograms.
    let o = nnquant(&[&"report", &"render", &old_path]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let svg = std::fs::read_to_string(f.path("old.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    let cells = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("g"))
        .count();
    assert_eq!(cells, old["blobs"].as_array().unwrap().len());
    assert_eq!(svg.matches("no histogram in this report").count(), cells);
    assert!(std::fs::read_to_string(f.path("old.md"))
        .unwrap()
        .contains("[old.svg](<old.svg>)"));
    assert_eq!(json(&old_path)["plot"], "old.svg");
    assert_fails(
        &nnquant(&[&"report", &"render", &f.path("missing.json")]),
        &["missing.json"],
    );
}

#[test]
fn a_report_path_its_twins_would_overwrite_is_refused() {
    let f = Fixture::new();
    for name in ["r.svg", "r.md"] {
        let o = nnquant(&[
            &"quantize",
            &"--model",
            &demo_file("glyphs.prototxt"),
            &"--weights",
            &demo_file("glyphs.caffemodel"),
            &"--calib",
            &demo_file("calib_u8_hwc.npy"),
            &"--eval",
            &demo_file("test_u8_hwc.npy"),
            &"--search",
            &"none",
            &"-o",
            &f.path("m.nnq.json"),
            &"--report",
            &f.path(name),
            &"--quiet",
        ]);
        assert_fails(
            &o,
            &["would be overwritten", "give the report a .json name"],
        );
        assert!(!f.path("m.nnq.json").exists(), "nothing written");
        assert!(!f.path(name).exists(), "nothing written");
    }
}
