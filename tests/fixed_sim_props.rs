//! The fast simulator equals `kernels.rs` (via `run_reference`) on random shapes and values,
//! saturation included; plus the graph quantizer's error paths.

use nnquant::fixed::graph::{Hwc, PoolRounding, QBlob, QConv, QFc, QLayer, QPool};
use nnquant::fixed::{run_reference, Keep, QGraph, QOp, SimdPath, Simulator};
use nnquant::ir::Hw;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn blob(l: Hwc) -> QBlob {
    QBlob {
        shape: vec![l.c, l.h, l.w],
        layout: l,
        frac_bits: 0,
    }
}

/// A one-layer graph `x -> y`.
fn one(op: QOp, ind: Hwc, outd: Hwc) -> QGraph {
    let mut blobs = BTreeMap::new();
    blobs.insert("x".to_string(), blob(ind));
    blobs.insert("y".to_string(), blob(outd));
    QGraph {
        name: "t".into(),
        input: "x".into(),
        blobs,
        layers: vec![QLayer {
            name: "l".into(),
            op,
            inputs: vec!["x".into()],
            output: "y".into(),
        }],
        outputs: vec!["y".into()],
    }
}

/// Every simulator path this CPU supports (AVX-512 VNNI, 256-bit VNNI, AVX2, portable, …)
/// equals `kernels.rs`.
fn check(g: &QGraph, input: &[i8], n: usize) -> Result<(), TestCaseError> {
    let slow = run_reference(g, input, n).unwrap();
    for path in SimdPath::supported_paths() {
        let fast = Simulator::with_path(g, path)
            .unwrap()
            .run(input, n, &Keep::All)
            .unwrap();
        prop_assert_eq!(
            fast.get("y").unwrap(),
            slow.get("y").unwrap(),
            "path {}",
            path
        );
    }
    Ok(())
}

/// [`check`] on `input`, then on `input` made non-negative (`|x|`, at most 127: the values a
/// ReLU leaves), which the AVX2 path runs with its own exact kernels (`vpmaddubsw`), grouping
/// 2, 4 or 8 steps as `i16` when the input is small enough for the weights: whatever the
/// weights, inputs up to 64, 32 and 16 take those groups, so cap the values there too.
fn check_signed_and_nonneg(g: &QGraph, input: &[i8], n: usize) -> Result<(), TestCaseError> {
    check(g, input, n)?;
    for top in [127, 64, 32, 16] {
        let nonneg: Vec<i8> = input
            .iter()
            .map(|v| v.unsigned_abs().min(top) as i8)
            .collect();
        check(g, &nonneg, n)?;
    }
    Ok(())
}

/// The property tests above run every supported path; this one says which (on stderr, so that
/// the test log shows it without `--nocapture`) and fails if the best path the CPU supports is
/// not among them or is not what `Simulator::new` picks.
#[test]
fn simd_paths_exercised() {
    use std::io::Write;
    let paths = SimdPath::supported_paths();
    let best = SimdPath::best();
    let names: Vec<&str> = paths.iter().map(|p| p.name()).collect();
    let _ = writeln!(
        std::io::stderr(),
        "simulator paths exercised by the property tests: {} (best on this CPU: {best})",
        names.join(", ")
    );
    assert!(paths.contains(&best), "best path {best} not exercised");
    assert!(paths.contains(&SimdPath::Portable));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert!(
            paths.contains(&SimdPath::Avx2),
            "AVX2 CPU but the AVX2 path did not run"
        );
    }
    let d = Hwc { h: 1, w: 1, c: 4 };
    let g = one(QOp::Relu, d, d);
    if std::env::var_os("NNQUANT_SIMD").is_none() {
        assert_eq!(Simulator::new(&g).unwrap().path(), best);
    }
    assert!(SimdPath::from_name("no-such-path").is_err());
}

