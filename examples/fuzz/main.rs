//! Fuzzing on stable Rust: `cargo run --release --example fuzz -- <target> --seconds N`.
//!
//! cargo-fuzz needs a nightly compiler, so this is a self-contained mutational fuzzer: it starts
//! from the corpus in `fuzz/corpus/<target>/` plus seeds the library encodes itself, mutates
//! inputs (byte-level, or structure-aware for JSON/TOML), runs the target under
//! `catch_unwind`, and keeps a mutated input in the working corpus when it produces an outcome
//! not seen before (a new error message shape, or success) — a coarse feedback signal without
//! coverage instrumentation. Every panic is a finding: its input is saved under
//! `target/fuzz/<target>/crashes/` and the run exits 1. Before each execution the input is also
//! written to `target/fuzz/<target>/last-input`, so a crash that kills the process (abort on
//! allocation failure under the address-space limit set here, stack overflow) leaves it behind
//! for `tools/fuzz.sh` to keep. `--replay FILE...` runs saved inputs once.

mod mutate;
mod targets;

use std::collections::HashSet;
use std::io::{Seek, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use targets::{Ctx, Kind, Target, TARGETS};

struct Opts {
    target: &'static Target,
    seconds: f64,
    seed: u64,
    replay: Vec<PathBuf>,
}

fn usage() -> ! {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    eprintln!(
        "usage: fuzz <target> [--seconds N] [--seed S] [--replay FILE...]\ntargets: {}",
        names.join(", ")
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else { usage() };
    let Some(target) = TARGETS.iter().find(|t| t.name == name) else {
        usage()
    };
    let mut o = Opts {
        target,
        seconds: 10.0,
        seed: 1,
        replay: vec![],
    };
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--seconds" => {
                o.seconds = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--seed" => {
                o.seed = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--replay" => {
                o.replay = args[i + 1..].iter().map(PathBuf::from).collect();
                break;
            }
            _ => usage(),
        }
        i += 2;
    }
    o
}

/// The outcome's shape: the error message with numbers and quoted names blanked (they echo the
/// input), or "ok".
fn signature(r: &anyhow::Result<()>) -> String {
    let Err(e) = r else { return "ok".into() };
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in format!("{e:#}").chars().take(200) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '\'' | '"' | '`') => {
                quote = Some(c);
                out.push('_');
            }
            None if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            None => out.push(c),
        }
    }
    out
}

/// The seed corpus: files in `fuzz/corpus/<target>/`, plus seeds encoded by the library.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().filter_map(|p| std::fs::read(p).ok()).collect();
    out.extend(encoded_seeds(target));
    if out.is_empty() {
        out.push(Vec::new());
    }
    out
}

/// Seeds the library can encode (binary formats that are awkward to keep as files).
fn encoded_seeds(target: &str) -> Vec<Vec<u8>> {
    use nnquant::caffe::{datum, write};
    let caffemodel = std::fs::read(targets::demo("glyphs.caffemodel")).unwrap_or_default();
    let layers = || -> Vec<(String, String, Vec<nnquant::ir::Tensor>)> {
        nnquant::caffe::weights::parse_caffemodel(&caffemodel, "seed")
            .map(|w| {
                w.layers
                    .into_iter()
                    .map(|(n, b)| (n, String::new(), b))
                    .collect()
            })
            .unwrap_or_default()
    };
    let image: Vec<u8> = (0..3 * 4 * 4).map(|i| (i * 7) as u8).collect();
    match target {
        "caffemodel" => vec![caffemodel.clone()],
        "hdf5" => write::encode_hdf5(&layers()).into_iter().collect(),
        "datum" => vec![datum::encode_datum(3, 4, 4, &image, 3)],
        "lmdb" => {
            let dir =
                std::env::temp_dir().join(format!("nnquant-fuzz-seed-{}", std::process::id()));
            let records: Vec<_> = (0..3)
                .map(|i| {
                    (
                        format!("{i:05}").into_bytes(),
                        datum::encode_datum(3, 4, 4, &image, i),
                    )
                })
                .collect();
            let seed = nnquant::data::lmdb::write_records(&dir, &records)
                .ok()
                .and_then(|_| std::fs::read(dir.join("data.mdb")).ok());
            std::fs::remove_dir_all(&dir).ok();
            seed.into_iter().collect()
        }
        "npy" => [
            "calib_u8_hwc.npy",
            "test_labels.npy",
            "test_float_logits.npy",
        ]
        .iter()
        .filter_map(|f| std::fs::read(targets::demo(f)).ok())
        // The big image arrays cut to their first images: small seeds mutate better.
        .map(|mut b| {
            b.truncate(4096);
            b
        })
        .collect(),
        "prototxt" => std::fs::read(targets::demo("glyphs.prototxt"))
            .into_iter()
            .collect(),
        "nnquant-toml" => std::fs::read(targets::demo("nnquant.toml"))
            .into_iter()
            .collect(),
        _ => vec![],
    }
}

