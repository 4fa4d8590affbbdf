//! The whole pipeline on the project's own demo model: quantize → report → codegen → build and run
//! the generated crate natively, byte-identical to the simulator; determinism; the CI gate; bad
//! inputs to quantize.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn demo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
}

fn quantize(out: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<String> = vec![
        "quantize".into(),
        "--model".into(),
        demo("glyphs.prototxt").display().to_string(),
        "--weights".into(),
        demo("glyphs.caffemodel").display().to_string(),
        "--calib".into(),
        demo("calib_u8_hwc.npy").display().to_string(),
        "--eval".into(),
        demo("test_u8_hwc.npy").display().to_string(),
        "-o".into(),
        out.join("m.nnq.json").display().to_string(),
        "--report".into(),
        out.join("r.json").display().to_string(),
        "--quiet".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args
        .iter()
        .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    nnquant(&refs)
}

#[test]
fn quantize_is_accurate_and_deterministic() {
    let f = Fixture::new();
    let (a, b) = (f.path("a"), f.path("b"));
    let o = quantize(&a, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(quantize(&b, &[]).code, 0);
    for name in ["m.nnq.json", "r.json", "r.md", "r.svg"] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name} differs between runs"
        );
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("r.json")).unwrap()).unwrap();
    let float = r["accuracy"]["float_top1"].as_f64().unwrap();
    let quant = r["accuracy"]["quant_top1"].as_f64().unwrap();
    assert!((float - 0.98).abs() < 1e-9, "float top-1 {float}");
    assert!(quant >= 0.95, "quantized top-1 {quant}");
    assert_eq!(r["search"]["strategy"], "default");
    assert!(r.get("timing").is_none(), "no timings unless asked");
}

