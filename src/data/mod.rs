//! Data sets behind one streaming trait, and Caffe's TEST-phase input transform.
//!
//! Nothing here knows the model: a [`Source`] yields [`Sample`]s (one CHW image and an optional
//! label) by index, so callers stream batches ([`batches`]) and never need the whole set in
//! memory. [`open`] picks the reader from what a path is; [`layer::open_layer`] opens the
//! model's own TEST data layer; [`subset`] carves deterministic `--offset/--limit/--split`
//! parts; [`preprocess::Preprocessor`] applies Caffe's `DataTransformer` (TEST phase).
//!
//! # Channel order (why images may come out BGR)
//! Caffe feeds bytes *as they are stored*: a raw `Datum` (e.g. what `convert_cifar_data` writes,
//! which keeps CIFAR's RGB) goes to the net unchanged. Images that Caffe *decodes from files*
//! (`ImageData` layers, encoded Datums, anything passing through OpenCV) come out **BGR**.
//! nnquant follows that rule:
//! - decoded images (folder trees, image lists, encoded Datums) are delivered BGR by default;
//! - stored arrays (raw Datum bytes, `.npy`, CIFAR `.bin`, IDX, HDF5) are delivered as stored.
//!
//! [`DataSpec::channel_order`] (`--channel-order rgb|bgr`) forces an order instead. Decoded images
//! are known to be RGB before the swap, so both orders are exact. Stored arrays carry no order of
//! their own; when an order is forced they are taken to hold **RGB** (true of the CIFAR files,
//! CIFAR's binary format and numpy convention), so `bgr` reverses their channels and `rgb` keeps
//! them. Single-channel images are never affected.
//!
//! # Shapes
//! All images of a set must share one `C×H×W`; every source returned by [`open`] and
//! [`layer::open_layer`] checks this and names the first offending index.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod imgops;
pub mod layer;
pub mod lmdb;
pub mod lmdb_file;
pub mod npy;
pub mod preprocess;
pub mod subset;

use anyhow::{bail, Result};
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use preprocess::{Batch, Preprocessor};
pub use subset::{parse_split, Part, SplitAt, Subset};

/// Pixel values of one image, CHW order.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Raw bytes, as the int8 firmware path wants them.
    U8(Vec<u8>),
    /// Float values (float Datums, float .npy, HDF5).
    F32(Vec<f32>),
}

impl Pixels {
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One image, CHW order.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Pixels,
}

impl Image {
    /// `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// The raw bytes, when the source stores bytes.
    pub fn as_u8(&self) -> Option<&[u8]> {
        match &self.pixels {
            Pixels::U8(v) => Some(v),
            Pixels::F32(_) => None,
        }
    }

    /// Pixel `i` (CHW flat index) as f32.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        match &self.pixels {
            Pixels::U8(v) => v[i] as f32,
            Pixels::F32(v) => v[i],
        }
    }

    /// All pixels as f32, CHW.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.pixels {
            Pixels::U8(v) => v.iter().map(|&b| b as f32).collect(),
            Pixels::F32(v) => v.clone(),
        }
    }

    /// Reverse the channel planes (RGB ↔ BGR). A no-op for one channel.
    pub fn reverse_channels(&mut self) {
        let plane = self.height * self.width;
        let c = self.channels;
        fn rev<T>(v: &mut [T], c: usize, plane: usize) {
            for k in 0..c / 2 {
                let (a, b) = v.split_at_mut((c - 1 - k) * plane);
                a[k * plane..(k + 1) * plane].swap_with_slice(&mut b[..plane]);
            }
        }
        match &mut self.pixels {
            Pixels::U8(v) => rev(v, c, plane),
            Pixels::F32(v) => rev(v, c, plane),
        }
    }

    /// Build from HWC bytes (what image decoders and NHWC arrays hold).
    pub fn from_hwc_u8(height: usize, width: usize, channels: usize, hwc: &[u8]) -> Image {
        Image {
            channels,
            height,
            width,
            pixels: Pixels::U8(hwc_to_chw(hwc, height, width, channels)),
        }
    }
}

/// HWC → CHW for any element type.
pub fn hwc_to_chw<T: Copy + Default>(hwc: &[T], h: usize, w: usize, c: usize) -> Vec<T> {
    let mut out = vec![T::default(); hwc.len()];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                out[(ch * h + y) * w + x] = hwc[(y * w + x) * c + ch];
            }
        }
    }
    out
}

/// One image with its label (`None` for unlabelled sets).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image: Image,
    pub label: Option<i64>,
}

