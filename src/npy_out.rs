//! Writing result arrays as .npy (for `--save-outputs`).

use anyhow::{Context, Result};
use npyz::WriterBuilder;
use std::path::Path;

pub fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) -> Result<()> {
    let mut bytes = Vec::new();
    let mut encode = || -> Result<()> {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(&mut bytes)
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
        Ok(())
    };
    encode().with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = crate::fsio::Outputs::new();
    out.file(path, bytes);
    out.commit()
}
