//! `nnquant build` reuses a step's outputs only when everything they were made from is
//! unchanged: the build file, the model files, and the data *contents* (a data file rewritten
//! under the same path triggers a rebuild). The tool's own version, kernels and templates are
//! part of the fingerprint through a compile-time hash (see build.rs).

mod common;
use common::*;
use std::path::Path;

fn copy_demo(f: &Fixture) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/glyphs");
    for n in [
        "glyphs.prototxt",
        "glyphs.caffemodel",
        "calib_u8_hwc.npy",
        "calib_labels.npy",
        "test_u8_hwc.npy",
        "test_labels.npy",
    ] {
        std::fs::copy(src.join(n), f.path(n)).unwrap();
    }
    f.write(
        "nnquant.toml",
        r#"[model]
prototxt = "glyphs.prototxt"
weights = "glyphs.caffemodel"
scale = 0.0078125
mean_value = [128, 128, 128]

[calibration]
data = "calib_u8_hwc.npy"
labels = "calib_labels.npy"

[evaluation]
data = "test_u8_hwc.npy"
labels = "test_labels.npy"

[quantize]
search = "none"

[target]
name = "host"
test_images = 2

[output]
dir = "out"
"#,
    );
}

fn build(f: &Fixture) -> Outcome {
    let o = nnquant(&[&"build", &"-c", &f.path("nnquant.toml")]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    o
}

#[test]
fn changed_data_contents_under_the_same_path_rebuild() {
    let f = Fixture::new();
    copy_demo(&f);
    let o = build(&f);
    assert!(
        o.stdout.contains("== quantize\n") && o.stdout.contains("== codegen\n"),
        "{}",
        o.stdout
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.path("out/report.json")).unwrap()).unwrap();
    assert_eq!(r["preprocessing"]["source"], "flags");
    let o = build(&f);
    assert!(
        o.stdout.contains("quantize: up to date") && o.stdout.contains("codegen: up to date"),
        "{}",
        o.stdout
    );
    // Rewrite the evaluation images in place: same path, same size, one pixel different.
    let p = f.path("test_u8_hwc.npy");
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&p, &bytes).unwrap();
    let o = build(&f);
    assert!(
        o.stdout.contains("== quantize\n"),
        "a changed data file was not noticed: {}",
        o.stdout
    );
    let r2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.path("out/report.json")).unwrap()).unwrap();
    assert_ne!(r["evaluation"]["sha256"], r2["evaluation"]["sha256"]);
    assert!(build(&f).stdout.contains("quantize: up to date"));
    // Changing the preprocessing in the build file rebuilds too.
    let toml = std::fs::read_to_string(f.path("nnquant.toml")).unwrap();
    f.write(
        "nnquant.toml",
        toml.replace("scale = 0.0078125", "scale = 0.015625"),
    );
    assert!(build(&f).stdout.contains("== quantize\n"));
    // Bad values in the build file are clean errors.
    f.write(
        "nnquant.toml",
        toml.replace("scale = 0.0078125", "scale = -1.0"),
    );
    assert_fails(
        &nnquant(&[&"build", &"-c", &f.path("nnquant.toml")]),
        &["model.scale"],
    );
    // A wrong type: toml's multi-line message becomes one paragraph with the position.
    f.write(
        "nnquant.toml",
        toml.replace("mean_value = [128, 128, 128]", "mean_value = \"abc\""),
    );
    let o = nnquant(&[&"build", &"-c", &f.path("nnquant.toml")]);
    assert_fails(&o, &["line 5, column 14", "expected a sequence"]);
    assert_eq!(o.stderr.trim_end().lines().count(), 1, "{}", o.stderr);
}
