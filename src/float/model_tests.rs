//! End-to-end checks of the engine on real models against independent references: the project's
//! demo glyph model (always) and ARM's CIFAR-10 model (needs `../shared`).

use super::{Engine, Isa, Keep};
use crate::caffe::{load_model, read_blob_file, LoadOptions};
use std::path::Path;

fn read_npy<T: npyz::Deserialize>(path: &Path) -> (Vec<usize>, Vec<T>) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(std::io::BufReader::new(f)).expect("npy header");
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec().expect("npy data"))
}

/// HWC u8 images → NCHW f32 via `f(channel, chw_index_in_image, pixel)`.
fn hwc_to_nchw(px: &[u8], shape: &[usize], f: impl Fn(usize, usize, u8) -> f32) -> Vec<f32> {
    let [n, h, w, c] = shape[..] else {
        panic!("expected N×H×W×C, got {shape:?}")
    };
    let mut out = vec![0.0; px.len()];
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let chw = (ch * h + y) * w + x;
                    out[i * h * w * c + chw] = f(ch, chw, px[((i * h + y) * w + x) * c + ch]);
                }
            }
        }
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

/// Max |a-b| over all logits and the number of correct top-1 predictions.
fn compare(logits: &[f32], reference: &[f32], labels: &[u8]) -> (f32, usize) {
    assert_eq!(logits.len(), reference.len());
    let classes = logits.len() / labels.len();
    let diff = logits
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let correct = logits
        .chunks(classes)
        .zip(labels)
        .filter(|(l, &y)| argmax(l) == y as usize)
        .count();
    (diff, correct)
}

#[test]
fn glyphs_demo_model_matches_numpy_reference() {
    let dir = crate::test_models::glyphs_dir();
    let g = crate::test_models::glyphs();
    let (shape, px) = read_npy::<u8>(&dir.join("test_u8_hwc.npy"));
    let input = hwc_to_nchw(&px, &shape, |_, _, p| (p as f32 - 128.0) * 0.0078125);
    let engine = Engine::new(&g).unwrap();
    let acts = engine.forward(&input, shape[0], Keep::Outputs).unwrap();
    assert_eq!(g.outputs, vec!["ip1".to_string()]);
    let (_, reference) = read_npy::<f32>(&dir.join("test_float_logits.npy"));
    let (_, labels) = read_npy::<u8>(&dir.join("test_labels.npy"));
    let (diff, correct) = compare(&acts.blobs["ip1"], &reference, &labels);
    assert!(diff <= 1e-4, "max |logit - reference| = {diff}");
    assert_eq!(correct, 294, "top-1 on the 300 glyph test images");
    // Keep::All returns every blob with the same outputs.
    let all = engine.forward(&input[..5 * 768], 5, Keep::All).unwrap();
    assert_eq!(all.blobs.len(), 1 + g.nodes.len());
    // The general NCHW kernels and the NHWC fast path add in different orders: equal to 1e-5
    // relative.
    assert_eq!(
        engine.fast_path().is_some(),
        Isa::detect() != Isa::Portable,
        "the glyph model is a chain: fast path wherever SIMD kernels exist"
    );
    for (a, b) in all.blobs["ip1"].iter().zip(&acts.blobs["ip1"][..50]) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert_eq!(all.image("data", 4).unwrap(), &input[4 * 768..5 * 768]);
}

#[test]
fn refuses_a_graph_without_weights() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/glyphs");
    let opts = LoadOptions {
        weights: None,
        input_shape: Some(vec![3, 16, 16]),
    };
    let g = load_model(&dir.join("glyphs.prototxt"), &opts).unwrap();
    let err = Engine::new(&g).err().expect("no weights must be refused");
    assert!(
        format!("{err:#}").contains("no weights attached"),
        "{err:#}"
    );
}

#[test]
#[ignore = "needs ../shared"]
fn arm_cifar10_matches_reference_logits() {
    let shared = crate::shared_dir();
    let model = shared.join("models/arm-cifar10-m4");
    let weights = model.join("cifar10_m4_iter_70000.caffemodel.h5");
    let opts = LoadOptions {
        weights: Some(&weights),
        input_shape: Some(vec![3, 32, 32]),
    };
    let g = load_model(&model.join("cifar10_m4_train_test.prototxt"), &opts).unwrap();
    let mean = read_blob_file(&model.join("mean.binaryproto")).unwrap();
    assert_eq!(mean.data.len(), 3 * 32 * 32);
    let (shape, px) = read_npy::<u8>(&shared.join("data/cifar10/test_1017_u8_hwc.npy"));
    let input = hwc_to_nchw(&px, &shape, |_, chw, p| p as f32 - mean.data[chw]);
    let engine = Engine::new(&g).unwrap();
    let acts = engine.forward(&input, shape[0], Keep::Outputs).unwrap();
    let (_, reference) = read_npy::<f32>(&model.join("reference/float_logits_test1017.npy"));
    let (_, labels) = read_npy::<u8>(&shared.join("data/cifar10/test_1017_labels.npy"));
    let (diff, correct) = compare(&acts.blobs["ip1"], &reference, &labels);
    assert!(diff <= 1e-4, "max |logit - reference| = {diff}");
    assert_eq!(correct, 815, "top-1 on the 1017 CIFAR-10 test images");
}
