//! Compiles `proto/caffe.proto` with protox (pure Rust, no `protoc` needed) into prost types, and
//! writes the file descriptor set so the prototxt parser (prost-reflect text format) can use the
//! very same schema at run time.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/caffe.proto");
    codegen_fingerprint()?;
    let fds = protox::compile(["caffe.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("caffe_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}

/// `NNQUANT_CODEGEN_SHA256`: SHA-256 over the kernels file and every template (relative path +
/// contents, sorted), so `nnquant build` regenerates firmware when the code it would emit
/// changed, even within one version number.
fn codegen_fingerprint() -> Result<(), Box<dyn std::error::Error>> {
    use sha2::{Digest, Sha256};
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = vec![PathBuf::from("src/fixed/kernels.rs")];
    walk(std::path::Path::new("templates"), &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let bytes = fs::read(f)?;
        let name = f.to_string_lossy().replace('\\', "/");
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    println!("cargo:rerun-if-changed=templates");
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=NNQUANT_CODEGEN_SHA256={hex}");
    Ok(())
}
