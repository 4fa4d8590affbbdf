//! The cost of the report's per-blob histograms (`report::histogram`) in the float statistics
//! pass of `quantize`: values per second of `HistogramAcc::add` on one thread, beside the
//! max-|x| fold the pass always ran, on synthetic blobs shaped like a convolution's output
//! (signed, heavy-tailed) and a ReLU's (half zeros). Run: `cargo bench --bench histogram`.

use nnquant::report::histogram::HistogramAcc;
use std::hint::black_box;
use std::time::Instant;

/// Reproducible values: a Laplace-like spread, optionally rectified.
fn blob(n: usize, relu: bool) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32 + 0.5) / (1u64 << 24) as f32; // (0, 1)
            let x = if u < 0.5 {
                (2.0 * u).ln()
            } else {
                -(2.0 * (1.0 - u)).ln()
            } * 1.7;
            if relu {
                x.max(0.0)
            } else {
                x
            }
        })
        .collect()
}

/// Best of 30 runs over `v`, in millions of values per second.
fn rate(v: &[f32], mut f: impl FnMut(&[f32])) -> f64 {
    (0..30)
        .map(|_| {
            let t = Instant::now();
            f(black_box(v));
            v.len() as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .fold(0.0, f64::max)
}

fn main() {
    // Batches of 32 images of a 32×32×32 convolution output, as the ARM model's conv1 in the
    // calibration pass.
    let n = 32 * 32 * 32 * 32;
    for (name, relu) in [
        ("conv-like (signed)", false),
        ("relu-like (half zeros)", true),
    ] {
        let v = blob(n, relu);
        let max = rate(&v, |v| {
            black_box(v.iter().fold(0f32, |m, x| m.max(x.abs())));
        });
        let hist = rate(&v, |v| {
            black_box(HistogramAcc::of(v));
        });
        println!(
            "{name}: max |x| fold {max:.0} M values/s; histogram {hist:.0} M values/s ({:.2} ns per value)",
            1e3 / hist
        );
    }
}
