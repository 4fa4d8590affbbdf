//! The firmware's memory on the project's demo model: fused conv→ReLU→pool steps in the plan
//! (no buffer for the convolution's output, scratch and ring in the arena), valid plans for
//! every target kind, the budget gate refusing before anything is written, and
//! `report diff` gating on RAM/flash growth.

mod common;
use common::*;
use nnquant::codegen::{plan, steps};
use nnquant::model::NnqModel;
use std::path::{Path, PathBuf};

fn demo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
}

/// The demo model quantized without a search (fast) into `dir`: (model, report).
fn quantized(dir: &Path) -> (PathBuf, PathBuf) {
    quantized_demo(dir)
}

#[test]
fn plans_fuse_conv_relu_pool_and_pass_the_overlap_check() {
    let f = Fixture::new();
    let (m, _) = quantized(&f.path("q"));
    let model = NnqModel::read(&m).unwrap();
    let g = &model.graph;
    for dsp in [false, true] {
        let fused = steps::steps(g, dsp, true);
        assert!(
            fused.len() < g.layers.len(),
            "conv1→relu1→pool1 and conv2→relu2→pool2 fuse"
        );
        assert!(fused.iter().any(|s| matches!(
            s.kind,
            steps::StepKind::ConvPool {
                relu_conv: true,
                ..
            }
        )));
        let unfused = steps::steps(g, dsp, false);
        assert_eq!(unfused.len(), g.layers.len());
        let p = plan::plan(g, dsp);
        plan::check(g, &p).unwrap();
        // A fused step's convolution output is never materialised; its ring and scratch are.
        for s in p.steps.iter().filter(|s| s.layers.len() > 1) {
            let conv_out = &g.layers[s.layers[0]].output;
            assert!(!p.blobs.contains_key(conv_out), "{conv_out} has a buffer");
            for t in &s.temps {
                let k = format!("{}.{}", s.name, t.role);
                assert!(p.temps[&k].len >= t.len, "{k}");
                assert!(p.temps[&k].offset + t.len <= p.arena_len);
            }
        }
        // The arena is no larger than every conv output would need alone.
        let largest_conv_out = g
            .layers
            .iter()
            .filter(|l| matches!(l.op, nnquant::fixed::graph::QOp::Conv(_)))
            .map(|l| g.blob_len(&l.output))
            .max()
            .unwrap();
        assert!(p.arena_len > 0 && p.largest_live().is_some());
        assert!(
            p.arena_len < largest_conv_out + g.blob_len(&g.input) + p.temp_bytes(),
            "arena {} B",
            p.arena_len
        );
    }
}

