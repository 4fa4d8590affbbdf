//! Caffe LMDB data sets: one `Datum` per record, records in key order (Caffe's `Data` layer
//! reads them with a cursor, i.e. sorted by key).
//!
//! The file is read by nnquant's own bounds-checked reader (`lmdb_file`), not the LMDB library,
//! which maps it and dies with SIGBUS/SIGSEGV on a truncated or corrupt file; reading also never
//! creates `lock.mdb` in a shared, read-only data directory. The LMDB library (heed) is used only
//! to write fixtures.

use super::lmdb_file::{LmdbFile, ValueLoc};
use super::{
    check_index, imgops, ChannelOrder, ColorMode, Image, OrderPolicy, Pixels, Sample, Source,
};
use crate::caffe::datum::{decode_datum, DatumPixels};
use anyhow::{bail, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A Caffe LMDB, read by key order. Keeps only the keys (and where each value is) in memory.
pub struct LmdbSource {
    path: PathBuf,
    file: LmdbFile,
    color: ColorMode,
    order: OrderPolicy,
}

impl LmdbSource {
    /// Open a directory holding `data.mdb`, or the data file itself.
    /// `color` acts on encoded Datums only (Caffe's force_color/force_gray).
    pub fn open(path: &Path, color: ColorMode, order: Option<ChannelOrder>) -> Result<Self> {
        let shown = path.display();
        let data = if path.is_file() {
            path.to_path_buf()
        } else if path.join("data.mdb").is_file() {
            path.join("data.mdb")
        } else {
            bail!("{shown}: not an LMDB (expected a directory holding data.mdb, or the .mdb file itself)");
        };
        Ok(LmdbSource {
            path: path.to_path_buf(),
            file: LmdbFile::open(&data)?,
            color,
            order: OrderPolicy::new(order),
        })
    }

    fn decode(&self, index: usize, value: &[u8]) -> Result<Sample> {
        let what = format!(
            "{}: record {index} (key '{}')",
            self.path.display(),
            String::from_utf8_lossy(&self.file.entries[index].0)
        );
        let d = decode_datum(value, &what)?;
        let image = match d.pixels {
            DatumPixels::U8(v) => {
                let mut img = Image {
                    channels: d.channels,
                    height: d.height,
                    width: d.width,
                    pixels: Pixels::U8(v),
                };
                self.order.stored(&mut img);
                img
            }
            DatumPixels::F32(v) => {
                let mut img = Image {
                    channels: d.channels,
                    height: d.height,
                    width: d.width,
                    pixels: Pixels::F32(v),
                };
                self.order.stored(&mut img);
                img
            }
            DatumPixels::Encoded(bytes) => {
                let mut img = imgops::decode(&bytes, self.color, &what)?;
                self.order.decoded(&mut img);
                img
            }
        };
        Ok(Sample {
            image,
            label: Some(d.label),
        })
    }
}

impl Source for LmdbSource {
    fn len(&self) -> usize {
        self.file.entries.len()
    }
    fn describe(&self) -> String {
        format!(
            "LMDB {} ({} records)",
            self.path.display(),
            self.file.entries.len()
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        Ok(self.read_range(index..index + 1)?.remove(0))
    }
    fn read_range(&mut self, range: Range<usize>) -> Result<Vec<Sample>> {
        if range.is_empty() {
            return Ok(vec![]);
        }
        check_index(range.end - 1, self.file.entries.len(), &self.path.display())?;
        range
            .map(|i| {
                let loc: ValueLoc = self.file.entries[i].1;
                let v = self.file.value(loc)?;
                self.decode(i, &v)
            })
            .collect()
    }
}

/// Write `records` (key, value) into a new LMDB in `dir` with no lock file, as a shared
/// read-only data directory is found. For fixtures (tests, fuzzing seeds); Caffe writes the
/// real ones.
pub fn write_records(dir: &Path, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    use heed::types::Bytes;
    std::fs::create_dir_all(dir)?;
    // SAFETY: the environment is opened once, by this function only, on a directory it owns.
    let env = unsafe { heed::EnvOpenOptions::new().map_size(1 << 24).open(dir)? };
    let wtxn = env.write_txn()?;
    let db = env
        .create_databases_and_commit(wtxn, |wdo, wtxn| -> heed::Result<_> {
            Ok(heed::CommitOrAbort::<_, ()>::Commit(
                wdo.create_database::<Bytes, Bytes>(wtxn, None)?,
            ))
        })?
        .unwrap_commit();
    let mut wtxn = env.write_txn()?;
    for (k, v) in records {
        db.put(&mut wtxn, k, v)?;
    }
    wtxn.commit()?;
    drop(env);
    std::fs::remove_file(dir.join("lock.mdb")).ok();
    Ok(())
}
