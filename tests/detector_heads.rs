//! A detector with SSD-style heads (Permute NCHW→NHWC, Reshape to `[anchors, k]`, Concat over
//! anchors, a trailing Softmax) and two outputs, made here: it quantizes, its q7 outputs follow
//! the float ones, `eval --save-outputs` writes both outputs in one .npz, and the generated
//! firmware's outputs (both, one after the other) are the simulator's bytes.

mod common;

use common::{
    assert_fails, nnquant, npy_f64, npz_members, sqnr_db, tensor, verify_identical, Fixture,
};
use nnquant::caffe::write::encode_caffemodel;
use std::path::{Path, PathBuf};

/// conv1 (8 ch, 16×16) and a stride-2 depthwise conv (8 ch, 8×8) each feed a confidence head (2
/// anchors × 2 classes) and a box head (2 anchors × 4).
const HEADS: &str = r#"name: "heads"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "dw2" type: "Convolution" bottom: "conv1" top: "dw2"
  convolution_param { num_output: 8 group: 8 kernel_size: 3 pad: 1 stride: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "dw2" top: "dw2" }
layer { name: "conf1" type: "Convolution" bottom: "conv1" top: "conf1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conf1_perm" type: "Permute" bottom: "conf1" top: "conf1_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf1_flat" type: "Reshape" bottom: "conf1_perm" top: "conf1_flat"
  reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "loc1" type: "Convolution" bottom: "conv1" top: "loc1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "loc1_perm" type: "Permute" bottom: "loc1" top: "loc1_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc1_flat" type: "Reshape" bottom: "loc1_perm" top: "loc1_flat"
  reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "conf2" type: "Convolution" bottom: "dw2" top: "conf2"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conf2_perm" type: "Permute" bottom: "conf2" top: "conf2_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf2_flat" type: "Reshape" bottom: "conf2_perm" top: "conf2_flat"
  reshape_param { shape { dim: 0 dim: -1 dim: 2 } } }
layer { name: "loc2" type: "Convolution" bottom: "dw2" top: "loc2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "loc2_perm" type: "Permute" bottom: "loc2" top: "loc2_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc2_flat" type: "Reshape" bottom: "loc2_perm" top: "loc2_flat"
  reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "conf" type: "Concat" bottom: "conf1_flat" bottom: "conf2_flat" top: "conf"
  concat_param { axis: 1 } }
layer { name: "boxes" type: "Concat" bottom: "loc1_flat" bottom: "loc2_flat" top: "boxes"
  concat_param { axis: 1 } }
layer { name: "scores" type: "Softmax" bottom: "conf" top: "scores" softmax_param { axis: 2 } }
"#;

/// 2 anchors per position: 16·16·2 + 8·8·2.
const ANCHORS: usize = 640;

type Layer = (String, String, Vec<nnquant::ir::Tensor>);

fn conv(name: &str, o: usize, i: usize, k: usize, seed: u64) -> Layer {
    (
        name.to_string(),
        "Convolution".to_string(),
        vec![tensor(&[o, i, k, k], seed), tensor(&[o], seed + 100)],
    )
}

/// The prototxt, its weights (plus `extra` layers) and 48 images.
fn model(f: &Fixture, prototxt: &str, extra: Vec<Layer>) -> (PathBuf, PathBuf, PathBuf) {
    let mut w = vec![
        conv("conv1", 8, 3, 3, 1),
        conv("dw2", 8, 1, 3, 2),
        conv("conf1", 4, 8, 3, 3),
        conv("loc1", 8, 8, 3, 4),
        conv("conf2", 4, 8, 3, 5),
        conv("loc2", 8, 8, 3, 6),
    ];
    w.extend(extra);
    let px: Vec<u8> = (0..48 * 16 * 16 * 3)
        .map(|i| ((i * 7919 + i / 5 * 31) % 251) as u8)
        .collect();
    let images = f.path("images.npy");
    nnquant::npy_out::write(&images, &[48, 16, 16, 3], &px).unwrap();
    (
        f.write("heads.prototxt", prototxt),
        f.write("heads.caffemodel", encode_caffemodel("heads", &w)),
        images,
    )
}