/// The screened search (forced on the demo's 200 calibration images with `--screen 64`): every
/// change it makes is confirmed on the whole calibration set, so its final whole-set score is
/// at least the start's; it is deterministic, reports its subset and counts, and a bad
/// `--screen` value is refused.
#[test]
fn screened_search_confirms_on_the_whole_set_and_is_deterministic() {
    let f = Fixture::new();
    let (a, b) = (f.path("a"), f.path("b"));
    let o = quantize(&a, &["--screen", "64"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(quantize(&b, &["--screen", "64"]).code, 0);
    for name in ["m.nnq.json", "r.json", "r.md", "r.svg"] {
        assert_eq!(
            std::fs::read(a.join(name)).unwrap(),
            std::fs::read(b.join(name)).unwrap(),
            "{name} differs between runs"
        );
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("r.json")).unwrap()).unwrap();
    let s = &r["search"];
    assert_eq!(s["screen_images"], 64);
    assert!(s["screen_evaluations"].as_u64().unwrap() > 0);
    let (start, end) = (&s["start_score"], &s["final_score"]);
    assert_eq!(end["images"], 200, "the final score is on the whole set");
    let key = |v: &serde_json::Value| (v["correct"].as_u64().unwrap(), -v["kl"].as_f64().unwrap());
    assert!(key(end) >= key(start), "final {end} below start {start}");
    let trace = s["trace"].as_array().unwrap();
    assert!(trace.iter().any(|t| t["screen"] == true));
    // Every accepted change was scored on the whole set.
    assert!(trace
        .iter()
        .filter(|t| t["accepted"] == true && t.get("screen").is_none())
        .all(|t| t["score"]["images"] == 200));
    let md = std::fs::read_to_string(a.join("r.md")).unwrap();
    assert!(md.contains("screening subset of 64 images"), "{md}");
    let bad = quantize(&f.path("c"), &["--screen", "lots"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("lots"), "{}", bad.stderr);
}

#[test]
fn generated_host_crate_matches_the_simulator_byte_for_byte() {
    let f = Fixture::new();
    let q = f.path("q");
    assert_eq!(quantize(&q, &["--search", "none"]).code, 0);
    let model = q.join("m.nnq.json");
    let work = f.path("fw");
    let o = nnquant(&[
        &"verify",
        &model,
        &"--target",
        &"host",
        &"--count",
        &"300",
        &"--data",
        &demo("test_u8_hwc.npy"),
        &"--work-dir",
        &work,
        &"--json",
    ]);
    assert_eq!(o.code, 0, "stdout {} stderr {}", o.stdout, o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["images"], 300);
    assert_eq!(v["matching_images"], 300);
    assert_eq!(v["mismatching_bytes"], 0);
}

#[test]
fn codegen_is_deterministic_and_refuses_foreign_directories() {
    let f = Fixture::new();
    let q = f.path("q");
    assert_eq!(quantize(&q, &["--search", "none"]).code, 0);
    let model = q.join("m.nnq.json");
    let (a, b) = (f.path("a"), f.path("b"));
    for d in [&a, &b] {
        let o = nnquant(&[
            &"codegen",
            &model,
            &"--out",
            d,
            &"--count",
            &"3",
            &"--data",
            &demo("test_u8_hwc.npy"),
        ]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    for rel in [
        "Cargo.toml",
        "src/lib.rs",
        "examples/demo/main.rs",
        "src/weights.rs",
        "src/parameter.rs",
        "src/kernels.rs",
        "examples/demo/test_vectors.rs",
        "examples/demo/memory.x",
        "memory.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(rel)).unwrap(),
            std::fs::read(b.join(rel)).unwrap(),
            "{rel} differs"
        );
    }
    assert_eq!(
        std::fs::read_to_string(a.join("src/kernels.rs")).unwrap(),
        nnquant::codegen::KERNELS_RS
    );
    // Regenerating into its own output is fine; a foreign directory is refused without --force.
    assert_eq!(nnquant(&[&"codegen", &model, &"--out", &a]).code, 0);
    let foreign = f.path("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep").unwrap();
    assert_fails(
        &nnquant(&[&"codegen", &model, &"--out", &foreign]),
        &["not generated by nnquant", "--force"],
    );
    assert!(foreign.join("precious.txt").exists());
}

#[test]
fn report_diff_gates_on_accuracy_drop() {
    let f = Fixture::new();
    let q = f.path("q");
    assert_eq!(quantize(&q, &[]).code, 0);
    let old = q.join("r.json");
    let mut r: serde_json::Value = serde_json::from_slice(&std::fs::read(&old).unwrap()).unwrap();
    let o = nnquant(&[&"report", &"diff", &old, &old]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("quantized top-1"));
    let q1 = r["accuracy"]["quant_top1"].as_f64().unwrap();
    r["accuracy"]["quant_top1"] = serde_json::json!(q1 - 0.02);
    let worse = f.write("worse.json", serde_json::to_string_pretty(&r).unwrap());
    let o = nnquant(&[&"report", &"diff", &old, &worse, &"--max-drop", &"1.0"]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stdout.contains("FAIL"));
    assert_eq!(
        nnquant(&[&"report", &"diff", &old, &worse, &"--max-drop", &"2.5"]).code,
        0
    );
    let junk = f.write("junk.json", "{\"schema\": 1}");
    assert_fails(
        &nnquant(&[&"report", &"diff", &old, &junk]),
        &["junk.json", "not an nnquant report"],
    );
}

fn assert_no_outputs(dir: &Path) {
    for n in ["m.nnq.json", "r.json", "r.md"] {
        assert!(!dir.join(n).exists(), "{n} was written despite the error");
    }
}

#[test]
fn quantize_bad_inputs_fail_cleanly_without_partial_output() {
    let f = Fixture::new();
    let out = f.path("out");
    // Formats naming a layer that does not exist.
    let bad = f.write("f1.json", r#"{"activations_frac_bits": {"data": 6, "conv1": 4, "conv2": 3, "ip1": 0, "nope": 1},
        "layers": {"conv1": {"weight_frac_bits": 7, "bias_frac_bits": 7}, "conv2": {"weight_frac_bits": 7, "bias_frac_bits": 7}, "ip1": {"weight_frac_bits": 7, "bias_frac_bits": 7}}}"#);
    let bad = bad.display().to_string();
    assert_fails(&quantize(&out, &["--formats", &bad]), &["nope"]);
    assert_no_outputs(&out);
    // A bias that would need a right shift (bias_frac > weight_frac + input_frac).
    let shift = f.write("f2.json", r#"{"activations_frac_bits": {"data": 6, "conv1": 4, "conv2": 3, "ip1": 0},
        "layers": {"conv1": {"weight_frac_bits": 7, "bias_frac_bits": 20}, "conv2": {"weight_frac_bits": 7, "bias_frac_bits": 7}, "ip1": {"weight_frac_bits": 7, "bias_frac_bits": 7}}}"#);
    let shift = shift.display().to_string();
    assert_fails(
        &quantize(&out, &["--formats", &shift]),
        &["conv1", "bias_lshift"],
    );
    assert_no_outputs(&out);
    // Calibration images of the wrong shape.
    let img = f.path("img.npy");
    nnquant::npy_out::write(&img, &[4, 8, 8, 3], &[0u8; 4 * 8 * 8 * 3]).unwrap();
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &demo("glyphs.prototxt"),
        &"--weights",
        &demo("glyphs.caffemodel"),
        &"--calib",
        &img,
        &"--eval",
        &demo("test_u8_hwc.npy"),
        &"-o",
        &out.join("m.nnq.json"),
        &"--report",
        &out.join("r.json"),
    ]);
    assert_fails(&o, &["img.npy"]);
    assert_no_outputs(&out);
    // Labels outside the model's classes.
    let labels = f.path("labels.npy");
    nnquant::npy_out::write(&labels, &[200], &[42u8; 200]).unwrap();
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &demo("glyphs.prototxt"),
        &"--weights",
        &demo("glyphs.caffemodel"),
        &"--calib",
        &demo("calib_u8_hwc.npy"),
        &"--calib-labels",
        &labels,
        &"--eval",
        &demo("test_u8_hwc.npy"),
        &"-o",
        &out.join("m.nnq.json"),
        &"--report",
        &out.join("r.json"),
    ]);
    assert_fails(&o, &["label 42", "10 classes"]);
    assert_no_outputs(&out);
    // An empty data set.
    let empty = f.path("empty.npy");
    nnquant::npy_out::write(&empty, &[0, 16, 16, 3], &[0u8; 0]).unwrap();
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &demo("glyphs.prototxt"),
        &"--weights",
        &demo("glyphs.caffemodel"),
        &"--calib",
        &empty,
        &"--eval",
        &demo("test_u8_hwc.npy"),
        &"-o",
        &out.join("m.nnq.json"),
        &"--report",
        &out.join("r.json"),
    ]);
    assert_fails(&o, &["empty"]);
    assert_no_outputs(&out);
    // Same data for calibration and evaluation needs a held-out set.
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &demo("glyphs.prototxt"),
        &"--weights",
        &demo("glyphs.caffemodel"),
        &"--calib",
        &demo("calib_u8_hwc.npy"),
        &"-o",
        &out.join("m.nnq.json"),
        &"--report",
        &out.join("r.json"),
    ]);
    assert_fails(&o, &["--eval", "--split"]);
}

