//! The q7 ops of issue 8 beyond `tests/new_ops.rs`: Deconvolution (float and q7), LRN (across
//! and within channels), Eltwise PROD, a standalone Scale/Bias and a trailing Softmax kept in q7
//! (`quantize --softmax keep`). Each kernel against its definition written here independently
//! (integers exactly, or f64 within rounding), the float Deconvolution against numpy's
//! zero-insertion reference (`tools/make_opsnet.py`), and `testdata/opsnet` (every new op)
//! against the float model per op (SQNR) and its firmware byte for byte (host here; Cortex-M4 in
//! QEMU over 100 images in `qemu_opsnet_on_cortex_m4`, run by .ci/run).

mod common;

use common::{nnquant, npy_f64, quantize_ok, sqnr_db, verify_identical, Fixture};
use nnquant::fixed::graph::{lrn_table, QOp};
use nnquant::fixed::kernels::{
    deconv_hwc_q7, deconv_hwc_q7_variant, lrn_q7, mul_q7, scale_q7, Dims, Pair,
};
use nnquant::ir::{LrnParams, NormRegion};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn opsnet(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/opsnet")
        .join(p)
}

/// Transposed convolution by its definition, scattering every input value through the weights
/// (`[o][ky][kx][i/g]`) in i64, then CMSIS's rounding and saturation.
#[allow(clippy::too_many_arguments)]
fn deconv_textbook(
    x: &[i8],
    ind: Dims,
    w: &[i8],
    k: Pair,
    pad: Pair,
    stride: Pair,
    dil: Pair,
    groups: usize,
    bias: &[i8],
    bl: i32,
    or: i32,
    outd: Dims,
) -> Vec<i8> {
    let (cin_g, cout_g) = (ind.c / groups, outd.c / groups);
    let mut acc = vec![0i64; outd.len()];
    for iy in 0..ind.h {
        for ix in 0..ind.w {
            for i in 0..ind.c {
                let g = i / cin_g;
                let v = i64::from(x[(iy * ind.w + ix) * ind.c + i]);
                for ky in 0..k.h {
                    for kx in 0..k.w {
                        let oy = (iy * stride.h + ky * dil.h) as i64 - pad.h as i64;
                        let ox = (ix * stride.w + kx * dil.w) as i64 - pad.w as i64;
                        if oy < 0 || ox < 0 || oy >= outd.h as i64 || ox >= outd.w as i64 {
                            continue;
                        }
                        for o in g * cout_g..(g + 1) * cout_g {
                            let wv = w[((o * k.h + ky) * k.w + kx) * cin_g + i % cin_g];
                            acc[(oy as usize * outd.w + ox as usize) * outd.c + o] +=
                                v * i64::from(wv);
                        }
                    }
                }
            }
        }
    }
    acc.iter()
        .enumerate()
        .map(|(j, a)| {
            let t = a + (i64::from(bias[j % outd.c]) << bl) + ((1i64 << or) >> 1);
            (t >> or).clamp(-128, 127) as i8
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The gather kernel equals the scatter definition byte for byte, over strides, pads,
    /// dilations, groups and rectangular kernels.
    #[test]
    fn deconv_kernel_is_the_transposed_convolution(
        ih in 1usize..6, iw in 1usize..6, groups in 1usize..3, cin_g in 1usize..10, cout_g in 1usize..5,
        kh in 1usize..5, kw in 1usize..5, sh in 1usize..4, sw in 1usize..4, d in 1usize..3,
        ph in 0usize..3, pw in 0usize..3, bl in 0i32..4, or in 4i32..10, seed in any::<u64>(),
    ) {
        let (k, stride, dil) = (Pair { h: kh, w: kw }, Pair { h: sh, w: sw }, Pair { h: d, w: d });
        let full = |i: usize, s: usize, k: usize| s * (i - 1) + d * (k - 1) + 1;
        let (fh, fw) = (full(ih, sh, kh), full(iw, sw, kw));
        prop_assume!(fh > 2 * ph && fw > 2 * pw);
        let ind = Dims { h: ih, w: iw, c: groups * cin_g };
        let outd = Dims { h: fh - 2 * ph, w: fw - 2 * pw, c: groups * cout_g };
        let bytes = |n: usize, s: u64| -> Vec<i8> {
            (0..n).map(|i| ((i as u64).wrapping_mul(2654435761).wrapping_add(s) >> 3) as i8).collect()
        };
        let x = bytes(ind.len(), seed);
        let w = bytes(outd.c * kh * kw * cin_g, seed ^ 0x55);
        let b = bytes(outd.c, seed ^ 0xaa);
        let pad = Pair { h: ph, w: pw };
        let want = deconv_textbook(&x, ind, &w, k, pad, stride, dil, groups, &b, bl, or, outd);
        let mut y = vec![0i8; outd.len()];
        deconv_hwc_q7(&x, ind, &w, k, pad, stride, dil, groups, &b, bl, or, &mut y, outd).unwrap();
        prop_assert_eq!(&y, &want);
        // The DSP algorithm (its instructions modelled in Rust here; QEMU runs the real ones).
        deconv_hwc_q7_variant(true, &x, ind, &w, k, pad, stride, dil, groups, &b, bl, or, &mut y, outd).unwrap();
        prop_assert_eq!(&y, &want);
    }

    /// LRN: the integer kernel (sum of squares, interpolated factor table) is within about one
    /// output step of `x·(k + α/n·Σx²)^-β` in f64, across channels and within a channel.
    #[test]
    fn lrn_follows_its_definition(
        h in 1usize..4, w in 1usize..4, c in 1usize..9, size in prop::sample::select(vec![1usize, 3, 5]),
        across in any::<bool>(), alpha in 0.05f32..2.0, beta in 0.3f32..1.0, k in 0.5f32..2.0,
        in_frac in 4i32..8, out_frac in 4i32..8, x in proptest::collection::vec(any::<i8>(), 72),
    ) {
        let dims = Dims { h, w, c };
        let x = &x[..dims.len()];
        let p = LrnParams {
            local_size: size, alpha, beta, k,
            region: if across { NormRegion::AcrossChannels } else { NormRegion::WithinChannel },
        };
        let QOp::Lrn { index_shift, table, out_rshift, .. } = lrn_table(&p, in_frac, out_frac).unwrap() else {
            panic!("not an LRN");
        };
        let mut y = vec![0i8; x.len()];
        lrn_q7(x, dims, size, across, index_shift, &table, out_rshift, &mut y).unwrap();
        let v = |i: usize| f64::from(x[i]) * (-f64::from(in_frac)).exp2();
        let half = size / 2;
        for yy in 0..h {
            for xx in 0..w {
                for ch in 0..c {
                    let (mut s, n, kk) = (0.0, if across { size } else { size * size } as f64, if across { f64::from(k) } else { 1.0 });
                    if across {
                        for cc in ch.saturating_sub(half)..(ch + half + 1).min(c) {
                            s += v((yy * w + xx) * c + cc).powi(2);
                        }
                    } else {
                        for wy in yy.saturating_sub(half)..(yy + half + 1).min(h) {
                            for wx in xx.saturating_sub(half)..(xx + half + 1).min(w) {
                                s += v((wy * w + wx) * c + ch).powi(2);
                            }
                        }
                    }
                    let i = (yy * w + xx) * c + ch;
                    let want = (v(i) * (kk + f64::from(alpha) / n * s).powf(-f64::from(beta)) * f64::from(out_frac).exp2()).clamp(-128.0, 127.0);
                    let got = f64::from(y[i]);
                    prop_assert!((got - want).abs() <= 1.0, "{got} vs {want} at {i}");
                }
            }
        }
    }

    /// Eltwise PROD: the product at the output's format, rounded once.
    #[test]
    fn mul_is_the_product(a in any::<i8>(), b in any::<i8>(), fa in 0i32..8, fb in 0i32..8, fo in 0i32..8) {
        prop_assume!(fo <= fa + fb);
        let mut y = [0i8];
        mul_q7(&[a], &[b], fa + fb - fo, &mut y).unwrap();
        let want = (f64::from(a) * f64::from(b) * (f64::from(fo - fa - fb)).exp2()).clamp(-128.0, 127.0);
        prop_assert!((f64::from(y[0]) - want).abs() <= 0.5, "{} vs {want}", y[0]);
    }

    /// Scale/Bias: `x·s + b` per channel, exact integers with CMSIS's rounding.
    #[test]
    fn scale_is_per_channel_multiply_add(
        x in proptest::collection::vec(any::<i8>(), 1..48), s in proptest::collection::vec(any::<i8>(), 1..5),
        bl in 0i32..23, or in 0i32..20,
    ) {
        let c = s.len();
        let n = x.len() / c * c;
        prop_assume!(n > 0);
        let b: Vec<i8> = s.iter().map(|v| v.wrapping_mul(37)).collect();
        let mut y = vec![0i8; n];
        scale_q7(&x[..n], &s, &b, bl, or, &mut y).unwrap();
        for (i, (&xv, &yv)) in x[..n].iter().zip(&y).enumerate() {
            let acc = i64::from(xv) * i64::from(s[i % c]) + (i64::from(b[i % c]) << bl) + ((1i64 << or) >> 1);
            prop_assert_eq!(i64::from(yv), (acc >> or).clamp(-128, 127));
        }
    }
}

#[test]
fn new_kernels_refuse_bad_arguments() {
    let x = [1i8; 12];
    let d = Dims { h: 2, w: 2, c: 3 };
    let one = Pair { h: 1, w: 1 };
    let mut y = [0i8; 12];
    // Weights for 3 outputs of a 1×1 kernel over 3 inputs are 9 values, not 8.
    assert!(deconv_hwc_q7(
        &x,
        d,
        &[0; 8],
        one,
        Pair { h: 0, w: 0 },
        one,
        one,
        1,
        &[0; 3],
        0,
        0,
        &mut y,
        d
    )
    .is_err());
    assert!(deconv_hwc_q7(
        &x,
        d,
        &[0; 9],
        one,
        Pair { h: 0, w: 0 },
        Pair { h: 0, w: 1 },
        one,
        1,
        &[0; 3],
        0,
        0,
        &mut y,
        d
    )
    .is_err());
    assert!(deconv_hwc_q7(
        &x,
        d,
        &[0; 9],
        one,
        Pair { h: 0, w: 0 },
        one,
        one,
        2,
        &[0; 3],
        0,
        0,
        &mut y,
        d
    )
    .is_err());
    assert!(
        lrn_q7(&x, d, 2, true, 0, &[1; 1025], 0, &mut y).is_err(),
        "even size"
    );
    assert!(
        lrn_q7(&x, d, 3, true, 0, &[1; 256], 0, &mut y).is_err(),
        "short table"
    );
    assert!(lrn_q7(&x, d, 3, true, 32, &[1; 1025], 0, &mut y).is_err());
    assert!(mul_q7(&x, &x[..11], 0, &mut y).is_err());
    assert!(mul_q7(&x, &x, 32, &mut y).is_err());
    assert!(
        scale_q7(&x, &[1; 5], &[0; 5], 0, 0, &mut y).is_err(),
        "12 values are not rows of 5"
    );
    assert!(
        scale_q7(&x, &[1; 3], &[0; 3], 23, 0, &mut y).is_err(),
        "bias_lshift above 22 could wrap"
    );
    assert_eq!(y, [0; 12], "a refused call writes nothing");
}

/// The float Deconvolution (groups 2, stride 2, pad 1, dilation 2, rectangular input) against
/// numpy's zero-insertion + flipped-kernel correlation (`tools/make_opsnet.py`).
#[test]
fn float_deconvolution_matches_the_numpy_reference() {
    let g = nnquant::caffe::load_model(
        &opsnet("deconv_case.prototxt"),
        &nnquant::caffe::LoadOptions {
            weights: Some(&opsnet("deconv_case.caffemodel")),
            input_shape: None,
        },
    )
    .unwrap();
    assert_eq!(g.shape("up"), [6, 11, 13], "Caffe's shape rule");
    let (_, x) = npy_f64(&std::fs::read(opsnet("deconv_case_in.npy")).unwrap());
    let (shape, want) = npy_f64(&std::fs::read(opsnet("deconv_case_out.npy")).unwrap());
    assert_eq!(shape, [2, 6, 11, 13]);
    let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let e = nnquant::float::Engine::new(&g).unwrap();
    let a = e.forward(&x, 2, nnquant::float::Keep::Outputs).unwrap();
    let got = &a.blobs["up"];
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-4, "max |float - numpy| = {worst}");
}

/// `testdata/opsnet` quantized with the max-abs formats (`--search none`: on 96 images of a
/// random net the default search trades deconvolution biases for the output's KL) and the given
/// `--softmax` rule: (model, report).
fn quantized(f: &Fixture, softmax: &str) -> (PathBuf, serde_json::Value) {
    let (p, w) = (opsnet("opsnet.prototxt"), opsnet("opsnet.caffemodel"));
    quantized_on_opsnet_data(f, &p, &w, softmax)
}

/// A model quantized with max-abs formats on opsnet's images (and their preprocessing).
fn quantized_on_opsnet_data(
    f: &Fixture,
    model: &Path,
    weights: &Path,
    softmax: &str,
) -> (PathBuf, serde_json::Value) {
    quantize_ok(
        f.dir.path(),
        &[
            &"--model",
            &model,
            &"--weights",
            &weights,
            &"--calib",
            &opsnet("calib_u8_hwc.npy"),
            &"--eval",
            &opsnet("test_u8_hwc.npy"),
            &"--mean-value",
            &"128",
            &"--scale",
            &"0.0078125",
            &"--search",
            &"none",
            &"--softmax",
            &softmax,
        ],
    )
}

fn blob_sqnr(r: &serde_json::Value, b: &str) -> f64 {
    r["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == b)
        .unwrap_or_else(|| panic!("no blob {b}"))["sqnr_db"]
        .as_f64()
        .unwrap()
}

#[test]
fn opsnet_follows_float_per_op_and_runs_byte_identical() {
    let f = Fixture::new();
    let (m, r) = quantized(&f, "keep");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    let ops: Vec<String> = model["graph"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let op = &l["op"];
            op.as_str().map_or_else(
                || op.as_object().unwrap().keys().next().unwrap().clone(),
                String::from,
            )
        })
        .collect();
    for want in [
        "PRelu",
        "Lrn",
        "Lut",
        "Deconv",
        "Mul",
        "ScaleBias",
        "Softmax",
    ] {
        assert!(ops.iter().any(|o| o == want), "{want} missing from {ops:?}");
    }
    assert_eq!(model["graph"]["outputs"], serde_json::json!(["prob"]));
    let prob_frac = model["graph"]["blobs"]["prob"]["frac_bits"]
        .as_i64()
        .unwrap();
    assert!(
        prob_frac <= 7,
        "probabilities up to 127/128 fit: {prob_frac} fraction bits"
    );
    for (b, min) in [
        ("prelu1", 25.0),
        ("lrn1", 25.0),
        ("scale2", 22.0),
        ("lrn2", 22.0),
        ("up1", 22.0),
        ("sig1", 25.0),
        ("gate", 22.0),
        ("prob", 25.0),
    ] {
        let db = blob_sqnr(&r, b);
        println!("{b}: q7 vs float SQNR {db:.1} dB");
        assert!(db > min, "{b}: SQNR {db:.1} dB");
    }
    let agreement = r["accuracy"]["top1_agreement"].as_f64().unwrap();
    assert!(agreement > 0.85, "top-1 agreement with float {agreement}");

    let data = opsnet("test_u8_hwc.npy");
    verify_identical(&m, &data, "host", 100, &f.path("fw"), &[]);
}

/// The default (`--softmax drop`) keeps today's rule: the output is the Softmax's input.
#[test]
fn softmax_drop_is_the_default_rule() {
    let f = Fixture::new();
    let (m, _) = quantized(&f, "drop");
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    assert_eq!(model["graph"]["outputs"], serde_json::json!(["ip1"]));
    let o = nnquant(&[&"quantize", &"--softmax", &"sometimes"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
}

#[test]
#[ignore = "needs qemu-system-arm and the thumbv7em-none-eabihf target (run by .ci/run)"]
fn qemu_opsnet_on_cortex_m4() {
    let f = Fixture::new();
    let (m, _) = quantized(&f, "keep");
    let data = opsnet("test_u8_hwc.npy");
    let out = verify_identical(
        &m,
        &data,
        "cortex-m4",
        100,
        &f.path("fw-m4"),
        &["--count-instructions"],
    );
    println!("{out}");
}

/// The LRN's own error: q7 against f64 on the same q7 inputs (cifar10_full's across-channel
/// parameters and a within-channel window), as SQNR.
#[test]
fn lrn_alone_sqnr() {
    let dims = Dims { h: 6, w: 6, c: 16 };
    let x: Vec<i8> = (0..dims.len())
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 24) as i8 / 2)
        .collect();
    for (region, size, alpha, beta, k) in [
        (NormRegion::AcrossChannels, 3, 5e-5f32, 0.75f32, 1.0f32),
        (NormRegion::AcrossChannels, 5, 1.0, 0.75, 1.0),
        (NormRegion::WithinChannel, 3, 1.0, 0.75, 1.0),
    ] {
        let (in_frac, out_frac) = (5, 6);
        let p = LrnParams {
            local_size: size,
            alpha,
            beta,
            k,
            region,
        };
        let across = region == NormRegion::AcrossChannels;
        let QOp::Lrn {
            index_shift,
            table,
            out_rshift,
            ..
        } = lrn_table(&p, in_frac, out_frac).unwrap()
        else {
            panic!("not an LRN");
        };
        let mut y = vec![0i8; x.len()];
        lrn_q7(
            &x,
            dims,
            size,
            across,
            index_shift,
            &table,
            out_rshift,
            &mut y,
        )
        .unwrap();
        let v = |i: usize| f64::from(x[i]) / 32.0;
        let half = size / 2;
        let mut want = vec![0.0; x.len()];
        for py in 0..dims.h {
            for px in 0..dims.w {
                for c in 0..dims.c {
                    let i = (py * dims.w + px) * dims.c + c;
                    let (s, n, kk) = if across {
                        let s: f64 = (c.saturating_sub(half)..(c + half + 1).min(dims.c))
                            .map(|cc| v((py * dims.w + px) * dims.c + cc).powi(2))
                            .sum();
                        (s, size as f64, f64::from(k))
                    } else {
                        let mut s = 0.0;
                        for wy in py.saturating_sub(half)..(py + half + 1).min(dims.h) {
                            for wx in px.saturating_sub(half)..(px + half + 1).min(dims.w) {
                                s += v((wy * dims.w + wx) * dims.c + c).powi(2);
                            }
                        }
                        (s, (size * size) as f64, 1.0)
                    };
                    want[i] = v(i) * (kk + f64::from(alpha) / n * s).powf(-f64::from(beta));
                }
            }
        }
        let got: Vec<f64> = y.iter().map(|&q| f64::from(q) / 64.0).collect();
        let db = sqnr_db(&want, &got);
        println!("LRN {region:?} size {size} alpha {alpha}: q7 vs f64 SQNR {db:.1} dB");
        assert!(db > 35.0, "{db:.1} dB");
    }
}

/// BatchNorm and Scale after a ReLU cannot be folded into the convolution: each becomes a
/// standalone per-channel q7 multiply-add, close to float and byte-identical in firmware.
#[test]
fn unfoldable_batchnorm_and_scale_run_in_q7() {
    use common::tensor;
    let f = Fixture::new();
    let proto = r#"name: "bnnet"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "bn1" }
layer { name: "sc1" type: "Scale" bottom: "bn1" top: "sc1" scale_param { bias_term: true } }
layer { name: "conv2" type: "Convolution" bottom: "sc1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip" inner_product_param { num_output: 5 } }
"#;
    let mut var = tensor(&[6], 21);
    var.data.iter_mut().for_each(|v| *v = 0.2 + v.abs());
    let mut mean = tensor(&[6], 22);
    mean.data.iter_mut().for_each(|v| *v = v.abs() * 0.5);
    let mut gamma = tensor(&[6], 23);
    gamma.data.iter_mut().for_each(|v| *v = 0.5 + v.abs());
    let w = vec![
        (
            "conv1".to_string(),
            "Convolution".to_string(),
            vec![tensor(&[6, 3, 3, 3], 1), tensor(&[6], 2)],
        ),
        (
            "bn1".into(),
            "BatchNorm".into(),
            vec![mean, var, nnquant::ir::Tensor::new(vec![1], vec![1.0])],
        ),
        ("sc1".into(), "Scale".into(), vec![gamma, tensor(&[6], 24)]),
        (
            "conv2".into(),
            "Convolution".into(),
            vec![tensor(&[4, 6, 3, 3], 3), tensor(&[4], 4)],
        ),
        (
            "ip".into(),
            "InnerProduct".into(),
            vec![tensor(&[5, 4 * 7 * 7], 5), tensor(&[5], 6)],
        ),
    ];
    let p = f.write("bn.prototxt", proto);
    let wts = f.write(
        "bn.caffemodel",
        nnquant::caffe::write::encode_caffemodel("bnnet", &w),
    );
    let (m, r) = quantized_on_opsnet_data(&f, &p, &wts, "drop");
    let model = std::fs::read_to_string(&m).unwrap();
    assert_eq!(model.matches("\"ScaleBias\"").count(), 2, "bn1 and sc1");
    for b in ["bn1", "sc1", "ip"] {
        let db = blob_sqnr(&r, b);
        println!("{b}: q7 vs float SQNR {db:.1} dB");
        assert!(db > 20.0, "{b}: {db:.1} dB");
    }
    let data = opsnet("test_u8_hwc.npy");
    verify_identical(&m, &data, "host", 20, &f.path("fw"), &[]);
}

/// Model files whose new-op fields were corrupted are refused by `NnqModel::from_json` with an
/// error, or (harmless changes) run through the simulator, `kernels.rs` and codegen the same;
/// none panics.
#[test]
fn corrupted_new_op_fields_never_panic() {
    use nnquant::fixed::{run_reference, Keep, Simulator};
    use nnquant::model::NnqModel;
    use serde_json::{json, Value};
    let f = Fixture::new();
    let (m, _) = quantized(&f, "keep");
    let text = std::fs::read_to_string(&m).unwrap();
    let base: Value = serde_json::from_str(&text).unwrap();
    let layer = |v: &Value, op: &str| {
        v["graph"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .position(|l| l["op"].get(op).is_some())
            .unwrap_or_else(|| panic!("no {op}"))
    };
    // (op, field, new value): out of range, inconsistent or truncated.
    let cases: Vec<(&str, &str, Value)> = vec![
        ("Lrn", "size", json!(4)),
        ("Lrn", "size", json!(1001)),
        ("Lrn", "index_shift", json!(40)),
        ("Lrn", "out_rshift", json!(-1)),
        ("Lrn", "table_frac", json!(3)),
        ("Lrn", "table", json!([1, 2, 3])),
        ("Lrn", "across", json!(false)),
        ("Deconv", "stride", json!({"h": 0, "w": 2})),
        ("Deconv", "dilation", json!({"h": 0, "w": 0})),
        ("Deconv", "groups", json!(3)),
        ("Deconv", "groups", json!(0)),
        ("Deconv", "out_dims", json!({"h": 17, "w": 16, "c": 8})),
        ("Deconv", "weights", json!([1, 2])),
        ("Deconv", "bias_lshift", json!(40)),
        ("Deconv", "pad", json!({"h": 9, "w": 9})),
        ("Mul", "out_rshift", json!(40)),
        ("Mul", "out_rshift", json!(3)),
        ("ScaleBias", "scales", json!([1])),
        ("ScaleBias", "bias_lshift", json!(23)),
        ("ScaleBias", "out_rshift", json!(31)),
        ("Softmax", "row", json!(0)),
    ];
    let mut refused = 0;
    for (op, field, value) in &cases {
        let mut v = base.clone();
        let i = layer(&v, op);
        v["graph"]["layers"][i]["op"][op][field] = value.clone();
        let t = serde_json::to_string(&v).unwrap();
        let Ok(model) = NnqModel::from_json(&t) else {
            refused += 1;
            continue;
        };
        let g = &model.graph;
        let n = 2;
        let input: Vec<i8> = (0..n * model.input.len()).map(|i| (i * 7) as i8).collect();
        let fast = Simulator::new(g).and_then(|s| s.run(&input, n, &Keep::Outputs));
        let slow = run_reference(g, &input, n);
        if let (Ok(a), Ok(b)) = (&fast, &slow) {
            assert_eq!(a.get(&g.outputs[0]), b.get(&g.outputs[0]), "{op}.{field}");
        }
    }
    assert!(
        refused >= cases.len() - 2,
        "only {refused} of {} refused",
        cases.len()
    );
    // A Mul layer with one input is refused too.
    let mut v = base.clone();
    let i = layer(&v, "Mul");
    v["graph"]["layers"][i]["inputs"] = json!(["sig1"]);
    assert!(NnqModel::from_json(&serde_json::to_string(&v).unwrap()).is_err());
}
