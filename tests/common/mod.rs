//! Shared helpers for the integration tests: a tiny model and its weights, and running the CLI.
#![allow(dead_code)]

use nnquant::caffe::write::{encode_caffemodel, encode_hdf5};
use nnquant::ir::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TINY_PROTOTXT: &str = r#"name: "tiny"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 5 } }
"#;

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::new(shape.to_vec(), values(shape.iter().product(), seed))
}

/// The tiny model's layers with weights: (name, type, blobs).
pub fn tiny_weights() -> Vec<(String, String, Vec<Tensor>)> {
    vec![
        (
            "conv1".into(),
            "Convolution".into(),
            vec![tensor(&[4, 3, 3, 3], 1), tensor(&[4], 2)],
        ),
        (
            "ip1".into(),
            "InnerProduct".into(),
            vec![tensor(&[5, 64], 3), tensor(&[5], 4)],
        ),
    ]
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write fixture");
        p
    }
    /// tiny.prototxt, tiny.caffemodel and tiny.caffemodel.h5.
    pub fn tiny(&self) -> (PathBuf, PathBuf, PathBuf) {
        let w = tiny_weights();
        (
            self.write("tiny.prototxt", TINY_PROTOTXT),
            self.write("tiny.caffemodel", encode_caffemodel("tiny", &w)),
            self.write("tiny.caffemodel.h5", encode_hdf5(&w).expect("hdf5")),
        )
    }
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn nnquant(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_nnquant"))
        .args(args.iter().map(|a| a.as_ref()))
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run nnquant");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Assert a clean failure: exit code 2, one `error:` paragraph containing every `needle`, no panic.
pub fn assert_fails(o: &Outcome, needles: &[&str]) {
    assert_eq!(
        o.code, 2,
        "expected exit code 2, got {}; stderr: {}",
        o.code, o.stderr
    );
    assert!(!o.stderr.contains("panicked"), "panicked: {}", o.stderr);
    assert!(o.stderr.starts_with("error: "), "stderr: {}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "stderr lacks {n:?}: {}", o.stderr);
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A file of the project's demo model (`testdata/glyphs`).
pub fn demo_file(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
}

/// The demo model quantized without a search (fast; the formats do not matter to the caller)
/// into `dir`: (model, report).
pub fn quantized_demo(dir: &Path) -> (PathBuf, PathBuf) {
    let (m, r) = (dir.join("m.nnq.json"), dir.join("r.json"));
    let o = nnquant(&[
        &"quantize",
        &"--model",
        &demo_file("glyphs.prototxt"),
        &"--weights",
        &demo_file("glyphs.caffemodel"),
        &"--calib",
        &demo_file("calib_u8_hwc.npy"),
        &"--eval",
        &demo_file("test_u8_hwc.npy"),
        &"--search",
        &"none",
        &"-o",
        &m,
        &"--report",
        &r,
        &"--quiet",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    (m, r)
}
