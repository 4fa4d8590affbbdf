//! Validated model files: `NnqModel::read` refuses every hand-edited or corrupted `.nnq.json`
//! with an error naming the field, and whatever it accepts runs everywhere downstream (the
//! simulator, the kernels' reference path, `eval --quantized`, code generation) without a panic.
//! The fixture is a small model made here (conv, ReLU, Eltwise SUM, Concat, max and average
//! pooling, inner product), quantized by the CLI once; a proptest mutates its JSON.

mod common;
use common::*;
use nnquant::codegen;
use nnquant::fixed::{run_reference, Keep, Simulator};
use nnquant::model::NnqModel;
use proptest::prelude::*;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

const PROTOTXT: &str = r#"name: "branchy"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "conv2" top: "cat" }
layer { name: "pool1" type: "Pooling" bottom: "cat" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "pool1" top: "pool2"
  pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "perm" type: "Permute" bottom: "pool2" top: "perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "perm" top: "ip1"
  inner_product_param { num_output: 5 } }
"#;

pub struct Made {
    _dir: tempfile::TempDir,
    pub model_text: String,
    pub data: PathBuf,
    pub labels: PathBuf,
    pub root: PathBuf,
}

/// Deterministic bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    values(n, seed)
        .iter()
        .map(|v| ((v + 1.0) * 127.5) as u8)
        .collect()
}

/// The fixture model, quantized once per test binary.
pub fn made() -> &'static Made {
    static M: OnceLock<Made> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let weights = vec![
            (
                "conv1".to_string(),
                "Convolution".to_string(),
                vec![tensor(&[4, 3, 3, 3], 11), tensor(&[4], 12)],
            ),
            (
                "conv2".into(),
                "Convolution".into(),
                vec![tensor(&[4, 4, 1, 1], 13), tensor(&[4], 14)],
            ),
            (
                "ip1".into(),
                "InnerProduct".into(),
                vec![tensor(&[5, 32], 15), tensor(&[5], 16)],
            ),
        ];
        let proto = root.join("m.prototxt");
        std::fs::write(&proto, PROTOTXT).unwrap();
        let caffemodel = root.join("m.caffemodel");
        std::fs::write(
            &caffemodel,
            nnquant::caffe::write::encode_caffemodel("branchy", &weights),
        )
        .unwrap();
        let (calib, eval) = (root.join("calib.npy"), root.join("eval.npy"));
        nnquant::npy_out::write(&calib, &[48, 8, 8, 3], &bytes(48 * 192, 21)).unwrap();
        nnquant::npy_out::write(&eval, &[16, 8, 8, 3], &bytes(16 * 192, 22)).unwrap();
        let labels = root.join("eval_labels_.npy");
        let l: Vec<u8> = (0..16).map(|i| (i % 5) as u8).collect();
        nnquant::npy_out::write(&labels, &[16], &l).unwrap();
        let out = root.join("m.nnq.json");
        let o = nnquant(&[
            &"quantize",
            &"--model",
            &proto,
            &"--weights",
            &caffemodel,
            &"--calib",
            &calib,
            &"--eval",
            &eval,
            &"--eval-labels",
            &labels,
            &"-o",
            &out,
            &"--report",
            &root.join("r.json"),
            &"--quiet",
        ]);
        assert_eq!(o.code, 0, "fixture quantize failed: {}", o.stderr);
        Made {
            model_text: std::fs::read_to_string(&out).unwrap(),
            _dir: dir,
            data: eval,
            labels,
            root,
        }
    })
}