/// Formats that saturate the logits: the report (JSON and Markdown; stderr too without --quiet)
/// says the output collapsed instead of printing figures without a word; sane formats raise no
/// such warning.
#[test]
fn a_collapsed_output_is_a_warning_in_the_report() {
    let f = Fixture::new();
    let out = f.path("out");
    let saturating = f.write("sat.json", r#"{"activations_frac_bits": {"data": 7, "conv1": 4, "conv2": 1, "ip1": 7},
        "layers": {"conv1": {"weight_frac_bits": 7, "bias_frac_bits": 8}, "conv2": {"weight_frac_bits": 7, "bias_frac_bits": 8}, "ip1": {"weight_frac_bits": 7, "bias_frac_bits": 8}}}"#);
    let saturating = saturating.display().to_string();
    assert_eq!(quantize(&out, &["--formats", &saturating]).code, 0);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("r.json")).unwrap()).unwrap();
    let w = r["quality_warnings"].as_array().expect("quality_warnings");
    assert!(
        w.iter().any(|w| w.as_str().unwrap().contains("SQNR")),
        "{w:?}"
    );
    let md = std::fs::read_to_string(out.join("r.md")).unwrap();
    assert!(
        md.contains("**Warning:** the quantized output 'ip1'"),
        "{md}"
    );
    // Formats from the float ranges: no collapse, no warning.
    let good = f.path("good");
    assert_eq!(quantize(&good, &["--search", "none"]).code, 0);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(good.join("r.json")).unwrap()).unwrap();
    assert!(r.get("quality_warnings").is_none(), "{r}");
}