fn quantize(f: &Fixture, p: &Path, w: &Path, images: &Path) -> common::Outcome {
    nnquant(&[
        &"quantize",
        &"--model",
        &p,
        &"--weights",
        &w,
        &"--calib",
        &images,
        &"--split",
        &"2",
        &"--search",
        &"none",
        &"-o",
        &f.path("m.nnq.json"),
        &"--report",
        &f.path("r.json"),
        &"--quiet",
    ])
}

#[test]
fn ssd_heads_quantize_save_both_outputs_and_run_byte_identical() {
    let f = Fixture::new();
    let (p, w, images) = model(&f, HEADS, vec![]);
    let o = quantize(&f, &p, &w, &images);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("m.nnq.json")).unwrap()).unwrap();
    // The trailing Softmax is dropped: its input 'conf' is the output.
    assert_eq!(m["graph"]["outputs"], serde_json::json!(["boxes", "conf"]));
    assert_eq!(
        m["graph"]["blobs"]["boxes"]["shape"],
        serde_json::json!([ANCHORS, 4])
    );
    assert_eq!(m["graph"]["blobs"]["conf1_perm"]["layout"]["h"], 1);

    // Float and quantized outputs, both outputs, one .npz each.
    let (fz, qz) = (f.path("float.npz"), f.path("q.npz"));
    let o = nnquant(&[
        &"eval",
        &"--model",
        &p,
        &"--weights",
        &w,
        &"--data",
        &images,
        &"--save-outputs",
        &fz,
        &"--quiet",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = nnquant(&[
        &"eval",
        &"--quantized",
        &f.path("m.nnq.json"),
        &"--data",
        &images,
        &"--save-outputs",
        &qz,
        &"--quiet",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let float = npz_members(&std::fs::read(&fz).unwrap());
    let quant = npz_members(&std::fs::read(&qz).unwrap());
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|m| m.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&float), ["boxes.npy", "scores.npy"]);
    assert_eq!(names(&quant), ["boxes.npy", "conf.npy"]);
    let (fs, fb) = npy_f64(&float[0].1);
    let (qs, qb) = npy_f64(&quant[0].1);
    assert_eq!(fs, [48, ANCHORS as u64, 4]);
    assert_eq!(qs, fs, "int8 and float outputs share one layout");
    let frac = m["graph"]["blobs"]["boxes"]["frac_bits"].as_i64().unwrap() as i32;
    let deq: Vec<f64> = qb.iter().map(|q| q * (-frac as f64).exp2()).collect();
    let db = sqnr_db(&fb, &deq);
    assert!(db > 20.0, "boxes: q7 vs float SQNR {db:.1} dB");
    // Scores: the float file holds the Softmax, the q7 one its input; compare per anchor.
    let (_, fscore) = npy_f64(&float[1].1);
    let (_, qconf) = npy_f64(&quant[1].1);
    let cf = m["graph"]["blobs"]["conf"]["frac_bits"].as_i64().unwrap() as i32;
    let agree = (0..48 * ANCHORS)
        .filter(|&a| (fscore[2 * a + 1] > fscore[2 * a]) == (qconf[2 * a + 1] > qconf[2 * a]))
        .count();
    assert!(
        agree as f64 > 0.95 * (48 * ANCHORS) as f64,
        "per-anchor class agreement {agree} of {} (conf frac bits {cf})",
        48 * ANCHORS
    );

    // A .npy cannot hold two outputs: refused, nothing written.
    let npy = f.path("q.npy");
    let o = nnquant(&[
        &"eval",
        &"--quantized",
        &f.path("m.nnq.json"),
        &"--data",
        &images,
        &"--save-outputs",
        &npy,
        &"--quiet",
    ]);
    assert_fails(&o, &["2 outputs", "boxes, conf", ".npz"]);
    assert!(!npy.exists());

    // The firmware writes both outputs, one after the other, as the simulator computes them.
    verify_identical(
        &f.path("m.nnq.json"),
        &images,
        "host",
        8,
        &f.path("fw"),
        &[],
    );
    let lib = std::fs::read_to_string(f.path("fw/src/lib.rs")).unwrap();
    assert!(
        lib.contains(&format!("OUTPUT_LEN: usize = {}", ANCHORS * 6)),
        "{lib}"
    );
    let squashed: String = lib.split_whitespace().collect();
    assert!(
        squashed.contains(r#"name:"conf",offset:2560,len:1280"#),
        "{lib}"
    );
    let h = std::fs::read_to_string(f.path("fw/README.md")).unwrap();
    assert!(h.contains("`conf`: values 2560..3840"), "{h}");
}

#[test]
fn permutes_that_reorder_bytes_and_convolutions_over_flat_blobs_are_refused() {
    let f = Fixture::new();
    let nchw_to_nwch = HEADS.replace(
        "name: \"loc2_perm\" type: \"Permute\" bottom: \"loc2\" top: \"loc2_perm\"\n  permute_param { order: 0 order: 2 order: 3 order: 1 }",
        "name: \"loc2_perm\" type: \"Permute\" bottom: \"loc2\" top: \"loc2_perm\"\n  permute_param { order: 0 order: 3 order: 1 order: 2 }",
    );
    assert_ne!(nchw_to_nwch, HEADS);
    let (p, w, images) = model(&f, &nchw_to_nwch, vec![]);
    let o = quantize(&f, &p, &w, &images);
    assert_fails(
        &o,
        &["loc2_perm", "Permute order [0, 3, 1, 2]", "reorder bytes"],
    );
    assert!(!f.path("m.nnq.json").exists());

    // A convolution reading a permuted (flat) blob would read the bytes in the wrong order.
    let conv_after = HEADS.replace(
        "layer { name: \"loc2_flat\"",
        "layer { name: \"bad\" type: \"Convolution\" bottom: \"conf1_perm\" top: \"bad\"\n  convolution_param { num_output: 2 kernel_size: 1 } }\nlayer { name: \"loc2_flat\"",
    );
    let f = Fixture::new();
    let (p, w, images) = model(&f, &conv_after, vec![conv("bad", 2, 16, 1, 9)]);
    let o = quantize(&f, &p, &w, &images);
    assert_fails(&o, &["'bad'", "C×H×W feature map"]);
}

#[test]
fn permute_flatten_concat_heads_as_in_caffe_ssd() {
    // Caffe SSD's own heads: conv → Permute → Flatten → Concat (axis 1) into one vector.
    let flat = HEADS
        .replace(
            "type: \"Reshape\" bottom: \"loc1_perm\" top: \"loc1_flat\"\n  reshape_param { shape { dim: 0 dim: -1 dim: 4 } }",
            "type: \"Flatten\" bottom: \"loc1_perm\" top: \"loc1_flat\"",
        )
        .replace(
            "type: \"Reshape\" bottom: \"loc2_perm\" top: \"loc2_flat\"\n  reshape_param { shape { dim: 0 dim: -1 dim: 4 } }",
            "type: \"Flatten\" bottom: \"loc2_perm\" top: \"loc2_flat\"",
        );
    assert_eq!(flat.matches("Flatten").count(), 2);
    let f = Fixture::new();
    let (p, w, images) = model(&f, &flat, vec![]);
    let o = quantize(&f, &p, &w, &images);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("m.nnq.json")).unwrap()).unwrap();
    assert_eq!(
        m["graph"]["blobs"]["boxes"]["shape"],
        serde_json::json!([ANCHORS * 4])
    );
    let (fz, qz) = (f.path("float.npz"), f.path("q.npz"));
    for (args, _) in [
        (
            vec![
                "--model",
                p.to_str().unwrap(),
                "--weights",
                w.to_str().unwrap(),
            ],
            0,
        ),
        (
            vec!["--quantized", f.path("m.nnq.json").to_str().unwrap()],
            1,
        ),
    ] {
        let out = if args[0] == "--model" { &fz } else { &qz };
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"eval"];
        for x in &args {
            a.push(x);
        }
        a.extend([
            &"--data" as &dyn AsRef<std::ffi::OsStr>,
            &images,
            &"--save-outputs",
            out,
            &"--quiet",
        ]);
        let o = nnquant(&a);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let (_, fb) = npy_f64(&npz_members(&std::fs::read(&fz).unwrap())[0].1);
    let (_, qb) = npy_f64(&npz_members(&std::fs::read(&qz).unwrap())[0].1);
    let frac = m["graph"]["blobs"]["boxes"]["frac_bits"].as_i64().unwrap() as i32;
    let deq: Vec<f64> = qb.iter().map(|q| q * (-frac as f64).exp2()).collect();
    let db = sqnr_db(&fb, &deq);
    assert!(db > 20.0, "flattened boxes: q7 vs float SQNR {db:.1} dB");
}

