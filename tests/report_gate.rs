//! `report diff` as a CI gate that cannot pass by accident: unlabelled reports and reports of
//! different (or unknown) evaluation data fail unless explicitly allowed; SQNR and agreement
//! gates; exit codes 0 (pass), 1 (gate failed, with the reason), 2 (error).

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn demo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
}

/// The demo model's report on its test set (or a part of it), quantized once per call.
fn report(f: &Fixture, name: &str, eval_limit: Option<&str>) -> PathBuf {
    let r = f.path(&format!("{name}.json"));
    let mut args: Vec<std::ffi::OsString> = [
        "quantize",
        "--model",
        demo("glyphs.prototxt").to_str().unwrap(),
        "--weights",
        demo("glyphs.caffemodel").to_str().unwrap(),
        "--calib",
        demo("calib_u8_hwc.npy").to_str().unwrap(),
        "--eval",
        demo("test_u8_hwc.npy").to_str().unwrap(),
        "--search",
        "none",
        "-o",
        f.path(&format!("{name}.nnq.json")).to_str().unwrap(),
        "--report",
        r.to_str().unwrap(),
        "--quiet",
    ]
    .iter()
    .map(Into::into)
    .collect();
    if let Some(l) = eval_limit {
        args.extend(["--eval-limit".into(), l.into()]);
    }
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args
        .iter()
        .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    let o = nnquant(&refs);
    assert_eq!(o.code, 0, "{}", o.stderr);
    r
}

fn edited(f: &Fixture, from: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut v: Value = serde_json::from_slice(&std::fs::read(from).unwrap()).unwrap();
    edit(&mut v);
    f.write(name, serde_json::to_string_pretty(&v).unwrap())
}

fn diff(old: &Path, new: &Path, extra: &[&str]) -> Outcome {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"report", &"diff", &old, &new];
    for e in extra {
        args.push(e);
    }
    nnquant(&args)
}

#[test]
fn the_gate_fails_on_unlabelled_changed_or_unknown_data_unless_allowed() {
    let f = Fixture::new();
    let base = report(&f, "base", None);
    let v: Value = serde_json::from_slice(&std::fs::read(&base).unwrap()).unwrap();
    // The report carries the data hash and keeps the correct counts.
    let h = v["evaluation"]["sha256"].as_str().unwrap();
    assert_eq!(h.len(), 64);
    assert!(v["accuracy"]["float_correct"].as_u64().is_some());
    assert!(v["accuracy"]["quant_correct"].as_u64().is_some());
    assert!(v["layers"][0]["acc_headroom_bits"].as_f64().unwrap() > 1.0);
    assert_eq!(v["preprocessing"]["source"], "prototxt");

    // Same report: passes.
    let o = diff(&base, &base, &[]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("Evaluation data: same"));

    // The same quantization re-run gives the same hash (content, not timestamps).
    let again = report(&f, "again", None);
    assert_eq!(diff(&base, &again, &[]).code, 0);

    // Unlabelled (new or old): fails with the reason, passes with --allow-unlabelled.
    let unl = edited(&f, &base, "unl.json", |v| {
        v["accuracy"]["quant_top1"] = Value::Null;
        v["accuracy"]["float_top1"] = Value::Null;
        v["evaluation"]["labelled"] = false.into();
    });
    for (a, b) in [(&base, &unl), (&unl, &base)] {
        let o = diff(a, b, &[]);
        assert_eq!(o.code, 1, "{}", o.stdout);
        assert!(
            o.stdout.contains("FAIL:") && o.stdout.contains("no labelled accuracy"),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains("--allow-unlabelled"));
        assert_eq!(diff(a, b, &["--allow-unlabelled"]).code, 0);
    }

    // Different evaluation data (a real second quantization on the first 100 test images).
    let part = report(&f, "part", Some("100"));
    let o = diff(&base, &part, &["--max-drop", "100"]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stdout.contains("different data"), "{}", o.stdout);
    assert!(o.stdout.contains("Evaluation data: **different**"));
    assert_eq!(
        diff(&base, &part, &["--max-drop", "100", "--allow-data-change"]).code,
        0
    );

    // An old report without a hash: unknown data, fails unless allowed.
    let old = edited(&f, &base, "old.json", |v| {
        v["evaluation"].as_object_mut().unwrap().remove("sha256");
    });
    let o = diff(&old, &base, &[]);
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stdout.contains("no evaluation data hash"), "{}", o.stdout);
    assert_eq!(diff(&old, &base, &["--allow-data-change"]).code, 0);

    // JSON output names the reasons.
    let o = diff(&old, &unl, &["--json"]);
    assert_eq!(o.code, 1);
    let j: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(j["failed"], true);
    assert_eq!(j["reasons"].as_array().unwrap().len(), 2, "{}", o.stdout);
}

#[test]
fn sqnr_and_agreement_gates() {
    let f = Fixture::new();
    let base = report(&f, "base", None);
    let worse = edited(&f, &base, "worse.json", |v| {
        let s = v["accuracy"]["output_sqnr_db"].as_f64().unwrap();
        v["accuracy"]["output_sqnr_db"] = (s - 3.0).into();
        let a = v["accuracy"]["top1_agreement"].as_f64().unwrap();
        v["accuracy"]["top1_agreement"] = (a - 0.05).into();
    });
    // Not gated unless asked.
    assert_eq!(diff(&base, &worse, &[]).code, 0);
    let o = diff(&base, &worse, &["--max-sqnr-drop", "1"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stdout.contains("output SQNR dropped by 3.00 dB"),
        "{}",
        o.stdout
    );
    assert_eq!(diff(&base, &worse, &["--max-sqnr-drop", "3.5"]).code, 0);
    let o = diff(&base, &worse, &["--max-agreement-drop", "2"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stdout.contains("agreement with float dropped by 5.00 pp"),
        "{}",
        o.stdout
    );
    assert_eq!(diff(&base, &worse, &["--max-agreement-drop", "6"]).code, 0);
    // Improvements never fail.
    assert_eq!(
        diff(
            &worse,
            &base,
            &["--max-sqnr-drop", "0", "--max-agreement-drop", "0"]
        )
        .code,
        0
    );
    // Errors: exit code 2.
    assert_fails(
        &diff(&base, &worse, &["--max-sqnr-drop=-1"]),
        &["--max-sqnr-drop"],
    );
    assert_fails(
        &diff(&base, &worse, &["--max-agreement-drop", "NaN"]),
        &["--max-agreement-drop"],
    );
    assert_fails(
        &diff(&base, &f.path("missing.json"), &[]),
        &["missing.json"],
    );
}