/// The layer-local pass (`--search local`): one step per coordinate (the input, then weight,
/// activation and bias of every conv/fc in order), each never worse than the layer's SQNR before
/// (a candidate is taken only when it lowers the layer's error); the proposal is checked end to
/// end (a trace step) and the report says whether it was kept; deterministic; timed with
/// `--timestamps`.
#[test]
fn the_local_pass_reports_each_layer_and_is_deterministic() {
    let f = Fixture::new();
    let (a, b) = (f.path("a"), f.path("b"));
    let o = quantize(&a, &["--search", "local", "--timestamps"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(quantize(&b, &["--search", "local"]).code, 0);
    assert_eq!(
        std::fs::read(a.join("m.nnq.json")).unwrap(),
        std::fs::read(b.join("m.nnq.json")).unwrap(),
        "the model differs between runs"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("r.json")).unwrap()).unwrap();
    let s = &r["search"];
    assert_eq!(s["strategy"], "local");
    let local = &s["local"];
    assert!(local["images"].as_u64().unwrap() > 0);
    let steps = local["steps"].as_array().unwrap();
    assert_eq!(steps[0]["param"], "input");
    let convs: Vec<&str> = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l.get("weight_frac_bits").is_some_and(|w| !w.is_null()))
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(!convs.is_empty());
    for c in &convs {
        let params: Vec<&str> = steps
            .iter()
            .filter(|s| s["layer"] == *c)
            .map(|s| s["param"].as_str().unwrap())
            .collect();
        assert!(
            params.starts_with(&["weight", "activation"]),
            "{c}: {params:?}"
        );
    }
    for st in steps {
        let (before, after) = (
            st["sqnr_before_db"].as_f64().unwrap(),
            st["sqnr_after_db"].as_f64().unwrap(),
        );
        assert!(after >= before - 1e-9, "{st}");
    }
    let trace = s["trace"].as_array().unwrap();
    let checked = trace.iter().any(|t| t["layer"] == "(local pass)");
    let changed = steps.iter().any(|s| s["frac_bits"] != s["start_frac_bits"]);
    assert_eq!(checked, changed, "a changed proposal is checked end to end");
    if local["accepted"] == true {
        let key =
            |v: &serde_json::Value| (v["correct"].as_u64().unwrap(), -v["kl"].as_f64().unwrap());
        assert!(key(&s["final_score"]) >= key(&s["start_score"]));
    }
    assert!(r["timing"]["search_local_seconds"].as_f64().unwrap() > 0.0);
    // Which kernels ran, simulator and float engine.
    assert!(!r["timing"]["simd_path"].as_str().unwrap().is_empty());
    let float_path = r["timing"]["float_path"].as_str().unwrap();
    assert!(
        ["avx512f", "avx2+fma", "general"].contains(&float_path),
        "{float_path}"
    );
    // No descent after a local pass: every trace step is the proposal's check.
    assert!(trace.iter().all(|t| t["layer"] == "(local pass)"));

    // Bias correction (on by default): a step per layer with a bias; where it was kept the
    // model's formats carry the per-channel corrections, one per output channel.
    let corrections: Vec<&serde_json::Value> = steps
        .iter()
        .filter(|s| s["param"] == "bias correction")
        .collect();
    assert_eq!(corrections.len(), convs.len(), "{steps:?}");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("m.nnq.json")).unwrap()).unwrap();
    let with_correction: Vec<(&String, usize)> = m["formats"]["layers"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(l, f)| Some((l, f.get("bias_correction")?.as_array()?.len())))
        .collect();
    if local["accepted"] == true {
        assert!(!with_correction.is_empty(), "{}", m["formats"]);
    }
    for (l, n) in &with_correction {
        let layer = m["graph"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == **l)
            .unwrap();
        let op = &layer["op"];
        let bias = op.as_object().unwrap().values().next().unwrap()["bias"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(*n, bias, "{l}: one correction per output channel");
    }
    // Off: no correction steps, none in the formats.
    let c = f.path("c");
    assert_eq!(
        quantize(&c, &["--search", "local", "--bias-correction", "off"]).code,
        0
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.join("r.json")).unwrap()).unwrap();
    assert!(r["search"]["local"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["param"] != "bias correction"));
    let m = std::fs::read_to_string(c.join("m.nnq.json")).unwrap();
    assert!(!m.contains("bias_correction"));
}

