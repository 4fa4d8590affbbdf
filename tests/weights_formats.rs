//! The same weights written as a binary caffemodel and as an HDF5 caffemodel load to identical
//! values; the parsers never panic on random bytes or text.

mod common;
use common::*;
use nnquant::caffe::{self, weights, LoadOptions};
use proptest::prelude::*;

#[test]
fn protobuf_and_hdf5_weights_load_identically() {
    let f = Fixture::new();
    let (p, w, h) = f.tiny();
    let a = caffe::load_model(
        &p,
        &LoadOptions {
            weights: Some(&w),
            input_shape: None,
        },
    )
    .unwrap();
    let b = caffe::load_model(
        &p,
        &LoadOptions {
            weights: Some(&h),
            input_shape: None,
        },
    )
    .unwrap();
    assert_eq!(a, b);
    let expected = tiny_weights();
    assert_eq!(a.node("conv1").unwrap().weights, expected[0].2);
    assert_eq!(a.node("ip1").unwrap().weights, expected[1].2);
    assert_eq!(
        weights::read_weights(&w).unwrap().format,
        weights::WeightFormat::Protobuf
    );
    assert_eq!(
        weights::read_weights(&h).unwrap().format,
        weights::WeightFormat::Hdf5
    );
}

#[test]
fn format_is_chosen_by_content_not_extension() {
    let f = Fixture::new();
    let (p, _, h) = f.tiny();
    let renamed = f.write("weights.caffemodel", std::fs::read(h).unwrap());
    let g = caffe::load_model(
        &p,
        &LoadOptions {
            weights: Some(&renamed),
            input_shape: None,
        },
    )
    .unwrap();
    assert_eq!(g.node("ip1").unwrap().weights[0].shape, vec![5, 64]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn caffemodel_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = weights::parse_caffemodel(&bytes, "fuzz");
    }

    #[test]
    fn hdf5_parser_never_panics_on_mutations(pos in 0usize..4096, val in any::<u8>(), cut in 8usize..4096) {
        let mut bytes = nnquant::caffe::write::encode_hdf5(&tiny_weights()).unwrap();
        let n = bytes.len();
        bytes[pos % n] = val;
        bytes.truncate(cut.min(n));
        let _ = weights::parse_hdf5(bytes, "fuzz");
    }

    #[test]
    fn prototxt_parser_never_panics(text in "[a-z_{}:\"0-9 \\n.-]{0,200}") {
        if let Ok(net) = caffe::prototxt::parse_net_text(&text, "fuzz") {
            let _ = caffe::convert::lower(&net);
        }
    }

    #[test]
    fn mutated_prototxt_never_panics(pos in 0usize..600, ch in "[a-z0-9{}:\" ]") {
        let mut t: Vec<char> = TINY_PROTOTXT.chars().collect();
        let i = pos % t.len();
        t[i] = ch.chars().next().unwrap();
        let text: String = t.into_iter().collect();
        if let Ok(net) = caffe::prototxt::parse_net_text(&text, "fuzz") {
            if let Ok(mut g) = caffe::convert::lower(&net) {
                let _ = nnquant::ir::shape::infer(&mut g);
            }
        }
    }
}
