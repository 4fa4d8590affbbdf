//! Compiles `proto/caffe.proto` with protox (pure Rust, no `protoc` needed) into prost types, and
//! writes the file descriptor set so the prototxt parser (prost-reflect text format) can use the
//! very same schema at run time.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/caffe.proto");
    let fds = protox::compile(["caffe.proto"], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("caffe_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