/// Cross-layer equalization (power-of-two scales) leaves the float model's outputs bit for bit,
/// narrows the depthwise layer's channel ranges, and `quantize --equalize` reports it.
#[test]
fn equalization_keeps_the_float_model_exactly_and_is_reported() {
    let f = Fixture::new();
    let (p, w, images) = model(&f, HEADS, vec![]);
    let load = || {
        let mut g = nnquant::caffe::load_model(
            &p,
            &nnquant::caffe::LoadOptions {
                weights: Some(&w),
                input_shape: None,
            },
        )
        .unwrap();
        nnquant::ir::passes::fold_batchnorm(&mut g).unwrap();
        // Channel ranges 1 to 64 apart in the depthwise layer, as BatchNorm folding leaves them.
        let dw = g.nodes.iter_mut().find(|n| n.name == "dw2").unwrap();
        for (o, k) in dw.weights[0].data.chunks_mut(9).enumerate() {
            k.iter_mut().for_each(|v| *v *= ((o + 1) * (o + 1)) as f32);
        }
        g
    };
    let (g0, mut g1) = (load(), load());
    let e = nnquant::ir::equalize::equalize(&mut g1).unwrap();
    let producers: Vec<&str> = e.pairs.iter().map(|p| p.producer.as_str()).collect();
    // conv1 feeds dw2, conf1 and loc1 (through relu1); dw2 feeds conf2 and loc2.
    assert_eq!(producers, ["conv1", "dw2"], "{e:?}");
    assert_ne!(g0.nodes, g1.nodes, "weights were rescaled");
    let dw = &e.pairs[1];
    assert!(
        dw.channels_scaled > 0 && dw.producer_spread_after < dw.producer_spread_before,
        "{dw:?}"
    );
    let input: Vec<f32> = (0..4 * 3 * 16 * 16)
        .map(|i| ((i * 31) % 255) as f32 - 127.0)
        .collect();
    let run = |g: &nnquant::ir::Graph| {
        let e = nnquant::float::Engine::new(g).unwrap();
        let a = e.forward(&input, 4, nnquant::float::Keep::Outputs).unwrap();
        g.outputs
            .iter()
            .map(|o| a.blobs[o].clone())
            .collect::<Vec<_>>()
    };
    let (a, b) = (run(&g0), run(&g1));
    for (x, y) in a.iter().zip(&b) {
        assert!(
            x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits()),
            "float outputs changed"
        );
    }

    let o = nnquant(&[
        &"quantize",
        &"--model",
        &p,
        &"--weights",
        &w,
        &"--calib",
        &images,
        &"--split",
        &"2",
        &"--search",
        &"none",
        &"--equalize",
        &"-o",
        &f.path("m.nnq.json"),
        &"--report",
        &f.path("r.json"),
        &"--quiet",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path("r.json")).unwrap()).unwrap();
    assert_eq!(r["equalization"]["pairs"][1]["producer"], "dw2");
    let md = std::fs::read_to_string(f.path("r.md")).unwrap();
    assert!(md.contains("## Cross-layer equalization"), "{md}");
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &p,
        &"--weights",
        &w,
        &"--calib",
        &images,
        &"--split",
        &"2",
        &"--formats",
        &f.path("none.json"),
        &"--equalize",
        &"-o",
        &f.path("m2.nnq.json"),
        &"--report",
        &f.path("r2.json"),
        &"--quiet",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr.contains("--equalize") && o.stderr.contains("--formats"),
        "{}",
        o.stderr
    );
}
