//! The usual cortex-m-rt set-up: the board's memory.x goes on the linker path (cortex-m-rt's
//! link.x includes it). It must be the only memory.x the link sees: the generated network library
//! adds none.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("write memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
}
