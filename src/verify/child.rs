//! Child processes of `verify` (cargo, QEMU, the host firmware): each in its own process group,
//! so that one `kill` reaches it and everything it started (cargo's rustc, QEMU); killed on
//! SIGINT/SIGTERM (registered with `fsio::interrupt`, which kills the group, removes temporary
//! outputs, then lets nnquant die of the signal) and when a run exceeds its time limit; a failure's error carries the tail of what the
//! child printed (for the firmware: its panic message or `KernelError`), not just its status.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Progress on a terminal (a spinner, or a bar when the number of steps is known); hidden with
/// `--quiet` or when stderr is not a TTY.
pub fn progress(what: &str, msg: &str, len: Option<u64>, quiet: bool) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    pb.set_prefix(what.to_string());
    pb.set_message(msg.to_string());
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        let t = if len.is_some() {
            "{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed})"
        } else {
            "{prefix:>12} {spinner} {msg} ({elapsed})"
        };
        pb.set_style(
            ProgressStyle::with_template(t)
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
    }
    pb
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Lines of a child's output worth showing in an error: the last `n` non-empty ones, without
/// the instruction-count plugin's measurement line.
pub fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.contains("nnquant-insns"))
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Run `cmd` to completion in its own process group; `timeout` kills it (and its group) when
/// exceeded. `on_line` sees every stdout line as it arrives (progress). Fails with the child's
/// own last words when it exits unsuccessfully.
pub fn run(
    cmd: &mut Command,
    what: &str,
    timeout: Option<Duration>,
    on_line: &(dyn Fn(&str) + Sync),
) -> Result<Output> {
    // SIGINT/SIGTERM kill the child's group (fsio::interrupt); installed here too for library
    // callers (the CLI installs it at start-up).
    crate::fsio::interrupt::install();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    let pid = child.id() as i32;
    let _registered = crate::fsio::interrupt::register_child(child.id());
    let (mut out_pipe, mut err_pipe) = (child.stdout.take(), child.stderr.take());
    let start = Instant::now();
    let result = std::thread::scope(|s| {
        let out_reader = s.spawn(move || {
            let mut text = String::new();
            if let Some(p) = out_pipe.take() {
                let mut r = BufReader::new(p);
                let mut line = Vec::new();
                while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    let l = String::from_utf8_lossy(&line);
                    on_line(l.trim_end());
                    text.push_str(&l);
                    line.clear();
                }
            }
            text
        });
        let err_reader = s.spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = err_pipe.take() {
                p.read_to_end(&mut buf).ok();
            }
            String::from_utf8_lossy(&buf).into_owned()
        });
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if timeout.is_some_and(|t| start.elapsed() >= t) {
                kill_group(pid);
                timed_out = true;
                break child.wait();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The group may still hold grandchildren that keep the pipes open (cargo's rustc):
        // after the child itself ended, nothing of its group should outlive it.
        if timed_out || status.as_ref().map_or(true, |s| !s.success()) {
            kill_group(pid);
        }
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        (status, timed_out, stdout, stderr)
    });
    drop(_registered);
    let (status, timed_out, stdout, stderr) = result;
    let status = status.with_context(|| format!("waiting for {what}"))?;
    if timed_out {
        let t = timeout.unwrap_or_default().as_secs_f64();
        let last = tail(&format!("{stdout}\n{stderr}"), 3).join(" | ");
        bail!(
            "{what} did not finish within {t} s (--timeout) and was killed{}",
            if last.is_empty() {
                " (it printed nothing)".to_string()
            } else {
                format!("; its last output: {last}")
            }
        );
    }
    if !status.success() {
        // The child's own words: for the firmware its panic message or kernel error (stdout and
        // stderr both, semihosting or native), for cargo the compiler's last lines.
        let mut lines = tail(&stderr, 25);
        lines.extend(tail(&stdout, 5));
        bail!(
            "{what} failed ({status}){}",
            if lines.is_empty() {
                " without printing anything".to_string()
            } else {
                format!("; its last output:\n{}", lines.join("\n"))
            }
        );
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn kill_group(pid: i32) {
    #[cfg(unix)]
    // SAFETY: signalling a process group this process created.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}
