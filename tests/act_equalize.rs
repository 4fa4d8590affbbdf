//! Activation equalization (`quantize --act-equalize`, on by default with per-channel formats):
//! power-of-two channel scales between a convolution and the depthwise convolutions it feeds
//! leave the float model bit for bit, never widen a blob, fill each blob's format better, keep
//! the int8 weights of both layers, and are reported; per-layer formats and `off` skip it.

mod common;

use common::{nnquant, Fixture};
use nnquant::ir::equalize::{activation_blobs, equalize_activations, ChannelRanges};
use std::path::{Path, PathBuf};

fn dwnet() -> nnquant::ir::Graph {
    let mut g = nnquant::caffe::load_model(
        Path::new("testdata/dwnet/dwnet.prototxt"),
        &nnquant::caffe::LoadOptions {
            weights: Some(Path::new("testdata/dwnet/dwnet.caffemodel")),
            input_shape: None,
        },
    )
    .unwrap();
    nnquant::ir::passes::fold_batchnorm(&mut g).unwrap();
    g
}

/// Per-channel max-abs of every blob over a float pass (each image's `[C, …]`).
fn ranges(g: &nnquant::ir::Graph, input: &[f32], batch: usize) -> ChannelRanges {
    let e = nnquant::float::Engine::new(g).unwrap();
    let a = e.forward(input, batch, nnquant::float::Keep::All).unwrap();
    a.blobs
        .iter()
        .map(|(b, v)| {
            let c = g.shape(b).first().copied().unwrap_or(1);
            let per_ch = v.len() / batch / c;
            let mut r = vec![0f32; c];
            for img in v.chunks(v.len() / batch) {
                for (m, ch) in r.iter_mut().zip(img.chunks(per_ch)) {
                    *m = ch.iter().fold(*m, |a, x| a.max(x.abs()));
                }
            }
            (b.clone(), r)
        })
        .collect()
}

#[test]
fn activation_equalization_keeps_float_exactly_and_narrows_no_blob() {
    let g0 = dwnet();
    let mut g1 = g0.clone();
    let input: Vec<f32> = (0..4 * 3 * 32 * 40)
        .map(|i| (((i * 37) % 251) as f32 - 125.0) / 128.0)
        .collect();
    let n = input.len() / 4;
    assert_eq!(n, g0.shape(&g0.input.blob).iter().product::<usize>());
    let r0 = ranges(&g0, &input, 4);
    let blobs = activation_blobs(&g0);
    // conv1 → dw1, pw1 → dw2, pw2 → dw3, pw3 → dw4: what the depthwise layers read, the
    // producers' outputs and inputs.
    assert!(blobs.contains(&"pw1_relu".to_string()), "{blobs:?}");
    assert!(blobs.contains(&"pw1".to_string()), "{blobs:?}");
    let (scales, e) = equalize_activations(&mut g1, &r0, 4).unwrap();
    assert_eq!(
        scales.len(),
        e.pairs.iter().filter(|p| p.channels_scaled > 0).count()
    );
    let producers: Vec<&str> = e.pairs.iter().map(|p| p.producer.as_str()).collect();
    assert_eq!(producers, ["conv1", "pw1", "pw2", "pw3"], "{e:?}");
    assert!(e.pairs.iter().any(|p| p.channels_scaled > 0), "{e:?}");
    for p in &e.pairs {
        assert!(p.range_use_after >= p.range_use_before, "{p:?}");
    }
    assert_ne!(g0.nodes, g1.nodes, "weights were rescaled");
    let out = |g: &nnquant::ir::Graph| {
        let e = nnquant::float::Engine::new(g).unwrap();
        let a = e.forward(&input, 4, nnquant::float::Keep::Outputs).unwrap();
        g.outputs
            .iter()
            .map(|o| a.blobs[o].clone())
            .collect::<Vec<_>>()
    };
    for (x, y) in out(&g0).iter().zip(&out(&g1)) {
        assert!(
            x.iter().zip(y).all(|(u, v)| u.to_bits() == v.to_bits()),
            "float outputs changed"
        );
    }
    // No blob's max-abs grows (a start format from it stays what it was), and the blobs the
    // depthwise layers read are filled better.
    let r1 = ranges(&g1, &input, 4);
    let max = |r: &ChannelRanges, b: &str| r[b].iter().fold(0f32, |a, &v| a.max(v));
    for b in r0.keys() {
        assert!(max(&r1, b) <= max(&r0, b), "blob {b} widened");
    }
    let mean = |r: &ChannelRanges, b: &str| r[b].iter().sum::<f32>() / r[b].len() as f32;
    assert!(mean(&r1, "pw1_relu") > mean(&r0, "pw1_relu"));
}

