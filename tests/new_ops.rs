//! The q7 ops beyond conv/pool/fc: PReLU, Sigmoid and TanH (tables), Eltwise MAX and a Softmax
//! inside the network. Each kernel against its definition in f64 (within rounding), a small
//! model that uses all of them against the float model, and its firmware byte for byte against
//! the simulator (host here; Cortex-M4 in QEMU in `qemu_new_ops_on_cortex_m4`, run by .ci/run).

mod common;

use common::{quantize_ok, tensor, verify_identical, Fixture};
use nnquant::fixed::graph::lut_table;
use nnquant::fixed::kernels::{lut_q7, max_q7, prelu_q7, softmax_q7};
use proptest::prelude::*;
use std::path::PathBuf;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The sigmoid/tanh table of any pair of formats is within half an output step of the
    /// function (or saturated), and the kernel is the table.
    #[test]
    fn tables_follow_the_function(in_frac in -2i32..9, out_frac in 5i32..9, tanh in any::<bool>(), x in any::<i8>()) {
        let f: fn(f64) -> f64 = if tanh { f64::tanh } else { |v| 1.0 / (1.0 + (-v).exp()) };
        let t = lut_table(in_frac, out_frac, f);
        let want = f(f64::from(x) * (-f64::from(in_frac)).exp2()) * f64::from(out_frac).exp2();
        let mut v = [x];
        lut_q7(&mut v, &t).unwrap();
        let got = f64::from(v[0]);
        prop_assert!((got - want).abs() <= 0.5 || (got == 127.0 && want > 127.0) || (got == -128.0 && want < -128.0), "{got} vs {want}");
    }

    /// PReLU: positives unchanged, negatives times the slope within rounding.
    #[test]
    fn prelu_within_rounding(x in proptest::collection::vec(any::<i8>(), 1..64), s in proptest::collection::vec(any::<i8>(), 1..5), sh in 0i32..12) {
        let c = s.len();
        let n = x.len() / c * c;
        prop_assume!(n > 0);
        let mut v = x[..n].to_vec();
        prelu_q7(&mut v, &s, sh).unwrap();
        for (i, (&a, &b)) in x[..n].iter().zip(&v).enumerate() {
            if a >= 0 {
                prop_assert_eq!(a, b);
            } else {
                let want = (f64::from(a) * f64::from(s[i % c]) * (-f64::from(sh)).exp2()).clamp(-128.0, 127.0);
                prop_assert!((f64::from(b) - want).abs() <= 0.5 || (b == 127 && want >= 127.0), "{b} vs {want}");
            }
        }
    }

    /// Eltwise MAX at a common format is the larger value, requantized once.
    #[test]
    fn max_is_the_larger_value(a in any::<i8>(), b in any::<i8>(), fa in 0i32..8, fb in 0i32..8, fo in 0i32..8) {
        let common = fa.max(fb).max(fo);
        let mut y = [0i8];
        max_q7(&[a], common - fa, &[b], common - fb, common - fo, &mut y).unwrap();
        let va = f64::from(a) * (-f64::from(fa)).exp2();
        let vb = f64::from(b) * (-f64::from(fb)).exp2();
        let want = (va.max(vb) * f64::from(fo).exp2()).clamp(-128.0, 127.0);
        prop_assert!((f64::from(y[0]) - want).abs() <= 0.5, "{} vs {want}", y[0]);
    }

    /// Softmax rows: probabilities within a step of the float softmax of the same q7 inputs,
    /// order kept, the row's total within rounding of 1.
    #[test]
    fn softmax_rows_are_probabilities(x in proptest::collection::vec(any::<i8>(), 1..40), in_frac in 0i32..7, row in 1usize..6) {
        let n = x.len() / row * row;
        prop_assume!(n > 0);
        let table: Vec<u16> = (0..256).map(|d| ((-(d as f64) * (-(in_frac as f64)).exp2()).exp() * 32768.0).round() as u16).collect();
        let mut y = x[..n].to_vec();
        softmax_q7(&mut y, row, &table, 7).unwrap();
        for (xs, ys) in x[..n].chunks(row).zip(y.chunks(row)) {
            let vals: Vec<f64> = xs.iter().map(|&v| f64::from(v) * (-f64::from(in_frac)).exp2()).collect();
            let m = vals.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = vals.iter().map(|v| (v - m).exp()).sum();
            for (v, &q) in vals.iter().zip(ys) {
                let p = (v - m).exp() / s * 128.0;
                prop_assert!((f64::from(q) - p.min(127.0)).abs() <= 1.0, "{q} vs {p}");
            }
            for i in 0..row {
                for j in 0..row {
                    if xs[i] > xs[j] { prop_assert!(ys[i] >= ys[j]); }
                }
            }
        }
    }
}

