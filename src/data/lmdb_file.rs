//! A read-only, bounds-checked reader of LMDB data files (64-bit LMDB 0.9, as Caffe writes
//! them: one unnamed database, plain keys and values, no duplicates).
//!
//! Why not the LMDB library: it maps the file and trusts every page number and size it finds,
//! so a truncated or corrupt `data.mdb` (a copy cut short, a bad disk, a fuzzer) is a SIGBUS or
//! SIGSEGV that kills the process with no message. This reader follows the same structure with
//! `pread`: every page number is checked against the file and the meta page, every node against
//! its page, every page is visited at most once, and the walk is depth-limited, so any
//! corruption is an error naming the file. Values are read only when a sample is read.
//!
//! Layout (lmdb.h/mdb.c): page header `{pgno u64, pad u16, flags u16, lower u16, upper u16}`
//! (overflow pages: `pages u32` in place of lower/upper); meta pages 0 and 1 hold
//! `MDB_meta {magic, version, address, mapsize, dbs[2] (48 B each), last_pg, txnid}` after the
//! header, the newer transaction wins; nodes `{lo u16, hi u16, flags u16, ksize u16, key, data}`
//! where a leaf's data size is `lo | hi << 16` and a branch's child page `lo | hi << 16 |
//! flags << 32`; `F_BIGDATA` leaves keep their value on overflow pages.

use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PAGE_HEADER: usize = 16;
const NODE_HEADER: usize = 8;
const MAGIC: u32 = 0xBEEF_C0DE;
const P_BRANCH: u16 = 0x01;
const P_LEAF: u16 = 0x02;
const P_OVERFLOW: u16 = 0x04;
const F_BIGDATA: u16 = 0x01;
const F_SUBDATA: u16 = 0x02;
const F_DUPDATA: u16 = 0x04;
/// LMDB's own limit on tree depth is far below this; a deeper walk means a cycle or garbage.
const MAX_DEPTH: usize = 64;

/// Where a value lives in the file.
#[derive(Debug, Clone, Copy)]
pub struct ValueLoc {
    offset: u64,
    len: usize,
}

/// An opened LMDB data file: its entries (key, value location) in key order.
pub struct LmdbFile {
    path: PathBuf,
    file: File,
    pub entries: Vec<(Vec<u8>, ValueLoc)>,
}