/// Shifts: mostly realistic, sometimes anywhere in `0..=31` (`bias << 31` wraps in `i32`).
fn shift(realistic: i32) -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..=realistic, 1 => 0i32..=31]
}

fn bytes(len: usize) -> impl Strategy<Value = Vec<i8>> {
    // Mostly full-range values (saturation happens a lot), sometimes small ones.
    prop_oneof![
        proptest::collection::vec(any::<i8>(), len),
        proptest::collection::vec(-4i8..=4, len),
    ]
}

fn conv_case() -> impl Strategy<Value = (QGraph, Vec<i8>, usize)> {
    (
        1usize..=3,
        prop_oneof![1usize..=3, 1usize..=9],
        prop_oneof![1usize..=4, 1usize..=36],
        1usize..=3,
        1usize..=3,
        1usize..=3,
        1usize..=2,
        1usize..=2,
        0usize..=2,
        (0usize..=2, 0usize..=14),
    )
        .prop_flat_map(
            |(groups, cin_g, cout_g, kh, kw, n, sh, sw, ph, (pw, extra_w))| {
                // Widths up to 17 output pixels: every tile size of the VNNI kernel (8, 4, 2, 1).
                let (h, w) = (kh + 2, kw + 3 + extra_w);
                let (cin, cout) = (groups * cin_g, groups * cout_g);
                let ind = Hwc { h, w, c: cin };
                let outd = Hwc {
                    h: (h + 2 * ph - kh) / sh + 1,
                    w: (w + 2 * pw - kw) / sw + 1,
                    c: cout,
                };
                (
                    bytes(cout * kh * kw * cin_g),
                    bytes(cout),
                    shift(6),
                    shift(12),
                    bytes(n * ind.len()),
                )
                    .prop_map(move |(weights, bias, bl, or, input)| {
                        let c = QConv {
                            in_dims: ind,
                            out_dims: outd,
                            kernel: Hw { h: kh, w: kw },
                            pad: Hw { h: ph, w: pw },
                            stride: Hw { h: sh, w: sw },
                            dilation: Hw { h: 1, w: 1 },
                            groups,
                            weights,
                            bias,
                            weight_frac_bits: 0,
                            bias_frac_bits: 0,
                            bias_lshift: bl,
                            out_rshift: or,
                            per_channel: None,
                        };
                        (one(QOp::Conv(c), ind, outd), input, n)
                    })
            },
        )
}

/// Wide rows and the channel counts whose pixel strides the VNNI kernel specializes (3, 16, 32,
/// 64 bytes): its 12- and 16-pixel tiles and their tails.
fn conv_wide_case() -> impl Strategy<Value = (QGraph, Vec<i8>, usize)> {
    (
        prop_oneof![Just(3usize), Just(8), Just(16), Just(32), Just(64)],
        1usize..=40,
        1usize..=5,
        1usize..=5,
        1usize..=2,
        0usize..=2,
        0usize..=30,
    )
        .prop_flat_map(|(cin, cout, kh, kw, s, pad, extra_w)| {
            let pad = pad.min(kh - 1).min(kw - 1);
            let (h, w) = (kh + 1, kw + extra_w);
            let ind = Hwc { h, w, c: cin };
            let outd = Hwc {
                h: (h + 2 * pad - kh) / s + 1,
                w: (w + 2 * pad - kw) / s + 1,
                c: cout,
            };
            (
                bytes(cout * kh * kw * cin),
                bytes(cout),
                shift(6),
                shift(12),
                bytes(ind.len()),
            )
                .prop_map(move |(weights, bias, bl, or, input)| {
                    let c = QConv {
                        in_dims: ind,
                        out_dims: outd,
                        kernel: Hw { h: kh, w: kw },
                        pad: Hw { h: pad, w: pad },
                        stride: Hw { h: s, w: s },
                        dilation: Hw { h: 1, w: 1 },
                        groups: 1,
                        weights,
                        bias,
                        weight_frac_bits: 0,
                        bias_frac_bits: 0,
                        bias_lshift: bl,
                        out_rshift: or,
                        per_channel: None,
                    };
                    (one(QOp::Conv(c), ind, outd), input, 1)
                })
        })
}

