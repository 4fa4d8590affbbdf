//! The search's objective for models that are not one-output classifiers. A conv trunk with two
//! heads (a feature map and a vector) is searched and evaluated on both outputs, each against the
//! float blob of the same name, with the held-out guard on, at library level and through
//! `nnquant quantize`; a one-head feature-map model goes through `nnquant quantize` and its report.

mod common;
use common::*;
use nnquant::caffe::write::encode_caffemodel;
use std::path::{Path, PathBuf};

const TWO_HEADS: &str = r#"name: "two_heads"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "map" type: "Convolution" bottom: "conv1" top: "map"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "vec" type: "InnerProduct" bottom: "conv1" top: "vec"
  inner_product_param { num_output: 6 } }
"#;

/// The trunk and the map head only: one output, a 4×8×8 feature map.
fn one_head() -> String {
    TWO_HEADS
        .replace("two_heads", "one_head")
        .split("layer { name: \"vec\"")
        .next()
        .unwrap()
        .to_string()
}

fn npy_u8(path: &Path, shape: &[u64], data: &[u8]) {
    use npyz::WriterBuilder;
    let f = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(f)
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// Smooth images (gradients plus a little pseudo-random texture), HWC uint8.
fn images(n: usize, seed: u64) -> Vec<u8> {
    let noise = values(n * 8 * 8 * 3, seed);
    (0..n * 192)
        .map(|i| {
            let (img, p) = (i / 192, i % 192);
            let (y, x, c) = (p / 24, (p / 3) % 8, p % 3);
            let v = 40.0 * (img % 5) as f32 + 12.0 * (x + y) as f32 + 20.0 * c as f32;
            (v + 30.0 * noise[i]).clamp(0.0, 255.0) as u8
        })
        .collect()
}

/// The model, its weights and data in `f`: (prototxt, weights, calib, eval).
fn two_heads(f: &Fixture, calib: usize) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    model(f, calib, TWO_HEADS)
}

fn model(f: &Fixture, calib: usize, prototxt: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let w = vec![
        (
            "conv1".to_string(),
            "Convolution".to_string(),
            vec![tensor(&[8, 3, 3, 3], 11), tensor(&[8], 12)],
        ),
        (
            "map".into(),
            "Convolution".into(),
            vec![tensor(&[4, 8, 1, 1], 13), tensor(&[4], 14)],
        ),
        (
            "vec".into(),
            "InnerProduct".into(),
            vec![tensor(&[6, 512], 15), tensor(&[6], 16)],
        ),
    ];
    let (c, e) = (f.path("calib.npy"), f.path("eval.npy"));
    npy_u8(&c, &[calib as u64, 8, 8, 3], &images(calib, 21));
    npy_u8(&e, &[40, 8, 8, 3], &images(40, 22));
    (
        f.write("two.prototxt", prototxt),
        f.write("two.caffemodel", encode_caffemodel("two_heads", &w)),
        c,
        e,
    )
}