struct Meta {
    page_size: u64,
    last_page: u64,
    txnid: u64,
    root: u64,
    entries: u64,
    flags: u16,
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The meta page at byte `at` of `head`, if it is one.
fn meta(head: &[u8], at: usize) -> Option<Meta> {
    let m = head.get(at + PAGE_HEADER..at + PAGE_HEADER + 136)?;
    if u32_at(m, 0) != MAGIC {
        return None;
    }
    let main = 24 + 48; // dbs[MAIN_DBI]
    Some(Meta {
        page_size: u64::from(u32_at(m, 24)), // dbs[FREE_DBI].md_pad holds the page size
        flags: u16_at(m, main + 4),
        entries: u64_at(m, main + 32),
        root: u64_at(m, main + 40),
        last_page: u64_at(m, 120),
        txnid: u64_at(m, 128),
    })
}

impl LmdbFile {
    pub fn open(path: &Path) -> Result<LmdbFile> {
        let shown = path.display();
        let file = crate::fsio::open(path, "the LMDB data file")?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot open {shown}"))?
            .len();
        let mut head = vec![0u8; len.min(2 * 65_536) as usize];
        file.read_exact_at(&mut head, 0)
            .with_context(|| format!("cannot read {shown}"))?;
        let first = meta(&head, 0).with_context(|| {
            format!(
                "{shown}: not an LMDB data file, or truncated ({len} bytes, no valid meta page)"
            )
        })?;
        let psize = first.page_size;
        if !(512..=65_536).contains(&psize) || !psize.is_power_of_two() {
            bail!("{shown}: corrupt LMDB meta page (page size {psize})");
        }
        let m = match meta(&head, psize as usize) {
            Some(second) if second.txnid > first.txnid => second,
            Some(_) => first,
            None => bail!(
                "{shown}: truncated LMDB: {len} bytes, not even its two meta pages ({} bytes)",
                2 * psize
            ),
        };
        let need = m
            .last_page
            .checked_add(1)
            .and_then(|p| p.checked_mul(psize))
            .with_context(|| {
                format!(
                    "{shown}: corrupt LMDB meta page (last page {})",
                    m.last_page
                )
            })?;
        if len < need {
            bail!(
                "{shown}: truncated LMDB: the file has {len} bytes but its last committed page ends at byte {need} (page {} of {psize} bytes); the copy was cut short or the disk filled up",
                m.last_page
            );
        }
        ensure!(
            m.flags & 0x04 == 0, // MDB_DUPSORT
            "{shown}: the LMDB's main database keeps duplicate keys (MDB_DUPSORT), which Caffe never writes"
        );
        let mut walk = Walk {
            file: &file,
            shown: shown.to_string(),
            psize,
            last_page: m.last_page,
            visited: std::collections::HashSet::new(),
            entries: Vec::new(),
        };
        if m.root != u64::MAX {
            walk.page(m.root, 0)?;
        }
        ensure!(
            walk.entries.len() as u64 == m.entries,
            "{shown}: corrupt LMDB: the meta page counts {} records, the tree holds {}",
            m.entries,
            walk.entries.len()
        );
        let entries = walk.entries;
        Ok(LmdbFile {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    /// The value at `loc` (from [`Self::entries`]).
    pub fn value(&self, loc: ValueLoc) -> Result<Vec<u8>> {
        let mut v = vec![0u8; loc.len];
        self.file
            .read_exact_at(&mut v, loc.offset)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(v)
    }
}

/// A node's offset in its page and its header fields.
struct Node {
    at: usize,
    lo: u16,
    hi: u16,
    flags: u16,
    ksize: usize,
}

struct Walk<'a> {
    file: &'a File,
    shown: String,
    psize: u64,
    last_page: u64,
    visited: std::collections::HashSet<u64>,
    entries: Vec<(Vec<u8>, ValueLoc)>,
}

impl Walk<'_> {
    fn corrupt(&self, pgno: u64, what: &str) -> anyhow::Error {
        anyhow::anyhow!("{}: corrupt LMDB: page {pgno}: {what}", self.shown)
    }

    fn read_page(&mut self, pgno: u64) -> Result<Vec<u8>> {
        if pgno < 2 || pgno > self.last_page {
            return Err(self.corrupt(
                pgno,
                &format!("outside the data pages 2..={}", self.last_page),
            ));
        }
        if !self.visited.insert(pgno) {
            return Err(self.corrupt(pgno, "reached twice (a cycle in the tree)"));
        }
        let mut p = vec![0u8; self.psize as usize];
        self.file
            .read_exact_at(&mut p, pgno * self.psize)
            .with_context(|| format!("cannot read {}", self.shown))?;
        if u64_at(&p, 0) != pgno {
            return Err(self.corrupt(pgno, &format!("its header says page {}", u64_at(&p, 0))));
        }
        Ok(p)
    }

    /// The nodes of a branch or leaf page, each checked to lie within it.
    fn nodes(&self, pgno: u64, p: &[u8]) -> Result<Vec<Node>> {
        let lower = usize::from(u16_at(p, 12));
        let upper = usize::from(u16_at(p, 14));
        if lower < PAGE_HEADER
            || lower > upper
            || upper > p.len()
            || !(lower - PAGE_HEADER).is_multiple_of(2)
        {
            return Err(self.corrupt(pgno, &format!("bad free-space bounds {lower}..{upper}")));
        }
        (0..(lower - PAGE_HEADER) / 2)
            .map(|i| {
                let at = usize::from(u16_at(p, PAGE_HEADER + 2 * i));
                if at < upper || at + NODE_HEADER > p.len() {
                    return Err(self.corrupt(
                        pgno,
                        &format!("node {i} at offset {at} outside the page's node area"),
                    ));
                }
                let ksize = usize::from(u16_at(p, at + 6));
                if at + NODE_HEADER + ksize > p.len() {
                    return Err(self.corrupt(pgno, &format!("node {i}'s key runs past the page")));
                }
                Ok(Node {
                    at,
                    lo: u16_at(p, at),
                    hi: u16_at(p, at + 2),
                    flags: u16_at(p, at + 4),
                    ksize,
                })
            })
            .collect()
    }

    fn page(&mut self, pgno: u64, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt(pgno, "the tree is deeper than any LMDB makes"));
        }
        let p = self.read_page(pgno)?;
        let flags = u16_at(&p, 10);
        let nodes = self.nodes(pgno, &p)?;
        if flags & P_BRANCH != 0 {
            for Node {
                lo, hi, flags: fl, ..
            } in nodes
            {
                let child = u64::from(lo) | u64::from(hi) << 16 | u64::from(fl) << 32;
                self.page(child, depth + 1)?;
            }
            Ok(())
        } else if flags & P_LEAF != 0 {
            for Node {
                at,
                lo,
                hi,
                flags: fl,
                ksize,
            } in nodes
            {
                let key = p[at + NODE_HEADER..at + NODE_HEADER + ksize].to_vec();
                let dsize = usize::from(lo) | usize::from(hi) << 16;
                let data_at = at + NODE_HEADER + ksize;
                if fl & (F_SUBDATA | F_DUPDATA) != 0 {
                    return Err(self.corrupt(
                        pgno,
                        "a sub-database or duplicate-key node (Caffe writes neither)",
                    ));
                }
                let loc = if fl & F_BIGDATA != 0 {
                    let ov = p
                        .get(data_at..data_at + 8)
                        .map(|b| u64_at(b, 0))
                        .ok_or_else(|| {
                            self.corrupt(pgno, "an overflow reference runs past the page")
                        })?;
                    self.overflow(ov, dsize)?
                } else {
                    if data_at + dsize > p.len() {
                        return Err(self.corrupt(
                            pgno,
                            &format!("a value of {dsize} bytes runs past the page"),
                        ));
                    }
                    ValueLoc {
                        offset: pgno * self.psize + data_at as u64,
                        len: dsize,
                    }
                };
                self.entries.push((key, loc));
            }
            Ok(())
        } else {
            Err(self.corrupt(
                pgno,
                &format!("neither a branch nor a leaf (flags {flags:#x})"),
            ))
        }
    }

    /// A value of `len` bytes on the overflow pages starting at `pgno`.
    fn overflow(&mut self, pgno: u64, len: usize) -> Result<ValueLoc> {
        let p = self.read_page(pgno)?;
        if u16_at(&p, 10) & P_OVERFLOW == 0 {
            return Err(self.corrupt(pgno, "an overflow reference to a page that is not one"));
        }
        let pages = u64::from(u32_at(&p, 12));
        let end = pgno.saturating_add(pages);
        let room = pages
            .saturating_mul(self.psize)
            .saturating_sub(PAGE_HEADER as u64);
        if pages == 0 || end > self.last_page + 1 || len as u64 > room {
            return Err(self.corrupt(
                pgno,
                &format!(
                    "an overflow run of {pages} pages cannot hold {len} bytes within the file"
                ),
            ));
        }
        Ok(ValueLoc {
            offset: pgno * self.psize + PAGE_HEADER as u64,
            len,
        })
    }
}
