//! Caffe LMDB data sets: one `Datum` per record, records in key order (Caffe's `Data` layer
//! reads them with a cursor, i.e. sorted by key).
//!
//! The environment is opened `READ_ONLY | NO_LOCK`: shared data directories are read-only and
//! LMDB would otherwise create `lock.mdb` beside `data.mdb`. NO_LOCK is safe here because nnquant
//! never writes and nobody is expected to write the set while it is read.

use super::{
    check_index, imgops, ChannelOrder, ColorMode, Image, OrderPolicy, Pixels, Sample, Source,
};
use crate::caffe::datum::{decode_datum, DatumPixels};
use anyhow::{anyhow, bail, Context, Result};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

type SharedEnv = Arc<Env<WithoutTls>>;

/// heed refuses to open one environment twice in a process, but a caller may well open the same
/// LMDB twice (calibration and evaluation parts of one set). Sources of the same file share one
/// environment; it closes when the last of them is dropped.
static OPENED: Mutex<Option<HashMap<PathBuf, Weak<Env<WithoutTls>>>>> = Mutex::new(None);

fn open_env(path: &Path, flags: EnvFlags) -> Result<SharedEnv> {
    let shown = path.display();
    let canon = std::fs::canonicalize(path).with_context(|| format!("cannot open {shown}"))?;
    let mut guard = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(env) = map.get(&canon).and_then(Weak::upgrade) {
        return Ok(env);
    }
    let mut opts = EnvOpenOptions::new().read_txn_without_tls();
    opts.max_dbs(1);
    // SAFETY: read-only, no lock file; the data set must not be modified while nnquant reads it
    // (documented at module level). heed's requirement concerns concurrent writers only.
    let env = unsafe {
        opts.flags(flags);
        opts.open(path)
    }
    .map_err(|e| anyhow!("{shown}: cannot open as an LMDB ({e})"))?;
    let env = Arc::new(env);
    map.insert(canon, Arc::downgrade(&env));
    Ok(env)
}

/// A Caffe LMDB, read by key order. Keeps only the keys in memory.
pub struct LmdbSource {
    path: PathBuf,
    env: SharedEnv,
    db: Database<'static, Bytes, Bytes>,
    keys: Vec<Vec<u8>>,
    color: ColorMode,
    order: OrderPolicy,
}

impl LmdbSource {
    /// Open a directory holding `data.mdb`, or the data file itself.
    /// `color` acts on encoded Datums only (Caffe's force_color/force_gray).
    pub fn open(path: &Path, color: ColorMode, order: Option<ChannelOrder>) -> Result<Self> {
        let shown = path.display();
        let mut flags = EnvFlags::READ_ONLY | EnvFlags::NO_LOCK;
        if path.is_file() {
            flags |= EnvFlags::NO_SUB_DIR;
        } else if !path.join("data.mdb").is_file() {
            bail!("{shown}: not an LMDB (expected a directory holding data.mdb, or the .mdb file itself)");
        }
        let env = open_env(path, flags)?;
        let rtxn = env
            .read_txn()
            .with_context(|| format!("{shown}: cannot start a read transaction"))?;
        let db = env
            .open_databases_and_commit(rtxn, |dbo, rtxn| -> heed::Result<_> {
                Ok(CommitOrAbort::<_, ()>::Commit(
                    dbo.open_database::<Bytes, Bytes>(rtxn, None)?,
                ))
            })
            .with_context(|| format!("{shown}: cannot open the main database"))?
            .unwrap_commit()
            .ok_or_else(|| anyhow!("{shown}: the LMDB has no main database"))?;
        let rtxn = env
            .read_txn()
            .with_context(|| format!("{shown}: cannot start a read transaction"))?;
        let mut keys = Vec::new();
        for item in db
            .iter(&rtxn)
            .with_context(|| format!("{shown}: cannot iterate"))?
        {
            let (k, _) =
                item.with_context(|| format!("{shown}: corrupt LMDB while listing keys"))?;
            keys.push(k.to_vec());
        }
        drop(rtxn);
        Ok(LmdbSource {
            path: path.to_path_buf(),
            env,
            db,
            keys,
            color,
            order: OrderPolicy::new(order),
        })
    }

    fn decode(&self, index: usize, value: &[u8]) -> Result<Sample> {
        let what = format!(
            "{}: record {index} (key '{}')",
            self.path.display(),
            String::from_utf8_lossy(&self.keys[index])
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
        self.keys.len()
    }
    fn describe(&self) -> String {
        format!("LMDB {} ({} records)", self.path.display(), self.keys.len())
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        Ok(self.read_range(index..index + 1)?.remove(0))
    }
    fn read_range(&mut self, range: Range<usize>) -> Result<Vec<Sample>> {
        if range.is_empty() {
            return Ok(vec![]);
        }
        check_index(range.end - 1, self.keys.len(), &self.path.display())?;
        let rtxn = self
            .env
            .read_txn()
            .with_context(|| format!("{}: cannot start a read transaction", self.path.display()))?;
        range
            .map(|i| {
                let v = self
                    .db
                    .get(&rtxn, &self.keys[i])
                    .with_context(|| format!("{}: cannot read record {i}", self.path.display()))?
                    .ok_or_else(|| {
                        anyhow!("{}: record {i} vanished while reading", self.path.display())
                    })?;
                self.decode(i, v)
            })
            .collect()
    }
}