/// A data set read by index. Implementations read lazily (per image) where the format allows,
/// so a caller holds at most one batch.
pub trait Source: Send {
    /// Number of samples.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A one-line description for logs and reports (format, path, count).
    fn describe(&self) -> String;
    /// Sample `index` (`< len()`; out of range is an error, not a panic).
    fn read(&mut self, index: usize) -> Result<Sample>;
    /// Samples of `range`, in order. Sources override this when a range is cheaper than
    /// single reads (one transaction, one seek).
    fn read_range(&mut self, range: Range<usize>) -> Result<Vec<Sample>> {
        range.map(|i| self.read(i)).collect()
    }
}

impl<S: Source + ?Sized> Source for Box<S> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        (**self).read(index)
    }
    fn read_range(&mut self, range: Range<usize>) -> Result<Vec<Sample>> {
        (**self).read_range(range)
    }
}

/// Error for an index past the end (shared by all sources).
pub(crate) fn check_index(index: usize, len: usize, what: &dyn std::fmt::Display) -> Result<()> {
    if index >= len {
        bail!("{what}: sample {index} requested but the set holds {len}");
    }
    Ok(())
}

/// Stream a source in batches of `batch_size` samples (the last one may be shorter).
pub fn batches<S: Source + ?Sized>(source: &mut S, batch_size: usize) -> Batches<'_, S> {
    Batches {
        source,
        next: 0,
        batch_size: batch_size.max(1),
    }
}

/// Iterator returned by [`batches`]; stops after the first error.
pub struct Batches<'a, S: Source + ?Sized> {
    source: &'a mut S,
    next: usize,
    batch_size: usize,
}

impl<S: Source + ?Sized> Iterator for Batches<'_, S> {
    type Item = Result<Vec<Sample>>;
    fn next(&mut self) -> Option<Self::Item> {
        let len = self.source.len();
        if self.next >= len {
            return None;
        }
        let end = (self.next + self.batch_size).min(len);
        let r = self.source.read_range(self.next..end);
        self.next = if r.is_ok() { end } else { len };
        Some(r)
    }
}

/// Wraps a source and insists that every image has the shape of the first one read.
/// Why: the engines batch images into one tensor; a stray image of another size must be named,
/// not silently mis-strided.
pub struct Uniform<S> {
    inner: S,
    shape: Option<([usize; 3], usize)>,
}

impl<S: Source> Uniform<S> {
    pub fn new(inner: S) -> Self {
        Uniform { inner, shape: None }
    }
    fn check(&mut self, index: usize, s: &Sample) -> Result<()> {
        let shape = s.image.shape();
        match self.shape {
            None => self.shape = Some((shape, index)),
            Some((first, at)) if first != shape => bail!(
                "{}: image {index} is {}×{}×{} (C×H×W) but image {at} is {}×{}×{}; all images of a data set must share one shape",
                self.inner.describe(),
                shape[0],
                shape[1],
                shape[2],
                first[0],
                first[1],
                first[2]
            ),
            _ => {}
        }
        Ok(())
    }
}

impl<S: Source> Source for Uniform<S> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        let s = self.inner.read(index)?;
        self.check(index, &s)?;
        Ok(s)
    }
    fn read_range(&mut self, range: Range<usize>) -> Result<Vec<Sample>> {
        let start = range.start;
        let v = self.inner.read_range(range)?;
        for (k, s) in v.iter().enumerate() {
            self.check(start + k, s)?;
        }
        Ok(v)
    }
}

/// Order of channels in delivered images (see the module doc for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

impl std::str::FromStr for ChannelOrder {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rgb" => Ok(ChannelOrder::Rgb),
            "bgr" => Ok(ChannelOrder::Bgr),
            _ => bail!("channel order '{s}': expected 'rgb' or 'bgr'"),
        }
    }
}

/// The channel policy of one source, resolved from an optional user override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderPolicy(Option<ChannelOrder>);

impl OrderPolicy {
    pub fn new(forced: Option<ChannelOrder>) -> Self {
        OrderPolicy(forced)
    }
    /// Apply to an image freshly decoded from a file (decoders yield RGB): Caffe/OpenCV → BGR.
    pub fn decoded(self, img: &mut Image) {
        if self.0.unwrap_or(ChannelOrder::Bgr) == ChannelOrder::Bgr {
            img.reverse_channels();
        }
    }
    /// Apply to a stored array: as stored unless forced; forced orders take storage to be RGB.
    pub fn stored(self, img: &mut Image) {
        if self.0 == Some(ChannelOrder::Bgr) {
            img.reverse_channels();
        }
    }
}

