//! The commands' pipelines as library calls with option structs: what `quantize`, `codegen`,
//! `verify` and `build` do between reading their inputs and writing their outputs (`eval`'s is
//! `crate::eval`). `cli/` turns flags into these options, shows progress, prints the results
//! and turns errors into exit code 2.

pub mod build;
pub mod codegen;
pub mod inputs;
pub mod quantize;
pub mod verify;
