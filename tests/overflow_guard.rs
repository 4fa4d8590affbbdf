//! The overflow proof at quantize time: a crafted model whose max-abs formats would let the i32
//! accumulator wrap (tiny weights, a huge bias: bias_lshift 29) is quantized with fewer weight
//! fraction bits by default, and refused with the figures when the formats are pinned.

mod common;
use common::*;
use nnquant::ir::Tensor;
use serde_json::Value;

const PROTOTXT: &str = r#"name: "wrap"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 4 } }
"#;

struct Crafted {
    f: Fixture,
}

impl Crafted {
    fn new() -> Crafted {
        let f = Fixture::new();
        // Weights up to 1e-4 (max-abs format: 20 fraction bits), biases up to 1e5 (-10 bits):
        // with raw pixels (-1 bits) bias_lshift = 20 - 1 + 10 = 29, and 98 << 29 wraps.
        let w: Vec<f32> = values(4 * 48, 7).iter().map(|v| v * 1e-4).collect();
        let b = vec![1e5f32, -9e4, 5e4, -1e5];
        let layers = vec![(
            "ip1".to_string(),
            "InnerProduct".to_string(),
            vec![Tensor::new(vec![4, 48], w), Tensor::new(vec![4], b)],
        )];
        f.write("wrap.prototxt", PROTOTXT);
        f.write(
            "wrap.caffemodel",
            nnquant::caffe::write::encode_caffemodel("wrap", &layers),
        );
        let px: Vec<u8> = values(32 * 48, 8)
            .iter()
            .map(|v| ((v + 1.0) * 127.5) as u8)
            .collect();
        nnquant::npy_out::write(&f.path("images.npy"), &[32, 4, 4, 3], &px).unwrap();
        Crafted { f }
    }

    fn quantize(&self, extra: &[&str]) -> Outcome {
        let p = |n: &str| self.f.path(n).display().to_string();
        let mut args = vec![
            "quantize".to_string(),
            "--model".into(),
            p("wrap.prototxt"),
            "--weights".into(),
            p("wrap.caffemodel"),
            "--calib".into(),
            p("images.npy"),
            "--split".into(),
            "50:50".into(),
            "-o".into(),
            p("m.nnq.json"),
            "--report".into(),
            p("r.json"),
            "--quiet".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        nnquant(&refs)
    }
}

#[test]
fn pinned_formats_that_could_wrap_are_refused() {
    let c = Crafted::new();
    let formats = c.f.write(
        "wrap-formats.json",
        r#"{"activations_frac_bits": {"data": -1, "ip1": -10},
            "layers": {"ip1": {"weight_frac_bits": 20, "bias_frac_bits": -10}}}"#,
    );
    let o = c.quantize(&["--formats", formats.to_str().unwrap()]);
    assert_fails(&o, &["ip1", "can wrap", "bias_lshift 29"]);
    assert!(!c.f.path("m.nnq.json").exists() && !c.f.path("r.json").exists());
}

#[test]
fn the_search_starts_from_formats_that_cannot_wrap() {
    let c = Crafted::new();
    for search in ["default", "none", "arm"] {
        let o = c.quantize(&["--search", search]);
        assert_eq!(o.code, 0, "--search {search}: {}", o.stderr);
        let m: Value =
            serde_json::from_slice(&std::fs::read(c.f.path("m.nnq.json")).unwrap()).unwrap();
        let fc = &m["graph"]["layers"][0]["op"]["Fc"];
        let (wf, bl) = (
            fc["weight_frac_bits"].as_i64().unwrap(),
            fc["bias_lshift"].as_i64().unwrap(),
        );
        assert!(wf < 20, "--search {search}: weight_frac_bits {wf}");
        assert!(bl <= 24, "--search {search}: bias_lshift {bl}");
        // The model reads back (the proof is re-checked on read) and the report records it.
        let r: Value = serde_json::from_slice(&std::fs::read(c.f.path("r.json")).unwrap()).unwrap();
        let l = &r["layers"][0];
        assert_eq!(l["name"], "ip1");
        let bits = l["acc_headroom_bits"].as_f64().unwrap();
        let worst = l["acc_worst_abs"].as_i64().unwrap();
        assert!((0.0..31.0).contains(&bits), "{bits}");
        assert!(worst <= i32::MAX as i64 && worst > 1 << 24, "{worst}");
        let o = nnquant(&[
            &"eval",
            &"--quantized",
            &c.f.path("m.nnq.json"),
            &"--data",
            &c.f.path("images.npy"),
        ]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
}
