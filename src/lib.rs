//! nnquant: Caffe CNN → bit-exact int8 (q7) firmware for ARM Cortex-M.
//!
//! The crate is a library with a thin CLI (`src/main.rs`, `src/cli/`). See ARCHITECTURE.md for
//! the map of modules.

pub mod caffe;
pub mod cli;
pub mod ir;
