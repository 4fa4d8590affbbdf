//! `verify` when the firmware misbehaves: its own message in the error, a time limit that kills
//! it, SIGTERM that leaves no child behind, and `--trace` naming the step a corrupted weight
//! breaks. The faults come from the test-only hook `NNQUANT_TEST_FAULT` (src/verify/fault.rs).
//! Each test uses its own verify cache (`NNQUANT_CACHE`) and work directory, so the firmware's
//! path (its copy in the work directory) is unique and `pgrep -f` finds exactly this test's
//! processes.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/glyphs")
        .join(p)
}

fn quantized(dir: &Path) -> PathBuf {
    quantized_demo(dir).0
}

/// `nnquant verify MODEL --data … --count N --target T` with a fault, in a private cache.
fn verify_cmd(f: &Fixture, model: &Path, target: &str, fault: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nnquant"));
    c.arg("verify")
        .arg(model)
        .arg("--data")
        .arg(demo("test_u8_hwc.npy"))
        .args(["--count", "3", "--target", target, "--work-dir"])
        .arg(f.path("fw"))
        .args(extra)
        .env("NNQUANT_CACHE", f.path("cache"))
        .env("NNQUANT_TEST_FAULT", fault)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    c
}

fn outcome(c: &mut Command) -> Outcome {
    let o = c.output().expect("run nnquant");
    Outcome {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Processes whose command line contains `needle` (pgrep; none: empty).
fn processes(needle: &Path) -> String {
    let o = Command::new("pgrep")
        .arg("-fa")
        .arg(needle)
        .output()
        .expect("pgrep (procps) is installed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A clean failure whose message quotes the firmware (which may itself say "panicked"): exit
/// code 2, one `error:` paragraph (no blank line) containing every needle, nothing on stdout.
fn assert_verify_fails(o: &Outcome, needles: &[&str]) {
    assert_eq!(o.code, 2, "exit code {}; stderr: {}", o.code, o.stderr);
    assert!(o.stderr.starts_with("error: "), "stderr: {}", o.stderr);
    assert_eq!(o.stderr.matches("error: ").count(), 1, "{}", o.stderr);
    assert!(!o.stderr.trim_end().contains("\n\n"), "{}", o.stderr);
    assert!(
        !o.stderr.contains("src/verify"),
        "nnquant itself panicked: {}",
        o.stderr
    );
    assert!(o.stdout.is_empty(), "partial output: {}", o.stdout);
    for n in needles {
        assert!(o.stderr.contains(n), "stderr lacks {n:?}: {}", o.stderr);
    }
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok()
}

#[test]
fn host_firmware_panic_and_kernel_error_reach_the_error_message() {
    let f = Fixture::new();
    let m = quantized(&f.path("q"));
    let o = outcome(&mut verify_cmd(&f, &m, "host", "panic", &[]));
    assert_verify_fails(
        &o,
        &[
            "running the firmware (host) failed",
            "nnquant test fault: a deliberate panic",
        ],
    );
    assert!(o.stdout.is_empty(), "partial output: {}", o.stdout);
    let o = outcome(&mut verify_cmd(&f, &m, "host", "kernel-error", &[]));
    assert_verify_fails(
        &o,
        &[
            "failed (exit status: 1)",
            "error image 0 KernelError::Length",
        ],
    );
    assert!(o.stdout.is_empty(), "partial output: {}", o.stdout);
    // An unknown fault is refused rather than ignored.
    let o = outcome(&mut verify_cmd(&f, &m, "host", "nonsense", &[]));
    assert_verify_fails(&o, &["NNQUANT_TEST_FAULT=nonsense", "unknown fault"]);
}

#[test]
fn host_firmware_that_hangs_is_killed_at_the_timeout() {
    let f = Fixture::new();
    let m = quantized(&f.path("q"));
    let start = Instant::now();
    let o = outcome(&mut verify_cmd(
        &f,
        &m,
        "host",
        "hang",
        &["--timeout", "1.5"],
    ));
    assert_verify_fails(
        &o,
        &["did not finish within 1.5 s (--timeout) and was killed"],
    );
    assert!(o.stdout.is_empty(), "partial output: {}", o.stdout);
    // Building takes a while; the run itself was cut after 1.5 s (not the default 300 s).
    assert!(start.elapsed() < Duration::from_secs(200));
    assert_eq!(processes(&f.path("fw")), "", "a firmware process survived");
    for bad in ["0", "-1", "soon", "NaN"] {
        let arg = format!("--timeout={bad}");
        let o = outcome(&mut verify_cmd(&f, &m, "host", "", &[&arg]));
        assert_fails(&o, &["is not a number of seconds"]);
    }
    // The trace prints inside the region the instruction count measures: refused together.
    let o = outcome(&mut verify_cmd(
        &f,
        &m,
        "host",
        "",
        &["--trace", "--count-instructions"],
    ));
    assert_verify_fails(&o, &["--trace and --count-instructions cannot be combined"]);
}

#[test]
fn sigterm_during_verify_kills_the_firmware() {
    let f = Fixture::new();
    let m = quantized(&f.path("q"));
    let mut child = verify_cmd(&f, &m, "host", "hang", &["--timeout", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The firmware runs from a copy in the work directory (see `verify`'s build lock).
    let bin = f.path("fw").join("demo");
    assert!(
        wait_until(Duration::from_secs(300), || !processes(&bin).is_empty()),
        "the firmware never started"
    );
    // SAFETY: signalling the child this test spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        wait_until(Duration::from_secs(5), || processes(&bin).is_empty()),
        "the firmware survived SIGTERM: {}",
        processes(&bin)
    );
}

#[test]
fn trace_names_the_step_a_corrupted_weight_breaks() {
    let f = Fixture::new();
    let m = quantized(&f.path("q"));
    // Unchanged firmware: every step equal.
    let o = outcome(&mut verify_cmd(&f, &m, "host", "", &["--trace"]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("trace: every step of every image byte-identical"),
        "{}",
        o.stdout
    );
    // One weight of conv2 changed: conv1 still agrees, conv2's fused step is the first to differ.
    for (layer, step) in [
        ("CONV2", "step 2 'conv2+relu2+pool2'"),
        ("IP1", "step 3 'ip1'"),
    ] {
        let o = outcome(&mut verify_cmd(
            &f,
            &m,
            "host",
            &format!("weight:{layer}"),
            &["--trace", "--json"],
        ));
        assert_eq!(o.code, 1, "{}", o.stderr);
        let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
        let d = &v["trace"]["first_divergence"];
        assert_eq!(
            format!("step {} '{}'", d["step"], d["step_name"].as_str().unwrap()),
            step,
            "{}",
            o.stdout
        );
        assert_ne!(d["simulator"], d["firmware"]);
    }
}

#[test]
#[ignore = "needs qemu-system-arm and the thumbv7em-none-eabihf target (run by .ci/run)"]
fn qemu_firmware_errors_timeout_and_trace() {
    let f = Fixture::new();
    let m = quantized(&f.path("q"));
    let o = outcome(&mut verify_cmd(&f, &m, "cortex-m4", "panic", &[]));
    assert_verify_fails(
        &o,
        &[
            "running the firmware (QEMU) failed",
            "nnquant test fault: a deliberate panic",
        ],
    );
    let o = outcome(&mut verify_cmd(&f, &m, "cortex-m4", "kernel-error", &[]));
    assert_verify_fails(&o, &["KernelError::Length"]);
    let o = outcome(&mut verify_cmd(
        &f,
        &m,
        "cortex-m4",
        "hang",
        &["--timeout", "2"],
    ));
    assert_verify_fails(
        &o,
        &["running the firmware (QEMU) did not finish within 2 s"],
    );
    assert_eq!(processes(&f.path("fw")), "", "QEMU survived the timeout");
    let o = outcome(&mut verify_cmd(
        &f,
        &m,
        "cortex-m4",
        "weight:CONV1",
        &["--trace"],
    ));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("trace: first divergence at image 0, step 1 'conv1+relu1+pool1'"),
        "{}",
        o.stdout
    );
}

/// Two verifications of the same target at the same time share one cargo target directory and
/// crate name (incremental rebuilds): each must still run and compare its own firmware. Two
/// models with different image counts, so that running the other's binary would show.
#[test]
fn two_verifications_of_one_target_at_once_each_check_their_own_firmware() {
    let f = Fixture::new();
    let m = quantized(&f.path("q"));
    let cache = f.path("cache");
    let run = |work: PathBuf, count: &'static str| {
        let cache = cache.clone();
        let m = m.clone();
        std::thread::spawn(move || {
            let o = Command::new(env!("CARGO_BIN_EXE_nnquant"))
                .arg("verify")
                .arg(&m)
                .arg("--data")
                .arg(demo("test_u8_hwc.npy"))
                .args([
                    "--count",
                    count,
                    "--target",
                    "host",
                    "--quiet",
                    "--work-dir",
                ])
                .arg(&work)
                .env("NNQUANT_CACHE", &cache)
                .stdin(Stdio::null())
                .output()
                .expect("run nnquant");
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
    };
    let a = run(f.path("fw-a"), "7");
    let b = run(f.path("fw-b"), "40");
    for (h, n) in [(a, 7), (b, 40)] {
        let (code, out, err) = h.join().unwrap();
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains(&format!("{n}/{n} images byte-identical")),
            "{out}"
        );
    }
}
