//! The proof: nnquant's q7 simulator reproduces CMSIS-NN 5.6 legacy q7 kernels (portable C) on
//! ARM's CIFAR-10 model, byte for byte, on all 1017 test images and on every intermediate tensor
//! of the first 8. Needs `../shared` (`NNQUANT_SHARED`).

use nnquant::caffe::{load_model, read_blob_file, LoadOptions};
use nnquant::fixed::{
    chw_to_hwc, kernels, run_reference, Formats, InputScale, Keep, QGraph, QOp, Simulator,
};
use std::io::Read;
use std::path::Path;

fn npy(path: &Path) -> (Vec<u64>, npyz::NpyFile<std::io::BufReader<std::fs::File>>) {
    let f = std::io::BufReader::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    );
    let n = npyz::NpyFile::new(f).unwrap();
    (n.shape().to_vec(), n)
}

/// Entries of a .npz (zip of .npy, stored or deflated), read from its central directory.
fn npz_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let b = std::fs::read(path).unwrap();
    let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize;
    let eocd = (0..b.len() - 21)
        .rev()
        .find(|&o| u32at(o) == 0x0605_4b50)
        .expect("zip end record");
    let (count, mut p) = (u16at(eocd + 10), u32at(eocd + 16));
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(u32at(p), 0x0201_4b50, "zip central directory");
        let (method, csize) = (u16at(p + 10), u32at(p + 20));
        let (nl, el, cl, local) = (u16at(p + 28), u16at(p + 30), u16at(p + 32), u32at(p + 42));
        let name = String::from_utf8(b[p + 46..p + 46 + nl].to_vec()).unwrap();
        let data_at = local + 30 + u16at(local + 26) + u16at(local + 28);
        let raw = &b[data_at..data_at + csize];
        let data = match method {
            0 => raw.to_vec(),
            8 => {
                let mut v = Vec::new();
                flate2::read::DeflateDecoder::new(raw)
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            m => panic!("zip method {m}"),
        };
        out.push((name.trim_end_matches(".npy").to_string(), data));
        p += 46 + nl + el + cl;
    }
    out
}

struct Arm {
    q: QGraph,
    /// q7 HWC inputs of the 1017 test images.
    input: Vec<i8>,
    labels: Vec<i64>,
}

fn setup() -> Arm {
    let shared = nnquant::shared_dir();
    let m = shared.join("models/arm-cifar10-m4");
    let g = load_model(
        &m.join("cifar10_m4_train_test.prototxt"),
        &LoadOptions {
            weights: Some(&m.join("cifar10_m4_iter_70000.caffemodel.h5")),
            input_shape: Some(vec![3, 32, 32]),
        },
    )
    .unwrap();
    let formats = Formats::from_json_file(&m.join("arm-formats.json")).unwrap();
    let q = QGraph::quantize(&g, &formats).unwrap();
    // Mean: BlobProto 1×3×32×32 CHW float, integral values -> u8 HWC.
    let mean = read_blob_file(&m.join("mean.binaryproto")).unwrap();
    assert_eq!(mean.len(), 3 * 32 * 32);
    assert!(
        mean.data
            .iter()
            .all(|v| v.fract() == 0.0 && (0.0..=255.0).contains(v)),
        "mean is integral u8"
    );
    let mean_u8: Vec<u8> = chw_to_hwc(&mean.data, 3, 32, 32)
        .iter()
        .map(|&v| v as u8)
        .collect();
    let (shape, f) = npy(&shared.join("data/cifar10/test_1017_u8_hwc.npy"));
    assert_eq!(shape, vec![1017, 32, 32, 3]);
    let pixels: Vec<u8> = f.into_vec().unwrap();
    let sc = InputScale::new(1.0, q.frac_bits("data").unwrap()).unwrap();
    assert_eq!((sc.mul, sc.rshift), (1, 0));
    let mut input = vec![0i8; pixels.len()];
    for (p, o) in pixels.chunks(3072).zip(input.chunks_mut(3072)) {
        kernels::input_u8_q7(p, &mean_u8, sc.mul, sc.rshift, o).unwrap();
    }
    let (_, f) = npy(&shared.join("data/cifar10/test_1017_labels.npy"));
    let labels: Vec<i64> = match f.dtype() {
        npyz::DType::Plain(t) if t.size_field() == 1 => f
            .into_vec::<u8>()
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect(),
        npyz::DType::Plain(t) if t.size_field() == 4 => f
            .into_vec::<i32>()
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect(),
        _ => f.into_vec::<i64>().unwrap(),
    };
    Arm { q, input, labels }
}

