//! slim-320 (`../shared/models/slim320-face`: a depthwise face detector with SSD heads — Permute,
//! Reshape, Concat, Softmax — and two outputs) end to end: quantized on half of its photos,
//! measured on the other half against the float model (output SQNR, face anchors kept), and the
//! generated firmware's outputs equal the simulator's.

mod common;

use common::{nnquant, npy_f64, npz_members, sqnr_db, Fixture};
use std::path::PathBuf;

fn shared(p: &str) -> PathBuf {
    nnquant::shared_dir().join("models/slim320-face").join(p)
}

/// The detector's default score threshold (Ultra-Light-Fast-Generic-Face-Detector's demo).
const FACE_THRESHOLD: f64 = 0.7;

/// Softmax over pairs (background, face) → face probability per anchor.
fn face_probabilities(logits: &[f64]) -> Vec<f64> {
    logits
        .chunks(2)
        .map(|p| 1.0 / (1.0 + (p[0] - p[1]).exp()))
        .collect()
}

#[test]
#[ignore = "needs ../shared"]
fn slim320_quantizes_keeps_faces_and_runs_byte_identical() {
    let f = Fixture::new();
    let photos = shared("photos_240x320_rgb_u8_hwc.npy");
    let (proto, weights) = (shared("slim-320.prototxt"), shared("slim-320.caffemodel"));
    let (model, report) = (f.path("slim.nnq.json"), f.path("slim.json"));
    let pre: [&dyn AsRef<std::ffi::OsStr>; 4] = [&"--mean-value", &"127", &"--scale", &"0.0078125"];
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"quantize",
        &"--model",
        &proto,
        &"--weights",
        &weights,
        &"--calib",
        &photos,
        &"--split",
        &"2",
        &"--search",
        &"none",
        &"-o",
        &model,
        &"--report",
        &report,
        &"--quiet",
    ];
    args.extend(pre);
    let o = nnquant(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    let outputs = m["graph"]["outputs"].as_array().unwrap().clone();
    assert_eq!(
        outputs.len(),
        2,
        "boxes and the scores' logits: {outputs:?}"
    );

    // Float and quantized outputs of the held-out half (`--split 2 --part eval`).
    let (fz, qz) = (f.path("float.npz"), f.path("q.npz"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"eval",
        &"--model",
        &proto,
        &"--weights",
        &weights,
        &"--data",
        &photos,
        &"--split",
        &"2",
        &"--save-outputs",
        &fz,
        &"--quiet",
    ];
    args.extend(pre);
    let o = nnquant(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = nnquant(&[
        &"eval",
        &"--quantized",
        &model,
        &"--data",
        &photos,
        &"--split",
        &"2",
        &"--save-outputs",
        &qz,
        &"--quiet",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let float = npz_members(&std::fs::read(&fz).unwrap());
    let quant = npz_members(&std::fs::read(&qz).unwrap());
    let frac = |blob: &str| m["graph"]["blobs"][blob]["frac_bits"].as_i64().unwrap() as i32;
    let deq = |i: usize| -> Vec<f64> {
        let name = outputs[i].as_str().unwrap();
        let (_, q) = npy_f64(&quant[i].1);
        q.iter().map(|v| v * (-frac(name) as f64).exp2()).collect()
    };
    let (_, fboxes) = npy_f64(&float.iter().find(|m| m.0 == "boxes.npy").unwrap().1);
    let (fshape, fscores) = npy_f64(&float.iter().find(|m| m.0 == "scores.npy").unwrap().1);
    assert_eq!(fshape[1..], [4420, 2]);
    let boxes_db = sqnr_db(&fboxes, &deq(0));
    let qscores = face_probabilities(&deq(1));
    let fface: Vec<f64> = fscores.chunks(2).map(|p| p[1]).collect();
    let scores_db = sqnr_db(&fface, &qscores);
    let faces = fface.iter().filter(|&&p| p > FACE_THRESHOLD).count();
    let kept = fface
        .iter()
        .zip(&qscores)
        .filter(|(&a, &b)| a > FACE_THRESHOLD && b > FACE_THRESHOLD)
        .count();
    let kept_share = kept as f64 / faces.max(1) as f64;
    println!(
        "slim-320 held-out photos: boxes SQNR {boxes_db:.1} dB, face-score SQNR {scores_db:.1} dB, \
         face anchors (p > {FACE_THRESHOLD}) kept {kept}/{faces} = {:.1} %",
        100.0 * kept_share
    );
    assert!(
        faces > 100,
        "the photos have faces: {faces} float face anchors"
    );
    assert!(boxes_db > 8.0, "boxes SQNR {boxes_db:.1} dB");
    assert!(scores_db > 15.0, "face-score SQNR {scores_db:.1} dB");
    assert!(kept_share > 0.8, "face anchors kept {kept}/{faces}");

    // The firmware (host build) writes both outputs as the simulator computes them.
    let o = nnquant(&[
        &"verify",
        &model,
        &"--data",
        &photos,
        &"--target",
        &"host",
        &"--count",
        &"3",
        &"--work-dir",
        &f.path("fw"),
        &"--quiet",
    ]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("3/3 images byte-identical"),
        "{}",
        o.stdout
    );
}