fn quantize(
    f: &Fixture,
    prototxt: &str,
    calib: usize,
    extra: &[&str],
) -> (serde_json::Value, String) {
    let (p, w, c, e) = model(f, calib, prototxt);
    let (m, r) = (f.path("m.nnq.json"), f.path("r.json"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"quantize",
        &"--model",
        &p,
        &"--weights",
        &w,
        &"--calib",
        &c,
        &"--eval",
        &e,
        &"--scale",
        &"0.00390625",
        &"--quiet",
        &"-o",
        &m,
        &"--report",
        &r,
    ];
    for x in extra {
        args.push(x);
    }
    let o = nnquant(&args);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    (json, std::fs::read_to_string(f.path("r.md")).unwrap())
}

/// The same through `nnquant quantize`: both outputs in the report.
#[test]
fn a_two_head_model_is_searched_and_reported_on_both_outputs() {
    let f = Fixture::new();
    let (r, md) = quantize(&f, TWO_HEADS, 300, &[]);
    let s = &r["search"];
    assert_eq!(s["objective"], "regression", "{s}");
    assert!(s["objective_reason"]
        .as_str()
        .unwrap()
        .contains("lowest output SQNR"));
    // Both outputs, each against float: the 4×8×8 map per position, the 6-vector as a whole.
    let outs = r["outputs"].as_array().expect("outputs");
    let names: Vec<&str> = outs.iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["map", "vec"]);
    for o in outs {
        let (db, cos, agree) = (
            o["sqnr_db"].as_f64().unwrap(),
            o["cosine"].as_f64().unwrap(),
            o["agreement"].as_f64().unwrap(),
        );
        assert!(db > 20.0, "{o}");
        assert!(cos > 0.99 && cos <= 1.0 + 1e-9, "{o}");
        assert!(agree > 0.5 && agree <= 1.0, "{o}");
    }
    assert_eq!(outs[0]["rows_per_image"], 64);
    assert_eq!(outs[1]["rows_per_image"], 1);
    let lowest = outs
        .iter()
        .map(|o| o["sqnr_db"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(r["accuracy"]["output_sqnr_db"].as_f64().unwrap(), lowest);
    // No labels and a regression objective: no top-1 accuracy is claimed.
    assert!(r["accuracy"]["quant_top1"].is_null());
    assert!(r.get("quality_warnings").is_none(), "{r}");
    // The search scored the lowest output SQNR and did not end below its start, on the search
    // part and on the held-out fifth.
    let db = |v: &serde_json::Value| v["sqnr_db"].as_f64().unwrap();
    assert!(db(&s["final_score"]) >= db(&s["start_score"]), "{s}");
    let h = &s["holdout"];
    assert_eq!(h["images"], 60);
    assert_eq!(s["final_score"]["images"], 240);
    assert!(db(&h["final_score"]) >= db(&h["start_score"]), "{h}");
    let trace = s["trace"].as_array().unwrap();
    assert!(trace.iter().any(|t| t["holdout"] == true));
    assert!(trace
        .iter()
        .filter(|t| t["holdout"] == true)
        .all(|t| t["score"]["images"] == 60));
    assert!(
        md.contains("## Outputs") && md.contains("| map | 4×8×8 |"),
        "{md}"
    );
    assert!(md.contains("objective: regression"), "{md}");
    assert!(md.contains("held-out part (60 images"), "{md}");
}

#[test]
fn without_a_held_out_part_the_search_runs_on_the_whole_set() {
    let f = Fixture::new();
    let (r, _) = quantize(&f, &one_head(), 300, &["--holdout", "off"]);
    assert!(r["search"].get("holdout").is_none());
    assert_eq!(r["search"]["final_score"]["images"], 300);
    let f = Fixture::new();
    let (r, _) = quantize(&f, &one_head(), 100, &[]);
    assert!(
        r["search"].get("holdout").is_none(),
        "too few images to hold out"
    );
    let (p, w, c, e) = two_heads(&f, 100);
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &p,
        &"--weights",
        &w,
        &"--calib",
        &c,
        &"--eval",
        &e,
        &"-o",
        &f.path("x.nnq.json"),
        &"--report",
        &f.path("x.json"),
        &"--holdout",
        &"half",
    ]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("'half' is not auto, off or a positive number"),
        "{}",
        o.stderr
    );
}

/// A head whose formats saturate: the warning names that output.
#[test]
fn a_collapsed_head_is_named_in_the_warnings() {
    let f = Fixture::new();
    let formats = f.write(
        "sat.json",
        r#"{"activations_frac_bits": {"data": 8, "conv1": 4, "map": 7},
        "layers": {"conv1": {"weight_frac_bits": 7, "bias_frac_bits": 7}, "map": {"weight_frac_bits": 7, "bias_frac_bits": 7}}}"#,
    );
    let formats = path_str(&formats);
    let (r, md) = quantize(&f, &one_head(), 100, &["--formats", &formats]);
    let outs = r["outputs"].as_array().unwrap();
    let w: Vec<&str> = r["quality_warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for o in outs {
        let name = o["name"].as_str().unwrap();
        let collapsed = o["sqnr_db"].as_f64().unwrap() < 10.0;
        assert_eq!(
            w.iter().any(|w| w.contains(&format!("output '{name}'"))),
            collapsed || o["agreement"].as_f64().unwrap() < 0.5,
            "{name}: {w:?} {o}"
        );
    }
    assert!(w.iter().any(|w| w.contains("SQNR")), "{w:?}");
    assert!(md.contains("**Warning:**"), "{md}");
}

/// One feature-map output through the CLI: regression objective, the held-out guard, the output
/// in the report with figures that could fail.
#[test]
fn a_feature_map_model_is_searched_and_reported_as_regression() {
    let f = Fixture::new();
    let (r, md) = quantize(&f, &one_head(), 300, &[]);
    let s = &r["search"];
    assert_eq!(s["objective"], "regression", "{s}");
    let outs = r["outputs"].as_array().expect("outputs");
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0]["name"], "map");
    assert_eq!(outs[0]["rows_per_image"], 64);
    assert!(outs[0]["sqnr_db"].as_f64().unwrap() > 20.0, "{}", outs[0]);
    assert!(outs[0]["cosine"].as_f64().unwrap() > 0.99, "{}", outs[0]);
    assert!(outs[0]["agreement"].as_f64().unwrap() > 0.5, "{}", outs[0]);
    assert_eq!(
        r["accuracy"]["output_sqnr_db"].as_f64().unwrap(),
        outs[0]["sqnr_db"].as_f64().unwrap()
    );
    assert!(r["accuracy"]["quant_top1"].is_null());
    let db = |v: &serde_json::Value| v["sqnr_db"].as_f64().unwrap();
    assert!(db(&s["final_score"]) >= db(&s["start_score"]), "{s}");
    let h = &s["holdout"];
    assert_eq!(
        (h["images"].as_u64(), s["final_score"]["images"].as_u64()),
        (Some(60), Some(240))
    );
    assert!(db(&h["final_score"]) >= db(&h["start_score"]), "{h}");
    assert!(s["trace"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["holdout"] == true && t["score"]["images"] == 60));
    assert!(
        md.contains("| map | 4×8×8 |") && md.contains("objective: regression"),
        "{md}"
    );
    assert!(md.contains("held-out part (60 images"), "{md}");
}

