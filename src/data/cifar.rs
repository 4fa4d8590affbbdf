//! CIFAR-10 binary batches (`data_batch_1.bin` … `test_batch.bin`): records of 1 label byte +
//! 3072 bytes of a 3×32×32 RGB image in CHW order. A directory means all its `*.bin` batches in
//! name order. Read lazily by seeking. (CIFAR-100's 2-label-byte records are not supported.)

use super::{check_index, ChannelOrder, Image, OrderPolicy, Pixels, Sample, Source};
use anyhow::{ensure, Context, Result};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const IMAGE: usize = 3 * 32 * 32;
const RECORD: usize = 1 + IMAGE;

/// The `*.bin` files of a directory, sorted, or `None` when it has none.
pub fn dir_batches(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "bin"))
        .collect();
    v.sort();
    Ok((!v.is_empty()).then_some(v))
}

/// One or more CIFAR-10 batch files read as one set.
pub struct CifarSource {
    path: PathBuf,
    /// (file, first global index)
    files: Vec<(BufReader<File>, usize)>,
    n: usize,
    order: OrderPolicy,
}

impl CifarSource {
    /// A `.bin` file or a directory of them.
    pub fn open(path: &Path, order: Option<ChannelOrder>) -> Result<Self> {
        let paths = if path.is_dir() {
            dir_batches(path)?.unwrap_or_default()
        } else {
            vec![path.to_path_buf()]
        };
        let mut files = Vec::new();
        let mut n = 0;
        for p in paths {
            let f = crate::fsio::open(&p, "the CIFAR batch")?;
            let len = f.metadata()?.len() as usize;
            ensure!(
                len.is_multiple_of(RECORD),
                "{}: {len} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes: 1 label + 3×32×32 pixels)",
                p.display()
            );
            files.push((BufReader::new(f), n));
            n += len / RECORD;
        }
        Ok(CifarSource {
            path: path.to_path_buf(),
            files,
            n,
            order: OrderPolicy::new(order),
        })
    }
}

impl Source for CifarSource {
    fn len(&self) -> usize {
        self.n
    }
    fn describe(&self) -> String {
        format!(
            "CIFAR-10 binary {} ({} images)",
            self.path.display(),
            self.n
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.n, &self.path.display())?;
        let k = self.files.partition_point(|(_, first)| *first <= index) - 1;
        let (f, first) = &mut self.files[k];
        let mut rec = vec![0u8; RECORD];
        f.seek(SeekFrom::Start(((index - *first) * RECORD) as u64))?;
        f.read_exact(&mut rec)?;
        let label = rec[0] as i64;
        rec.remove(0);
        let mut image = Image {
            channels: 3,
            height: 32,
            width: 32,
            pixels: Pixels::U8(rec),
        };
        self.order.stored(&mut image);
        Ok(Sample {
            image,
            label: Some(label),
        })
    }
}