#[test]
fn kernels_refuse_bad_arguments() {
    let mut v = [1i8; 6];
    assert!(lut_q7(&mut v, &[0; 255]).is_err());
    assert!(
        prelu_q7(&mut v, &[1; 4], 2).is_err(),
        "6 values are not rows of 4 channels"
    );
    assert!(prelu_q7(&mut v, &[1; 3], 32).is_err());
    assert!(softmax_q7(&mut v, 4, &[1; 256], 7).is_err());
    assert!(
        softmax_q7(&mut v, 3, &[0; 256], 7).is_err(),
        "a zero table would divide by zero"
    );
    assert!(softmax_q7(&mut v, 3, &[1; 256], 16).is_err());
    let mut y = [0i8; 6];
    assert!(max_q7(&v, 24, &v, 0, 0, &mut y).is_err());
    assert_eq!(v, [1; 6]);
}

/// conv1 → PReLU → {conv2 → Sigmoid, conv3 → TanH} → Eltwise MAX → Softmax over channels → conv4
/// → InnerProduct (→ Softmax, dropped from the q7 graph as usual).
const OPS: &str = r#"name: "ops"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "sig" type: "Sigmoid" bottom: "conv2" top: "sig" }
layer { name: "conv3" type: "Convolution" bottom: "conv1" top: "conv3"
  convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "tanh" type: "TanH" bottom: "conv3" top: "tanh" }
layer { name: "max" type: "Eltwise" bottom: "sig" bottom: "tanh" top: "max" eltwise_param { operation: MAX } }
layer { name: "sm" type: "Softmax" bottom: "max" top: "sm" }
layer { name: "conv4" type: "Convolution" bottom: "sm" top: "conv4"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv4" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"#;

/// The model quantized (no search), with its images: (model file, images).
fn quantized(f: &Fixture) -> (PathBuf, PathBuf, serde_json::Value) {
    let conv = |name: &str, o: usize, i: usize, k: usize, seed: u64| {
        (
            name.to_string(),
            "Convolution".to_string(),
            vec![tensor(&[o, i, k, k], seed), tensor(&[o], seed + 50)],
        )
    };
    let mut slopes = tensor(&[8], 9);
    slopes.data.iter_mut().for_each(|v| *v = v.abs() * 0.4);
    let w = vec![
        conv("conv1", 8, 3, 3, 1),
        ("prelu1".into(), "PReLU".into(), vec![slopes]),
        conv("conv2", 8, 8, 1, 2),
        conv("conv3", 8, 8, 1, 3),
        conv("conv4", 6, 8, 3, 4),
        (
            "ip".into(),
            "InnerProduct".into(),
            vec![tensor(&[5, 6 * 5 * 5], 5), tensor(&[5], 6)],
        ),
    ];
    let p = f.write("ops.prototxt", OPS);
    let wts = f.write(
        "ops.caffemodel",
        nnquant::caffe::write::encode_caffemodel("ops", &w),
    );
    let images = f.path("images.npy");
    let px: Vec<u8> = (0..64 * 12 * 12 * 3)
        .map(|i| ((i * 7919 + i / 7 * 13) % 256) as u8)
        .collect();
    nnquant::npy_out::write(&images, &[64, 12, 12, 3], &px).unwrap();
    let (m, r) = quantize_ok(
        f.dir.path(),
        &[
            &"--model",
            &p,
            &"--weights",
            &wts,
            &"--calib",
            &images,
            &"--split",
            &"2",
            &"--mean-value",
            &"128",
            &"--scale",
            &"0.0078125",
            &"--search",
            &"none",
        ],
    );
    (m, images, r)
}

#[test]
fn model_with_every_new_op_follows_float_and_runs_byte_identical() {
    let f = Fixture::new();
    let (m, images, r) = quantized(&f);
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    let ops: Vec<String> = model["graph"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let op = &l["op"];
            op.as_str().map_or_else(
                || op.as_object().unwrap().keys().next().unwrap().clone(),
                String::from,
            )
        })
        .collect();
    for want in ["PRelu", "Lut", "Max", "Softmax"] {
        assert!(ops.iter().any(|o| o == want), "{want} missing from {ops:?}");
    }
    // Every new op's output against the float model on the held-out images.
    let sqnr = |b: &str| {
        r["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == b)
            .unwrap_or_else(|| panic!("no blob {b}"))["sqnr_db"]
            .as_f64()
            .unwrap()
    };
    for (b, min) in [
        ("prelu1", 25.0),
        ("sig", 20.0),
        ("tanh", 20.0),
        ("max", 20.0),
        ("sm", 15.0),
        ("ip", 15.0),
    ] {
        let db = sqnr(b);
        println!("{b}: q7 vs float SQNR {db:.1} dB");
        assert!(db > min, "{b}: SQNR {db:.1} dB");
    }
    let agreement = r["accuracy"]["top1_agreement"].as_f64().unwrap();
    assert!(agreement > 0.8, "top-1 agreement with float {agreement}");

    verify_identical(&m, &images, "host", 32, &f.path("fw"), &[]);
}

#[test]
#[ignore = "needs qemu-system-arm and the thumbv7em-none-eabihf target (run by .ci/run)"]
fn qemu_new_ops_on_cortex_m4() {
    let f = Fixture::new();
    let (m, images, _) = quantized(&f);
    let out = verify_identical(
        &m,
        &images,
        "cortex-m4",
        64,
        &f.path("fw-m4"),
        &["--count-instructions"],
    );
    println!("{out}");
}
