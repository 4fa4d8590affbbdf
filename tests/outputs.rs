//! Every command's outputs are one transaction: all new files or none, no temporaries left
//! behind (errors, concurrent runs, SIGTERM before and between the renames), no device node or
//! FIFO replaced by a plain file; inputs that are not regular files are capped and a FIFO
//! without a writer does not hang.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
        .display()
        .to_string()
}

/// `nnquant quantize` of the demo model (no search: fast) with these outputs.
fn quantize_cmd(model_out: &Path, report_out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nnquant"));
    c.args(["quantize", "--model", &demo("glyphs.prototxt")])
        .args(["--weights", &demo("glyphs.caffemodel")])
        .args(["--calib", &demo("calib_u8_hwc.npy")])
        .args(["--eval", &demo("test_u8_hwc.npy")])
        .args(["--search", "none", "--quiet", "-o"])
        .arg(model_out)
        .arg("--report")
        .arg(report_out)
        .env_remove("RUST_BACKTRACE")
        .env_remove("NNQUANT_TEST_COMMIT_PAUSE");
    c
}

fn run(mut c: Command) -> Outcome {
    let out = c.output().expect("run nnquant");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Names in `dir` that look like nnquant temporaries.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("nnquant-tmp"))
        .collect()
}

fn outputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (dir.join("m.nnq.json"), dir.join("r.json"), dir.join("r.md"))
}

#[test]
fn device_node_and_fifo_outputs_are_refused_before_anything_is_written() {
    let f = Fixture::new();
    let (_, r, md) = outputs(f.dir.path());
    let o = run(quantize_cmd(Path::new("/dev/null"), &r));
    assert_fails(&o, &["/dev/null", "character device", "not a regular file"]);
    assert!(!r.exists() && !md.exists(), "the report was written");
    assert!(Path::new("/dev/null").metadata().is_ok());

    let fifo = f.path("fifo.json");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let o = run(quantize_cmd(&f.path("m.nnq.json"), &fifo));
    assert_fails(&o, &["fifo.json", "a FIFO"]);
    assert!(!f.path("m.nnq.json").exists());
    use std::os::unix::fs::FileTypeExt;
    assert!(fifo.metadata().unwrap().file_type().is_fifo());
    assert!(temporaries(f.dir.path()).is_empty());
}

#[test]
fn a_failing_output_leaves_no_other_output_and_no_temporaries() {
    let f = Fixture::new();
    // The report's directory cannot be created (a file is in the way): the model, written first,
    // must not appear either.
    f.write("blocker", "x");
    let m = f.path("m.nnq.json");
    let o = run(quantize_cmd(&m, &f.path("blocker/r.json")));
    assert_fails(&o, &["blocker"]);
    assert!(!m.exists(), "the model was written without its report");
    assert!(temporaries(f.dir.path()).is_empty());
}

#[test]
fn the_same_path_for_two_outputs_is_refused() {
    let f = Fixture::new();
    let p = f.path("same.json");
    assert_fails(
        &run(quantize_cmd(&p, &p)),
        &["same.json", "two different outputs"],
    );
    assert!(!p.exists());
}

#[test]
fn an_output_symlink_is_written_through() {
    let f = Fixture::new();
    let real = f.path("real.nnq.json");
    f.write("real.nnq.json", "old");
    let link = f.path("link.nnq.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let o = run(quantize_cmd(&link, &f.path("r.json")));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(&real)
        .unwrap()
        .contains("\"graph\""));
}

#[test]
fn concurrent_runs_to_the_same_outputs_both_succeed() {
    let f = Fixture::new();
    let (m, r, md) = outputs(f.dir.path());
    let children: Vec<_> = (0..3)
        .map(|_| {
            quantize_cmd(&m, &r)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    assert!(model.get("graph").is_some());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    assert!(report["accuracy"].get("quant_correct").is_some());
    assert!(md.exists());
    assert!(temporaries(f.dir.path()).is_empty());
}

/// Run quantize paused at `point` of its commit, send SIGTERM there, return its exit status.
fn terminated_at(point: &str, m: &Path, r: &Path) -> std::process::ExitStatus {
    let mut c = quantize_cmd(m, r);
    c.env("NNQUANT_TEST_COMMIT_PAUSE", format!("{point}:5000"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.contains("test pause at") {
            break;
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    child.wait().unwrap()
}

/// Old outputs in place, quantize terminated at `point`: whether each output is new afterwards.
fn outputs_after_sigterm_at(point: &str) -> Vec<bool> {
    let f = Fixture::new();
    let (m, r, md) = outputs(f.dir.path());
    for p in [&m, &r, &md] {
        std::fs::write(p, "old").unwrap();
    }
    let status = terminated_at(point, &m, &r);
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    let temps = temporaries(f.dir.path());
    assert!(temps.is_empty(), "{temps:?}");
    [&m, &r, &md]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap() != "old")
        .collect()
}

#[test]
fn sigterm_before_the_renames_keeps_the_old_outputs() {
    assert_eq!(outputs_after_sigterm_at("before-rename"), [false; 3]);
}

#[test]
fn sigterm_between_the_renames_completes_the_set() {
    assert_eq!(outputs_after_sigterm_at("between-renames"), [true; 3]);
}

#[test]
fn an_endless_stream_as_input_is_capped() {
    let o = nnquant(&[&"inspect", &"/dev/zero"]);
    assert_fails(&o, &["/dev/zero", "not a regular file", "bytes"]);
}

#[test]
fn a_fifo_without_a_writer_does_not_hang_and_one_with_a_writer_is_read() {
    let f = Fixture::new();
    let fifo = f.path("model.prototxt");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_nnquant"))
        .arg("inspect")
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().ok();
            panic!("nnquant hangs on a FIFO without a writer");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));

    // A pipe with a writer, as from `<(cat model.prototxt)`, is read to its end.
    let o = run({
        let mut c = Command::new("bash");
        c.arg("-c").arg(format!(
            "exec '{}' inspect --input-shape 3,16,16 <(cat '{}')",
            env!("CARGO_BIN_EXE_nnquant"),
            demo("glyphs.prototxt")
        ));
        c
    });
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("conv1"), "{}", o.stdout);
}
