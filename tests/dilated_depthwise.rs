//! The depthwise and dilated test models (`testdata/dwnet`, made by `tools/make_dwnet.py`):
//! quantized against float, the generated host firmware byte for byte against the simulator,
//! and the model file's `dilation` field (old files without it, invalid values).

mod common;
use common::{nnquant, Fixture};
use std::path::{Path, PathBuf};

fn dw_file(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/dwnet")
        .join(p)
}

/// `net` (dwnet or dilnet) quantized without a search into `dir`: (model, report JSON).
fn quantize(dir: &Path, net: &str) -> (PathBuf, serde_json::Value) {
    let (m, r) = (dir.join(format!("{net}.nnq.json")), dir.join("r.json"));
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &dw_file(&format!("{net}.prototxt")),
        &"--weights",
        &dw_file(&format!("{net}.caffemodel")),
        &"--calib",
        &dw_file("calib_u8_hwc.npy"),
        &"--eval",
        &dw_file("test_u8_hwc.npy"),
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
    ]);
    assert_eq!(o.code, 0, "quantize {net}: {}", o.stderr);
    let report = serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    (m, report)
}

#[test]
fn dilated_and_depthwise_models_agree_with_float() {
    let f = Fixture::new();
    for net in ["dwnet", "dilnet"] {
        let (m, report) = quantize(&f.path(net), net);
        let acc = &report["accuracy"];
        let sqnr = acc["output_sqnr_db"].as_f64().unwrap();
        let agree = acc["top1_agreement"].as_f64().unwrap();
        // Random He-initialised weights, 8 bits: ~23-25 dB; a wrong dilation or depthwise
        // rule in the q7 path gives noise (well under 10 dB).
        assert!(sqnr >= 18.0, "{net}: output SQNR {sqnr} dB");
        assert!(agree >= 0.75, "{net}: arg-max agreement {agree}");
        let model: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
        let convs: Vec<&serde_json::Value> = model["graph"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| l["op"].get("Conv"))
            .collect();
        let dilated = convs.iter().filter(|c| c["dilation"]["h"] != 1).count();
        let depthwise = convs
            .iter()
            .filter(|c| c["groups"] == c["in_dims"]["c"] && c["groups"] == c["out_dims"]["c"])
            .count();
        match net {
            "dwnet" => assert_eq!((dilated, depthwise), (0, 4)),
            _ => assert_eq!((dilated, depthwise), (3, 2)),
        }
    }
}

#[test]
fn dilated_model_runs_byte_identical_on_the_host_firmware() {
    let f = Fixture::new();
    let (m, _) = quantize(&f.path("q"), "dilnet");
    let o = nnquant(&[
        &"verify",
        &m,
        &"--target",
        &"host",
        &"--count",
        &"16",
        &"--data",
        &dw_file("test_u8_hwc.npy"),
        &"--work-dir",
        &f.path("fw"),
        &"--json",
    ]);
    assert_eq!(o.code, 0, "stdout {} stderr {}", o.stdout, o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["matching_images"], 16);
    assert_eq!(v["mismatching_bytes"], 0);
}

/// Every `"dilation": {...}` object removed from a model file's text (as written before the
/// field existed), or its `h` replaced.
fn edit_dilation(text: &str, h: Option<u64>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    for l in v["graph"]["layers"].as_array_mut().unwrap() {
        if let Some(c) = l["op"].get_mut("Conv") {
            let c = c.as_object_mut().unwrap();
            match h {
                None => {
                    c.remove("dilation");
                }
                Some(h) => c["dilation"]["h"] = h.into(),
            }
        }
    }
    serde_json::to_string(&v).unwrap()
}

#[test]
fn model_files_without_dilation_read_as_dense_and_bad_dilation_is_refused() {
    let f = Fixture::new();
    let (m, _) = quantize(&f.path("q"), "dwnet");
    let text = std::fs::read_to_string(&m).unwrap();
    let data = dw_file("test_u8_hwc.npy");
    let eval = |model: &Path| {
        nnquant(&[
            &"eval",
            &"--quantized",
            &model,
            &"--data",
            &data,
            &"--save-outputs",
            &f.path(&format!(
                "{}.npy",
                model.file_name().unwrap().to_string_lossy()
            )),
        ])
    };
    let old = f.write("old.nnq.json", edit_dilation(&text, None));
    let (a, b) = (eval(&m), eval(&old));
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(b.code, 0, "{}", b.stderr);
    let outs = |p: &str| std::fs::read(f.path(p)).unwrap();
    assert_eq!(outs("dwnet.nnq.json.npy"), outs("old.nnq.json.npy"));
    for (h, needle) in [(0, "dilation 0×1 must be positive"), (2, "dilation 2 give")] {
        let bad = f.write("bad.nnq.json", edit_dilation(&text, Some(h)));
        common::assert_fails(&eval(&bad), &[needle]);
    }
}