#[test]
fn budget_gate_refuses_before_writing_anything() {
    let f = Fixture::new();
    let (m, _) = quantized(&f.path("q"));
    let out = f.path("fw");
    let o = nnquant(&[&"codegen", &m, &"--out", &out, &"--ram-budget", &"1K"]);
    assert_fails(
        &o,
        &[
            "does not fit the RAM of cortex-m4",
            "largest live set is step",
            "--ram-budget",
        ],
    );
    assert!(!out.exists(), "nothing is written when the budget refuses");
    let o = nnquant(&[&"codegen", &m, &"--out", &out, &"--flash-budget", &"8K"]);
    assert_fails(&o, &["does not fit the flash", "largest parameter arrays"]);
    assert!(!out.exists());
    let o = nnquant(&[&"codegen", &m, &"--out", &out, &"--ram-budget", &"lots"]);
    assert_fails(&o, &["not a size in bytes"]);
    // verify refuses the same way before building.
    let o = nnquant(&[
        &"verify",
        &m,
        &"--data",
        &demo("test_u8_hwc.npy"),
        &"--count",
        &"1",
        &"--ram-budget",
        &"1K",
        &"--work-dir",
        &out,
    ]);
    assert_fails(&o, &["does not fit the RAM"]);
    assert!(!out.exists());
    // Within budget it writes the crate, with the arena in a static.
    let o = nnquant(&[&"codegen", &m, &"--out", &out, &"--json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lib = std::fs::read_to_string(out.join("src/lib.rs")).unwrap();
    assert!(lib.contains("conv_pool_hwc_q7"), "fused kernel used");
    let main = std::fs::read_to_string(out.join("examples/demo/main.rs")).unwrap();
    assert!(main.contains("singleton!"), "arena in a static");
}

#[test]
fn report_diff_gates_on_firmware_ram_growth() {
    let f = Fixture::new();
    let (m, r) = quantized(&f.path("q"));
    let o = nnquant(&[&"codegen", &m, &"--out", &f.path("fw"), &"--report", &r]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&r).unwrap()).unwrap();
    let ram = v["firmware"]["ram_estimate_bytes"].as_u64().unwrap();
    assert!(ram > v["firmware"]["arena_bytes"].as_u64().unwrap());
    assert!(std::fs::read_to_string(r.with_extension("md"))
        .unwrap()
        .contains("## Firmware (cortex-m4)"));
    v["firmware"]["ram_estimate_bytes"] = (ram + 100).into();
    let grown = f.write("grown.json", serde_json::to_vec(&v).unwrap());
    let ok = nnquant(&[&"report", &"diff", &r, &grown, &"--max-ram-growth", &"100"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("+100 B"), "{}", ok.stdout);
    let fail = nnquant(&[&"report", &"diff", &r, &grown, &"--max-ram-growth", &"99"]);
    assert_eq!(fail.code, 1, "{}", fail.stdout);
    assert!(fail.stdout.contains("FAIL: firmware RAM grew by 100 B"));
    // Without firmware figures in a report the memory gate cannot run: a clear error.
    let (_, bare) = quantized(&f.path("q2"));
    let o = nnquant(&[
        &"report",
        &"diff",
        &bare,
        &grown,
        &"--max-flash-growth",
        &"0",
    ]);
    assert_fails(&o, &["need firmware figures in both reports"]);
}

/// Residual adds run in place over whichever input dies there (here the second one, then the
/// first), the plan passes its overlap check, and the firmware equals the simulator.
#[test]
fn residual_adds_run_in_place_over_the_input_that_dies() {
    const RES: &str = r#"name: "res"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "sum1" type: "Eltwise" bottom: "conv2" bottom: "conv1" top: "sum1" }
layer { name: "sum2" type: "Eltwise" bottom: "sum1" bottom: "conv2" top: "sum2" }
layer { name: "ip" type: "InnerProduct" bottom: "sum2" top: "ip" inner_product_param { num_output: 3 } }
"#;
    let f = Fixture::new();
    let w = vec![
        (
            "conv1".to_string(),
            "Convolution".to_string(),
            vec![tensor(&[4, 3, 3, 3], 1), tensor(&[4], 2)],
        ),
        (
            "conv2".into(),
            "Convolution".into(),
            vec![tensor(&[4, 4, 3, 3], 3), tensor(&[4], 4)],
        ),
        (
            "ip".into(),
            "InnerProduct".into(),
            vec![tensor(&[3, 256], 5), tensor(&[3], 6)],
        ),
    ];
    let p = f.write("res.prototxt", RES);
    let wts = f.write(
        "res.caffemodel",
        nnquant::caffe::write::encode_caffemodel("res", &w),
    );
    let images = f.path("images.npy");
    let px: Vec<u8> = (0..32 * 192).map(|i| ((i * 37) % 256) as u8).collect();
    nnquant::npy_out::write(&images, &[32, 8, 8, 3], &px).unwrap();
    let (m, _) = quantize_ok(
        f.dir.path(),
        &[
            &"--model",
            &p,
            &"--weights",
            &wts,
            &"--calib",
            &images,
            &"--search",
            &"none",
            &"--split",
            &"2",
        ],
    );
    let model = NnqModel::read(&m).unwrap();
    for dsp in [false, true] {
        let pl = plan::plan(&model.graph, dsp);
        plan::check(&model.graph, &pl).unwrap();
        // sum1 = conv2 + relu1: conv2 is read again by sum2, relu1 dies → over input 1;
        // sum2 = sum1 + conv2: both die → over input 0.
        assert_eq!(
            pl.in_place_input.get("sum1"),
            Some(&1),
            "{:?}",
            pl.in_place_input
        );
        assert_eq!(
            pl.in_place_input.get("sum2"),
            Some(&0),
            "{:?}",
            pl.in_place_input
        );
        assert_eq!(pl.blobs["sum1"].offset, pl.blobs["relu1"].offset);
    }
    verify_identical(&m, &images, "host", 16, &f.path("fw"), &[]);
    let lib = std::fs::read_to_string(f.path("fw/src/lib.rs")).unwrap();
    assert_eq!(lib.matches("kernels::add_q7_in_place(").count(), 2, "{lib}");
}
