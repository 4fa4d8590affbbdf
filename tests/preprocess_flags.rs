//! `--scale` / `--mean-value` override the prototxt's transform_param for eval, quantize and
//! build; a deploy prototxt without preprocessing and without flags, and a fractional mean that
//! the integer input path rounds, are warned about on stderr and recorded in the report.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn demo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
}

/// The demo model as a deploy prototxt: an Input layer, no transform_param, no loss.
fn deploy(f: &Fixture) -> PathBuf {
    let full = std::fs::read_to_string(demo("glyphs.prototxt")).unwrap();
    let start = full
        .find("layer {\n  name: \"conv1\"")
        .expect("conv1 layer");
    let end = full
        .find("layer {\n  name: \"accuracy\"")
        .expect("accuracy layer");
    f.write(
        "deploy.prototxt",
        format!(
            "name: \"glyphs\"\nlayer {{ name: \"data\" type: \"Input\" top: \"data\" input_param {{ shape {{ dim: 1 dim: 3 dim: 16 dim: 16 }} }} }}\n{}",
            &full[start..end]
        ),
    )
}

fn quantize(f: &Fixture, prototxt: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<String> = vec![
        "quantize".into(),
        "--model".into(),
        prototxt.display().to_string(),
        "--weights".into(),
        demo("glyphs.caffemodel").display().to_string(),
        "--calib".into(),
        demo("calib_u8_hwc.npy").display().to_string(),
        "--eval".into(),
        demo("test_u8_hwc.npy").display().to_string(),
        "--search".into(),
        "none".into(),
        "-o".into(),
        f.path("m.nnq.json").display().to_string(),
        "--report".into(),
        f.path("r.json").display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args
        .iter()
        .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    nnquant(&refs)
}

fn report(f: &Fixture) -> Value {
    serde_json::from_slice(&std::fs::read(f.path("r.json")).unwrap()).unwrap()
}

fn model(f: &Fixture) -> Value {
    serde_json::from_slice(&std::fs::read(f.path("m.nnq.json")).unwrap()).unwrap()
}

fn top1(r: &Value) -> f64 {
    r["accuracy"]["quant_top1"].as_f64().unwrap()
}

#[test]
fn a_deploy_prototxt_without_preprocessing_is_warned_about_and_flags_fix_it() {
    let f = Fixture::new();
    let dep = deploy(&f);
    // No transform_param, no flags: warned, recorded, and the accuracy shows why.
    let o = quantize(&f, &dep, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("warning: the prototxt has no transform_param"),
        "{}",
        o.stderr
    );
    let r = report(&f);
    assert_eq!(r["preprocessing"]["source"], "none");
    assert_eq!(r["preprocessing"]["warnings"].as_array().unwrap().len(), 1);
    let raw = top1(&r);
    // The flags give the training preprocessing: no warning, the demo's accuracy.
    let o = quantize(
        &f,
        &dep,
        &["--scale", "0.0078125", "--mean-value", "128,128,128"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!o.stderr.contains("warning"), "{}", o.stderr);
    let r = report(&f);
    assert_eq!(r["preprocessing"]["source"], "flags");
    assert!(r["preprocessing"].get("warnings").is_none());
    assert!(top1(&r) >= 0.95 && top1(&r) > raw, "{} vs {raw}", top1(&r));
    let m = model(&f);
    assert_eq!(m["input"]["scale"], 0.0078125);
    assert_eq!(m["input"]["mean_u8"], serde_json::json!([128, 128, 128]));
    // One mean value for all channels is the same thing.
    assert_eq!(
        quantize(&f, &dep, &["--scale", "0.0078125", "--mean-value", "128"]).code,
        0
    );
    assert_eq!(
        model(&f)["input"]["mean_u8"],
        serde_json::json!([128, 128, 128])
    );
    // The float eval warns without flags, not with them.
    let eval = |extra: &[&str]| {
        let mut a: Vec<String> = ["eval", "--model"].map(String::from).to_vec();
        a.push(dep.display().to_string());
        a.extend([
            "--weights".into(),
            demo("glyphs.caffemodel").display().to_string(),
        ]);
        a.extend([
            "--data".into(),
            demo("test_u8_hwc.npy").display().to_string(),
        ]);
        a.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> =
            a.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>).collect();
        nnquant(&refs)
    };
    let o = eval(&[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o
        .stderr
        .contains("warning: the prototxt has no transform_param"));
    let o = eval(&["--scale", "0.0078125", "--mean-value", "128"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!o.stderr.contains("warning"), "{}", o.stderr);
    assert!(o.stdout.contains("top-1 294/300"), "{}", o.stdout);
}

#[test]
fn flags_override_the_prototxt_and_a_fractional_mean_is_reported() {
    let f = Fixture::new();
    let full = demo("glyphs.prototxt");
    let o = quantize(&f, &full, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(report(&f)["preprocessing"]["source"], "prototxt");
    // A fractional mean: rounded for the firmware, with a word.
    let o = quantize(&f, &full, &["--mean-value", "127.6,128.3,128"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("not integral"), "{}", o.stderr);
    let r = report(&f);
    assert_eq!(r["preprocessing"]["source"], "flags");
    let rounding = r["preprocessing"]["mean_rounding"].as_f64().unwrap();
    assert!((rounding - 0.4).abs() < 1e-4, "{rounding}");
    assert!(r["preprocessing"]["warnings"][0]
        .as_str()
        .unwrap()
        .contains("[128, 128, 128]"));
    assert_eq!(
        model(&f)["input"]["mean_u8"],
        serde_json::json!([128, 128, 128])
    );
    // --scale alone overrides the prototxt's scale and keeps its mean.
    assert_eq!(quantize(&f, &full, &["--scale", "0.015625"]).code, 0);
    let m = model(&f);
    assert_eq!(m["input"]["scale"], 0.015625);
    assert_eq!(m["input"]["mean_u8"], serde_json::json!([128, 128, 128]));
}

#[test]
fn bad_preprocessing_flags_are_clean_errors() {
    let f = Fixture::new();
    let full = demo("glyphs.prototxt");
    for (flags, needle) in [
        (vec!["--scale", "0"], "--scale"),
        (vec!["--scale", "nan"], "--scale"),
        (vec!["--scale", "abc"], "--scale"),
        (vec!["--mean-value", "300"], "300"),
        (vec!["--mean-value", "1,2,x"], "'x'"),
        (
            vec!["--mean-value", "1,2"],
            "2 mean_value(s) given for 3-channel images",
        ),
        (
            vec!["--mean-value", "1", "--mean-file", "m.binaryproto"],
            "--mean-file",
        ),
    ] {
        let o = quantize(&f, &full, &flags);
        assert_eq!(o.code, 2, "{flags:?}: {}", o.stderr);
        assert!(!o.stderr.contains("panicked"));
        assert!(o.stderr.contains(needle), "{flags:?}: {}", o.stderr);
        assert!(!f.path("m.nnq.json").exists(), "{flags:?} wrote the model");
    }
    // A quantized model carries its preprocessing.
    assert_eq!(quantize(&f, &full, &[]).code, 0);
    let o = nnquant(&[
        &"eval",
        &"--quantized",
        &f.path("m.nnq.json"),
        &"--data",
        &demo("test_u8_hwc.npy"),
        &"--scale",
        &"1",
    ]);
    assert_fails(&o, &["carries its preprocessing"]);
}
