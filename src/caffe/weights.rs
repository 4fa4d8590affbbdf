//! Learned weights from a binary `.caffemodel` (NetParameter protobuf, `layer` or legacy V1
//! `layers`) or from Caffe's HDF5 snapshot (`/data/<layer>/<blob index>`). The format is chosen by
//! content (the HDF5 signature), not by file extension.

use super::proto::{BlobProto, NetParameter};
use crate::ir::{shape::checked_count, Tensor};
use anyhow::{bail, ensure, Context, Result};
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;

/// Which container the weights came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum WeightFormat {
    Protobuf,
    Hdf5,
}

/// Learned blobs by layer name, in Caffe's blob order.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSet {
    pub format: WeightFormat,
    pub layers: BTreeMap<String, Vec<Tensor>>,
}

/// Convert one BlobProto into a tensor, checking that its declared shape matches its data.
pub fn blob_to_tensor(b: &BlobProto, what: &str) -> Result<Tensor> {
    let shape: Vec<usize> = match &b.shape {
        Some(s) => s
            .dim
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| anyhow::anyhow!("{what}: negative dimension {d}"))
            })
            .collect::<Result<_>>()?,
        None => {
            // Legacy 4-D description; Caffe treats missing fields as 0 only when no data follows.
            let legacy = [b.num(), b.channels(), b.height(), b.width()];
            let dims: Vec<usize> = legacy
                .iter()
                .map(|&d| {
                    usize::try_from(d)
                        .map_err(|_| anyhow::anyhow!("{what}: negative dimension {d}"))
                })
                .collect::<Result<_>>()?;
            if dims.iter().all(|&d| d == 0) {
                vec![b.data.len().max(b.double_data.len())]
            } else {
                dims
            }
        }
    };
    let count = checked_count(&shape).with_context(|| what.to_string())?;
    let data: Vec<f32> = if !b.data.is_empty() {
        b.data.clone()
    } else {
        b.double_data.iter().map(|&v| v as f32).collect()
    };
    ensure!(
        data.len() == count,
        "{what}: the blob declares shape {shape:?} ({count} values) but holds {} values",
        data.len()
    );
    check_finite(&data, what)?;
    Ok(Tensor::new(shape, data))
}

/// Refuse NaN and infinite values, naming the first one.
pub fn check_finite(data: &[f32], what: &str) -> Result<()> {
    if let Some((i, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        bail!("{what}: value {i} is {v}; weights must be finite numbers (the model file is corrupt or training diverged)");
    }
    Ok(())
}

/// Decode a binary caffemodel.
pub fn parse_caffemodel(bytes: &[u8], origin: &str) -> Result<WeightSet> {
    let net = NetParameter::decode(bytes).map_err(|e| {
        anyhow::anyhow!("{origin}: not a valid binary caffemodel (protobuf decoding failed: {e}); the file is truncated or corrupt, or not a Caffe model")
    })?;
    let mut layers = BTreeMap::new();
    let mut push = |name: &str, blobs: &[BlobProto]| -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let t = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| blob_to_tensor(b, &format!("{origin}: layer '{name}' blob {i}")))
            .collect::<Result<Vec<_>>>()?;
        layers.insert(name.to_string(), t);
        Ok(())
    };
    for l in &net.layer {
        push(l.name(), &l.blobs)?;
    }
    for l in &net.layers {
        push(l.name(), &l.blobs)?;
    }
    if net.layer.is_empty() && net.layers.is_empty() {
        bail!("{origin}: the caffemodel holds no layers (empty, truncated or not a Caffe model)");
    }
    Ok(WeightSet {
        format: WeightFormat::Protobuf,
        layers,
    })
}

fn hdf5_err(origin: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{origin}: cannot read the HDF5 caffemodel ({e}); the file is truncated or corrupt"
    )
}

/// Decode an HDF5 caffemodel held in memory.
pub fn parse_hdf5(bytes: Vec<u8>, origin: &str) -> Result<WeightSet> {
    let file_len = bytes.len();
    let file = hdf5_pure::File::from_bytes(bytes).map_err(|e| hdf5_err(origin, e))?;
    let data = file.group("data").map_err(|_| {
        anyhow::anyhow!(
            "{origin}: the HDF5 file has no /data group, so it is not a Caffe HDF5 caffemodel"
        )
    })?;
    let mut layers = BTreeMap::new();
    for layer in data.groups().map_err(|e| hdf5_err(origin, e))? {
        let g = data.group(&layer).map_err(|e| hdf5_err(origin, e))?;
        let mut names = g.datasets().map_err(|e| hdf5_err(origin, e))?;
        if names.is_empty() {
            continue;
        }
        // Blobs are named 0, 1, 2 ...; sort numerically and insist on no gaps.
        let mut idx: Vec<(usize, String)> = names
            .drain(..)
            .map(|n| {
                n.parse::<usize>().map(|i| (i, n.clone())).map_err(|_| {
                    anyhow::anyhow!("{origin}: /data/{layer}/{n} is not a numbered blob")
                })
            })
            .collect::<Result<_>>()?;
        idx.sort();
        let mut blobs = Vec::new();
        for (k, (i, n)) in idx.iter().enumerate() {
            ensure!(
                *i == k,
                "{origin}: layer '{layer}' has blob {i} but no blob {k}"
            );
            let what = format!("{origin}: /data/{layer}/{n}");
            let ds = g.dataset(n).map_err(|e| hdf5_err(&what, e))?;
            let shape: Vec<usize> = ds
                .shape()
                .map_err(|e| hdf5_err(&what, e))?
                .into_iter()
                .map(|d| usize::try_from(d).unwrap_or(usize::MAX))
                .collect();
            let count = checked_count(&shape).with_context(|| what.clone())?;
            // An uncompressed float32 dataset cannot be larger than the file that holds it:
            // refuse corrupt shapes before the reader allocates for them.
            ensure!(
                count.saturating_mul(4) <= file_len,
                "{what}: declared shape {shape:?} is larger than the file; the file is corrupt"
            );
            let values = ds.read_f32().map_err(|e| hdf5_err(&what, e))?;
            ensure!(
                values.len() == count,
                "{what}: shape {shape:?} but {} values",
                values.len()
            );
            check_finite(&values, &what)?;
            blobs.push(Tensor::new(shape, values));
        }
        layers.insert(layer, blobs);
    }
    Ok(WeightSet {
        format: WeightFormat::Hdf5,
        layers,
    })
}

/// Read a weights file, choosing the decoder by content.
pub fn read_weights(path: &Path) -> Result<WeightSet> {
    let bytes = crate::fsio::read(path, "the weights file")?;
    let origin = path.display().to_string();
    if bytes.is_empty() {
        bail!("the weights file {origin} is empty");
    }
    if hdf5_pure::is_hdf5_bytes(&bytes) {
        parse_hdf5(bytes, &origin)
    } else {
        parse_caffemodel(&bytes, &origin)
    }
}

/// Read a BlobProto file (Caffe's `mean.binaryproto`).
pub fn read_blob_file(path: &Path) -> Result<Tensor> {
    let bytes = crate::fsio::read(path, "the blob file")?;
    ensure!(
        !bytes.is_empty(),
        "the blob file {} is empty",
        path.display()
    );
    let b = BlobProto::decode(bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("{}: not a valid BlobProto ({e})", path.display()))?;
    blob_to_tensor(&b, &path.display().to_string())
}
