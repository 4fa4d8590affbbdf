//! The memory budget gate: before anything is built, the plan's RAM (arena + kernel scratch
//! outside it + a stack reserve) and the flash the firmware needs (weights, mean, embedded test
//! images + a code reserve) are held against the target's sizes (or `--ram-budget` /
//! `--flash-budget`). A model that does not fit is refused with the figures and the step whose
//! live set is largest, instead of a linker error or a stack overflow on the device.

use super::plan::Plan;
use anyhow::{bail, Result};
use serde::Serialize;

/// Stack the generated firmware needs besides the arena: the deepest measured high-water mark
/// (QEMU, `nnquant verify`, whole run: start-up, inference with the fused kernels, semihosting
/// output) is 1,348 B (demo model, Cortex-M4; ARM's CIFAR-10 model: 1,316 B); rounded up.
pub const STACK_RESERVE: usize = 1536;

/// Flash for code and constants besides the weights: the measured `.text` of ARM's CIFAR-10
/// firmware is 23.5 KB on Cortex-M4 (with the semihosting test harness); rounded up.
pub const CODE_RESERVE: usize = 32 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub ram_budget: Option<usize>,
    pub flash_budget: Option<usize>,
    /// arena + scratch outside it + [`STACK_RESERVE`].
    pub ram_estimate: usize,
    /// weights + mean + embedded test images + [`CODE_RESERVE`].
    pub flash_estimate: usize,
}

/// The parts of the flash estimate.
pub struct FlashParts {
    pub params: usize,
    pub mean: usize,
    pub test_images: usize,
    /// The largest parameter arrays (name, bytes), largest first.
    pub largest: Vec<(String, usize)>,
}

/// Check a plan against the budgets (`None`: unlimited) and return the estimates.
pub fn check(
    target: &str,
    plan: &Plan,
    scratch_outside: usize,
    flash: &FlashParts,
    ram_budget: Option<usize>,
    flash_budget: Option<usize>,
) -> Result<Budget> {
    let ram_estimate = plan.arena_len + scratch_outside + STACK_RESERVE;
    let flash_estimate = flash.params + flash.mean + flash.test_images + CODE_RESERVE;
    if let Some(ram) = ram_budget.filter(|&r| ram_estimate > r) {
        let live = match plan.largest_live() {
            Some(l) => format!(
                "; the largest live set is step '{}' with {} B ({})",
                l.layer,
                l.live_bytes,
                l.live
                    .iter()
                    .map(|b| format!("{b} {} B", buffer_len(plan, b)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        bail!(
            "the model does not fit the RAM of {target}: it needs about {ram_estimate} B \
             (arena {} B + kernel scratch {scratch_outside} B + stack reserve {STACK_RESERVE} B) \
             but the budget is {ram} B{live}. Nothing was built; choose a larger target, pass \
             --ram-budget if the part has more RAM, or shrink that step.",
            plan.arena_len
        );
    }
    if let Some(fl) = flash_budget.filter(|&f| flash_estimate > f) {
        let big = flash
            .largest
            .iter()
            .take(3)
            .map(|(n, b)| format!("{n} {b} B"))
            .collect::<Vec<_>>()
            .join(", ");
        bail!(
            "the model does not fit the flash of {target}: it needs about {flash_estimate} B \
             (weights and biases {} B + input mean {} B + embedded test images {} B + code \
             reserve {CODE_RESERVE} B) but the budget is {fl} B; the largest parameter arrays \
             are {big}. Nothing was built; choose a larger target, pass --flash-budget if the \
             part has more flash, or embed fewer test images.",
            flash.params,
            flash.mean,
            flash.test_images
        );
    }
    Ok(Budget {
        ram_budget,
        flash_budget,
        ram_estimate,
        flash_estimate,
    })
}

fn buffer_len(plan: &Plan, name: &str) -> usize {
    plan.blobs
        .get(name)
        .or_else(|| plan.temps.get(name))
        .map_or(0, |p| p.len)
}
