//! Writing weights in Caffe's two containers. nnquant reads models, but tests and fixtures need to
//! produce real files of both kinds from one set of weights (and a user may want to convert).

use super::proto::{BlobProto, BlobShape, LayerParameter, NetParameter};
use crate::ir::Tensor;
use anyhow::{Context, Result};
use prost::Message;

fn blob(t: &Tensor) -> BlobProto {
    BlobProto {
        shape: Some(BlobShape {
            dim: t.shape.iter().map(|&d| d as i64).collect(),
        }),
        data: t.data.clone(),
        ..Default::default()
    }
}

/// A binary caffemodel (modern `layer` entries) holding the given layers' blobs, in order.
pub fn encode_caffemodel(name: &str, layers: &[(String, String, Vec<Tensor>)]) -> Vec<u8> {
    NetParameter {
        name: Some(name.to_string()),
        layer: layers
            .iter()
            .map(|(n, ty, blobs)| LayerParameter {
                name: Some(n.clone()),
                r#type: Some(ty.clone()),
                blobs: blobs.iter().map(blob).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// An HDF5 caffemodel (`/data/<layer>/<i>` float32 datasets), as Caffe's HDF5 snapshot writes it.
pub fn encode_hdf5(layers: &[(String, String, Vec<Tensor>)]) -> Result<Vec<u8>> {
    let mut b = hdf5_pure::FileBuilder::new();
    let mut data = b.create_group("data");
    for (n, _, blobs) in layers {
        let mut g = data.create_group(n);
        for (i, t) in blobs.iter().enumerate() {
            let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
            g.create_dataset(&i.to_string())
                .with_f32_data(&t.data)
                .with_shape(&shape);
        }
        data.add_group(g.finish());
    }
    b.add_group(data.finish());
    b.finish().context("cannot serialise the HDF5 file")
}
