//! Images in a `.npy` array (uint8 or float32; `(N,H,W,C)` by default, `(N,C,H,W)` on request,
//! `(N,H,W)` as one channel) with labels in a second `.npy` of any integer type.
//!
//! The image file is read lazily: only the header at open, then one seek + read per image, so a
//! set larger than memory streams and no byte is copied twice. Labels are small and read whole.

use super::{
    check_index, hwc_to_chw, ChannelOrder, Image, Layout, OrderPolicy, Pixels, Sample, Source,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use npyz::{DType, Endianness, NpyHeader, Order, TypeChar, TypeStr};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Elem {
    U8,
    F32 { big: bool },
}

/// A lazily read `.npy` image array.
pub struct NpySource {
    path: PathBuf,
    file: BufReader<File>,
    data_start: u64,
    elem: Elem,
    n: usize,
    /// Stored order of one image's dims.
    layout: Layout,
    chw: [usize; 3],
    labels: Option<Vec<i64>>,
    order: OrderPolicy,
}

fn header(path: &Path) -> Result<(File, NpyHeader, u64)> {
    let mut f = crate::fsio::open(path, "the npy file")?;
    let h = NpyHeader::from_reader(&mut f)
        .map_err(|e| anyhow!("{}: not a valid .npy file ({e})", path.display()))?;
    let start = f.stream_position()?;
    ensure!(
        h.order() == Order::C,
        "{}: Fortran-ordered arrays are not supported; save it with np.ascontiguousarray",
        path.display()
    );
    Ok((f, h, start))
}

fn plain(path: &Path, h: &NpyHeader) -> Result<TypeStr> {
    match h.dtype() {
        DType::Plain(ts) => Ok(ts),
        other @ DType::Array(..) | other @ DType::Record(_) => bail!(
            "{}: unsupported dtype {other:?}; expected a plain numeric array",
            path.display()
        ),
    }
}

impl NpySource {
    /// Open `images` (and `labels`, else a `<prefix>_labels.npy` found beside it, else none).
    pub fn open(
        images: &Path,
        labels: Option<&Path>,
        layout: Layout,
        order: Option<ChannelOrder>,
    ) -> Result<Self> {
        let shown = images.display();
        let (f, h, data_start) = header(images)?;
        let ts = plain(images, &h)?;
        let elem = match (ts.type_char(), ts.num_bytes()) {
            (TypeChar::Uint, Some(1)) => Elem::U8,
            (TypeChar::Float, Some(4)) => Elem::F32 {
                big: ts.endianness() == Endianness::Big,
            },
            _ => bail!("{shown}: unsupported image dtype '{ts}'; expected uint8 or float32"),
        };
        let shape: Vec<usize> = h.shape().iter().map(|&d| d as usize).collect();
        let (n, chw) = match (shape.as_slice(), layout) {
            (&[n, hh, w], _) => (n, [1, hh, w]),
            (&[n, hh, w, c], Layout::Nhwc) => (n, [c, hh, w]),
            (&[n, c, hh, w], Layout::Nchw) => (n, [c, hh, w]),
            _ => bail!(
                "{shown}: image array of shape {shape:?} (rank {}); expected (N,H,W,C) (or (N,C,H,W) with --layout nchw, or (N,H,W) for gray)",
                shape.len()
            ),
        };
        ensure!(
            chw.iter().all(|&d| d > 0),
            "{shown}: image array of shape {shape:?} has an empty image dimension"
        );
        let need = (n as u64)
            .checked_mul(
                chw.iter().product::<usize>() as u64 * if elem == Elem::U8 { 1 } else { 4 },
            )
            .ok_or_else(|| anyhow!("{shown}: absurd shape {shape:?}"))?;
        let have = f.metadata()?.len().saturating_sub(data_start);
        ensure!(
            have >= need,
            "{shown}: truncated: shape {shape:?} needs {need} data bytes but the file holds {have}"
        );
        let labels_path = match labels {
            Some(p) => Some(p.to_path_buf()),
            None => guess_labels(images),
        };
        let labels = match &labels_path {
            Some(p) => {
                let l = read_labels(p)?;
                ensure!(
                    l.len() == n,
                    "{} holds {} labels but {shown} holds {n} images; they must match one for one",
                    p.display(),
                    l.len()
                );
                Some(l)
            }
            None => None,
        };
        Ok(NpySource {
            path: images.to_path_buf(),
            file: BufReader::new(f),
            data_start,
            elem,
            n,
            layout: if shape.len() == 3 {
                Layout::Nchw
            } else {
                layout
            },
            chw,
            labels,
            order: OrderPolicy::new(order),
        })
    }
}

/// `test_1017_u8_hwc.npy` → the first existing `test_1017_u8_labels.npy`, `test_1017_labels.npy`,
/// `test_labels.npy`; `images.npy` → `labels.npy`.
fn guess_labels(images: &Path) -> Option<PathBuf> {
    let stem = images.file_stem()?.to_string_lossy().to_string();
    let dir = images.parent().unwrap_or(Path::new("."));
    let mut candidates: Vec<String> = stem
        .match_indices('_')
        .rev()
        .map(|(i, _)| format!("{}_labels.npy", &stem[..i]))
        .collect();
    candidates.push(stem.replace("images", "labels") + ".npy");
    candidates
        .into_iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file() && p != images)
}