/// `quantize` on testdata/dwnet (`--search none`, with `extra` flags): the outcome and the
/// paths of the model file and report it was asked to write.
fn run_quantize(f: &Fixture, name: &str, extra: &[&str]) -> (common::Outcome, PathBuf, PathBuf) {
    let (m, r) = (
        f.path(&format!("{name}.nnq.json")),
        f.path(&format!("{name}.json")),
    );
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"quantize",
        &"--model",
        &"testdata/dwnet/dwnet.prototxt",
        &"--weights",
        &"testdata/dwnet/dwnet.caffemodel",
        &"--calib",
        &"testdata/dwnet/calib_u8_hwc.npy",
        &"--eval",
        &"testdata/dwnet/test_u8_hwc.npy",
        &"--mean-value",
        &"128",
        &"--scale",
        &"0.0078125",
        &"--search",
        &"none",
        &"-o",
        &m,
        &"--report",
        &r,
        &"--quiet",
    ];
    for e in extra {
        args.push(e);
    }
    (nnquant(&args), m, r)
}

/// [`run_quantize`] that must succeed: the model file and the report.
fn quantize(f: &Fixture, name: &str, extra: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let (o, m, r) = run_quantize(f, name, extra);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    (read(&m), read(&r))
}

fn layer<'a>(m: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    m["graph"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn quantize_equalizes_activations_by_default_and_keeps_the_int8_weights() {
    let f = Fixture::new();
    let (on, r_on) = quantize(&f, "on", &[]);
    let (off, r_off) = quantize(&f, "off", &["--act-equalize", "off"]);
    let ae = &r_on["activation_equalization"];
    assert_eq!(ae["pairs"].as_array().unwrap().len(), 4, "{ae}");
    assert!(ae["images"].as_u64().unwrap() > 0);
    assert!(r_off.get("activation_equalization").is_none());
    let md = std::fs::read_to_string(f.path("on.md")).unwrap();
    assert!(md.contains("## Activation equalization"), "{md}");
    // Per-channel formats absorb the powers of two: the producers' and the depthwise layers'
    // int8 weights are the same bytes, and the producers' biases too; only fraction bits and
    // shifts move. (A depthwise layer's bias may gain fraction bits: its format is capped by
    // weight + input fraction bits, and the weights gained some.)
    let mut moved = 0;
    for (name, producer) in [("pw1", true), ("dw2", false), ("pw3", true), ("dw4", false)] {
        let (a, b) = (
            &layer(&on, name)["op"]["Conv"],
            &layer(&off, name)["op"]["Conv"],
        );
        assert_eq!(a["weights"], b["weights"], "{name} weights");
        if producer {
            assert_eq!(a["bias"], b["bias"], "{name} bias");
        }
        moved += usize::from(a["per_channel"] != b["per_channel"]);
    }
    assert!(moved > 0, "no channel format moved");
    // The depthwise outputs (the same float values with and without; a scaled blob's own SQNR
    // weighs its channels differently, so it is not comparable) and the output do not get worse.
    let sqnr = |r: &serde_json::Value, b: &str| {
        r["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == b)
            .unwrap()["sqnr_db"]
            .as_f64()
            .unwrap()
    };
    for blob in ["dw3", "dw4", "fc"] {
        let (a, b) = (sqnr(&r_on, blob), sqnr(&r_off, blob));
        assert!(a >= b - 0.1, "{blob}: {a:.2} dB with, {b:.2} dB without");
    }
    // Per-layer formats would pay for the scales in the weights: not applied.
    let (_, r_pl) = quantize(&f, "pl", &["--per-layer"]);
    assert!(r_pl.get("activation_equalization").is_none());
    // Deterministic.
    let (on2, _) = quantize(&f, "on2", &[]);
    assert_eq!(on, on2);

    // The exponents are in the model's formats; as a formats file they give the same graph.
    let scales = &on["formats"]["activation_scales"];
    assert_eq!(scales.as_object().unwrap().len(), 4, "{scales}");
    let formats = f.path("formats.json");
    std::fs::write(&formats, on["formats"].to_string()).unwrap();
    let fs = formats.to_str().unwrap();
    let (again, _) = quantize(&f, "again", &["--formats", fs]);
    assert_eq!(again["graph"], on["graph"]);
    assert_eq!(again["formats"], on["formats"]);
}

/// A formats file whose activation scales do not fit the model is refused (exit 2, the entry
/// named), and nothing is written.
#[test]
fn bad_activation_scales_in_a_formats_file_are_refused() {
    let f = Fixture::new();
    let (on, _) = quantize(&f, "on", &[]);
    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "name",
            serde_json::json!({"fc": vec![1; 10]}),
            "activation_scales.fc",
        ),
        (
            "dense",
            serde_json::json!({"dw1": vec![1; 16]}),
            "activation_scales.dw1",
        ),
        (
            "count",
            serde_json::json!({"pw1": [1, 2]}),
            "2 exponents for 32 channels",
        ),
        (
            "range",
            serde_json::json!({"pw1": vec![9; 32]}),
            "outside 0..=8",
        ),
    ];
    for (name, scales, want) in cases {
        let mut fm = on["formats"].clone();
        fm["activation_scales"] = scales;
        let p = f.path(&format!("{name}.formats.json"));
        std::fs::write(&p, fm.to_string()).unwrap();
        let (o, m, _) = run_quantize(&f, name, &["--formats", p.to_str().unwrap()]);
        assert_eq!(o.code, 2, "{name}: {}", o.stderr);
        assert!(o.stderr.contains(want), "{name}: {}", o.stderr);
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
        assert!(!m.exists(), "{name}: a model was written");
    }
}
