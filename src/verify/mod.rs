//! `nnquant verify`: build the generated firmware, run it (QEMU for Cortex-M, natively for the
//! host) and compare every output byte with the simulator's.

pub mod child;
pub mod elf;
pub mod fault;
pub mod trace;

use crate::codegen::{self, Target};
use crate::model::NnqModel;
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub text: usize,
    pub rodata: usize,
    pub data: usize,
    pub bss: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub image: usize,
    /// (byte index, simulator, firmware)
    pub bytes: Vec<(usize, i8, i8)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    pub target: String,
    pub images: usize,
    pub matching_images: usize,
    pub mismatching_bytes: usize,
    pub first_mismatch: Option<Mismatch>,
    pub checksum: String,
    pub sizes: Option<Sizes>,
    pub arena_bytes: usize,
    pub flash_param_bytes: usize,
    /// Kernel scratch and rings inside the arena (largest step).
    pub arena_temp_bytes: usize,
    /// The plan's figures (budget estimates included).
    #[serde(skip)]
    pub memory: Option<codegen::MemoryReport>,
    /// Kernel scratch outside the arena.
    pub scratch_bytes: usize,
    /// Stack high-water mark measured in QEMU (bytes below the stack top that any store
    /// reached, over the whole run: start-up, inferences and printing).
    pub stack_high_water: Option<usize>,
    /// `.data + .bss` (the arena included) + the stack high-water mark.
    pub total_ram: Option<usize>,
    /// Executed guest instructions per inference (QEMU TCG plugin), when asked.
    pub instructions_per_inference: Option<u64>,
    /// Executed instructions per inference of every step (input conversion, each step, the
    /// output copy), when asked.
    pub per_step_instructions: Vec<StepInsns>,
    /// With `--trace`: how the firmware's every step compared with the simulator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<trace::TraceResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepInsns {
    pub step: String,
    pub instructions: u64,
}

/// Where verification builds live (kept between runs so rebuilds are incremental).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NNQUANT_CACHE") {
        return d.into();
    }
    std::env::temp_dir().join("nnquant-cache")
}

/// Run a tool (cargo) to completion with a spinner; its error carries the tool's last lines.
fn run_checked(cmd: &mut Command, what: &str, quiet: bool) -> Result<child::Output> {
    let pb = child::progress("verify", what, None, quiet);
    let r = child::run(cmd, what, None, &|_| {});
    pb.finish_and_clear();
    r
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Check the tools a target needs, with the command that installs each missing one.
pub fn check_prerequisites(t: &Target) -> Result<()> {
    ensure!(
        have("cargo"),
        "cargo is not on PATH; install Rust with rustup"
    );
    if t.is_host() {
        return Ok(());
    }
    if let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        let list = String::from_utf8_lossy(&out.stdout);
        ensure!(
            list.lines().any(|l| l.trim() == t.triple),
            "the Rust target {} is not installed; run: rustup target add {}",
            t.triple,
            t.triple
        );
    }
    ensure!(
        have("qemu-system-arm"),
        "qemu-system-arm is not installed; run: apt-get install -y qemu-system-arm (Debian/Ubuntu)"
    );
    Ok(())
}

/// Parse the firmware's `out <i> <hex> class <c>` lines.
pub fn parse_outputs(stdout: &str, len: usize) -> Result<(Vec<Vec<i8>>, String)> {
    let mut outs = Vec::new();
    let mut checksum = String::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["out", i, hex, ..] => {
                ensure!(
                    i.parse::<usize>().ok() == Some(outs.len()),
                    "firmware printed image {i} out of order"
                );
                ensure!(
                    hex.len() == 2 * len,
                    "firmware printed {} hex digits for image {i}, expected {}",
                    hex.len(),
                    2 * len
                );
                let bytes: Vec<i8> = (0..len)
                    .map(|k| u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).map(|b| b as i8))
                    .collect::<Result<_, _>>()?;
                outs.push(bytes);
            }
            ["images", _, "checksum", c] => checksum = c.to_string(),
            ["error", ..] => bail!("the firmware reported a kernel error: {line}"),
            _ => {}
        }
    }
    Ok((outs, checksum))
}