/// Depthwise layers (`sim/depthwise.rs`) and dilated layers (depthwise or not; the latter run
/// `kernels.rs` itself): channel tails, rectangular kernels, stride, padding, dilation.
fn dw_dilated_case() -> impl Strategy<Value = (QGraph, Vec<i8>, usize)> {
    (
        (prop_oneof![1usize..=9, Just(16), Just(32)], any::<bool>()),
        (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3),
        (0usize..=3, 0usize..=3, 1usize..=3, 1usize..=3),
        (0usize..=6, 0usize..=6, 1usize..=2),
    )
        .prop_filter_map(
            "window fits",
            |((c, depthwise), (kh, kw, sh, sw), (ph, pw, dh, dw), (eh, ew, n))| {
                let (h, w) = (dh * (kh - 1) + 1 + eh, dw * (kw - 1) + 1 + ew);
                let ind = Hwc { h, w, c };
                let (groups, cout) = if depthwise { (c, c) } else { (1, c % 5 + 1) };
                let outd = Hwc {
                    h: nnquant::ir::shape::conv_out(h, kh, sh, ph, dh).ok()?,
                    w: nnquant::ir::shape::conv_out(w, kw, sw, pw, dw).ok()?,
                    c: cout,
                };
                Some((ind, outd, groups, (kh, kw, sh, sw, ph, pw, dh, dw), n))
            },
        )
        .prop_flat_map(|(ind, outd, groups, geo, n)| {
            let (kh, kw, ..) = geo;
            (
                bytes(outd.c * kh * kw * ind.c / groups),
                bytes(outd.c),
                shift(6),
                shift(12),
                bytes(n * ind.len()),
            )
                .prop_map(move |(weights, bias, bl, or, input)| {
                    let (kh, kw, sh, sw, ph, pw, dh, dw) = geo;
                    let c = QConv {
                        in_dims: ind,
                        out_dims: outd,
                        kernel: Hw { h: kh, w: kw },
                        pad: Hw { h: ph, w: pw },
                        stride: Hw { h: sh, w: sw },
                        dilation: Hw { h: dh, w: dw },
                        groups,
                        weights,
                        bias,
                        weight_frac_bits: 0,
                        bias_frac_bits: 0,
                        bias_lshift: bl,
                        out_rshift: or,
                        per_channel: None,
                    };
                    (one(QOp::Conv(c), ind, outd), input, n)
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn depthwise_and_dilated_conv_match_kernels((g, input, n) in dw_dilated_case()) {
        check_signed_and_nonneg(&g, &input, n)?;
    }

    #[test]
    fn conv_matches_kernels((g, input, n) in conv_case()) {
        check_signed_and_nonneg(&g, &input, n)?;
    }

    #[test]
    fn wide_conv_matches_kernels((g, input, n) in conv_wide_case()) {
        check_signed_and_nonneg(&g, &input, n)?;
    }

    #[test]
    fn fc_matches_kernels(k in prop_oneof![1usize..=70, 1usize..=3000], o in prop_oneof![1usize..=13, 1usize..=40], n in 1usize..=3, bl in shift(6), or in shift(14), seed in any::<u64>()) {
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 56) as i8 };
        let weights: Vec<i8> = (0..k * o).map(|_| next()).collect();
        let bias: Vec<i8> = (0..o).map(|_| next()).collect();
        let input: Vec<i8> = (0..n * k).map(|_| next()).collect();
        let f = QFc { in_len: k, out_len: o, weights, bias, weight_frac_bits: 0, bias_frac_bits: 0, bias_lshift: bl, out_rshift: or, per_channel: None };
        let g = one(QOp::Fc(f), Hwc { h: 1, w: 1, c: k }, Hwc { h: 1, w: 1, c: o });
        check_signed_and_nonneg(&g, &input, n)?;
    }

    #[test]
    fn pools_match_kernels(h in 1usize..=7, w in 1usize..=7, c in prop_oneof![1usize..=4, Just(16), Just(32), Just(48), Just(64), Just(80)],
                           kh in 1usize..=3, kw in 1usize..=3,
                           sh in 1usize..=3, sw in 1usize..=3, ph in 0usize..=2, pw in 0usize..=2, max in any::<bool>(),
                           round in any::<bool>(), n in 1usize..=2, seed in any::<u64>()) {
        let (ph, pw) = (ph.min(kh - 1), pw.min(kw - 1));
        prop_assume!(h + 2 * ph >= kh && w + 2 * pw >= kw);
        let oh = nnquant::ir::shape::pool_out(h, kh, sh, ph, nnquant::ir::RoundMode::Ceil).unwrap();
        let ow = nnquant::ir::shape::pool_out(w, kw, sw, pw, nnquant::ir::RoundMode::Ceil).unwrap();
        let ind = Hwc { h, w, c };
        let outd = Hwc { h: oh, w: ow, c };
        let p = QPool { in_dims: ind, out_dims: outd, kernel: Hw { h: kh, w: kw }, pad: Hw { h: ph, w: pw }, stride: Hw { h: sh, w: sw },
                          rounding: if round && !max { PoolRounding::Nearest } else { PoolRounding::Truncate } };
        let g = one(if max { QOp::MaxPool(p) } else { QOp::AvePool(p) }, ind, outd);
        let mut rng = seed;
        let input: Vec<i8> = (0..n * ind.len()).map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 56) as i8 }).collect();
        check(&g, &input, n)?;
    }

    #[test]
    fn relu_matches_kernels(len in 1usize..=200, n in 1usize..=2, seed in any::<u64>()) {
        let mut rng = seed;
        let input: Vec<i8> = (0..n * len).map(|_| { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 56) as i8 }).collect();
        let d = Hwc { h: 1, w: 1, c: len };
        check(&one(QOp::Relu, d, d), &input, n)?;
    }
}

