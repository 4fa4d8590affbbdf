//! Every kind of bad model input gives a clear one-paragraph error and exit code 2, never a panic.

mod common;
use common::*;
use nnquant::caffe::write::{encode_caffemodel, encode_hdf5};

fn inspect(model: &std::path::Path, weights: Option<&std::path::Path>) -> Outcome {
    match weights {
        Some(w) => nnquant(&[&"inspect", &model, &"--weights", &w]),
        None => nnquant(&[&"inspect", &model]),
    }
}

#[test]
fn valid_tiny_model_inspects() {
    let f = Fixture::new();
    let (p, w, h) = f.tiny();
    for weights in [&w, &h] {
        let o = inspect(&p, Some(weights));
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(o.stdout.contains("4×8×8"), "{}", o.stdout);
        assert!(o.stdout.contains("4×4×4"), "{}", o.stdout);
    }
}

#[test]
fn missing_file() {
    let f = Fixture::new();
    assert_fails(
        &inspect(&f.path("nope.prototxt"), None),
        &["cannot read the prototxt", "nope.prototxt"],
    );
    let (p, _, _) = f.tiny();
    assert_fails(
        &inspect(&p, Some(&f.path("nope.caffemodel"))),
        &["cannot read the weights file"],
    );
}

#[test]
fn empty_files() {
    let f = Fixture::new();
    let e = f.write("empty.prototxt", "");
    assert_fails(&inspect(&e, None), &["is empty"]);
    let (p, _, _) = f.tiny();
    let w = f.write("empty.caffemodel", "");
    assert_fails(&inspect(&p, Some(&w)), &["weights file", "is empty"]);
}

#[test]
fn binary_file_given_as_prototxt() {
    let f = Fixture::new();
    let (_, w, h) = f.tiny();
    assert_fails(&inspect(&w, None), &["not a text prototxt", "--weights"]);
    assert_fails(&inspect(&h, None), &["not a text prototxt"]);
}

#[test]
fn syntax_error_has_line_and_column() {
    let f = Fixture::new();
    let p = f.write(
        "bad.prototxt",
        TINY_PROTOTXT.replace("num_output: 4 kernel_size", "num_output: 4 } kernel_size"),
    );
    assert_fails(&inspect(&p, None), &["bad.prototxt:4:", "syntax error"]);
}

#[test]
fn unknown_field_is_named_with_position() {
    let f = Fixture::new();
    let p = f.write(
        "bad.prototxt",
        TINY_PROTOTXT.replace("pad: 1", "padding: 1"),
    );
    assert_fails(&inspect(&p, None), &["bad.prototxt:4:", "padding"]);
}

#[test]
fn unknown_layer_type_is_named_and_supported_ones_listed() {
    let f = Fixture::new();
    let p = f.write(
        "bad.prototxt",
        TINY_PROTOTXT.replace("\"ReLU\"", "\"Frobnicate\""),
    );
    assert_fails(
        &inspect(&p, None),
        &[
            "'relu1'",
            "'Frobnicate'",
            "Supported layer types",
            "Convolution",
            "Pooling",
        ],
    );
}

#[test]
fn bottom_that_no_layer_produces() {
    let f = Fixture::new();
    let p = f.write(
        "bad.prototxt",
        TINY_PROTOTXT.replace("bottom: \"pool1\"", "bottom: \"pool7\""),
    );
    assert_fails(
        &inspect(&p, None),
        &["'ip1'", "'pool7'", "no earlier layer produces"],
    );
}

#[test]
fn cycle_is_refused() {
    let f = Fixture::new();
    let txt = r#"layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "a" type: "ReLU" bottom: "b" top: "a" }
layer { name: "b" type: "ReLU" bottom: "a" top: "b" }"#;
    let p = f.write("cycle.prototxt", txt);
    assert_fails(&inspect(&p, None), &["'a'", "'b'", "cycle"]);
}

#[test]
fn duplicate_layer_names() {
    let f = Fixture::new();
    let p = f.write(
        "dup.prototxt",
        TINY_PROTOTXT.replace("name: \"relu1\"", "name: \"conv1\""),
    );
    assert_fails(&inspect(&p, None), &["two layers are named 'conv1'"]);
}

#[test]
fn blob_count_mismatch() {
    let f = Fixture::new();
    let (p, _, _) = f.tiny();
    let mut w = tiny_weights();
    w[0].2.pop();
    let wp = f.write("w.caffemodel", encode_caffemodel("tiny", &w));
    assert_fails(
        &inspect(&p, Some(&wp)),
        &["'conv1'", "implies 2 blob(s)", "has 1"],
    );
}

#[test]
fn blob_shape_mismatch() {
    let f = Fixture::new();
    let (p, _, _) = f.tiny();
    let mut w = tiny_weights();
    w[0].2[0] = tensor(&[4, 3, 5, 5], 9);
    let wp = f.write("w.caffemodel.h5", encode_hdf5(&w).unwrap());
    assert_fails(
        &inspect(&p, Some(&wp)),
        &["'conv1'", "[4, 3, 3, 3]", "[4, 3, 5, 5]"],
    );
}

#[test]
fn missing_weights_for_parametric_layer() {
    let f = Fixture::new();
    let (p, _, _) = f.tiny();
    let mut w = tiny_weights();
    w.remove(1);
    let wp = f.write("w.caffemodel", encode_caffemodel("tiny", &w));
    assert_fails(&inspect(&p, Some(&wp)), &["'ip1'", "has none for it"]);
}