/// 12 hex digits of a SHA-256 of the (absolute, where it can be found) work directory.
fn work_dir_hash(dir: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Sha256::digest(abs.display().to_string().as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `demo` example's executable from cargo's JSON messages (`--message-format=json`): the
/// compiler artifact of package `crate_name` whose target is `demo`.
fn demo_executable(stdout: &str, crate_name: &str) -> Result<PathBuf> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "demo")
        .filter(|m| {
            m["package_id"]
                .as_str()
                .is_some_and(|id| id.contains(crate_name))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| {
            format!("cargo did not report the executable of {crate_name}'s demo example")
        })
}

/// Build (cargo) the plugin that counts executed instructions in QEMU, once per cache.
fn build_plugin(quiet: bool) -> Result<PathBuf> {
    let dir = cache_dir().join("insn-plugin");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("Cargo.toml"),
        include_str!("../../templates/plugin/Cargo.toml"),
    )?;
    std::fs::write(
        dir.join("lib.rs"),
        include_str!("../../templates/plugin/lib.rs"),
    )?;
    run_checked(
        Command::new("cargo")
            .args(["build", "--release", "--quiet"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", dir.join("target")),
        "building the QEMU instruction-count plugin",
        quiet,
    )?;
    Ok(dir.join("target/release/libnnquant_insn_count.so"))
}

pub struct Request<'a> {
    pub model: &'a NnqModel,
    pub target: Target,
    /// HWC uint8 images.
    pub images: Vec<Vec<u8>>,
    /// Simulator outputs of the same images.
    pub expected: Vec<Vec<i8>>,
    pub count_instructions: bool,
    /// Where to generate the crate (kept for inspection).
    pub work_dir: PathBuf,
    /// Budget overrides (default: the target's RAM/flash).
    pub ram_budget: Option<usize>,
    pub flash_budget: Option<usize>,
    /// Time limit of the firmware run (QEMU or host); None: no limit.
    pub timeout: Option<std::time::Duration>,
    /// No progress display.
    pub quiet: bool,
    /// The simulator's every blob (`--trace`): the firmware prints every step's output and the
    /// first difference is named.
    pub trace: Option<trace::Expected>,
}

pub fn verify(r: &Request) -> Result<VerifyResult> {
    // The crate's name carries a hash of its work directory: cargo keys a path crate's
    // freshness by name, and two work directories built into the shared target directory under
    // one name would pass for each other (the second build found "fresh", the first's binary run).
    let crate_name = format!("nnquant-verify-{}", work_dir_hash(&r.work_dir));
    let mut gen = codegen::generate(
        r.model,
        &codegen::Options {
            ram_budget: r.ram_budget,
            flash_budget: r.flash_budget,
            standalone: true,
            ..codegen::Options::new(r.target.clone(), &crate_name, r.images.clone())
        },
    )?;
    check_prerequisites(&r.target)?;
    fault::apply_from_env(&mut gen.files)?;
    codegen::write::write_crate(&r.work_dir, &gen.files, true)?;
    let dir = &r.work_dir;
    let target_dir = cache_dir().join("verify-target").join(r.target.name);
    // Every verification of a target builds into one shared target directory (so that rebuilds
    // are incremental). The same work directory verified twice at once would still share a crate
    // name: an exclusive lock covers the build and a copy of the binary into the work directory,
    // which is what runs.
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;
    let lock_path = target_dir.with_extension("lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating the lock file {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let mut build = Command::new("cargo");
    // The library plus its QEMU demo (an example with the `qemu-demo` feature: the only build
    // that links with the QEMU board's memory.x).
    build
        .args([
            "build",
            "--release",
            "--quiet",
            "--message-format=json-render-diagnostics",
            "--example",
            "demo",
            "--features",
            if r.trace.is_some() {
                "qemu-demo,trace"
            } else {
                "qemu-demo"
            },
        ])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target_dir);
    let built = run_checked(&mut build, "building the generated firmware", r.quiet)?;
    // The executable cargo reports for this crate's example (not a fixed path in the shared
    // target directory, where another crate's `demo` may have been uplifted).
    let bin = demo_executable(&built.stdout, &crate_name)?;
    let own = dir.join(if r.target.is_host() {
        "demo"
    } else {
        "demo.elf"
    });
    std::fs::copy(&bin, &own)
        .with_context(|| format!("copying {} to {}", bin.display(), own.display()))?;
    drop(lock);
    let bin = own;
    let sizes = if r.target.is_host() {
        None
    } else {
        let e = elf::parse(&std::fs::read(&bin)?)?;
        Some(Sizes {
            text: e.size_of(".text"),
            rodata: e.size_of(".rodata"),
            data: e.size_of(".data"),
            bss: e.size_of(".bss"),
        })
    };
    let mut cmd = if r.target.is_host() {
        let mut c = Command::new(&bin);
        // A panic's message, not a backtrace, is what the error should show.
        c.env_remove("RUST_BACKTRACE");
        c
    } else {
        let mut c = Command::new("qemu-system-arm");
        c.args([
            "-M",
            r.target.machine,
            "-cpu",
            r.target.cpu,
            "-nographic",
            "-semihosting-config",
            "enable=on,target=native",
            "-kernel",
        ])
        .arg(&bin);
        // The plugin always measures the stack; it counts instructions when asked.
        let plugin = build_plugin(r.quiet)?;
        let e = elf::parse(&std::fs::read(&bin)?)?;
        // The markers are ordinary (mangled) functions: find them by the name they contain.
        let sym = |n: &str| {
            e.symbols
                .iter()
                .find(|(k, _)| k.contains(n))
                .map(|(_, v)| *v)
                .with_context(|| format!("symbol {n} not in the firmware"))
        };
        let exact = |n: &str| {
            e.symbols
                .get(n)
                .copied()
                .with_context(|| format!("symbol {n} not in the firmware (cortex-m-rt)"))
        };
        let mut args = format!(
            "{},stack_lo={:#x},stack_hi={:#x}",
            plugin.display(),
            exact("_stack_end")?,
            exact("_stack_start")?
        );
        if r.count_instructions {
            args += &format!(
                ",start={:#x},end={:#x},layer={:#x}",
                sym("nnq_mark_start")?,
                sym("nnq_mark_end")?,
                sym("nnq_mark_layer")?
            );
        }
        c.arg("-plugin").arg(args).args(["-d", "plugin"]);
        c
    };
    let what = format!(
        "running the firmware ({})",
        if r.target.is_host() { "host" } else { "QEMU" }
    );
    let pb = child::progress("verify", &what, Some(r.images.len() as u64), r.quiet);
    let out = child::run(&mut cmd, &what, r.timeout, &|line: &str| {
        if line.starts_with("out ") {
            pb.inc(1);
        }
    });
    pb.finish_and_clear();
    let out = out?;
    let (stdout, stderr) = (out.stdout, out.stderr);
    let len = r.model.graph.outputs_len();
    let (got, checksum) = parse_outputs(&stdout, len)?;
    let trace_divergence = match &r.trace {
        Some(t) => Some(trace::compare(
            &stdout,
            t,
            &r.model.graph,
            &gen.memory.plan,
            r.images.len(),
        )?),
        None => None,
    };
    ensure!(
        got.len() == r.images.len(),
        "the firmware printed {} outputs for {} images",
        got.len(),
        r.images.len()
    );
    let mut mismatching_bytes = 0;
    let mut matching_images = 0;
    let mut first = None;
    for (i, (e, g)) in r.expected.iter().zip(&got).enumerate() {
        let diff: Vec<(usize, i8, i8)> = e
            .iter()
            .zip(g)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(k, (a, b))| (k, *a, *b))
            .collect();
        if diff.is_empty() {
            matching_images += 1;
        } else {
            mismatching_bytes += diff.len();
            if first.is_none() {
                first = Some(Mismatch {
                    image: i,
                    bytes: diff,
                });
            }
        }
    }
    let plugin_line = format!("{stdout}\n{stderr}")
        .lines()
        .find(|l| l.contains("nnquant-insns"))
        .map(str::to_string);
    let field = |k: &str| -> Option<String> {
        plugin_line.as_deref().and_then(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix(k).map(str::to_string))
        })
    };
    let num = |k: &str| field(k).and_then(|v| v.parse::<u64>().ok());
    if !r.target.is_host() {
        ensure!(
            plugin_line.is_some(),
            "the QEMU plugin printed no measurements"
        );
    }
    let (instructions, per_step) = if r.count_instructions && !r.target.is_host() {
        let (regions, insns) = (
            num("regions=").unwrap_or(0),
            num("region_insns=").unwrap_or(0),
        );
        let segs: Vec<u64> = field("segments=")
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.parse().ok())
            .collect();
        let mut names = vec!["input".to_string()];
        names.extend(gen.memory.plan.steps.iter().map(|s| s.name.clone()));
        names.push("output copy".into());
        ensure!(
            regions == 0 || segs.len() == names.len(),
            "the QEMU plugin saw {} segments for {} steps",
            segs.len(),
            names.len()
        );
        let per_step = if regions > 0 {
            names
                .into_iter()
                .zip(segs)
                .map(|(step, n)| StepInsns {
                    step,
                    instructions: n / regions,
                })
                .collect()
        } else {
            Vec::new()
        };
        ((regions > 0).then(|| insns / regions), per_step)
    } else {
        (None, Vec::new())
    };
    let stack_high_water = if r.target.is_host() {
        None
    } else {
        let min = field("stack_min=")
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .unwrap_or(u64::MAX);
        let e = elf::parse(&std::fs::read(&bin)?)?;
        let top = *e
            .symbols
            .get("_stack_start")
            .context("symbol _stack_start not in the firmware")? as u64;
        Some(if min >= top { 0 } else { (top - min) as usize })
    };
    let total_ram = match (&sizes, stack_high_water) {
        (Some(s), Some(h)) => Some(s.data + s.bss + h),
        _ => None,
    };
    Ok(VerifyResult {
        target: r.target.name.to_string(),
        images: r.images.len(),
        matching_images,
        mismatching_bytes,
        first_mismatch: first,
        checksum,
        sizes,
        arena_bytes: gen.memory.arena_bytes,
        flash_param_bytes: gen.memory.flash_param_bytes,
        arena_temp_bytes: gen.memory.arena_temp_bytes,
        memory: Some(gen.memory.clone()),
        scratch_bytes: gen.memory.scratch_bytes,
        stack_high_water,
        total_ram,
        instructions_per_inference: instructions,
        per_step_instructions: per_step,
        trace: trace_divergence,
    })
}

/// Default work directory for a model and target.
pub fn default_work_dir(model: &Path, target: &str) -> PathBuf {
    let stem = model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().replace('.', "_"));
    cache_dir().join("verify").join(format!("{stem}-{target}"))
}