/// Everything downstream of a model that `NnqModel::from_json` accepted: none of it may panic,
/// and since validation is complete, the simulator, the kernels and the code generator must
/// also succeed. Returns the outcome of `eval --quantized` (which may refuse the fixture's
/// labels when `classes` changed).
fn downstream(m: &NnqModel, text: &str, case: usize) -> Result<(), String> {
    let made = made();
    let g = &m.graph;
    let n = 3;
    let input: Vec<i8> = bytes(n * m.input.len(), 99)
        .into_iter()
        .map(|b| b as i8)
        .collect();
    let sim = Simulator::new(g).map_err(|e| format!("simulator refused: {e:#}"))?;
    let fast = sim
        .run(&input, n, &Keep::Outputs)
        .map_err(|e| format!("simulator run: {e:#}"))?;
    let slow = run_reference(g, &input, n).map_err(|e| format!("reference run: {e:#}"))?;
    let out = &g.outputs[0];
    if fast.get(out) != slow.get(out) {
        return Err("simulator and kernels.rs differ".into());
    }
    let images = vec![bytes(m.input.len(), 5)];
    let mut opts =
        codegen::Options::new(codegen::target::by_name("host").unwrap(), "fuzzed", images);
    opts.ram_budget = Some(1 << 40);
    opts.flash_budget = Some(1 << 40);
    codegen::generate(m, &opts).map_err(|e| format!("codegen refused: {e:#}"))?;
    let path = made.root.join(format!("case-{case}.nnq.json"));
    std::fs::write(&path, text).unwrap();
    // The CLI's codegen into a temporary directory, as a library call (no cargo build).
    let out = tempfile::tempdir().unwrap();
    let fw = out.path().join("fw");
    let cli = nnquant::cli::Cli::try_parse_from([
        "nnquant".as_ref(),
        "codegen".as_ref(),
        path.as_os_str(),
        "--out".as_ref(),
        fw.as_os_str(),
        "--target".as_ref(),
        "host".as_ref(),
    ] as [&std::ffi::OsStr; 7])
    .unwrap();
    nnquant::cli::run(cli).map_err(|e| format!("codegen: {e:#}"))?;
    if !fw.join("src/lib.rs").is_file() {
        return Err("codegen wrote no src/lib.rs".into());
    }
    // The CLI's eval --quantized, as a library call.
    let cli = nnquant::cli::Cli::try_parse_from([
        "nnquant".as_ref(),
        "eval".as_ref(),
        "--quantized".as_ref(),
        path.as_os_str(),
        "--data".as_ref(),
        made.data.as_os_str(),
        "--labels".as_ref(),
        made.labels.as_os_str(),
        "--quiet".as_ref(),
    ] as [&std::ffi::OsStr; 9])
    .unwrap();
    let r = nnquant::cli::run(cli);
    let _ = std::fs::remove_file(&path);
    r.map(|_| ()).map_err(|e| format!("eval: {e:#}"))
}

use clap::Parser;

#[test]
fn the_fixture_is_valid_and_runs_everywhere() {
    let made = made();
    let m = NnqModel::from_json(&made.model_text).expect("the fixture is valid");
    let ops: Vec<&str> = m
        .graph
        .layers
        .iter()
        .map(|l| match l.op {
            nnquant::fixed::QOp::Conv(_) => "conv",
            nnquant::fixed::QOp::Fc(_) => "fc",
            nnquant::fixed::QOp::MaxPool(_) => "max",
            nnquant::fixed::QOp::AvePool(_) => "ave",
            nnquant::fixed::QOp::Relu => "relu",
            nnquant::fixed::QOp::Add { .. } => "add",
            nnquant::fixed::QOp::Concat { .. } => "concat",
            nnquant::fixed::QOp::Reshape => "reshape",
            nnquant::fixed::QOp::Permute { .. } => "permute",
            nnquant::fixed::QOp::Lut { .. } => "lut",
            nnquant::fixed::QOp::PRelu { .. } => "prelu",
            nnquant::fixed::QOp::Max { .. } => "max_eltwise",
            nnquant::fixed::QOp::Softmax { .. } => "softmax",
            nnquant::fixed::QOp::Deconv(_) => "deconv",
            nnquant::fixed::QOp::Lrn { .. } => "lrn",
            nnquant::fixed::QOp::Mul { .. } => "mul",
            nnquant::fixed::QOp::ScaleBias { .. } => "scale",
        })
        .collect();
    for op in [
        "conv", "fc", "max", "ave", "relu", "add", "concat", "permute",
    ] {
        assert!(ops.contains(&op), "the fixture lacks {op}: {ops:?}");
    }
    downstream(&m, &made.model_text, 0).unwrap();
}

