//! `verify`'s pipeline: the test images read, the simulator's outputs (and, with a trace,
//! every blob) for the same bytes, the firmware built and run (`crate::verify::verify`: QEMU
//! or the host) and compared, and the measured figures put into a report.

use super::codegen::{attach_to_report, figures, test_images};
use super::inputs::DataOpts;
use crate::codegen::target;
use crate::fixed::sim::{Keep, Simulator};
use crate::model::NnqModel;
use crate::search::InputPrep;
use crate::verify::{self, Request, VerifyResult};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Everything `verify` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// The quantized model file.
    pub model: PathBuf,
    pub data: DataOpts,
    /// Images to run (at least one is).
    pub count: usize,
    /// The target's name (`target::by_name`).
    pub target: String,
    /// Count executed instructions (QEMU TCG plugin).
    pub count_instructions: bool,
    /// Where the crate is generated (default: a cache directory per model and target).
    pub work_dir: Option<PathBuf>,
    pub ram_budget: Option<usize>,
    pub flash_budget: Option<usize>,
    /// A report.json to add the memory figures (and measured ones) to.
    pub report: Option<PathBuf>,
    /// Seconds the firmware run may take (default: 300 + 2 per image, 5 with a trace).
    pub timeout: Option<f64>,
    /// Compare every step's output, not only the outputs.
    pub trace: bool,
    /// No progress display.
    pub quiet: bool,
}

/// Whether the firmware matched the simulator: every output byte and, with a trace, every
/// step.
pub fn identical(r: &VerifyResult) -> bool {
    let traced_equal = r
        .trace
        .as_ref()
        .is_none_or(|t| t.first_divergence.is_none());
    r.mismatching_bytes == 0 && traced_equal
}

/// Build, run and compare; the report updated when asked.
pub fn run(a: &Options) -> Result<VerifyResult> {
    anyhow::ensure!(
        !(a.trace && a.count_instructions),
        "--trace and --count-instructions cannot be combined: the trace is printed inside the measured region"
    );
    let m = NnqModel::read(&a.model)?;
    let t = target::by_name(&a.target)?;
    let (images, _) = test_images(&m, &a.data, a.count.max(1))?;
    // The simulator's outputs for the same bytes.
    let flat: Vec<u8> = images.concat();
    let prep = InputPrep {
        mean_u8: m.input.mean_u8.clone(),
        scale: m.input.scale,
    };
    let q = prep.quantize(&flat, m.input.len(), m.input.frac_bits)?;
    let sim = Simulator::new(&m.graph)?;
    let keep = if a.trace { Keep::All } else { Keep::Outputs };
    let acts = sim.run(&q, images.len(), &keep)?;
    let expected: Vec<Vec<i8>> = (0..images.len())
        .map(|i| m.graph.output_bytes(&acts, i).context("simulator output"))
        .collect::<Result<_>>()?;
    // Every blob of every image, for the firmware's per-step trace.
    let trace = if a.trace {
        let mut blobs = std::collections::BTreeMap::new();
        for b in m.graph.blobs.keys() {
            if let Some(v) = (0..images.len())
                .map(|i| acts.image(b, i).map(<[i8]>::to_vec))
                .collect::<Option<Vec<_>>>()
            {
                blobs.insert(b.clone(), v);
            }
        }
        Some(verify::trace::Expected { blobs })
    } else {
        None
    };
    let per_image = if a.trace { 5.0 } else { 2.0 };
    let timeout = a.timeout.unwrap_or(300.0 + per_image * images.len() as f64);
    let work_dir = a
        .work_dir
        .clone()
        .unwrap_or_else(|| verify::default_work_dir(&a.model, &a.target));
    let r = verify::verify(&Request {
        model: &m,
        target: t,
        images,
        expected,
        count_instructions: a.count_instructions,
        work_dir,
        ram_budget: a.ram_budget,
        flash_budget: a.flash_budget,
        timeout: Some(std::time::Duration::from_secs_f64(timeout)),
        quiet: a.quiet,
        trace,
    })?;
    if let (Some(path), Some(mem)) = (&a.report, &r.memory) {
        let mut f = figures(&r.target, mem);
        if let (Some(s), Some(h), Some(total)) = (&r.sizes, r.stack_high_water, r.total_ram) {
            f.measured = Some(crate::report::MeasuredFigures {
                stack_high_water_bytes: h,
                total_ram_bytes: total,
                flash_bytes: s.text + s.rodata + s.data,
                instructions_per_inference: r.instructions_per_inference,
                per_step_instructions: r
                    .per_step_instructions
                    .iter()
                    .map(|s| (s.step.clone(), s.instructions))
                    .collect(),
            });
        }
        attach_to_report(path, f)?;
    }
    Ok(r)
}
