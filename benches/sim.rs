//! Simulator throughput on ARM's CIFAR-10 model: 1017 test images, 2 threads, images/s and
//! GMAC/s (6,558,720 MAC per image). Plain `main` with `std::time`; skips when `../shared` is
//! missing. Run: `cargo bench --bench sim`. On a busy machine, `SIM_BENCH_REPS=20` (default 5)
//! and `SIM_BENCH_THREADS=1` (default 2) make comparisons steadier. `SIM_BENCH_SECONDS=0.3`
//! makes each rep run the batch again until 0.3 s have passed (default: once), which is how
//! `tools/bench_vs_onnxruntime.py` times onnxruntime and, with the same numbers, this bench.
//!
//! `SIM_BENCH_MODEL=M.nnq.json SIM_BENCH_DATA=D.npy` (uint8 HWC images of the model's input size)
//! measures that quantized model instead (images/s only), e.g. a depthwise trunk such as
//! slim-320's: the pixels are centred at 128, as for ARM's model.

use nnquant::caffe::{load_model, LoadOptions};
use nnquant::fixed::{Formats, Keep, QGraph, SimdPath, Simulator};
use std::time::Instant;

const MAC_PER_IMAGE: f64 = 6_558_720.0;

fn main() {
    if let (Ok(model), Ok(data)) = (
        std::env::var("SIM_BENCH_MODEL"),
        std::env::var("SIM_BENCH_DATA"),
    ) {
        let q = nnquant::model::NnqModel::read(std::path::Path::new(&model))
            .expect("SIM_BENCH_MODEL")
            .graph;
        return run_all(&q, &centred(std::path::Path::new(&data)), None);
    }
    let shared = nnquant::shared_dir();
    let m = shared.join("models/arm-cifar10-m4");
    let images = shared.join("data/cifar10/test_1017_u8_hwc.npy");
    if !m.exists() || !images.exists() {
        eprintln!(
            "skipping the simulator bench: {} not found (set NNQUANT_SHARED)",
            shared.display()
        );
        return;
    }
    let g = load_model(
        &m.join("cifar10_m4_train_test.prototxt"),
        &LoadOptions {
            weights: Some(&m.join("cifar10_m4_iter_70000.caffemodel.h5")),
            input_shape: Some(vec![3, 32, 32]),
        },
    )
    .expect("ARM model");
    let q = QGraph::quantize(
        &g,
        &Formats::from_json_file(&m.join("arm-formats.json")).expect("formats"),
    )
    .expect("quantize");
    run_all(&q, &centred(&images), Some(MAC_PER_IMAGE));
}

/// The uint8 images of an .npy file as q7 input. Mean subtraction does not change the cost;
/// centre the pixels at 128.
fn centred(images: &std::path::Path) -> Vec<i8> {
    let f = npyz::NpyFile::new(std::io::BufReader::new(
        std::fs::File::open(images).expect("images"),
    ))
    .expect("npy");
    f.into_vec::<u8>()
        .expect("u8")
        .into_iter()
        .map(|p| (p as i16 - 128) as i8)
        .collect()
}

/// Every simulator path (or `NNQUANT_SIMD`'s) on `input`; `mac`: MACs per image, when known.
fn run_all(q: &QGraph, input: &[i8], mac: Option<f64>) {
    let n = input.len() / q.blob_len(&q.input);
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let threads = env("SIM_BENCH_THREADS", 2);
    let reps = env("SIM_BENCH_REPS", 5);
    let seconds: f64 = std::env::var("SIM_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    // Every path this CPU supports (or only NNQUANT_SIMD's), fastest first.
    let paths = match std::env::var("NNQUANT_SIMD") {
        Ok(p) if !p.is_empty() => vec![SimdPath::from_name(&p).expect("NNQUANT_SIMD")],
        _ => SimdPath::supported_paths(),
    };
    for path in paths {
        let sim = Simulator::with_path(q, path).expect("simulator");
        pool.install(|| bench(&sim, input, n, threads, (reps, seconds), mac));
    }
}

/// The best of `reps` reps, each running the batch until `seconds` have passed (at least once).
fn bench(
    sim: &Simulator,
    input: &[i8],
    n: usize,
    threads: usize,
    (reps, seconds): (usize, f64),
    mac: Option<f64>,
) {
    {
        sim.run(input, n, &Keep::Outputs).expect("warm-up");
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let (t, mut runs) = (Instant::now(), 0);
            while runs == 0 || t.elapsed().as_secs_f64() < seconds {
                let out = sim.run(input, n, &Keep::Outputs).expect("run");
                std::hint::black_box(&out);
                runs += 1;
            }
            best = best.min(t.elapsed().as_secs_f64() / runs as f64);
        }
        let ips = n as f64 / best;
        let gmac = mac.map_or(String::new(), |m| format!(", {:.1} GMAC/s", ips * m / 1e9));
        println!(
            "sim path {:<16} ({threads} threads, batch {n}): best of {reps}: {:.1} ms, {:.1} images/s{gmac}",
            sim.path().name(),
            best * 1e3,
            ips,
        );
    }
}