/// Colour conversion for decoded images (Caffe's `force_color` / `force_gray` / `is_color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorMode {
    /// Keep the file's own channels: gray stays 1 channel, colour 3 (alpha is dropped).
    #[default]
    Native,
    /// Always 3 channels (gray is replicated), as OpenCV's `IMREAD_COLOR`.
    Color,
    /// Always 1 channel, OpenCV's BT.601 weights, as `IMREAD_GRAYSCALE`.
    Gray,
}

impl ColorMode {
    /// From Caffe's transform_param (they only act on encoded Datums in Caffe).
    pub fn from_preprocess(p: &crate::ir::Preprocess) -> Result<Self> {
        match (p.force_color, p.force_gray) {
            (true, true) => {
                bail!("transform_param sets both force_color and force_gray; Caffe refuses that")
            }
            (true, false) => Ok(ColorMode::Color),
            (false, true) => Ok(ColorMode::Gray),
            (false, false) => Ok(ColorMode::Native),
        }
    }
}

/// Memory layout of an image array (.npy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `(N, H, W, C)`: what numpy / PIL / TensorFlow users have.
    #[default]
    Nhwc,
    /// `(N, C, H, W)`: Caffe's own layout.
    Nchw,
}

impl std::str::FromStr for Layout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nhwc" | "hwc" => Ok(Layout::Nhwc),
            "nchw" | "chw" => Ok(Layout::Nchw),
            _ => bail!("layout '{s}': expected 'nhwc' or 'nchw'"),
        }
    }
}

/// What the user pointed at, with the options that help read it.
#[derive(Debug, Clone, Default)]
pub struct DataSpec {
    pub path: PathBuf,
    /// Labels file (.npy or IDX labels); guessed beside the images when absent.
    pub labels: Option<PathBuf>,
    pub layout: Layout,
    /// Class names, one per line (label = line number from 0), for folder trees.
    pub classes: Option<PathBuf>,
    pub channel_order: Option<ChannelOrder>,
    pub color: ColorMode,
}

impl DataSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataSpec {
            path: path.into(),
            ..Default::default()
        }
    }
}

/// Open a data set, choosing the reader from what the path is:
/// a directory holding `data.mdb` or an LMDB file (`*.mdb`) → Caffe LMDB; a directory of class
/// folders → folder tree; a directory of `*.bin` or a `*.bin` file → CIFAR-10 binary;
/// `*.npy` → numpy array; a file whose name contains `idx3-ubyte` → MNIST IDX.
pub fn open(spec: &DataSpec) -> Result<Box<dyn Source>> {
    let p = &spec.path;
    let src: Box<dyn Source> = if p.is_dir() {
        if p.join("data.mdb").is_file() {
            Box::new(lmdb::LmdbSource::open(p, spec.color, spec.channel_order)?)
        } else if cifar::dir_batches(p)?.is_some() {
            Box::new(cifar::CifarSource::open(p, spec.channel_order)?)
        } else if has_subdirs(p)? {
            Box::new(folder::FolderSource::open(
                p,
                spec.classes.as_deref(),
                spec.color,
                spec.channel_order,
            )?)
        } else {
            bail!(
                "{}: a data directory must hold an LMDB (data.mdb), CIFAR-10 batches (*.bin) or one sub-folder of images per class; this one holds none of them",
                p.display()
            )
        }
    } else if p.is_file() {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".npy") {
            Box::new(npy::NpySource::open(
                p,
                spec.labels.as_deref(),
                spec.layout,
                spec.channel_order,
            )?)
        } else if name.contains("idx3-ubyte") || name.ends_with(".idx3") {
            Box::new(idx::IdxSource::open(p, spec.labels.as_deref())?)
        } else if name.ends_with(".bin") {
            Box::new(cifar::CifarSource::open(p, spec.channel_order)?)
        } else if name.ends_with(".mdb") {
            Box::new(lmdb::LmdbSource::open(p, spec.color, spec.channel_order)?)
        } else {
            bail!(
                "{}: unknown data format; expected an LMDB directory (with data.mdb), a folder of class folders, a .npy array, an MNIST *-idx3-ubyte file or a CIFAR-10 .bin batch",
                p.display()
            )
        }
    } else {
        bail!("the data path {} does not exist", p.display())
    };
    finish(src)
}

/// Refuse empty sets and add the shape check; shared by [`open`] and [`layer::open_layer`].
pub(crate) fn finish(src: Box<dyn Source>) -> Result<Box<dyn Source>> {
    if src.is_empty() {
        bail!("{}: the data set is empty", src.describe());
    }
    Ok(Box::new(Uniform::new(src)))
}

fn has_subdirs(p: &Path) -> Result<bool> {
    for e in
        std::fs::read_dir(p).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", p.display()))?
    {
        if e?.path().is_dir() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests;
