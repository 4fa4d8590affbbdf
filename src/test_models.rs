//! Models the unit tests share: the repository's own `testdata/`.

use crate::caffe::{load_model, LoadOptions};
use crate::ir::Graph;
use std::path::{Path, PathBuf};

/// `testdata/glyphs`.
pub(crate) fn glyphs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/glyphs")
}

/// The glyphs demo's float graph with its weights (3×16×16 input).
pub(crate) fn glyphs() -> Graph {
    let dir = glyphs_dir();
    let weights = dir.join("glyphs.caffemodel");
    let opts = LoadOptions {
        weights: Some(&weights),
        input_shape: Some(vec![3, 16, 16]),
    };
    load_model(&dir.join("glyphs.prototxt"), &opts).expect("testdata/glyphs loads")
}
