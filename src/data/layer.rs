//! The model's own TEST data layer as a source: `Data` (LMDB), `ImageData` (list file of
//! `path label` lines) and `HDF5Data` (list file of .h5 paths). Paths are used as Caffe uses
//! them (relative to the working directory; `root_folder` is a plain string prefix). Prototxts
//! often point at paths of the machine they were trained on, so every "not found" error says
//! that `--data PATH` overrides the layer.

use super::{
    check_index, folder, imgops, lmdb, ChannelOrder, ColorMode, Image, OrderPolicy, Pixels, Sample,
    Source,
};
use crate::ir::DataLayerSource;
use anyhow::{anyhow, bail, ensure, Result};
use std::path::{Path, PathBuf};

/// Options that the layer itself does not carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerOptions {
    /// Colour handling of encoded Datums (from transform_param's force_color/force_gray).
    pub color: ColorMode,
    pub channel_order: Option<ChannelOrder>,
}

fn missing(kind: &str, path: &str) -> anyhow::Error {
    anyhow!("the prototxt's {kind} source '{path}' does not exist here; pass --data PATH to read the data from elsewhere")
}

/// Open the data a TEST data layer names.
pub fn open_layer(layer: &DataLayerSource, opts: &LayerOptions) -> Result<Box<dyn Source>> {
    let src: Box<dyn Source> = match layer {
        DataLayerSource::Db { source, backend } => {
            if !backend.eq_ignore_ascii_case("LMDB") {
                bail!(
                    "the prototxt's Data layer uses the {backend} backend '{source}', which nnquant cannot read; convert it to LMDB (Caffe's convert_imageset -backend lmdb) or pass --data PATH (LMDB, .npy, image folders ...)"
                );
            }
            if !Path::new(source).exists() {
                return Err(missing("Data layer", source));
            }
            Box::new(lmdb::LmdbSource::open(
                Path::new(source),
                opts.color,
                opts.channel_order,
            )?)
        }
        DataLayerSource::ImageList {
            source,
            root_folder,
            new_height,
            new_width,
            is_color,
        } => {
            if !Path::new(source).is_file() {
                return Err(missing("ImageData layer", source));
            }
            Box::new(ImageListSource::open(
                Path::new(source),
                root_folder,
                (*new_height, *new_width),
                if *is_color {
                    ColorMode::Color
                } else {
                    ColorMode::Gray
                },
                opts.channel_order,
            )?)
        }
        DataLayerSource::Hdf5List { source } => {
            if !Path::new(source).is_file() {
                return Err(missing("HDF5Data layer", source));
            }
            Box::new(Hdf5Source::open(Path::new(source), opts.channel_order)?)
        }
    };
    super::finish(src)
}

/// Caffe's `ImageData` layer: `path label` per line (split at the last space), images decoded
/// as OpenCV would (colour or gray), resized with bilinear interpolation when a size is set.
pub struct ImageListSource {
    list: PathBuf,
    items: Vec<(PathBuf, i64)>,
    resize: Option<(usize, usize)>,
    color: ColorMode,
    order: OrderPolicy,
}

impl ImageListSource {
    pub fn open(
        list: &Path,
        root_folder: &str,
        new_hw: (usize, usize),
        color: ColorMode,
        order: Option<ChannelOrder>,
    ) -> Result<Self> {
        let shown = list.display();
        let text = crate::fsio::read_text(list, "the image list")?;
        let mut items = Vec::new();
        for (ln, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            let (path, label) = line.rsplit_once(' ').ok_or_else(|| {
                anyhow!("{shown}:{}: expected 'path label', got '{line}'", ln + 1)
            })?;
            let label: i64 = label
                .trim()
                .parse()
                .map_err(|_| anyhow!("{shown}:{}: label '{label}' is not an integer", ln + 1))?;
            items.push((PathBuf::from(format!("{root_folder}{path}")), label));
        }
        let resize = match new_hw {
            (0, 0) => None,
            (h, w) if h > 0 && w > 0 => Some((h, w)),
            (h, w) => bail!(
                "ImageData new_height {h} / new_width {w}: set both or neither (as Caffe requires)"
            ),
        };
        Ok(ImageListSource {
            list: list.to_path_buf(),
            items,
            resize,
            color,
            order: OrderPolicy::new(order),
        })
    }
}

impl Source for ImageListSource {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn describe(&self) -> String {
        format!(
            "image list {} ({} images)",
            self.list.display(),
            self.items.len()
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.items.len(), &self.list.display())?;
        let (path, label) = &self.items[index];
        if !path.is_file() {
            bail!(
                "{}: line for image {index} names {}, which does not exist; fix root_folder or pass --data PATH",
                self.list.display(),
                path.display()
            );
        }
        // Resize happens on the decoded (RGB) image; the order rule is applied after, both commute.
        let mut img =
            folder::load_image(path, self.color, OrderPolicy::new(Some(ChannelOrder::Rgb)))?;
        if let Some((h, w)) = self.resize {
            img = imgops::resize_bilinear(&img, h, w)?;
        }
        self.order.decoded(&mut img);
        Ok(Sample {
            image: img,
            label: Some(*label),
        })
    }
}