/// Keep a runaway allocation from taking the machine: it aborts the process instead (and
/// `tools/fuzz.sh` keeps the input).
fn limit_address_space() {
    #[cfg(target_os = "linux")]
    // SAFETY: setrlimit with a valid struct.
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: 8 << 30,
            rlim_max: 8 << 30,
        };
        libc::setrlimit(libc::RLIMIT_AS, &lim);
    }
}

fn main() {
    let o = parse_args();
    let t = o.target;
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz")
        .join(t.name);
    let crashes = out.join("crashes");
    std::fs::create_dir_all(&crashes).expect("create target/fuzz");
    let scratch = out.join(format!("scratch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("create scratch");
    let ctx = Ctx::new(scratch.clone()).expect("the demo model loads");
    limit_address_space();
    // Panics are findings, reported by us: keep the default hook quiet, remember the message.
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
    }));
    let mut last = std::fs::File::create(out.join("last-input")).expect("last-input");
    let mut run = |data: &[u8]| -> Result<anyhow::Result<()>, String> {
        last.set_len(0).ok();
        last.rewind().ok();
        last.write_all(data).ok();
        std::panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&ctx, data)))
            .map_err(|_| LAST_PANIC.with(|p| p.borrow().clone()))
    };

    if !o.replay.is_empty() {
        let mut failed = false;
        for p in &o.replay {
            let data = std::fs::read(p).expect("read replay input");
            match run(&data) {
                Ok(r) => println!("{}: {}", p.display(), signature(&r)),
                Err(panic) => {
                    println!("{}: PANIC {panic}", p.display());
                    failed = true;
                }
            }
        }
        std::fs::remove_dir_all(&scratch).ok();
        std::process::exit(i32::from(failed));
    }

    let mut rng = mutate::Rng::new(o.seed);
    let mut corpus = seeds(t.name);
    let mut seen: HashSet<String> = HashSet::new();
    let mut panics: HashSet<String> = HashSet::new();
    let (mut execs, mut found) = (0u64, 0usize);
    for s in corpus.clone() {
        if let Ok(r) = run(&s) {
            seen.insert(signature(&r));
        }
    }
    let start = Instant::now();
    let budget = Duration::from_secs_f64(o.seconds);
    let mut slowest = Duration::ZERO;
    while start.elapsed() < budget {
        let a = &corpus[rng.below(corpus.len())];
        let b = &corpus[rng.below(corpus.len())];
        let input = match t.kind {
            Kind::Binary => mutate::bytes(a, b, &mut rng),
            Kind::Text => mutate::text(a, b, &mut rng),
            Kind::Json => mutate::json(a, b, &mut rng),
            Kind::Toml => mutate::toml(a, b, &mut rng),
        };
        let t0 = Instant::now();
        let r = run(&input);
        slowest = slowest.max(t0.elapsed());
        execs += 1;
        match r {
            Ok(r) => {
                if seen.insert(signature(&r)) && corpus.len() < 4096 {
                    corpus.push(input);
                }
            }
            Err(panic) => {
                // One file per distinct panic location/message.
                let key: String = panic
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .collect();
                if panics.insert(key) {
                    found += 1;
                    let name = crashes.join(format!("crash-{:016x}", fnv(&input)));
                    std::fs::write(&name, &input).ok();
                    eprintln!(
                        "{}: PANIC {panic}\n  input saved to {}",
                        t.name,
                        name.display()
                    );
                }
            }
        }
    }
    std::fs::remove_dir_all(&scratch).ok();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {execs} executions in {secs:.0} s ({:.0}/s), corpus {} (from {} seeds), {} distinct outcomes, slowest input {:.0} ms, {found} distinct panics",
        t.name,
        execs as f64 / secs.max(1e-9),
        corpus.len(),
        seeds(t.name).len(),
        seen.len(),
        slowest.as_secs_f64() * 1e3
    );
    std::process::exit(i32::from(found > 0));
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
