//! Float engine throughput on ARM's CIFAR-10 model (6,558,720 MAC per image), batch 64, on a
//! 2-thread rayon pool. Plain `main` timed with `std::time` (`harness = false`).
//!
//! Run: `cargo bench --bench float_forward`. Needs `../shared` (or `$NNQUANT_SHARED`); without it
//! the bench prints why and exits successfully.

use nnquant::caffe::{load_model, read_blob_file, LoadOptions};
use nnquant::float::{Engine, Keep};
use std::time::{Duration, Instant};

const MACS_PER_IMAGE: f64 = 6_558_720.0;
const BATCH: usize = 64;

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
    // First 64 images, HWC u8 → CHW f32 minus the mean.
    let mut input = vec![0.0f32; BATCH * 3072];
    for i in 0..BATCH {
        for p in 0..1024 {
            for c in 0..3 {
                input[i * 3072 + c * 1024 + p] =
                    px[i * 3072 + p * 3 + c] as f32 - mean.data[c * 1024 + p];
            }
        }
    }

    let mut engine = Engine::new(&g)?;
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        for chunk in [1, 2, 4, 8, 16, 32] {
            engine.chunk_images = chunk;
            let ips = pool.install(|| measure(&engine, &input));
            println!(
                "threads {threads}  chunk {chunk:>2}  batch {BATCH}: {ips:>8.0} images/s  {:>6.1} GFLOP/s",
                ips * 2.0 * MACS_PER_IMAGE / 1e9
            );
        }
    }
    Ok(())
}

/// Images per second: best of 5 runs of ~0.5 s each, after a warm-up.
fn measure(engine: &Engine, input: &[f32]) -> f64 {
    let run = || {
        engine
            .forward(input, BATCH, Keep::Outputs)
            .expect("forward")
    };
    run();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let (start, mut n) = (Instant::now(), 0usize);
        while start.elapsed() < Duration::from_millis(500) {
            std::hint::black_box(run());
            n += BATCH;
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}
