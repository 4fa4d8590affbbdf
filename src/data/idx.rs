//! MNIST's IDX format: `*-images-idx3-ubyte` (magic 0x00000803, big-endian N, H, W, then N·H·W
//! bytes) with `*-labels-idx1-ubyte` (magic 0x00000801, N, then N bytes). Images are one-channel
//! and read lazily by seeking.

use super::{check_index, Image, Pixels, Sample, Source};
use anyhow::{anyhow, bail, ensure, Result};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// An IDX image file (+ labels).
pub struct IdxSource {
    path: PathBuf,
    file: BufReader<File>,
    n: usize,
    h: usize,
    w: usize,
    labels: Option<Vec<u8>>,
}

fn read_header(f: &mut impl Read, path: &Path, magic: u32, dims: usize) -> Result<Vec<usize>> {
    let mut b = vec![0u8; 4 * (1 + dims)];
    f.read_exact(&mut b)
        .map_err(|_| anyhow!("{}: too short for an IDX header", path.display()))?;
    let words: Vec<u32> = b
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if words[0] != magic {
        bail!(
            "{}: IDX magic {:#010x}, expected {magic:#010x} ({}); is this the right file (not gzip-compressed)?",
            path.display(),
            words[0],
            if dims == 3 { "uint8 images, 3 dims" } else { "uint8 labels, 1 dim" }
        );
    }
    Ok(words[1..].iter().map(|&d| d as usize).collect())
}

/// `train-images-idx3-ubyte` → `train-labels-idx1-ubyte` (also with a `.` instead of `-`).
fn guess_labels(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().to_string();
    let l = name.replace("images", "labels").replace("idx3", "idx1");
    let p = images.with_file_name(l);
    (p.is_file() && p != images).then_some(p)
}

impl IdxSource {
    pub fn open(images: &Path, labels: Option<&Path>) -> Result<Self> {
        let shown = images.display();
        let mut f = crate::fsio::open(images, "the IDX images")?;
        let d = read_header(&mut f, images, 0x0803, 3)?;
        let (n, h, w) = (d[0], d[1], d[2]);
        ensure!(h > 0 && w > 0, "{shown}: images of size {h}×{w}");
        let need = n as u64 * (h * w) as u64 + 16;
        let have = f.metadata()?.len();
        ensure!(
            have >= need,
            "{shown}: truncated: {n} images of {h}×{w} need {need} bytes, the file holds {have}"
        );
        let labels = match labels
            .map(Path::to_path_buf)
            .or_else(|| guess_labels(images))
        {
            Some(lp) => {
                let mut lf = crate::fsio::open(&lp, "the IDX labels")?;
                let ln = read_header(&mut lf, &lp, 0x0801, 1)?[0];
                ensure!(
                    ln == n,
                    "{} holds {ln} labels but {shown} holds {n} images",
                    lp.display()
                );
                let mut v = vec![0u8; n];
                lf.read_exact(&mut v)
                    .map_err(|_| anyhow!("{}: truncated: fewer than {n} labels", lp.display()))?;
                Some(v)
            }
            None => None,
        };
        Ok(IdxSource {
            path: images.to_path_buf(),
            file: BufReader::new(f),
            n,
            h,
            w,
            labels,
        })
    }
}

impl Source for IdxSource {
    fn len(&self) -> usize {
        self.n
    }
    fn describe(&self) -> String {
        format!(
            "IDX {} ({} images 1×{}×{})",
            self.path.display(),
            self.n,
            self.h,
            self.w
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.n, &self.path.display())?;
        let size = self.h * self.w;
        let mut buf = vec![0u8; size];
        self.file
            .seek(SeekFrom::Start(16 + (index * size) as u64))?;
        self.file.read_exact(&mut buf)?;
        Ok(Sample {
            image: Image {
                channels: 1,
                height: self.h,
                width: self.w,
                pixels: Pixels::U8(buf),
            },
            label: self.labels.as_ref().map(|l| l[index] as i64),
        })
    }
}