/// A formats file whose bias correction does not fit the layer (wrong channel count, not a
/// number) is refused with the reason and exit code 2, before anything is written.
#[test]
fn a_bad_bias_correction_in_a_formats_file_is_refused() {
    let f = Fixture::new();
    let a = f.path("a");
    assert_eq!(quantize(&a, &["--search", "none"]).code, 0);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("m.nnq.json")).unwrap()).unwrap();
    let formats = &m["formats"];
    let (layer, _) = formats["layers"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, lf)| lf.get("bias_frac_bits").is_some())
        .expect("a layer with a bias");
    for (bad, says) in [
        (
            serde_json::json!([0.5, -0.25]),
            "bias_correction has 2 values",
        ),
        (serde_json::json!("x"), "parsing a formats JSON"),
    ] {
        let mut fm = formats.clone();
        fm["layers"][layer]["bias_correction"] = bad;
        let path = f.path("formats.json");
        std::fs::write(&path, fm.to_string()).unwrap();
        let out = f.path("b");
        let o = quantize(&out, &["--formats", path.to_str().unwrap()]);
        assert_eq!(o.code, 2, "{}", o.stderr);
        assert!(o.stderr.contains(says), "{}", o.stderr);
        assert!(!out.join("m.nnq.json").exists());
    }
}

/// Average pools round their mean to nearest by default (`formats.avepool_rounding` and every
/// AvePool layer say so); `--arm-compatible` keeps CMSIS-NN's truncation and per-layer formats;
/// a formats file decides (absent = truncate, as ARM's file) and a bad value is refused.
#[test]
fn average_pools_round_by_default_and_truncate_when_arm_compatible() {
    let f = Fixture::new();
    let read = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("m.nnq.json")).unwrap()).unwrap()
    };
    let roundings = |m: &serde_json::Value| -> Vec<String> {
        m["graph"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["op"].get("AvePool"))
            .map(|p| p["rounding"].as_str().unwrap_or("truncate").to_string())
            .collect()
    };
    let (d, arm) = (f.path("default"), f.path("arm"));
    assert_eq!(quantize(&d, &["--search", "none"]).code, 0);
    let m = read(&d);
    assert_eq!(m["formats"]["avepool_rounding"], "nearest");
    let r = roundings(&m);
    assert!(!r.is_empty(), "the demo model has an average pool");
    assert!(r.iter().all(|v| v == "nearest"), "{r:?}");

    let o = quantize(&arm, &["--search", "none", "--arm-compatible"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let a = read(&arm);
    assert!(a["formats"].get("avepool_rounding").is_none());
    assert!(roundings(&a).iter().all(|v| v == "truncate"));
    assert!(!std::fs::read_to_string(arm.join("m.nnq.json"))
        .unwrap()
        .contains("\"per_channel\""));

    // The default's formats file reproduces its graph; without the field it truncates.
    let mut formats = m["formats"].clone();
    for (name, value, want) in [
        ("same", None, Some("nearest")),
        ("absent", Some(serde_json::Value::Null), Some("truncate")),
        ("bad", Some(serde_json::json!("upward")), None),
    ] {
        match value {
            None => {}
            Some(serde_json::Value::Null) => {
                formats.as_object_mut().unwrap().remove("avepool_rounding");
            }
            Some(v) => formats["avepool_rounding"] = v,
        }
        let path = f.path(&format!("{name}.json"));
        std::fs::write(&path, formats.to_string()).unwrap();
        let out = f.path(name);
        let o = quantize(&out, &["--formats", path.to_str().unwrap()]);
        match want {
            Some(w) => {
                assert_eq!(o.code, 0, "{name}: {}", o.stderr);
                let got = read(&out);
                assert!(roundings(&got).iter().all(|v| v == w), "{name}");
                if name == "same" {
                    assert_eq!(
                        got["graph"], m["graph"],
                        "the formats file reproduces the graph"
                    );
                }
            }
            None => {
                assert_eq!(o.code, 2, "{name}: {}", o.stderr);
                assert!(o.stderr.contains("`truncate` or `nearest`"), "{}", o.stderr);
                assert!(!out.join("m.nnq.json").exists());
            }
        }
    }
}
