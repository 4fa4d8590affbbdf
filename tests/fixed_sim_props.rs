//! The fast simulator equals `kernels.rs` (via `run_reference`) on random shapes and values,
//! saturation included; plus the graph quantizer's error paths.

use nnquant::fixed::graph::{Hwc, QBlob, QConv, QFc, QLayer, QPool};
use nnquant::fixed::{run_reference, Keep, QGraph, QOp, Simulator};
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

/// Every simulator path (the CPU's best, e.g. AVX-512 VNNI, the portable GEMM, and on aarch64
/// the SDOT and plain NEON kernels) equals `kernels.rs`.
fn check(g: &QGraph, input: &[i8], n: usize) -> Result<(), TestCaseError> {
    let slow = run_reference(g, input, n).unwrap();
    let fast = Simulator::new(g)
        .unwrap()
        .run(input, n, &Keep::All)
        .unwrap();
    prop_assert_eq!(fast.get("y").unwrap(), slow.get("y").unwrap(), "best path");
    let portable = Simulator::new_portable(g)
        .unwrap()
        .run(input, n, &Keep::All)
        .unwrap();
    prop_assert_eq!(
        portable.get("y").unwrap(),
        slow.get("y").unwrap(),
        "portable path"
    );
    // aarch64: both NEON kernels where the CPU has them (`tools/test_aarch64.sh` runs this in
    // QEMU with and without dotprod).
    #[cfg(target_arch = "aarch64")]
    for dotprod in [false, true] {
        if let Some(sim) = Simulator::new_neon(g, dotprod).unwrap() {
            let out = sim.run(input, n, &Keep::All).unwrap();
            prop_assert_eq!(
                out.get("y").unwrap(),
                slow.get("y").unwrap(),
                "NEON path (dotprod {})",
                dotprod
            );
        }
    }
    Ok(())
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
                            groups,
                            weights,
                            bias,
                            weight_frac_bits: 0,
                            bias_frac_bits: 0,
                            bias_lshift: bl,
                            out_rshift: or,
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
                        groups: 1,
                        weights,
                        bias,
                        weight_frac_bits: 0,
                        bias_frac_bits: 0,
                        bias_lshift: bl,
                        out_rshift: or,
                    };
                    (one(QOp::Conv(c), ind, outd), input, 1)
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn conv_matches_kernels((g, input, n) in conv_case()) {
        check(&g, &input, n)?;
    }

    #[test]
    fn wide_conv_matches_kernels((g, input, n) in conv_wide_case()) {
        check(&g, &input, n)?;
    }

    #[test]
    fn fc_matches_kernels(k in prop_oneof![1usize..=70, 1usize..=3000], o in prop_oneof![1usize..=13, 1usize..=40], n in 1usize..=3, bl in shift(6), or in shift(14), seed in any::<u64>()) {
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (rng >> 56) as i8 };
        let weights: Vec<i8> = (0..k * o).map(|_| next()).collect();
        let bias: Vec<i8> = (0..o).map(|_| next()).collect();
        let input: Vec<i8> = (0..n * k).map(|_| next()).collect();
        let f = QFc { in_len: k, out_len: o, weights, bias, weight_frac_bits: 0, bias_frac_bits: 0, bias_lshift: bl, out_rshift: or };
        let g = one(QOp::Fc(f), Hwc { h: 1, w: 1, c: k }, Hwc { h: 1, w: 1, c: o });
        check(&g, &input, n)?;
    }

    #[test]
    fn pools_match_kernels(h in 1usize..=7, w in 1usize..=7, c in prop_oneof![1usize..=4, Just(16), Just(32), Just(48), Just(64), Just(80)],
                           kh in 1usize..=3, kw in 1usize..=3,
                           sh in 1usize..=3, sw in 1usize..=3, ph in 0usize..=2, pw in 0usize..=2, max in any::<bool>(),
                           n in 1usize..=2, seed in any::<u64>()) {
        let (ph, pw) = (ph.min(kh - 1), pw.min(kw - 1));
        prop_assume!(h + 2 * ph >= kh && w + 2 * pw >= kw);
        let oh = nnquant::ir::shape::pool_out(h, kh, sh, ph, nnquant::ir::RoundMode::Ceil).unwrap();
        let ow = nnquant::ir::shape::pool_out(w, kw, sw, pw, nnquant::ir::RoundMode::Ceil).unwrap();
        let ind = Hwc { h, w, c };
        let outd = Hwc { h: oh, w: ow, c };
        let p = QPool { in_dims: ind, out_dims: outd, kernel: Hw { h: kh, w: kw }, pad: Hw { h: ph, w: pw }, stride: Hw { h: sh, w: sw } };
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
        groups: 1,
        weights: vec![1, -2, 3, 4],
        bias: vec![1, -1],
        weight_frac_bits: 0,
        bias_frac_bits: 0,
        bias_lshift: 0,
        out_rshift: 1,
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
