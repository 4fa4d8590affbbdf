//! Wall time of the whole default `quantize` on ARM's CIFAR-10 model (calibrate on train_5085,
//! evaluate on test_1017) and on ResNet-56 (500 calibration images), per phase: float pass,
//! format search (its layer-local pass, simulator time on the screening subset and on the whole
//! set), held-out evaluation; with the evaluation counts and the held-out top-1. Runs the real CLI code path in-process, once per simulator path: the
//! CPU's best and, where it is not already that, AVX2 (the common CPU without AVX-512), or only
//! `NNQUANT_SIMD`'s path. `SEARCH_BENCH_SCREEN=off|auto|N` passes `--screen`. Skips when
//! `../shared` is missing. Run: `cargo bench --bench search`.

use clap::Parser;
use nnquant::cli::Cli;
use nnquant::fixed::SimdPath;
use nnquant::report::Report;
use std::time::Instant;

fn main() {
    let shared = nnquant::shared_dir();
    let m = shared.join("models/arm-cifar10-m4");
    let d = shared.join("data/cifar10");
    if !m.exists() || !d.exists() {
        eprintln!(
            "skipping the search bench: {} not found (set NNQUANT_SHARED)",
            shared.display()
        );
        return;
    }
    let paths = match std::env::var("NNQUANT_SIMD") {
        Ok(p) if !p.is_empty() => vec![SimdPath::from_name(&p).expect("NNQUANT_SIMD")],
        _ => {
            let mut v = vec![SimdPath::best()];
            if SimdPath::Avx2.supported() && !v.contains(&SimdPath::Avx2) {
                v.push(SimdPath::Avx2);
            }
            v
        }
    };
    let screen = std::env::var("SEARCH_BENCH_SCREEN").unwrap_or_else(|_| "auto".into());
    let out = tempfile::tempdir().expect("temp dir");
    let p = |s: &str| m.join(s).display().to_string();
    let q = |s: &str| d.join(s).display().to_string();
    let r56 = shared.join("models/resnet56-cifar10");
    let models: Vec<(&str, Vec<String>)> = vec![
        (
            "ARM m4",
            vec![
                "--model".into(),
                p("cifar10_m4_train_test.prototxt"),
                "--weights".into(),
                p("cifar10_m4_iter_70000.caffemodel.h5"),
            ],
        ),
        (
            "ResNet-56",
            vec![
                "--model".into(),
                r56.join("res56_cifar_train_test.prototxt")
                    .display()
                    .to_string(),
                "--weights".into(),
                r56.join("ResNet_56.caffemodel").display().to_string(),
                "--calib-limit".into(),
                "500".into(),
            ],
        ),
    ];
    for (name, model_args) in &models {
        if *name == "ResNet-56" && !r56.exists() {
            continue;
        }
        for &path in &paths {
            // The simulator reads its path from the environment (as a user would force it).
            std::env::set_var("NNQUANT_SIMD", path.name());
            let report = out.path().join(format!("{path}.json"));
            let mut args = vec!["nnquant".to_string(), "quantize".into()];
            args.extend(model_args.iter().cloned());
            args.extend([
                "--mean-file".into(),
                p("mean.binaryproto"),
                "--calib".into(),
                q("train_5085_u8_hwc.npy"),
                "--calib-labels".into(),
                q("train_5085_labels.npy"),
                "--eval".into(),
                q("test_1017_u8_hwc.npy"),
                "--eval-labels".into(),
                q("test_1017_labels.npy"),
                "-o".into(),
                out.path()
                    .join(format!("{path}.nnq.json"))
                    .display()
                    .to_string(),
                "--report".into(),
                report.display().to_string(),
                "--screen".into(),
                screen.clone(),
                "--timestamps".into(),
                "--quiet".into(),
            ]);
            let t = Instant::now();
            nnquant::cli::run(Cli::parse_from(args)).expect("quantize");
            let wall = t.elapsed().as_secs_f64();
            let text = std::fs::read_to_string(&report).expect("report");
            let r = Report::from_json(&text, "bench").expect("report json");
            let tm = r.timing.expect("--timestamps gives timings");
            println!(
            "quantize {name}, sim path {:<12} ({} rayon threads): whole {wall:.2} s = float {:.2} s + search {:.2} s (local pass {:.2} s; sim: screening {:.2} s, whole set {:.2} s; {} + {} screening evaluations, screen {} images) + evaluation {:.2} s; test top-1 {}/{} (float {})",
            path.name(),
            rayon::current_num_threads(),
            tm.float_seconds,
            tm.search_seconds,
            tm.search_local_seconds,
            tm.search_screen_seconds,
            tm.search_full_seconds,
            r.search.evaluations,
            r.search.screen_evaluations,
            r.search.screen_images.unwrap_or(0),
            tm.eval_seconds,
            r.accuracy.quant_correct.unwrap_or(0),
            r.accuracy.images,
            r.accuracy.float_correct.unwrap_or(0),
        );
        }
    }
}