/// Two heads, library level: the float pass keeps both outputs, the search scores both (the
/// lowest SQNR), the evaluation compares both with float.
#[test]
fn a_two_head_model_is_searched_and_evaluated_on_both_outputs() {
    use nnquant::caffe::{load_model, LoadOptions};
    use nnquant::data::{npy::NpySource, preprocess::Preprocessor, Layout, Source};
    use nnquant::fixed::graph::QGraph;
    use nnquant::float::Engine;
    use nnquant::quantize::{self, input::IntegerInput, DataSet};
    use nnquant::search::{self, *};

    let f = Fixture::new();
    let (p, w, c, e) = two_heads(&f, 300);
    let mut g = load_model(
        &p,
        &LoadOptions {
            weights: Some(&w),
            input_shape: None,
        },
    )
    .unwrap();
    g.input.preprocess.scale = 1.0 / 256.0;
    let pre = Preprocessor::new(&g.input.preprocess, None).unwrap();
    let engine = Engine::new(&g).unwrap();
    let mut cs = NpySource::open(&c, None, Layout::Nhwc, None).unwrap();
    let mut es = NpySource::open(&e, None, Layout::Nhwc, None).unwrap();
    let int_in =
        IntegerInput::new(&g.input.preprocess, None, cs.read(0).unwrap().image.shape()).unwrap();
    let prep = InputPrep {
        mean_u8: int_in.mean_u8.clone(),
        scale: int_in.scale,
    };
    let mut cal = quantize::collect(
        &mut DataSet {
            source: &mut cs,
            name: "calib".into(),
        },
        &engine,
        &pre,
        &int_in,
        true,
        true,
    )
    .unwrap();
    let (objective, _) = quantize::objective(&g, cal.labels.is_some());
    assert_eq!(objective, Objective::Regression);
    let blobs = quantize::output_blobs(&g);
    assert_eq!(blobs, ["map", "vec"]);
    let outputs = blobs
        .iter()
        .zip(std::mem::take(&mut cal.float_outs))
        .map(|(b, v)| FloatOutput::new(b.clone(), g.shape(b).to_vec(), v))
        .collect();
    let scorer = Scorer::new(objective, outputs, cal.images, None).unwrap();
    let start = search::start_formats(&g, &cal.max_abs).unwrap();
    let calibration = Calibration {
        pixels_hwc: &cal.pixels_hwc,
        images: cal.images,
        prep: &prep,
        scorer: &scorer,
        screen: Screen::Auto,
        holdout: Holdout::Auto,
        local: None,
        bias_correction: false,
    };
    let (formats, rep, _) =
        search::search(&g, start, Strategy::Default, &calibration, &|_, _, _| {}).unwrap();
    let db = |s: &nnquant::report::Score| s.sqnr_db.expect("regression score");
    assert!(db(&rep.final_score) >= db(&rep.start_score), "{rep:?}");
    let h = rep.holdout.as_ref().expect("held-out part");
    assert_eq!((h.images, rep.final_score.images), (60, 240));
    assert!(db(&h.final_score) >= db(&h.start_score));
    // The search's score is the lowest of the two outputs: check it against a direct comparison.
    let qg = QGraph::quantize(&g, &formats).unwrap();
    let ev = quantize::evaluate(
        &mut DataSet {
            source: &mut es,
            name: "eval".into(),
        },
        &engine,
        &pre,
        &int_in,
        &qg,
        &prep,
        objective,
        true,
    )
    .unwrap();
    let names: Vec<&str> = ev.outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["map", "vec"]);
    for (name, c) in &ev.outputs {
        println!(
            "{name}: SQNR {:.2} dB, cosine {:.5}, agreement {:.2} % of {} rows",
            c.sqnr_db(),
            c.mean_cosine(),
            c.agreement() * 100.0,
            c.rows
        );
        assert_eq!(c.images, 40);
        assert!(c.sqnr_db() > 20.0, "{name}: {c:?}");
        assert!(c.mean_cosine() > 0.99, "{name}: {c:?}");
        assert!(c.agreement() > 0.5, "{name}: {c:?}");
    }
    assert_eq!((ev.outputs[0].1.rows, ev.outputs[1].1.rows), (40 * 64, 40));
    assert!(
        ev.float.is_none(),
        "no labelled accuracy for a regression objective"
    );
}