#[test]
#[ignore = "needs ../shared"]
fn arm_formats_reproduce_cmsis_q7_byte_for_byte() {
    let a = setup();
    let ref_dir = nnquant::shared_dir().join("models/arm-cifar10-m4/reference");
    let sim = Simulator::new(&a.q).unwrap();

    // Every intermediate tensor of the first 8 images, fast simulator and reference kernels.
    let n8 = 8;
    let fast = sim.run(&a.input[..n8 * 3072], n8, &Keep::All).unwrap();
    let slow = run_reference(&a.q, &a.input[..n8 * 3072], n8).unwrap();
    let trace = npz_entries(&ref_dir.join("cmsis_q7_portable_trace_first8.npz"));
    assert_eq!(trace.len(), 11);
    for (key, bytes) in &trace {
        let blob = if key == "data_q7" {
            "data"
        } else {
            key.as_str()
        };
        let want: Vec<i8> = npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap();
        let got = fast.get(blob).unwrap_or_else(|| panic!("no blob {blob}"));
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(got.len(), want.len(), "{key}: length");
        assert_eq!(diff, 0, "{key}: {diff} bytes differ from CMSIS's trace");
        assert_eq!(
            slow.get(blob).unwrap(),
            got,
            "{key}: simulator vs kernels.rs"
        );
    }

    // All 1017 logits.
    let out = sim.run(&a.input, 1017, &Keep::Outputs).unwrap();
    assert_eq!(a.q.outputs, vec!["ip1".to_string()]);
    let got = out.get("ip1").unwrap();
    let (shape, f) = npy(&ref_dir.join("cmsis_q7_portable_logits_test1017.npy"));
    assert_eq!(shape, vec![1017, 10]);
    let want: Vec<i8> = f.into_vec().unwrap();
    let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(
        diff,
        0,
        "{diff} of {} logits bytes differ from CMSIS-NN",
        want.len()
    );
    assert_eq!(got, &want[..]);

    // Top-1 (first maximum wins, like arg-max in the firmware).
    let correct = got
        .chunks(10)
        .zip(&a.labels)
        .filter(|(l, &y)| {
            let best = l
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > l[b] { i } else { b });
            best as i64 == y
        })
        .count();
    let top1 = 100.0 * correct as f64 / 1017.0;
    eprintln!("q7 top-1 with ARM's formats: {top1:.2} % ({correct}/1017)");
    assert_eq!(correct, 808, "79.45 % expected");
}

#[test]
#[ignore = "needs ../shared"]
fn weights_land_on_arms_quantized_grid() {
    // ARM's quantized caffemodel holds the same weights already rounded onto its grids:
    // quantizing it must give the very bytes we get from the float weights.
    let a = setup();
    let m = nnquant::shared_dir().join("models/arm-cifar10-m4");
    let g = load_model(
        &m.join("cifar10_m4_train_test.prototxt"),
        &LoadOptions {
            weights: Some(&m.join("quantized_cifar10_m4_iter_70000.caffemodel")),
            input_shape: Some(vec![3, 32, 32]),
        },
    )
    .unwrap();
    let formats = Formats::from_json_file(&m.join("arm-formats.json")).unwrap();
    let q2 = QGraph::quantize(&g, &formats).unwrap();
    for (l1, l2) in a.q.layers.iter().zip(&q2.layers) {
        match (&l1.op, &l2.op) {
            (QOp::Conv(c1), QOp::Conv(c2)) => {
                assert_eq!(c1.weights, c2.weights, "{} weights", l1.name);
                assert_eq!(c1.bias, c2.bias, "{} bias", l1.name);
            }
            (QOp::Fc(f1), QOp::Fc(f2)) => {
                assert_eq!(f1.weights, f2.weights, "{} weights", l1.name);
                assert_eq!(f1.bias, f2.bias, "{} bias", l1.name);
            }
            (o1, o2) => assert_eq!(o1, o2),
        }
    }
    // And ARM's grid values are exactly representable: q / 2^n reproduces them.
    for n in g.nodes.iter().filter(|n| !n.weights.is_empty()) {
        let lf = &formats.layers[&n.name];
        let s = (lf.weight_frac_bits.first() as f64).exp2();
        assert!(
            n.weights[0]
                .data
                .iter()
                .all(|w| (*w as f64 * s).fract() == 0.0),
            "{}: weights off ARM's grid",
            n.name
        );
    }
}

#[test]
#[ignore = "needs ../shared"]
fn formats_round_trip_through_json() {
    let a = setup();
    let back = QGraph::from_json(&a.q.to_json().unwrap()).unwrap();
    assert_eq!(back, a.q);
}