/// Read a label vector of any integer dtype, shape `(N,)` or `(N,1)`.
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let shown = path.display();
    let (mut f, h, _) = header(path)?;
    let ts = plain(path, &h)?;
    let shape = h.shape();
    ensure!(
        shape.len() == 1 || shape.len() == 2 && shape[1] == 1,
        "{shown}: labels of shape {shape:?}; expected (N,) or (N,1)"
    );
    let size = ts.num_bytes().unwrap_or(0);
    // `TypeChar` is `#[non_exhaustive]` (another crate's enum): a wildcard is required.
    #[allow(clippy::wildcard_enum_match_arm)]
    let signed = match ts.type_char() {
        TypeChar::Int => true,
        TypeChar::Uint => false,
        _ => bail!("{shown}: unsupported label dtype '{ts}'; expected an integer type"),
    };
    ensure!(
        matches!(size, 1 | 2 | 4 | 8),
        "{shown}: unsupported label dtype '{ts}'"
    );
    let n = shape[0] as usize;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    ensure!(
        bytes.len() >= n * size,
        "{shown}: truncated: {n} labels need {} bytes, the file holds {}",
        n * size,
        bytes.len()
    );
    let big = ts.endianness() == Endianness::Big;
    bytes[..n * size]
        .chunks_exact(size)
        .enumerate()
        .map(|(i, c)| {
            let mut b = [0u8; 8];
            if big {
                b[8 - size..].copy_from_slice(c);
                b.reverse();
            } else {
                b[..size].copy_from_slice(c);
            }
            let u = u64::from_le_bytes(b);
            let v = if signed {
                let sh = 64 - 8 * size as u32;
                ((u << sh) as i64) >> sh
            } else {
                i64::try_from(u)
                    .map_err(|_| anyhow!("{shown}: label {i} = {u} does not fit an i64"))?
            };
            Ok(v)
        })
        .collect()
}

impl Source for NpySource {
    fn len(&self) -> usize {
        self.n
    }
    fn describe(&self) -> String {
        let [c, h, w] = self.chw;
        format!(
            ".npy {} ({} images {c}×{h}×{w} {}, {})",
            self.path.display(),
            self.n,
            if self.elem == Elem::U8 {
                "uint8"
            } else {
                "float32"
            },
            if self.labels.is_some() {
                "labelled"
            } else {
                "no labels"
            }
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.n, &self.path.display())?;
        let [c, h, w] = self.chw;
        let count = c * h * w;
        let esize = if self.elem == Elem::U8 { 1 } else { 4 };
        let mut buf = vec![0u8; count * esize];
        self.file.seek(SeekFrom::Start(
            self.data_start + (index * count * esize) as u64,
        ))?;
        self.file.read_exact(&mut buf).with_context(|| {
            format!(
                "{}: image {index} lies past the end of the file (truncated .npy)",
                self.path.display()
            )
        })?;
        let pixels = match self.elem {
            Elem::U8 => Pixels::U8(if self.layout == Layout::Nhwc {
                hwc_to_chw(&buf, h, w, c)
            } else {
                buf
            }),
            Elem::F32 { big } => {
                let v: Vec<f32> = buf
                    .chunks_exact(4)
                    .map(|b| {
                        let b = [b[0], b[1], b[2], b[3]];
                        if big {
                            f32::from_be_bytes(b)
                        } else {
                            f32::from_le_bytes(b)
                        }
                    })
                    .collect();
                Pixels::F32(if self.layout == Layout::Nhwc {
                    hwc_to_chw(&v, h, w, c)
                } else {
                    v
                })
            }
        };
        let mut image = Image {
            channels: c,
            height: h,
            width: w,
            pixels,
        };
        self.order.stored(&mut image);
        Ok(Sample {
            image,
            label: self.labels.as_ref().map(|l| l[index]),
        })
    }
}
