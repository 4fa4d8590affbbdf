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

/// Refuse an LMDB data file shorter than its own meta pages say it is. LMDB maps the file and
/// reads pages in place, so a page past the end of a truncated file (a copy cut short, a full
/// disk) is a SIGBUS that kills the process with no message; checking the length first turns it
/// into an error. The two meta pages (64-bit LMDB, as Caffe writes it) hold the page size
/// (`mm_dbs[FREE_DBI].md_pad`) and the last page in use (`mm_last_pg`) of each committed
/// transaction (`mm_txnid`); the newer one is the one LMDB uses.
fn check_not_truncated(data_file: &Path) -> Result<()> {
    use std::io::Read;
    const META: usize = 16; // page header
    const MAGIC: u32 = 0xBEEF_C0DE;
    let shown = data_file.display();
    let len = std::fs::metadata(data_file)
        .with_context(|| format!("cannot open {shown}"))?
        .len();
    let mut head = Vec::new();
    std::fs::File::open(data_file)
        .with_context(|| format!("cannot open {shown}"))?
        .take(2 * 65_536)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {shown}"))?;
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|v| u32::from_le_bytes(v.try_into().unwrap()))
    };
    let u64_at = |b: &[u8], o: usize| {
        b.get(o..o + 8)
            .map(|v| u64::from_le_bytes(v.try_into().unwrap()))
    };
    // (page size, last page, txnid) of the meta page at `at`, if it is one.
    let meta = |at: usize| -> Option<(u64, u64, u64)> {
        let m = head.get(at + META..)?;
        if u32_at(m, 0)? != MAGIC {
            return None;
        }
        Some((u64::from(u32_at(m, 24)?), u64_at(m, 120)?, u64_at(m, 128)?))
    };
    let first = meta(0).with_context(|| {
        format!("{shown}: not an LMDB data file, or truncated ({len} bytes, no valid meta page)")
    })?;
    let psize = first.0;
    if !(512..=65_536).contains(&psize) || !psize.is_power_of_two() {
        bail!("{shown}: corrupt LMDB meta page (page size {psize})");
    }
    let (_, last_pg, _) = match meta(psize as usize) {
        Some(second) if second.2 > first.2 => second,
        Some(_) => first,
        None => bail!(
            "{shown}: truncated LMDB: {len} bytes, not even its two meta pages ({} bytes)",
            2 * psize
        ),
    };
    let need = last_pg
        .checked_add(1)
        .and_then(|p| p.checked_mul(psize))
        .with_context(|| format!("{shown}: corrupt LMDB meta page (last page {last_pg})"))?;
    if len < need {
        bail!(
            "{shown}: truncated LMDB: the file has {len} bytes but its last committed page ends at byte {need} (page {last_pg} of {psize} bytes); the copy was cut short or the disk filled up"
        );
    }
    Ok(())
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
            check_not_truncated(path)?;
        } else if path.join("data.mdb").is_file() {
            check_not_truncated(&path.join("data.mdb"))?;
        } else {
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
