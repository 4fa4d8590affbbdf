//! Writing result arrays as .npy (for `--save-outputs`).

use anyhow::{Context, Result};
use npyz::WriterBuilder;
use std::path::Path;

pub fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) -> Result<()> {
    let tmp = path.with_extension("npy.tmp");
    let write = || -> Result<()> {
        let f = std::fs::File::create(&tmp)?;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(std::io::BufWriter::new(f))
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
