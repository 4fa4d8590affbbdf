//! `build`'s pipeline: the build file (`nnquant.toml`) read, then quantize → codegen (→ verify)
//! through `pipeline::{quantize, codegen, verify}`, each step skipped when what it was made from
//! (the build file, the model files and data by content, the tool itself) did not change since
//! the last build (`.nnquant-build.json` in the output directory).

use super::inputs::{parse_mean_values, parse_scale, DataOpts, ModelSource};
use super::{codegen, quantize, verify};
use crate::data::Layout;
use crate::model::sha256_file;
use crate::report::Report;
use crate::search::Strategy;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What `build` is told besides the build file's contents.
#[derive(Debug, Clone)]
pub struct Options {
    /// The build file.
    pub config: PathBuf,
    /// Also build and run the firmware and compare it with the simulator.
    pub verify: bool,
    /// Redo every step even if its inputs did not change.
    pub force: bool,
    /// No progress display (verify's included).
    pub quiet: bool,
}

/// What the caller shows while the build runs: a step starting or found up to date, and each
/// step's result as soon as it is written.
pub trait Events {
    /// `== quantize`, `== codegen: up to date`, …
    fn step(&mut self, what: &str);
    fn quantized(&mut self, o: &quantize::Options, report: &Report);
    fn generated(&mut self, o: &codegen::Options, gen: &codegen::Generated) -> Result<()>;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    model: ModelCfg,
    calibration: DataCfg,
    evaluation: Option<DataCfg>,
    #[serde(default)]
    quantize: QuantizeCfg,
    #[serde(default)]
    target: TargetCfg,
    output: OutputCfg,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelCfg {
    prototxt: PathBuf,
    weights: PathBuf,
    mean_file: Option<PathBuf>,
    input_shape: Option<Vec<usize>>,
    /// transform_param overrides, as `--scale` / `--mean-value`.
    scale: Option<f32>,
    mean_value: Option<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataCfg {
    data: PathBuf,
    labels: Option<PathBuf>,
    limit: Option<usize>,
    #[serde(default)]
    layout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantizeCfg {
    search: Option<String>,
    /// Cross-layer equalization (`quantize --equalize`).
    equalize: Option<bool>,
    /// Per-layer weight formats (`quantize --per-layer`).
    per_layer: Option<bool>,
    /// CMSIS-NN's legacy arithmetic (`quantize --arm-compatible`).
    arm_compatible: Option<bool>,
    formats: Option<PathBuf>,
    split: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetCfg {
    #[serde(default = "default_target")]
    name: String,
    #[serde(default = "default_crate")]
    crate_name: String,
    /// Test images embedded in the firmware (and run by `--verify`).
    #[serde(default = "default_count")]
    test_images: usize,
    /// RAM / flash budgets in bytes (default: the target's sizes).
    #[serde(default)]
    ram_budget: Option<usize>,
    #[serde(default)]
    flash_budget: Option<usize>,
}

fn default_target() -> String {
    "cortex-m4".into()
}
fn default_crate() -> String {
    "nnquant-firmware".into()
}
fn default_count() -> usize {
    10
}

impl Default for TargetCfg {
    fn default() -> Self {
        TargetCfg {
            name: default_target(),
            crate_name: default_crate(),
            test_images: default_count(),
            ram_budget: None,
            flash_budget: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputCfg {
    dir: PathBuf,
}

/// What a step's outputs were made from; a step is skipped when this is unchanged.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct State {
    quantize: Option<String>,
    codegen: Option<String>,
}

/// What every step's output depends on besides its inputs: this nnquant's version and the
/// code it emits and simulates with (`kernels.rs` and the templates, hashed by `build.rs`).
pub const TOOL_FINGERPRINT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "+",
    env!("NNQUANT_CODEGEN_SHA256")
);

fn fingerprint(parts: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(TOOL_FINGERPRINT);
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The content hash of a data path: a file's bytes; an LMDB directory's `data.mdb` (the
/// records, not the lock file or the path); any other directory (class folders of images)
/// every file's relative path and bytes, in sorted order.
fn file_hash(p: &Option<PathBuf>) -> Result<String> {
    match p {
        Some(p) if p.join("data.mdb").is_file() => sha256_file(&p.join("data.mdb")),
        Some(p) if p.is_dir() => dir_hash(p),
        Some(p) => sha256_file(p),
        None => Ok("-".into()),
    }
}

fn dir_hash(root: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let name = f
            .strip_prefix(root)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(sha256_file(f)?.as_bytes());
    }
    Ok(format!(
        "dir:{}",
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// Parse a build file's text (`origin` names it in errors).
pub fn parse_config(text: &str, origin: &Path) -> Result<Config> {
    // toml's own message spans several lines (with a source excerpt); errors are one paragraph.
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(String::new(), |sp| {
            let before = &text[..sp.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {col}")
        });
        anyhow::anyhow!("{}{at}: {}", origin.display(), e.message().trim())
    })
}

/// Run the build; the verification's result when `verify` was asked for.
pub fn run(a: &Options, ev: &mut dyn Events) -> Result<Option<crate::verify::VerifyResult>> {
    let text = crate::fsio::read_text(&a.config, "the build file")?;
    let cfg = parse_config(&text, &a.config)?;
    let base = a
        .config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let rel = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let rel_opt = |p: &Option<PathBuf>| p.as_deref().map(rel);
    let out = rel(&cfg.output.dir);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let model_path = out.join("model.nnq.json");
    let report_path = out.join("report.json");
    let fw_dir = out.join("firmware");
    let state_path = out.join(".nnquant-build.json");
    let mut state: State = std::fs::read_to_string(&state_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();

    let layout = |d: &DataCfg| -> Result<Layout> { d.layout.as_deref().unwrap_or("nhwc").parse() };
    let search: Strategy = match cfg.quantize.search.as_deref().unwrap_or("default") {
        "default" => Strategy::Default,
        "arm" => Strategy::Arm,
        "local" => Strategy::Local,
        "descent" => Strategy::Descent,
        "none" => Strategy::None,
        o => anyhow::bail!(
            "{}: quantize.search '{o}' is not one of default, descent, local, arm, none",
            a.config.display()
        ),
    };
    let scale = cfg
        .model
        .scale
        .map(|s| parse_scale(&s.to_string()))
        .transpose()
        .with_context(|| format!("{}: model.scale", a.config.display()))?;
    let mean_value = cfg
        .model
        .mean_value
        .as_ref()
        .map(|v| {
            let text: Vec<String> = v.iter().map(f32::to_string).collect();
            parse_mean_values(&text.join(","))
        })
        .transpose()
        .with_context(|| format!("{}: model.mean_value", a.config.display()))?;
    anyhow::ensure!(
        mean_value.is_none() || cfg.model.mean_file.is_none(),
        "{}: model.mean_value and model.mean_file both give a mean; keep one",
        a.config.display()
    );
    let ev_cfg = cfg.evaluation.as_ref();
    let q_inputs = vec![
        text.clone(),
        sha256_file(&rel(&cfg.model.prototxt))?,
        sha256_file(&rel(&cfg.model.weights))?,
        file_hash(&rel_opt(&cfg.model.mean_file))?,
        file_hash(&Some(rel(&cfg.calibration.data)))?,
        file_hash(&rel_opt(&cfg.calibration.labels))?,
        file_hash(&ev_cfg.map(|e| rel(&e.data)))?,
        file_hash(&ev_cfg.and_then(|e| rel_opt(&e.labels)))?,
        file_hash(&rel_opt(&cfg.quantize.formats))?,
    ];
    let q_fp = fingerprint(&q_inputs);
    if a.force
        || state.quantize.as_deref() != Some(q_fp.as_str())
        || !model_path.exists()
        || !report_path.exists()
    {
        ev.step("== quantize");
        let data_layout = layout(&cfg.calibration)?;
        let o = quantize::Options {
            model: ModelSource {
                model: rel(&cfg.model.prototxt),
                weights: rel(&cfg.model.weights),
                mean_file: rel_opt(&cfg.model.mean_file),
                input_shape: cfg.model.input_shape.clone(),
                scale,
                mean_value,
            },
            calib: DataOpts {
                path: Some(rel(&cfg.calibration.data)),
                labels: rel_opt(&cfg.calibration.labels),
                limit: cfg.calibration.limit,
                layout: data_layout,
                ..Default::default()
            },
            eval: DataOpts {
                path: ev_cfg.map(|e| rel(&e.data)),
                labels: ev_cfg.and_then(|e| rel_opt(&e.labels)),
                limit: ev_cfg.and_then(|e| e.limit),
                layout: data_layout,
                ..Default::default()
            },
            split: cfg.quantize.split.clone(),
            formats: rel_opt(&cfg.quantize.formats),
            strategy: search,
            per_layer: cfg.quantize.per_layer.unwrap_or(false),
            arm_compatible: cfg.quantize.arm_compatible.unwrap_or(false),
            screen: crate::search::Screen::Auto,
            holdout: crate::search::Holdout::Auto,
            equalize: cfg.quantize.equalize.unwrap_or(false),
            act_equalize: true,
            bias_correction: true,
            keep_softmax: false,
            channel_order: None,
            output: model_path.clone(),
            report: report_path.clone(),
            timestamps: false,
            quiet: a.quiet,
        };
        let report = quantize::run(&o)?;
        ev.quantized(&o, &report);
        state.quantize = Some(q_fp.clone());
        state.codegen = None;
        std::fs::write(&state_path, serde_json::to_string_pretty(&state)?)?;
    } else {
        ev.step("== quantize: up to date");
    }
    let test_data = ev_cfg
        .map(|e| e.data.clone())
        .unwrap_or_else(|| cfg.calibration.data.clone());
    let data = DataOpts {
        path: Some(rel(&test_data)),
        layout: ev_cfg.map(layout).transpose()?.unwrap_or_default(),
        ..Default::default()
    };
    let c_fp = fingerprint(&[
        q_fp,
        sha256_file(&model_path)?,
        cfg.target.name.clone(),
        cfg.target.crate_name.clone(),
        cfg.target.test_images.to_string(),
        format!("{:?} {:?}", cfg.target.ram_budget, cfg.target.flash_budget),
    ]);
    if a.force || state.codegen.as_deref() != Some(c_fp.as_str()) || !fw_dir.exists() {
        ev.step("== codegen");
        let o = codegen::Options {
            model: model_path.clone(),
            out: fw_dir.clone(),
            target: cfg.target.name.clone(),
            crate_name: cfg.target.crate_name.clone(),
            force: false,
            count: cfg.target.test_images,
            data: data.clone(),
            ram_budget: cfg.target.ram_budget,
            flash_budget: cfg.target.flash_budget,
            report: Some(report_path.clone()),
            standalone: false,
            weights_section: None,
            arena_section: None,
        };
        let gen = codegen::run(&o)?;
        ev.generated(&o, &gen)?;
        state.codegen = Some(c_fp);
        std::fs::write(&state_path, serde_json::to_string_pretty(&state)?)?;
    } else {
        ev.step("== codegen: up to date");
    }
    if !a.verify {
        return Ok(None);
    }
    ev.step("== verify");
    // The firmware run shows its progress (on a terminal) whatever `quiet` says, as
    // `nnquant verify` does by default.
    verify::run(&verify::Options {
        model: model_path,
        data,
        count: cfg.target.test_images.max(1),
        target: cfg.target.name.clone(),
        count_instructions: false,
        work_dir: Some(out.join("verify")),
        ram_budget: cfg.target.ram_budget,
        flash_budget: cfg.target.flash_budget,
        report: Some(report_path),
        timeout: None,
        trace: false,
        quiet: false,
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_hashes_follow_contents_not_paths() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a_lmdb"), d.path().join("b_lmdb"));
        for dir in [&a, &b] {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("data.mdb"), b"records").unwrap();
        }
        std::fs::write(a.join("lock.mdb"), b"lock 1").unwrap();
        let h = |p: &Path| file_hash(&Some(p.to_path_buf())).unwrap();
        // An LMDB directory: the records count, not its path or lock file.
        assert_eq!(h(&a), h(&b));
        let before = h(&a);
        std::fs::write(a.join("lock.mdb"), b"lock 2").unwrap();
        assert_eq!(h(&a), before);
        std::fs::write(a.join("data.mdb"), b"recordz").unwrap();
        assert_ne!(h(&a), before);
        // A folder of class folders: every file's name and contents.
        let imgs = d.path().join("imgs");
        std::fs::create_dir_all(imgs.join("cat")).unwrap();
        std::fs::write(imgs.join("cat/1.png"), b"px").unwrap();
        let before = h(&imgs);
        std::fs::write(imgs.join("cat/1.png"), b"py").unwrap();
        assert_ne!(h(&imgs), before);
        std::fs::create_dir_all(imgs.join("dog")).unwrap();
        let mid = h(&imgs);
        std::fs::write(imgs.join("dog/1.png"), b"py").unwrap();
        assert_ne!(h(&imgs), mid);
        // The tool fingerprint carries the version and the kernels/templates hash.
        assert!(TOOL_FINGERPRINT.starts_with(env!("CARGO_PKG_VERSION")));
        assert_eq!(
            TOOL_FINGERPRINT.len(),
            env!("CARGO_PKG_VERSION").len() + 1 + 64
        );
    }
}
