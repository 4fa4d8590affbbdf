//! Float engine throughput on ARM's CIFAR-10 model (6,558,720 MAC per image), batch 64, on 1- and
//! 2-thread rayon pools: the NHWC fast path with each SIMD kernel set this CPU can run, and the
//! general NCHW path (im2col + GEMM) for comparison. Plain `main` timed with `std::time`
//! (`harness = false`).
//!
//! Run: `cargo bench --bench float_forward`. Needs `../shared` (or `$NNQUANT_SHARED`); without it
//! the bench prints why and exits successfully. `FLOAT_BENCH_THREADS=2` limits the thread counts,
//! `FLOAT_BENCH_PATHS=avx512f,avx2+fma,portable,general` the paths (names as printed).
//! Lines starting with `float_forward ` are for scripts (`tools/bench_vs_onnxruntime.py`).

use nnquant::caffe::{load_model, read_blob_file, LoadOptions};
use nnquant::float::{Engine, Isa, Keep};
use std::time::{Duration, Instant};

const MACS_PER_IMAGE: f64 = 6_558_720.0;
const BATCH: usize = 64;
const REPS: usize = 7;

fn main() -> anyhow::Result<()> {
    let shared = nnquant::shared_dir();
    let model = shared.join("models/arm-cifar10-m4");
    if !model.is_dir() {
        println!(
            "float_forward: skipped, {} is missing (set NNQUANT_SHARED)",
            model.display()
        );
        return Ok(());
    }
    let weights = model.join("cifar10_m4_iter_70000.caffemodel.h5");
    let opts = LoadOptions {
        weights: Some(&weights),
        input_shape: Some(vec![3, 32, 32]),
    };
    let g = load_model(&model.join("cifar10_m4_train_test.prototxt"), &opts)?;
    let mean = read_blob_file(&model.join("mean.binaryproto"))?;
    let f = std::fs::File::open(shared.join("data/cifar10/test_1017_u8_hwc.npy"))?;
    let px: Vec<u8> = npyz::NpyFile::new(std::io::BufReader::new(f))?.into_vec()?;
    // All 1,017 images, HWC u8 → CHW f32 minus the mean; the first 64 are the timed batch.
    let images = px.len() / 3072;
    let mut all = vec![0.0f32; images * 3072];
    for i in 0..images {
        for p in 0..1024 {
            for c in 0..3 {
                all[i * 3072 + c * 1024 + p] =
                    px[i * 3072 + p * 3 + c] as f32 - mean.data[c * 1024 + p];
            }
        }
    }
    let input = &all[..BATCH * 3072];
    let f = std::fs::File::open(model.join("reference/float_logits_test1017.npy"))?;
    let reference: Vec<f32> = npyz::NpyFile::new(std::io::BufReader::new(f))?.into_vec()?;

    let threads: Vec<usize> = match std::env::var("FLOAT_BENCH_THREADS") {
        Ok(v) => v
            .split(',')
            .map(|t| t.trim().parse())
            .collect::<Result<_, _>>()?,
        Err(_) => vec![1, 2],
    };
    let wanted = std::env::var("FLOAT_BENCH_PATHS").ok();
    let mut paths: Vec<(&str, Option<Isa>)> = [Isa::Avx512, Isa::Avx2, Isa::Portable]
        .into_iter()
        .filter(|i| i.available())
        .map(|i| (i.name(), Some(i)))
        .collect();
    paths.push(("general", None));
    paths.retain(|(name, _)| {
        wanted
            .as_ref()
            .is_none_or(|w| w.split(',').any(|x| x == *name))
    });

    let mut engine = Engine::new(&g)?;
    println!(
        "float_forward: fast path by default: {}",
        engine.fast_path().map_or("none", |i| i.name())
    );
    // Accuracy of each path on every image before any timing (the tests assert <= 1e-4).
    for &(name, isa) in &paths {
        engine.set_fast_path(isa)?;
        let logits = &engine.forward(&all, images, Keep::Outputs)?.blobs["ip1"];
        anyhow::ensure!(
            logits.len() == reference.len(),
            "reference has another shape"
        );
        let diff = logits
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "float_forward path {name} max |logit - reference| {diff:.3e} over {images} images"
        );
    }
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build()?;
        for &(name, isa) in &paths {
            engine.set_fast_path(isa)?;
            let (best, median, per_cpu) = pool.install(|| measure(&engine, input));
            let cpu = per_cpu.map_or(String::new(), |r| format!(", {r:.0} per CPU-second"));
            println!(
                "float_forward path {name} threads {t} batch {BATCH} best {best:.0} median {median:.0} images/s ({:.1} GFLOP/s best{cpu})",
                best * 2.0 * MACS_PER_IMAGE / 1e9
            );
        }
    }
    Ok(())
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux; clock ticks
/// assumed 100 Hz as on every mainstream kernel configuration).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Images per second: best and median of `REPS` runs of ~0.3 s each, after a warm-up; and images
/// per CPU-second over all runs, which other processes on a shared machine disturb much less
/// than wall-clock rates (multiply by the thread count for an idle-machine estimate).
fn measure(engine: &Engine, input: &[f32]) -> (f64, f64, Option<f64>) {
    let run = || {
        engine
            .forward(input, BATCH, Keep::Outputs)
            .expect("forward")
    };
    for _ in 0..5 {
        run();
    }
    let mut rates = Vec::new();
    let (cpu0, mut total) = (cpu_seconds(), 0usize);
    for _ in 0..REPS {
        let (start, mut n) = (Instant::now(), 0usize);
        while start.elapsed() < Duration::from_millis(300) {
            std::hint::black_box(run());
            n += BATCH;
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
        total += n;
    }
    let per_cpu = match (cpu0, cpu_seconds()) {
        (Some(a), Some(b)) if b > a => Some(total as f64 / (b - a)),
        _ => None,
    };
    rates.sort_by(f64::total_cmp);
    (rates[REPS - 1], rates[REPS / 2], per_cpu)
}