/// Edit the fixture's JSON and read it through the CLI's `eval --quantized`.
fn eval_edited(edit: impl FnOnce(&mut Value)) -> Outcome {
    let made = made();
    let mut v: Value = serde_json::from_str(&made.model_text).unwrap();
    edit(&mut v);
    let f = Fixture::new();
    let p = f.write("m.nnq.json", serde_json::to_string(&v).unwrap());
    nnquant(&[
        &"eval",
        &"--quantized",
        &p,
        &"--data",
        &made.data,
        &"--labels",
        &made.labels,
    ])
}

fn layer<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    v["graph"]["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["name"] == name)
        .unwrap()
}

#[test]
fn the_issues_hand_edits_are_clean_errors() {
    // conv in_dims.w changed (was a panic in the simulator).
    assert_fails(
        &eval_edited(|v| layer(v, "conv1")["op"]["Conv"]["in_dims"]["w"] = 7.into()),
        &["conv1", "in_dims", "m.nnq.json"],
    );
    // classes changed (was a panic in eval).
    assert_fails(&eval_edited(|v| v["classes"] = 7.into()), &["classes is 7"]);
    // A layer reading an unknown blob (was a panic in codegen's plan).
    assert_fails(
        &eval_edited(|v| layer(v, "ip1")["inputs"][0] = "nope".into()),
        &["ip1", "'nope'"],
    );
    // A layer reading a blob produced only later.
    assert_fails(
        &eval_edited(|v| {
            let l = v["graph"]["layers"].as_array_mut().unwrap();
            l.swap(0, 1);
        }),
        &["produced by no earlier layer"],
    );
    // Shifts: beyond what the kernels take, and a concat shift that would wrap (≥ 25).
    assert_fails(
        &eval_edited(|v| layer(v, "conv2")["op"]["Conv"]["out_rshift"] = 32.into()),
        &["conv2", "out_rshift = 32", "0..=31"],
    );
    assert_fails(
        &eval_edited(|v| {
            layer(v, "cat")["op"]["Concat"]["shifts"][0] = 25.into();
        }),
        &["cat", "shift 25"],
    );
    // Weights of the wrong length, a bias that overflows the accumulator.
    assert_fails(
        &eval_edited(|v| {
            layer(v, "ip1")["op"]["Fc"]["weights"]
                .as_array_mut()
                .unwrap()
                .pop();
        }),
        &["ip1", "weights has 159 values"],
    );
    assert_fails(
        &eval_edited(|v| {
            let fc = &mut layer(v, "ip1")["op"]["Fc"];
            let bl = fc["bias_lshift"].as_i64().unwrap();
            fc["bias_lshift"] = 30.into();
            let bf = fc["bias_frac_bits"].as_i64().unwrap();
            fc["bias_frac_bits"] = (bf - (30 - bl)).into();
        }),
        &["ip1", "can wrap"],
    );
    // Schema, input spec, mean length, NaN-free scale, fraction bits.
    assert_fails(
        &eval_edited(|v| v["schema"] = "nnquant.model/0".into()),
        &["schema"],
    );
    assert_fails(
        &eval_edited(|v| v["input"]["mean_u8"] = serde_json::json!([1, 2])),
        &["input.mean_u8 has 2 values"],
    );
    assert_fails(
        &eval_edited(|v| v["input"]["scale"] = Value::Null),
        &["does not parse"],
    );
    assert_fails(
        &eval_edited(|v| v["input"]["shape_chw"] = serde_json::json!([3, 8, 9])),
        &["input.shape_chw"],
    );
    assert_fails(
        &eval_edited(|v| v["input"]["mul"] = 3.into()),
        &["input.mul 3"],
    );
    assert_fails(
        &eval_edited(|v| v["formats"]["activations_frac_bits"]["data"] = 1000.into()),
        &["activations_frac_bits.data = 1000"],
    );
    assert_fails(
        &eval_edited(|v| v["graph"]["blobs"]["pool2"]["layout"]["c"] = 1_000_000_000.into()),
        &["pool2"],
    );
}