#[test]
fn run_from_reuses_cached_blobs() {
    // x -> conv(1x1) -> relu -> y2: re-running layer 1 from a cache gives the same bytes.
    let ind = Hwc { h: 2, w: 2, c: 2 };
    let c = QConv {
        in_dims: ind,
        out_dims: ind,
        kernel: Hw { h: 1, w: 1 },
        pad: Hw { h: 0, w: 0 },
        stride: Hw { h: 1, w: 1 },
        dilation: Hw { h: 1, w: 1 },
        groups: 1,
        weights: vec![1, -2, 3, 4],
        bias: vec![1, -1],
        weight_frac_bits: 0,
        bias_frac_bits: 0,
        bias_lshift: 0,
        out_rshift: 1,
        per_channel: None,
    };
    let mut g = one(QOp::Conv(c), ind, ind);
    g.blobs.insert("z".into(), blob(ind));
    g.layers.push(QLayer {
        name: "r".into(),
        op: QOp::Relu,
        inputs: vec!["y".into()],
        output: "z".into(),
    });
    g.outputs = vec!["z".into()];
    let sim = Simulator::new(&g).unwrap();
    let input: Vec<i8> = (0..16).map(|v| (v * 17 - 100) as i8).collect();
    let all = sim.run(&input, 2, &Keep::All).unwrap();
    let again = sim.run_from(1, &all, &Keep::Outputs).unwrap();
    assert_eq!(again.get("z"), all.get("z"));
    assert_eq!(all.image("z", 1).unwrap().len(), 8);
    let empty = nnquant::fixed::Activations {
        n: 2,
        blobs: BTreeMap::new(),
    };
    assert!(sim.run_from(1, &empty, &Keep::Outputs).is_err());
}
