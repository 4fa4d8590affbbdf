//! The search's guard against overfitting on ARM's real CIFAR-10 model (../shared): the default
//! search holds out a class-stratified fifth of the 5,085 calibration images, reports both parts
//! before and after, and never leaves the held-out part worse; `--holdout off` searches the whole
//! set as earlier versions did.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn shared(p: &str) -> PathBuf {
    nnquant::shared_dir().join(p)
}

/// ARM's m4 model quantized on train_5085, evaluated on test_1017.
fn quantize(out: &Path, extra: &[&str]) -> Value {
    let m = |p: &str| shared(&format!("models/arm-cifar10-m4/{p}"));
    quantize_model(
        out,
        &m("cifar10_m4_train_test.prototxt"),
        &m("cifar10_m4_iter_70000.caffemodel.h5"),
        extra,
    )
}

/// A CIFAR-10 model (prototxt `p`, weights `w`, ARM's mean file) quantized on train_5085 and
/// evaluated on test_1017; the report.
fn quantize_model(out: &Path, p: &Path, w: &Path, extra: &[&str]) -> Value {
    let d = |p: &str| shared(&format!("data/cifar10/{p}"));
    let (model, report) = (out.join("m.nnq.json"), out.join("r.json"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = Vec::new();
    let mean = shared("models/arm-cifar10-m4/mean.binaryproto");
    let (c, cl, e, el) = (
        d("train_5085_u8_hwc.npy"),
        d("train_5085_labels.npy"),
        d("test_1017_u8_hwc.npy"),
        d("test_1017_labels.npy"),
    );
    args.extend([
        &"quantize" as &dyn AsRef<std::ffi::OsStr>,
        &"--model",
        &p,
        &"--weights",
        &w,
        &"--mean-file",
        &mean,
        &"--calib",
        &c,
        &"--calib-labels",
        &cl,
        &"--eval",
        &e,
        &"--eval-labels",
        &el,
        &"-o",
        &model,
        &"--report",
        &report,
        &"--quiet",
    ]);
    for x in extra {
        args.push(x);
    }
    let o = nnquant(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap()
}

fn correct(s: &Value) -> u64 {
    s["correct"].as_u64().unwrap()
}

#[test]
#[ignore = "needs ../shared"]
fn the_default_search_is_guarded_by_a_held_out_fifth() {
    let f = Fixture::new();
    let r = quantize(&f.path("guarded"), &[]);
    let s = &r["search"];
    assert_eq!(s["objective"], "classifier");
    let h = &s["holdout"];
    assert_eq!(h["images"], 1017);
    assert_eq!(s["final_score"]["images"], 4068);
    // The held-out part got better and was never made worse by an accepted change.
    assert!(
        correct(&h["final_score"]) > correct(&h["start_score"]),
        "{h}"
    );
    assert!(h["final_score"]["kl"].as_f64() < h["start_score"]["kl"].as_f64());
    let trace = s["trace"].as_array().unwrap();
    let checks: Vec<&Value> = trace.iter().filter(|t| t["holdout"] == true).collect();
    // One evaluation scores the start, one checks each change the search part accepted.
    assert_eq!(checks.len() as u64 + 1, h["evaluations"].as_u64().unwrap());
    let refused = checks.iter().filter(|t| t["accepted"] == false).count();
    assert_eq!(refused as u64, h["rejected"].as_u64().unwrap());
    // Within the test set's resolution of ARM's own formats (808/1017, ±13 images) and closer
    // to float than they are (their top-1 agreement: 96.76 %).
    assert!(
        r["accuracy"]["quant_correct"].as_u64().unwrap() >= 808 - 13,
        "{}",
        r["accuracy"]
    );
    assert!(r["accuracy"]["top1_agreement"].as_f64().unwrap() > 0.9676);
    // Rounded average pools (the default) took agreement from 97.05 % to 98.13 % and the output
    // SQNR from 23.1 to 24.9 dB: a regression below 97.5 % / 24 dB fails here.
    assert!(r["accuracy"]["top1_agreement"].as_f64().unwrap() >= 0.975);
    assert!(r["accuracy"]["output_sqnr_db"].as_f64().unwrap() >= 24.0);

    let off = quantize(&f.path("off"), &["--holdout", "off"]);
    assert!(off["search"].get("holdout").is_none());
    assert_eq!(off["search"]["final_score"]["images"], 5085);
}

/// ResNet-56 (../shared, 58 conv/fc layers, BN folded, residual adds), 1,000 calibration images:
/// the default search is the layer-local pass alone on a graph this deep (no descent), and the
/// quantized model stays within 0.3 percentage points of float top-1 on test_1017 (issue 9's
/// target) and agrees with float on at least 97 % of the images.
#[test]
#[ignore = "needs ../shared"]
fn resnet56_default_search_stays_close_to_float() {
    let f = Fixture::new();
    let m = shared("models/resnet56-cifar10");
    let r = quantize_model(
        &f.path("r56"),
        &m.join("res56_cifar_train_test.prototxt"),
        &m.join("ResNet_56.caffemodel"),
        &["--calib-limit", "1000"],
    );
    let s = &r["search"];
    assert_eq!(s["strategy"], "default");
    assert!(s["local"]["steps"].as_array().unwrap().len() > 100);
    assert!(
        s["trace"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["layer"] == "(local pass)"),
        "no coordinate descent on a 58-layer graph"
    );
    let a = &r["accuracy"];
    let (fc, qc) = (
        a["float_correct"].as_u64().unwrap() as f64,
        a["quant_correct"].as_u64().unwrap() as f64,
    );
    assert_eq!(a["float_correct"], 946, "float ResNet-56: 93.02 %");
    // Measured 944/1017 (−0.20 pp), top-1 agreement 97.7 %, output SQNR 19.7 dB. By calibration
    // size: 500 images 941 (−0.49 pp), 2,000 943, 5,085 944 (agreement 98.3 %, 20.0 dB). A few
    // images are below the test set's resolution; the search is deterministic, so this gate
    // only moves when the arithmetic or the search does.
    assert!(
        (fc - qc) / 1017.0 * 100.0 <= 0.3,
        "quantized {qc}/1017 is more than 0.3 pp below float {fc}/1017"
    );
    assert!(a["top1_agreement"].as_f64().unwrap() >= 0.97, "{a}");
}
