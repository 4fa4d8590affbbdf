//! Caffe's `Datum` records (the values of a Caffe LMDB), decoded into plain Rust values.

use super::proto::Datum;
use crate::ir::shape::checked_count;
use anyhow::{ensure, Result};
use prost::Message;

/// Pixel payload of a datum.
#[derive(Debug, Clone, PartialEq)]
pub enum DatumPixels {
    /// CHW uint8 bytes.
    U8(Vec<u8>),
    /// CHW float values.
    F32(Vec<f32>),
    /// An encoded image file (PNG/JPEG bytes) to decode.
    Encoded(Vec<u8>),
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct DatumRecord {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: DatumPixels,
    pub label: i64,
}

/// Decode and validate one Datum; `what` names the record in error messages.
pub fn decode_datum(bytes: &[u8], what: &str) -> Result<DatumRecord> {
    let d = Datum::decode(bytes)
        .map_err(|e| anyhow::anyhow!("{what}: not a valid Caffe Datum ({e})"))?;
    let dim = |v: i64, n: &str| -> Result<usize> {
        usize::try_from(v).map_err(|_| anyhow::anyhow!("{what}: negative {n} {v}"))
    };
    let (channels, height, width) = (
        dim(d.channels(), "channels")?,
        dim(d.height(), "height")?,
        dim(d.width(), "width")?,
    );
    let pixels = if d.encoded() {
        DatumPixels::Encoded(d.data().to_vec())
    } else {
        let count = checked_count(&[channels, height, width])?;
        ensure!(
            count > 0,
            "{what}: datum has zero size {channels}×{height}×{width}"
        );
        if !d.data().is_empty() {
            ensure!(
                d.data().len() == count,
                "{what}: datum says {channels}×{height}×{width} = {count} bytes but holds {}",
                d.data().len()
            );
            DatumPixels::U8(d.data().to_vec())
        } else {
            ensure!(
                d.float_data.len() == count,
                "{what}: datum says {channels}×{height}×{width} = {count} values but holds {} float values",
                d.float_data.len()
            );
            DatumPixels::F32(d.float_data.clone())
        }
    };
    Ok(DatumRecord {
        channels,
        height,
        width,
        pixels,
        label: d.label(),
    })
}

/// Encode a datum (used by tests and fixtures that write a Caffe LMDB).
pub fn encode_datum(
    channels: usize,
    height: usize,
    width: usize,
    chw: &[u8],
    label: i64,
) -> Vec<u8> {
    Datum {
        channels: Some(channels as i64),
        height: Some(height as i64),
        width: Some(width as i64),
        data: Some(chw.to_vec()),
        label: Some(label),
        float_data: vec![],
        encoded: Some(false),
    }
    .encode_to_vec()
}