/// A JSON path: object keys and array indices.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.get_mut(k.as_str()),
        Step::Index(i) => v.get_mut(*i),
    })
}

fn get<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.get(k.as_str()),
        Step::Index(i) => v.get(*i),
    })
}

/// The path `i` picks among `ps` (the root when there is none).
fn pick(i: &prop::sample::Index, ps: &[Vec<Step>]) -> Vec<Step> {
    if ps.is_empty() {
        vec![]
    } else {
        i.get(ps).clone()
    }
}

/// Every node worth mutating: all of them, except that long arrays (weights, biases, means)
/// contribute only their first two and last elements.
fn paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                prefix.push(Step::Key(k.clone()));
                paths(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            let idx: Vec<usize> = if a.len() > 8 {
                vec![0, 1, a.len() - 1]
            } else {
                (0..a.len()).collect()
            };
            for i in idx {
                prefix.push(Step::Index(i));
                paths(&a[i], prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace a number by one of a few interesting values.
    Number(prop::sample::Index, i64),
    /// Drop or duplicate an element of an array.
    Drop(prop::sample::Index),
    Duplicate(prop::sample::Index),
    /// Replace a string by another string of the file (renames blob references) or by "nope".
    Rename(prop::sample::Index, prop::sample::Index),
    /// Remove a key of an object.
    RemoveKey(prop::sample::Index),
    /// Swap two layers.
    SwapLayers(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        -3i64..40,
        Just(i32::MAX as i64),
        Just(i32::MIN as i64),
        Just(1 << 33),
        Just(-1),
        Just(255),
        Just(256),
        Just(1_000_000),
    ];
    prop_oneof![
        4 => (any::<prop::sample::Index>(), interesting).prop_map(|(i, v)| Mutation::Number(i, v)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Drop),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Duplicate),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Mutation::Rename(a, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::RemoveKey),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Mutation::SwapLayers(a, b)),
    ]
}

fn apply(v: &mut Value, m: &Mutation) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let of_kind = |v: &Value, f: fn(&Value) -> bool| -> Vec<Vec<Step>> {
        all.iter()
            .filter(|p| get(v, p).is_some_and(f))
            .cloned()
            .collect()
    };
    match m {
        Mutation::Number(i, x) => {
            let ps = of_kind(v, Value::is_number);
            if let Some(n) = at(v, &pick(i, &ps)) {
                *n = (*x).into();
            }
        }
        Mutation::Drop(i) | Mutation::Duplicate(i) => {
            let ps = of_kind(v, |x| x.as_array().is_some_and(|a| !a.is_empty()));
            if let Some(Value::Array(a)) = at(v, &pick(i, &ps)) {
                let k = i.index(a.len());
                if matches!(m, Mutation::Drop(_)) {
                    a.remove(k);
                } else {
                    let e = a[k].clone();
                    a.insert(k, e);
                }
            }
        }
        Mutation::Rename(i, j) => {
            let ps = of_kind(v, Value::is_string);
            let mut names: Vec<String> = ps
                .iter()
                .filter_map(|p| get(v, p).and_then(|x| x.as_str().map(String::from)))
                .collect();
            names.push("nope".into());
            let to = j.get(&names).clone();
            if let Some(s) = at(v, &pick(i, &ps)) {
                *s = to.into();
            }
        }
        Mutation::RemoveKey(i) => {
            let ps = of_kind(v, |x| x.as_object().is_some_and(|o| !o.is_empty()));
            if let Some(Value::Object(o)) = at(v, &pick(i, &ps)) {
                let k = o.keys().nth(i.index(o.len())).cloned().unwrap();
                o.remove(&k);
            }
        }
        Mutation::SwapLayers(a, b) => {
            if let Some(l) = v["graph"]["layers"].as_array_mut() {
                let (x, y) = (a.index(l.len()), b.index(l.len()));
                l.swap(x, y);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, .. ProptestConfig::default() })]

    /// No mutation of a valid model file makes anything panic; what `read` accepts runs.
    #[test]
    fn mutated_model_files_never_panic(muts in prop::collection::vec(mutation(), 1..4), case in 0usize..1_000_000) {
        let made = made();
        let mut v: Value = serde_json::from_str(&made.model_text).unwrap();
        for m in &muts {
            apply(&mut v, m);
        }
        let text = serde_json::to_string(&v).unwrap();
        match NnqModel::from_json(&text) {
            Err(e) => {
                let msg = format!("{e:#}");
                prop_assert!(!msg.is_empty() && !msg.contains('\n'), "not one paragraph: {msg}");
            }
            Ok(m) => {
                if let Err(e) = downstream(&m, &text, case) {
                    // eval may refuse the fixture's labels for a model with fewer classes;
                    // anything else means validation missed something.
                    prop_assert!(e.starts_with("eval:") && e.contains("label"), "accepted model failed downstream: {e}\nmutations: {muts:?}");
                }
            }
        }
    }
}

