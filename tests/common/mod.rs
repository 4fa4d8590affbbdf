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
    quantize_ok(
        dir,
        &[
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
        ],
    );
    (dir.join("m.nnq.json"), dir.join("r.json"))
}

/// `nnquant quantize` with `args` (model, data, search, preprocessing flags) writing
/// `dir/m.nnq.json` and `dir/r.json` quietly; asserts it succeeded: (model file, report JSON).
pub fn quantize_ok(
    dir: &Path,
    args: &[&dyn AsRef<std::ffi::OsStr>],
) -> (PathBuf, serde_json::Value) {
    let (m, r) = (dir.join("m.nnq.json"), dir.join("r.json"));
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"quantize"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[&"-o", &m, &"--report", &r, &"--quiet"]);
    let o = nnquant(&all);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let report = serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    (m, report)
}

/// `nnquant verify` of `model` on `count` images of `data` for `target` (the crate generated,
/// built and run in `work_dir`), with `extra` flags; asserts every image byte-identical to the
/// simulator: its stdout.
pub fn verify_identical(
    model: &Path,
    data: &Path,
    target: &str,
    count: usize,
    work_dir: &Path,
    extra: &[&str],
) -> String {
    let count_s = count.to_string();
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"verify",
        &model,
        &"--data",
        &data,
        &"--target",
        &target,
        &"--count",
        &count_s,
        &"--work-dir",
        &work_dir,
        &"--quiet",
    ];
    all.extend(extra.iter().map(|e| e as &dyn AsRef<std::ffi::OsStr>));
    let o = nnquant(&all);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let want = format!("{count}/{count} images byte-identical");
    assert!(o.stdout.contains(&want), "{}", o.stdout);
    o.stdout
}

/// The members of a .npz (stored zip, as `npy_out::npz` and `numpy.savez` write it), read from
/// its central directory: name → .npy bytes. Checks every header field a reader relies on.
pub fn npz_members(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let end = bytes.len() - 22;
    assert_eq!(u32_at(end), 0x0605_4b50, "end of central directory");
    let (n, cd) = (u16_at(end + 10), u32_at(end + 16));
    let mut members = Vec::new();
    let mut p = cd;
    for _ in 0..n {
        assert_eq!(u32_at(p), 0x0201_4b50, "central directory entry");
        assert_eq!(u16_at(p + 10), 0, "stored");
        let (crc, size, name_len, local) = (
            u32_at(p + 16),
            u32_at(p + 20),
            u16_at(p + 28),
            u32_at(p + 42),
        );
        let name = String::from_utf8(bytes[p + 46..p + 46 + name_len].to_vec()).unwrap();
        assert_eq!(u32_at(local), 0x0403_4b50, "local header");
        assert_eq!(u32_at(local + 14), crc, "local and central CRC");
        let data_at = local + 30 + u16_at(local + 26) + u16_at(local + 28);
        let data = bytes[data_at..data_at + size].to_vec();
        assert_eq!(crc32fast::hash(&data) as usize, crc, "CRC of {name}");
        members.push((name, data));
        p += 46 + name_len + u16_at(p + 30) + u16_at(p + 32);
    }
    members
}

pub fn npy_f64(bytes: &[u8]) -> (Vec<u64>, Vec<f64>) {
    let npy = npyz::NpyFile::new(bytes).unwrap();
    let shape = npy.shape().to_vec();
    let data = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float => npy
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
        _ => npy
            .into_vec::<i8>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect(),
    };
    (shape, data)
}

pub fn sqnr_db(reference: &[f64], x: &[f64]) -> f64 {
    let s: f64 = reference.iter().map(|v| v * v).sum();
    let e: f64 = reference.iter().zip(x).map(|(a, b)| (a - b).powi(2)).sum();
    10.0 * (s / e.max(1e-30)).log10()
}