struct H5File {
    path: PathBuf,
    n: usize,
    first: usize,
}

/// Caffe's `HDF5Data` layer: each listed file holds `data` (N,C,H,W) (or (N,D)) floats and
/// `label` (N) or (N,1). One file at a time is held in memory, as Caffe does.
pub struct Hdf5Source {
    list: PathBuf,
    files: Vec<H5File>,
    n: usize,
    chw: [usize; 3],
    /// Index of the loaded file, its data and labels.
    loaded: Option<(usize, Vec<f32>, Vec<f32>)>,
    order: OrderPolicy,
}

fn h5_err(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{}: cannot read the HDF5 file ({e})", path.display())
}

fn h5_shape(f: &hdf5_pure::File, path: &Path, name: &str) -> Result<Vec<usize>> {
    let ds = f.dataset(name).map_err(|_| {
        anyhow!(
            "{}: no '{name}' dataset (Caffe's HDF5Data layer needs 'data' and 'label')",
            path.display()
        )
    })?;
    Ok(ds
        .shape()
        .map_err(|e| h5_err(path, e))?
        .into_iter()
        .map(|d| d as usize)
        .collect())
}

impl Hdf5Source {
    pub fn open(list: &Path, order: Option<ChannelOrder>) -> Result<Self> {
        let shown = list.display();
        let text = crate::fsio::read_text(list, "the HDF5 list")?;
        let mut files = Vec::new();
        let mut n = 0;
        let mut chw = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let path = PathBuf::from(line);
            if !path.is_file() {
                bail!("{shown} lists {line}, which does not exist; pass --data PATH to read the data from elsewhere");
            }
            let f = hdf5_pure::File::open(&path).map_err(|e| h5_err(&path, e))?;
            let ds = h5_shape(&f, &path, "data")?;
            let ls = h5_shape(&f, &path, "label")?;
            let (count, this) = match *ds.as_slice() {
                [k, c, h, w] => (k, [c, h, w]),
                [k, d] => (k, [d, 1, 1]),
                _ => bail!(
                    "{}: 'data' has shape {ds:?}; expected (N,C,H,W) or (N,D)",
                    path.display()
                ),
            };
            ensure!(
                ls.first() == Some(&count) && ls.iter().skip(1).all(|&d| d == 1),
                "{}: 'label' has shape {ls:?} but 'data' holds {count} samples; expected ({count},) or ({count},1)",
                path.display()
            );
            match chw {
                None => chw = Some(this),
                Some(prev) => ensure!(
                    prev == this,
                    "{}: images are {this:?} but earlier files hold {prev:?}",
                    path.display()
                ),
            }
            files.push(H5File {
                path,
                n: count,
                first: n,
            });
            n += count;
        }
        Ok(Hdf5Source {
            list: list.to_path_buf(),
            files,
            n,
            chw: chw.unwrap_or([0, 0, 0]),
            loaded: None,
            order: OrderPolicy::new(order),
        })
    }
}

impl Source for Hdf5Source {
    fn len(&self) -> usize {
        self.n
    }
    fn describe(&self) -> String {
        format!(
            "HDF5 list {} ({} files, {} samples)",
            self.list.display(),
            self.files.len(),
            self.n
        )
    }
    fn read(&mut self, index: usize) -> Result<Sample> {
        check_index(index, self.n, &self.list.display())?;
        let k = self.files.partition_point(|f| f.first <= index) - 1;
        if self.loaded.as_ref().map(|l| l.0) != Some(k) {
            let f = &self.files[k];
            let h = hdf5_pure::File::open(&f.path).map_err(|e| h5_err(&f.path, e))?;
            let data = h
                .dataset("data")
                .and_then(|d| d.read_f32())
                .map_err(|e| h5_err(&f.path, e))?;
            let label = h
                .dataset("label")
                .and_then(|d| d.read_f32())
                .map_err(|e| h5_err(&f.path, e))?;
            ensure!(
                data.len() == f.n * self.chw.iter().product::<usize>() && label.len() == f.n,
                "{}: dataset sizes do not match their shapes",
                f.path.display()
            );
            self.loaded = Some((k, data, label));
        }
        let (_, data, label) = self.loaded.as_ref().expect("loaded above");
        let per: usize = self.chw.iter().product();
        let j = index - self.files[k].first;
        let [c, h, w] = self.chw;
        let mut image = Image {
            channels: c,
            height: h,
            width: w,
            pixels: Pixels::F32(data[j * per..(j + 1) * per].to_vec()),
        };
        self.order.stored(&mut image);
        Ok(Sample {
            image,
            label: Some(label[j] as i64),
        })
    }
}