/// `quantize --formats F.json` on the fixture model with an edited copy of its own formats.
fn quantize_with_formats(edit: impl FnOnce(&mut Value)) -> (Outcome, Fixture) {
    let made = made();
    let m: Value = serde_json::from_str(&made.model_text).unwrap();
    let mut f = m["formats"].clone();
    edit(&mut f);
    let fx = Fixture::new();
    let p = fx.write("formats.json", serde_json::to_string(&f).unwrap());
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &made.root.join("m.prototxt"),
        &"--weights",
        &made.root.join("m.caffemodel"),
        &"--calib",
        &made.root.join("calib.npy"),
        &"--eval",
        &made.data,
        &"--formats",
        &p,
        &"-o",
        &fx.path("out.nnq.json"),
        &"--report",
        &fx.path("r.json"),
        &"--quiet",
    ]);
    (o, fx)
}

#[test]
fn formats_files_out_of_range_or_misnamed_are_clean_errors() {
    // The fixture's own formats quantize.
    let (o, _f) = quantize_with_formats(|_| {});
    assert_eq!(o.code, 0, "{}", o.stderr);
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(Edit, &[&str])> = vec![
        (
            Box::new(|f| f["activations_frac_bits"]["data"] = 1000.into()),
            &["activations_frac_bits.data = 1000", "-64..=64"],
        ),
        (
            Box::new(|f| f["layers"]["conv1"]["weight_frac_bits"] = (-100).into()),
            &["layers.conv1.weight_frac_bits = -100"],
        ),
        (
            Box::new(|f| f["layers"]["ip1"]["bias_frac_bits"] = i32::MAX.into()),
            &["layers.ip1.bias_frac_bits"],
        ),
        (
            Box::new(|f| f["layers"]["conv2"]["out_rshift"] = 40.into()),
            &["layers.conv2.out_rshift = 40", "0..=31"],
        ),
        (
            Box::new(|f| f["activations_frac_bits"]["nope"] = 3.into()),
            &["nope", "match no blob"],
        ),
        (
            Box::new(|f| f["layers"]["notalayer"] = f["layers"]["conv1"].clone()),
            &["notalayer"],
        ),
        (
            Box::new(|f| f["layers"]["conv1"]["weight_frac_bits"] = "7".into()),
            &["formats JSON"],
        ),
        (
            Box::new(|f| {
                f["layers"].as_object_mut().unwrap().remove("ip1");
            }),
            &["layers.ip1"],
        ),
        (
            // Concat output 25 bits finer than an input: the rescale would wrap.
            Box::new(|f| {
                let s = f["activations_frac_bits"]["conv2"].as_i64().unwrap();
                f["activations_frac_bits"]["cat"] = (s + 25).into();
            }),
            &["cat", "-31..=24"],
        ),
    ];
    for (edit, needles) in cases {
        let (o, fx) = quantize_with_formats(edit);
        assert_fails(&o, needles);
        assert!(!fx.path("out.nnq.json").exists() && !fx.path("r.json").exists());
    }
}
