//! nnquant: Caffe CNN → bit-exact int8 (q7) firmware for ARM Cortex-M.
//!
//! The crate is a library with a thin CLI (`src/main.rs`, `src/cli/`). See ARCHITECTURE.md for
//! the map of modules.

// No `_ =>` arm over an enum: adding a variant (an op to `ir::Op`, `fixed::QOp`, a firmware
// kernel call) must make the build name every place that has to handle it (clippy runs with
// `-D warnings`). Boolean tests of one variant (`matches!`, `if let`) are not dispatches.
#![warn(clippy::wildcard_enum_match_arm)]

pub mod allocator;
pub mod caffe;
pub mod cli;
pub mod codegen;
pub mod data;
pub mod eval;
pub mod fixed;
pub mod float;
pub mod fsio;
pub mod ir;
pub mod metrics;
pub mod model;
pub mod npy_out;
pub(crate) mod ops;
pub mod pipeline;
pub mod progress;
pub mod quantize;
pub mod report;
pub mod search;
#[cfg(test)]
mod test_models;
pub mod verify;

/// Where the third-party reference material lives: `$NNQUANT_SHARED`, else `../shared` beside
/// the checkout. Only tests and benchmarks use it.
pub fn shared_dir() -> std::path::PathBuf {
    match std::env::var_os("NNQUANT_SHARED") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    }
}
