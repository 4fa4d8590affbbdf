//! Writing result arrays as .npy (for `--save-outputs`).

use anyhow::{Context, Result};
use npyz::WriterBuilder;
use std::path::Path;

pub fn write<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) -> Result<()> {
    let bytes = encode(shape, data).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = crate::fsio::Outputs::new();
    out.file(path, bytes);
    out.commit()
}

/// The bytes of a .npy file.
pub fn encode<T: npyz::AutoSerialize + Copy>(shape: &[u64], data: &[T]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut bytes)
        .begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()?;
    Ok(bytes)
}

/// The bytes of a .npz (what `numpy.savez` writes): a zip archive of `<name>.npy` members,
/// stored uncompressed. Written here because the zip crate's defaults pull in C compression
/// libraries for what is a few fixed headers and a CRC-32 per member (ZIP64 is not needed:
/// members and the archive are refused beyond 4 GiB).
pub fn npz(arrays: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in arrays {
        let file = format!("{name}.npy");
        anyhow::ensure!(
            data.len() < u32::MAX as usize && file.len() < u16::MAX as usize,
            "the output '{name}' is too large for a .npz without ZIP64 ({} bytes)",
            data.len()
        );
        let crc = crc32fast::hash(data);
        let offset = u32::try_from(out.len()).context("the .npz would exceed 4 GiB")?;
        // Version 2.0, no flags, method 0 (stored), DOS time/date 1980-01-01 00:00 (so that the
        // same outputs give the same bytes), CRC, sizes, name length, no extra field.
        let fixed = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(20u16.to_le_bytes()); // made by
            }
            h.extend(20u16.to_le_bytes()); // needed to extract
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(0u16.to_le_bytes()); // method: stored
            h.extend(0u16.to_le_bytes()); // time
            h.extend(((1u16) << 5 | 1).to_le_bytes()); // date: 1980-01-01
            h.extend(crc.to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((file.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra length
            if central {
                h.extend(0u16.to_le_bytes()); // comment length
                h.extend(0u16.to_le_bytes()); // disk number
                h.extend(0u16.to_le_bytes()); // internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(file.as_bytes());
            h
        };
        out.extend(fixed(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(fixed(0x0201_4b50, true));
    }
    let cd_offset = u32::try_from(out.len()).context("the .npz would exceed 4 GiB")?;
    let n = u16::try_from(arrays.len()).context("too many outputs for a .npz")?;
    out.extend_from_slice(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]); // disk numbers
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // comment length
    Ok(out)
}