#[test]
fn truncated_and_corrupt_caffemodel() {
    let f = Fixture::new();
    let (p, w, _) = f.tiny();
    let bytes = std::fs::read(&w).unwrap();
    let cut = f.write("cut.caffemodel", &bytes[..bytes.len() / 2]);
    assert_fails(
        &inspect(&p, Some(&cut)),
        &["cut.caffemodel", "truncated or corrupt"],
    );
    let junk = f.write("junk.caffemodel", [0xffu8; 64]);
    assert_fails(&inspect(&p, Some(&junk)), &["junk.caffemodel"]);
}

#[test]
fn truncated_and_corrupt_hdf5() {
    let f = Fixture::new();
    let (p, _, h) = f.tiny();
    let bytes = std::fs::read(&h).unwrap();
    for (name, data) in [
        ("cut.h5", bytes[..bytes.len() / 2].to_vec()),
        ("head.h5", bytes[..64].to_vec()),
        ("flip.h5", {
            let mut b = bytes.clone();
            for x in b.iter_mut().skip(100).step_by(7) {
                *x ^= 0x5a;
            }
            b
        }),
    ] {
        let wp = f.write(name, data);
        let o = inspect(&p, Some(&wp));
        assert_fails(&o, &[name]);
    }
}

#[test]
fn nan_and_inf_weights() {
    let f = Fixture::new();
    let (p, _, _) = f.tiny();
    let mut w = tiny_weights();
    w[1].2[0].data[7] = f32::NAN;
    let wp = f.write("nan.caffemodel", encode_caffemodel("tiny", &w));
    assert_fails(
        &inspect(&p, Some(&wp)),
        &["ip1", "value 7 is NaN", "finite"],
    );
    let mut w = tiny_weights();
    w[0].2[1].data[2] = f32::INFINITY;
    let wp = f.write("inf.caffemodel.h5", encode_hdf5(&w).unwrap());
    assert_fails(&inspect(&p, Some(&wp)), &["conv1", "value 2 is inf"]);
}

#[test]
fn absurd_dimensions_are_refused_before_allocating() {
    let f = Fixture::new();
    let p = f.write(
        "huge.prototxt",
        TINY_PROTOTXT.replace("dim: 8 dim: 8", "dim: 4000000 dim: 4000000"),
    );
    assert_fails(&inspect(&p, None), &["refusing to allocate"]);
    let p = f.write(
        "huge2.prototxt",
        TINY_PROTOTXT.replace("num_output: 5", "num_output: 4000000000"),
    );
    assert_fails(&inspect(&p, None), &["ip1", "refusing to allocate"]);
}

#[test]
fn reading_the_label_of_a_dropped_data_layer_is_explained() {
    let f = Fixture::new();
    let txt = r#"layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" backend: LMDB } }
layer { name: "r" type: "ReLU" bottom: "label" top: "r" }"#;
    let p = f.write("lbl.prototxt", txt);
    assert_fails(
        &nnquant(&[&"inspect", &p, &"--input-shape", &"1,4,4"]),
        &["'label'", "drops"],
    );
}

#[test]
fn unknown_input_shape_says_which_flag_gives_it() {
    let f = Fixture::new();
    let txt = r#"layer { name: "d" type: "Data" top: "data" data_param { source: "x" backend: LMDB } }
layer { name: "r" type: "ReLU" bottom: "data" top: "r" }"#;
    let p = f.write("d.prototxt", txt);
    assert_fails(&inspect(&p, None), &["--input-shape"]);
}

/// Output into a pipe whose reader has gone (`nnquant inspect … | head`) ends the process
/// quietly (SIGPIPE, as for `cat`), not with a panic (exit 101).
#[cfg(unix)]
#[test]
fn closed_stdout_pipe_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/glyphs/glyphs.prototxt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nnquant"))
        .arg("inspect")
        .arg(&model)
        .args(["--input-shape", "3,16,16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is written
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    assert!(
        out.status.signal() == Some(13) || out.status.code() == Some(0),
        "status {:?}: {stderr}",
        out.status
    );
}

/// Standard output that cannot be written (`> /dev/full`) is a one-paragraph error with exit
/// code 2, not a panic.
#[cfg(target_os = "linux")]
#[test]
fn unwritable_stdout_is_an_error_not_a_panic() {
    use std::process::Command;
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/glyphs/glyphs.prototxt");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nnquant"))
        .arg("inspect")
        .arg(&model)
        .args(["--input-shape", "3,16,16"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot write to standard output"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// SSD's Permute (detector heads): parsed, shaped, run in float; an order that moves the batch
/// axis or is not a permutation is a clean error; quantizing names it as float-only.
#[test]
fn permute_layers_are_parsed_and_checked() {
    let f = Fixture::new();
    let ok = f.write(
        "p.prototxt",
        r#"name: "p"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 5 } } }
layer { name: "perm" type: "Permute" bottom: "data" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
"#,
    );
    let o = inspect(&ok, None);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("4×5×3"), "{}", o.stdout);
    for (order, needle) in [
        ("order: 1 order: 0", "moves the batch axis"),
        ("order: 0 order: 2 order: 2", "not a permutation"),
        ("order: 0 order: 7", "not a permutation"),
    ] {
        let bad = f.write(
            "bad.prototxt",
            format!(
                r#"name: "p"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 4 dim: 5 }} }} }}
layer {{ name: "perm" type: "Permute" bottom: "data" top: "perm" permute_param {{ {order} }} }}
"#
            ),
        );
        assert_fails(&inspect(&bad, None), &["Permute", needle]);
    }
}
