//! Unit tests of the q7 kernels' arithmetic (CMSIS-NN legacy semantics).

use nnquant::fixed::kernels::*;

const D1: Pair = Pair { h: 1, w: 1 };

#[test]
fn rounding_term_is_cmsis() {
    assert_eq!(round_term(0), 0);
    assert_eq!(round_term(1), 1);
    assert_eq!(round_term(7), 64);
    assert_eq!(round_term(31), 1 << 30);
    // fc: acc = 0 + 4 + 3·1 = 7 >> 3 = 0 ; 4 + 4 = 8 >> 3 = 1 (half rounds up)
    let mut out = [0i8; 1];
    fc_q7(&[3], &[1], &[0], 0, 3, &mut out).unwrap();
    assert_eq!(out, [0]);
    fc_q7(&[4], &[1], &[0], 0, 3, &mut out).unwrap();
    assert_eq!(out, [1]);
    // negative half: -4 + 4 = 0 -> 0 (round half up, not away from zero)
    fc_q7(&[-4], &[1], &[0], 0, 3, &mut out).unwrap();
    assert_eq!(out, [0]);
    // -5 + 4 = -1 >> 3 = -1 (arithmetic shift)
    fc_q7(&[-5], &[1], &[0], 0, 3, &mut out).unwrap();
    assert_eq!(out, [-1]);
}

#[test]
fn bias_is_shifted_left_and_output_saturates() {
    let mut out = [0i8; 2];
    // bias 3 << 5 = 96, + round 1, + 0 -> 97 >> 1 = 48
    fc_q7(&[0], &[0, 0], &[3, -3], 5, 1, &mut out).unwrap();
    assert_eq!(out, [48, -48]);
    fc_q7(
        &[127, 127],
        &[127, 127, -128, -128],
        &[0, 0],
        0,
        0,
        &mut out,
    )
    .unwrap();
    assert_eq!(out, [127, -128]);
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "negative or oversized shift")]
fn negative_shift_is_loud_in_debug() {
    let mut out = [0i8; 1];
    let _ = fc_q7(&[1], &[1], &[0], -1, 0, &mut out);
}

#[test]
#[cfg(not(debug_assertions))]
fn negative_shift_is_refused_in_release() {
    let mut out = [0i8; 1];
    assert_eq!(
        fc_q7(&[1], &[1], &[0], -1, 0, &mut out),
        Err(KernelError::Shift)
    );
    assert_eq!(
        fc_q7(&[1], &[1], &[0], 0, 32, &mut out),
        Err(KernelError::Shift)
    );
}

#[test]
fn wrong_lengths_are_refused_not_panicking() {
    let mut out = [0i8; 2];
    assert_eq!(
        fc_q7(&[1, 2], &[1], &[0, 0], 0, 0, &mut out),
        Err(KernelError::Length)
    );
    let d = Dims { h: 2, w: 2, c: 1 };
    assert_eq!(
        maxpool_hwc_q7(&[0; 3], d, D1, Pair { h: 0, w: 0 }, D1, &mut [0; 4], d),
        Err(KernelError::Length)
    );
    assert_eq!(
        conv_hwc_q7(
            &[0; 4],
            d,
            &[0; 1],
            D1,
            Pair { h: 0, w: 0 },
            D1,
            D1,
            2,
            &[0],
            0,
            0,
            &mut [0; 4],
            d
        ),
        Err(KernelError::Geometry)
    );
}

#[test]
fn avepool_truncates_toward_zero() {
    // 1×2 window over [-3, -4]: sum -7, count 2 -> -3 (C division), not -4 (floor).
    let ind = Dims { h: 1, w: 2, c: 1 };
    let outd = Dims { h: 1, w: 1, c: 1 };
    let mut out = [0i8; 1];
    avepool_hwc_q7(
        &[-3, -4],
        ind,
        Pair { h: 1, w: 2 },
        Pair { h: 0, w: 0 },
        D1,
        &mut out,
        outd,
        false,
    )
    .unwrap();
    assert_eq!(out, [-3]);
    avepool_hwc_q7(
        &[3, 4],
        ind,
        Pair { h: 1, w: 2 },
        Pair { h: 0, w: 0 },
        D1,
        &mut out,
        outd,
        false,
    )
    .unwrap();
    assert_eq!(out, [3]);
}

#[test]
fn avepool_rounds_half_away_from_zero() {
    // `ave_q7` itself: halves away from zero, truncation without `round`.
    for (sum, count, round, want) in [
        (7, 2, true, 4),
        (-7, 2, true, -4),
        (7, 2, false, 3),
        (-7, 2, false, -3),
        (4, 9, true, 0),
        (5, 9, true, 1),
        (-5, 9, true, -1),
        (-4, 9, true, 0),
        (8, 9, false, 0),
        (127 * 9, 9, true, 127),
        (-128 * 9, 9, true, -128),
        (3, 0, true, 0),
    ] {
        assert_eq!(
            ave_q7(sum, count, round),
            want,
            "{sum}/{count} round={round}"
        );
    }
    // A 3×3 window over non-negative values (a pool after a ReLU): 44/9 = 4.89 is 5 rounded,
    // 4 truncated.
    let x: [i8; 9] = [0, 9, 1, 8, 2, 7, 3, 6, 8];
    let (ind, outd) = (Dims { h: 3, w: 3, c: 1 }, Dims { h: 1, w: 1, c: 1 });
    let (k, p0) = (Pair { h: 3, w: 3 }, Pair { h: 0, w: 0 });
    let mut out = [0i8; 1];
    avepool_hwc_q7(&x, ind, k, p0, D1, &mut out, outd, true).unwrap();
    assert_eq!(out, [5]);
    avepool_hwc_q7(&x, ind, k, p0, D1, &mut out, outd, false).unwrap();
    assert_eq!(out, [4]);
}

#[test]
fn pools_clip_windows_to_the_image() {
    // 3×3 image, k3 s2 p0 with Caffe's ceil rule gives 2×2: the last windows hang over the edge.
    let ind = Dims { h: 3, w: 3, c: 1 };
    let outd = Dims { h: 2, w: 2, c: 1 };
    let x: [i8; 9] = [-9, -8, -7, -6, -5, -4, -3, -2, -100];
    let mut out = [0i8; 4];
    let k = Pair { h: 3, w: 3 };
    let s = Pair { h: 2, w: 2 };
    let p0 = Pair { h: 0, w: 0 };
    maxpool_hwc_q7(&x, ind, k, p0, s, &mut out, outd).unwrap();
    // windows: all 9 | col 2 rows 0..3 | row 2 cols 0..3 | the corner alone
    assert_eq!(out, [-2, -4, -2, -100]);
    avepool_hwc_q7(&x, ind, k, p0, s, &mut out, outd, false).unwrap();
    // (-144)/9 = -16 | (-7-4-100)/3 = -37 | (-3-2-100)/3 = -35 | -100
    assert_eq!(out, [-16, -37, -35, -100]);
    avepool_hwc_q7(&x, ind, k, p0, s, &mut out, outd, true).unwrap();
    // rounded: -16 | -37 | -35 | -100 (-111/3 and -105/3 are whole)
    assert_eq!(out, [-16, -37, -35, -100]);
    // With padding the zero padding is not counted either: k2 s2 p1 on 3×3 -> 2×2.
    let mut out = [0i8; 4];
    let p1 = Pair { h: 1, w: 1 };
    maxpool_hwc_q7(&x, ind, Pair { h: 2, w: 2 }, p1, s, &mut out, outd).unwrap();
    assert_eq!(out, [-9, -7, -3, -2]); // max of negatives: padding does not contribute 0
}

#[test]
fn relu_and_input_preprocessing() {
    let mut v = [-128i8, -1, 0, 1, 127];
    relu_q7(&mut v);
    assert_eq!(v, [0, 0, 0, 1, 127]);
    // uint8 pixels above 127 must not wrap (ARM's generated code reads them as signed).
    let mut o = [0i8; 4];
    input_u8_q7(&[200, 0, 255, 130], &[100, 100, 0, 128], 1, 0, &mut o).unwrap();
    assert_eq!(o, [100, -100, 127, 2]);
    // right shift by 1, half away from zero: 3/2 -> 2, -3/2 -> -2, -1/2 -> -1
    input_u8_q7(&[13, 7, 9, 10], &[10], 1, 1, &mut o).unwrap();
    assert_eq!(o, [2, -2, -1, 0]);
    // per-channel mean (HWC: channel fastest)
    let mut o = [0i8; 4];
    input_u8_q7(&[10, 20, 10, 20], &[10, 20], 2, 0, &mut o).unwrap();
    assert_eq!(o, [0, 0, 0, 0]);
}

#[test]
fn rescale_add_and_concat() {
    assert_eq!(rescale_one(100, 1), 127);
    assert_eq!(rescale_one(-100, 1), -128);
    assert_eq!(rescale_one(5, -1), 3); // 2.5 -> 3 (half up)
    assert_eq!(rescale_one(-5, -1), -2); // -2.5 -> -2 (half up)
    let mut out = [0i8; 2];
    // a at frac 1, b at frac 0, out at frac 0: common 1 -> a<<0 + b<<1, >>1 with rounding.
    add_q7(&[3, -3], 0, &[1, 1], 1, 1, &mut out).unwrap();
    assert_eq!(out, [3, 0]); // (3+2+1)>>1 = 3 ; (-3+2+1)>>1 = 0
    let mut out = [0i8; 6];
    concat_hwc_q7(&[1, 2], 1, 0, &mut out, 3, 0).unwrap();
    concat_hwc_q7(&[3, 4, 5, 6], 2, 1, &mut out, 3, 1).unwrap();
    assert_eq!(out, [1, 6, 8, 2, 10, 12]);
}

#[test]
fn depthwise_conv_uses_its_own_channel() {
    // 2 channels, groups 2, 1×1 kernel: out_c = in_c · w_c
    let d = Dims { h: 1, w: 2, c: 2 };
    let mut out = [0i8; 4];
    conv_hwc_q7(
        &[1, 2, 3, 4],
        d,
        &[10, -10],
        D1,
        Pair { h: 0, w: 0 },
        D1,
        D1,
        2,
        &[0, 0],
        0,
        0,
        &mut out,
        d,
    )
    .unwrap();
    assert_eq!(out, [10, -20, 30, -40]);
}

// ---------------------------------------------------------------------------------------------
// The fast paths (portable and DSP) against a plain reference of the semantics.
//
// `variants::*(true, ..)` runs the Cortex-M DSP algorithm with its instructions (SXTB16, SMLAD,
// SSUB8/SEL) modelled in plain Rust, so the host checks the algorithm; QEMU (`nnquant verify
// --target cortex-m4`) checks the instructions.

mod reference {
    use nnquant::fixed::kernels::{round_term, sat_i8, Dims, Pair};

    /// The textbook convolution: every kernel tap tested against the image, one MAC at a time.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        input: &[i8],
        ind: Dims,
        weights: &[i8],
        kernel: Pair,
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
        let ksize = kernel.h * kernel.w * cin_g;
        let mut out = vec![0i8; outd.len()];
        for oy in 0..outd.h {
            for ox in 0..outd.w {
                for o in 0..outd.c {
                    let g = o / cout_g;
                    let mut acc = ((bias[o] as i32) << bl).wrapping_add(round_term(or as u32));
                    for ky in 0..kernel.h {
                        for kx in 0..kernel.w {
                            let iy = (oy * stride.h + ky * dil.h) as isize - pad.h as isize;
                            let ix = (ox * stride.w + kx * dil.w) as isize - pad.w as isize;
                            if iy < 0 || ix < 0 || iy >= ind.h as isize || ix >= ind.w as isize {
                                continue;
                            }
                            for c in 0..cin_g {
                                let x = input
                                    [(iy as usize * ind.w + ix as usize) * ind.c + g * cin_g + c];
                                let w = weights[o * ksize + (ky * kernel.w + kx) * cin_g + c];
                                acc = acc.wrapping_add(x as i32 * w as i32);
                            }
                        }
                    }
                    out[(oy * outd.w + ox) * outd.c + o] = sat_i8(acc >> or);
                }
            }
        }
        out
    }

    /// Pools: `max == true` for max pool, else average pool (in-bounds count; C division, or
    /// `round`: the `f64` mean rounded half away from zero).
    #[allow(clippy::too_many_arguments)]
    pub fn pool(
        max: bool,
        round: bool,
        input: &[i8],
        ind: Dims,
        kernel: Pair,
        pad: Pair,
        stride: Pair,
        outd: Dims,
    ) -> Vec<i8> {
        let mut out = vec![0i8; outd.len()];
        for oy in 0..outd.h {
            for ox in 0..outd.w {
                for c in 0..ind.c {
                    let (mut m, mut sum, mut n) = (-128i32, 0i32, 0i32);
                    for ky in 0..kernel.h {
                        for kx in 0..kernel.w {
                            let iy = (oy * stride.h + ky) as isize - pad.h as isize;
                            let ix = (ox * stride.w + kx) as isize - pad.w as isize;
                            if iy < 0 || ix < 0 || iy >= ind.h as isize || ix >= ind.w as isize {
                                continue;
                            }
                            let v = input[(iy as usize * ind.w + ix as usize) * ind.c + c] as i32;
                            m = m.max(v);
                            sum += v;
                            n += 1;
                        }
                    }
                    out[(oy * outd.w + ox) * outd.c + c] = if max {
                        m as i8
                    } else if n == 0 {
                        0
                    } else if round {
                        sat_i8((sum as f64 / n as f64).round() as i32)
                    } else {
                        sat_i8(sum / n)
                    };
                }
            }
        }
        out
    }
}

/// A deterministic byte stream (xorshift), for the large fixed-shape cases.
fn noise(n: usize, seed: u32) -> Vec<i8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as i8
        })
        .collect()
}

/// Run a conv through the reference, the public kernel and both variants; all must agree.
#[allow(clippy::too_many_arguments)]
fn conv_all_paths(
    input: &[i8],
    ind: Dims,
    weights: &[i8],
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dil: Pair,
    groups: usize,
    bias: &[i8],
    bl: i32,
    or: i32,
    outd: Dims,
) -> Result<(), String> {
    let want = reference::conv(
        input, ind, weights, kernel, pad, stride, dil, groups, bias, bl, or, outd,
    );
    let mut got = vec![0i8; outd.len()];
    conv_hwc_q7(
        input, ind, weights, kernel, pad, stride, dil, groups, bias, bl, or, &mut got, outd,
    )
    .map_err(|e| format!("{e:?}"))?;
    if got != want {
        return Err("public kernel differs from the reference".into());
    }
    let ksize = kernel.h * kernel.w * ind.c / groups;
    let mut wq = vec![0u32; conv_widened_len(ind.c, outd.c, groups, ksize)];
    widen_conv_weights(
        weights,
        bias,
        &[bl],
        &[or],
        ind.c,
        outd.c,
        groups,
        ksize,
        &mut wq,
    )
    .map_err(|e| format!("widen: {e:?}"))?;
    for dsp in [false, true] {
        let mut got = vec![0i8; outd.len()];
        variants::conv_hwc_q7(
            dsp, input, ind, weights, kernel, pad, stride, dil, groups, bias, bl, or, &mut got,
            outd,
        )
        .map_err(|e| format!("{e:?}"))?;
        if got != want {
            return Err(format!("variant dsp={dsp} differs from the reference"));
        }
        // The firmware's call: scratch from the caller and, on DSP targets, only the
        // pre-widened weights (both for dilated layers that are not depthwise: the direct path
        // reads the i8 weights).
        let mut scratch = vec![0x5ai8; conv_scratch_len(ksize, dsp)];
        let i8_too = (dil.h != 1 || dil.w != 1) && !is_depthwise(ind.c, outd.c, groups);
        let (w8, wqs): (&[i8], &[u32]) = match (dsp, i8_too) {
            (false, _) => (weights, &[]),
            (true, false) => (&[], &wq),
            (true, true) => (weights, &wq),
        };
        let mut got = vec![0i8; outd.len()];
        variants::conv_hwc_q7_scratch(
            dsp,
            input,
            ind,
            w8,
            wqs,
            kernel,
            pad,
            stride,
            dil,
            groups,
            bias,
            bl,
            or,
            false,
            &mut scratch,
            &mut got,
            outd,
        )
        .map_err(|e| format!("{e:?}"))?;
        if got != want {
            return Err(format!(
                "scratch variant dsp={dsp} differs from the reference"
            ));
        }
    }
    Ok(())
}

fn bytes(len: usize) -> impl Strategy<Value = Vec<i8>> {
    prop_oneof![
        proptest::collection::vec(any::<i8>(), len),
        proptest::collection::vec(-3i8..=3, len),
    ]
}

use proptest::prelude::*;

#[allow(clippy::type_complexity)]
fn conv_case() -> impl Strategy<
    Value = (
        Dims,
        Dims,
        Pair,
        Pair,
        Pair,
        Pair,
        usize,
        Vec<i8>,
        Vec<i8>,
        Vec<i8>,
        i32,
        i32,
    ),
> {
    (
        (1usize..=3, 1usize..=9, 1usize..=5),
        (1usize..=5, 1usize..=5, 1usize..=7, 1usize..=7),
        (
            1usize..=2,
            1usize..=2,
            0usize..=2,
            0usize..=2,
            0usize..=1,
            0usize..=1,
        ),
        prop_oneof![3 => Just((1usize, 1usize)), 1 => (1usize..=3, 1usize..=3)],
    )
        .prop_filter_map(
            "window fits",
            |((groups, cin_g, cout_g), (kh, kw, h, w), (sh, sw, ph, pw, eh, ew), (dh, dw))| {
                let oh = (h + 2 * ph).checked_sub(dh * (kh - 1) + 1)? / sh + 1 + eh;
                let ow = (w + 2 * pw).checked_sub(dw * (kw - 1) + 1)? / sw + 1 + ew;
                Some((
                    Dims {
                        h,
                        w,
                        c: groups * cin_g,
                    },
                    Dims {
                        h: oh,
                        w: ow,
                        c: groups * cout_g,
                    },
                    Pair { h: kh, w: kw },
                    Pair { h: ph, w: pw },
                    Pair { h: sh, w: sw },
                    Pair { h: dh, w: dw },
                    groups,
                    kh * kw * cin_g,
                ))
            },
        )
        .prop_flat_map(|(ind, outd, k, p, s, d, groups, ksize)| {
            (
                Just((ind, outd, k, p, s, d, groups)),
                bytes(ind.len()),
                bytes(outd.c * ksize),
                bytes(outd.c),
                0i32..=6,
                0i32..=14,
            )
        })
        .prop_map(|((ind, outd, k, p, s, d, groups), x, w, b, bl, or)| {
            (ind, outd, k, p, s, d, groups, x, w, b, bl, or)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn conv_paths_match_the_reference(
        (ind, outd, k, p, s, d, groups, x, w, b, bl, or) in conv_case()
    ) {
        let r = conv_all_paths(&x, ind, &w, k, p, s, d, groups, &b, bl, or, outd);
        prop_assert!(r.is_ok(), "{:?}", r);
    }

    #[test]
    fn fc_paths_match_the_reference(
        (x, w, b, bl, or) in (0usize..=41, 1usize..=7).prop_flat_map(|(n_in, n_out)| {
            (bytes(n_in), bytes(n_in * n_out), bytes(n_out), 0i32..=6, 0i32..=14)
        })
    ) {
        let n_out = b.len();
        let n_in = x.len();
        let want: Vec<i8> = (0..n_out)
            .map(|o| {
                let mut acc = ((b[o] as i32) << bl).wrapping_add(round_term(or as u32));
                for i in 0..n_in {
                    acc = acc.wrapping_add(x[i] as i32 * w[o * n_in + i] as i32);
                }
                sat_i8(acc >> or)
            })
            .collect();
        let mut got = vec![0i8; n_out];
        fc_q7(&x, &w, &b, bl, or, &mut got).unwrap();
        prop_assert_eq!(&got, &want);
        for dsp in [false, true] {
            let mut got = vec![0i8; n_out];
            variants::fc_q7(dsp, &x, &w, &b, bl, or, &mut got).unwrap();
            prop_assert_eq!(&got, &want, "dsp={}", dsp);
        }
    }

    #[test]
    fn pools_and_relu_match_the_reference(
        (ind, outd, k, p, s, x) in (1usize..=70, 1usize..=3, 1usize..=3, 1usize..=3, 0usize..=1, 1usize..=6, 1usize..=6, 0usize..=1)
            .prop_filter_map("window fits", |(c, kk, st, kw, pad, h, w, extra)| {
                let oh = (h + 2 * pad).checked_sub(kk)?.div_ceil(st) + 1;
                let ow = (w + 2 * pad).checked_sub(kw)?.div_ceil(st) + 1 + extra;
                Some((Dims { h, w, c }, Dims { h: oh, w: ow, c }, Pair { h: kk, w: kw }, Pair { h: pad, w: pad }, Pair { h: st, w: st }))
            })
            .prop_flat_map(|(ind, outd, k, p, s)| (Just(ind), Just(outd), Just(k), Just(p), Just(s), bytes(ind.len())))
    ) {
        let want = reference::pool(true, false, &x, ind, k, p, s, outd);
        let mut got = vec![0i8; outd.len()];
        maxpool_hwc_q7(&x, ind, k, p, s, &mut got, outd).unwrap();
        prop_assert_eq!(&got, &want);
        for dsp in [false, true] {
            let mut got = vec![0i8; outd.len()];
            variants::maxpool_hwc_q7(dsp, &x, ind, k, p, s, &mut got, outd).unwrap();
            prop_assert_eq!(&got, &want, "dsp={}", dsp);
        }
        for round in [false, true] {
            let want = reference::pool(false, round, &x, ind, k, p, s, outd);
            avepool_hwc_q7(&x, ind, k, p, s, &mut got, outd, round).unwrap();
            prop_assert_eq!(&got, &want, "round={}", round);
        }
        let want: Vec<i8> = x.iter().map(|v| (*v).max(0)).collect();
        for dsp in [false, true] {
            let mut got = x.clone();
            variants::relu_q7(dsp, &mut got);
            prop_assert_eq!(&got, &want, "dsp={}", dsp);
        }
        let mut got = x.clone();
        relu_q7(&mut got);
        prop_assert_eq!(&got, &want);
    }
}

#[test]
fn conv_paths_match_at_the_patch_limit_and_beyond() {
    // ksize = PATCH_MAX exactly (im2col), PATCH_MAX + 3·... (direct path), ARM's conv1 and conv2
    // shapes (ksize 75 with a 3-byte tail, and 800), and a grouped case.
    let cases: [(usize, usize, usize, usize, usize, usize); 5] = [
        // (h=w, cin, cout, k, pad, groups)
        (6, 64, 5, 4, 1, 1),
        (5, 48, 3, 5, 2, 1),
        (9, 3, 32, 5, 2, 1),
        (6, 32, 16, 5, 2, 1),
        (7, 12, 6, 3, 1, 3),
    ];
    assert_eq!(64 * 4 * 4, PATCH_MAX);
    for (i, (hw, cin, cout, k, pad, groups)) in cases.into_iter().enumerate() {
        let ind = Dims {
            h: hw,
            w: hw,
            c: cin,
        };
        let o = hw + 2 * pad - k + 1;
        let outd = Dims {
            h: o,
            w: o,
            c: cout,
        };
        let ksize = k * k * cin / groups;
        let x = noise(ind.len(), 11 + i as u32);
        let w = noise(cout * ksize, 23 + i as u32);
        let b = noise(cout, 37 + i as u32);
        let kp = Pair { h: k, w: k };
        let pp = Pair { h: pad, w: pad };
        for (bl, or) in [(0, 0), (3, 9), (6, 14)] {
            conv_all_paths(&x, ind, &w, kp, pp, D1, D1, groups, &b, bl, or, outd)
                .unwrap_or_else(|e| panic!("case {i} bl {bl} or {or}: {e}"));
        }
    }
}

/// Bytes for the depthwise cases: any, small, or only the extremes -128 / 127.
fn dw_bytes(len: usize) -> impl Strategy<Value = Vec<i8>> {
    prop_oneof![
        proptest::collection::vec(any::<i8>(), len),
        proptest::collection::vec(-3i8..=3, len),
        proptest::collection::vec(prop_oneof![Just(-128i8), Just(127i8)], len),
    ]
}

/// A depthwise layer (`groups == in_c == out_c`): channel counts across whole quads and tails
/// of 1–3, rectangular kernels, stride 1–3, padding, dilation 1–3, output sizes up to one beyond
/// Caffe's rule (windows entirely in the padding), shifts up to 31 so that the `i32` sums wrap.
#[allow(clippy::type_complexity)]
fn dw_case() -> impl Strategy<
    Value = (
        (Dims, Dims, Pair, Pair, Pair, Pair),
        Vec<i8>,
        Vec<i8>,
        Vec<i8>,
        i32,
        i32,
    ),
> {
    (
        (1usize..=13, 1usize..=9, 1usize..=9),
        (1usize..=5, 1usize..=5, 1usize..=3, 1usize..=3),
        (
            0usize..=3,
            0usize..=3,
            1usize..=3,
            1usize..=3,
            0usize..=1,
            0usize..=1,
        ),
    )
        .prop_filter_map(
            "window fits",
            |((c, h, w), (kh, kw, sh, sw), (ph, pw, dh, dw, eh, ew))| {
                let oh = (h + 2 * ph).checked_sub(dh * (kh - 1) + 1)? / sh + 1 + eh;
                let ow = (w + 2 * pw).checked_sub(dw * (kw - 1) + 1)? / sw + 1 + ew;
                Some((
                    Dims { h, w, c },
                    Dims { h: oh, w: ow, c },
                    Pair { h: kh, w: kw },
                    Pair { h: ph, w: pw },
                    Pair { h: sh, w: sw },
                    Pair { h: dh, w: dw },
                ))
            },
        )
        .prop_flat_map(|geo| {
            let (ind, _, k, ..) = geo;
            (
                Just(geo),
                dw_bytes(ind.len()),
                dw_bytes(ind.c * k.h * k.w),
                dw_bytes(ind.c),
                prop_oneof![0i32..=8, 20i32..=31],
                prop_oneof![0i32..=14, 24i32..=31],
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// The depthwise path (portable, and the DSP algorithm with the instructions modelled, with
    /// and without pre-widened weights) equals the textbook grouped convolution byte for byte.
    #[test]
    fn depthwise_paths_match_the_reference(
        ((ind, outd, k, p, s, d), x, w, b, bl, or) in dw_case()
    ) {
        prop_assert!(is_depthwise(ind.c, outd.c, ind.c));
        let r = conv_all_paths(&x, ind, &w, k, p, s, d, ind.c, &b, bl, or, outd);
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}

#[test]
fn depthwise_widened_weights_are_channel_quads() {
    // 5 channels, 2 taps: quad 0 holds channels 0..4, quad 1 channel 4 and zeros.
    let w: Vec<i8> = (0..10).map(|i| i as i8 - 5).collect(); // [c][t]
    let bias: Vec<i8> = vec![3, -4, 5, -6, 7];
    let bl = [2, 0, 1, 3, 4];
    let or = [5, 0, 31, 1, 6];
    let mut wq = vec![0u32; dw_widened_len(5, 2)];
    // 2 quads × (2 taps × 2 words + an output stage).
    assert_eq!(wq.len(), 8 + 2 * DW_QUAD_STAGE);
    widen_conv_weights(&w, &bias, &bl, &or, 5, 5, 5, 2, &mut wq).unwrap();
    let h = |v: i8| v as i16 as u16 as u32;
    // quad 0, tap 0: (c0, c2), (c1, c3); tap 1 likewise.
    assert_eq!(wq[0], h(w[0]) | h(w[4]) << 16);
    assert_eq!(wq[1], h(w[2]) | h(w[6]) << 16);
    assert_eq!(wq[3], h(w[3]) | h(w[7]) << 16);
    // quad 1, tap 1: channel 4 alone.
    assert_eq!(wq[6], h(w[9]));
    assert_eq!(wq[7], 0);
    // The output stages: (bias << bias_lshift) + round, then the shifts a byte each; channels
    // beyond the last start at 0 with shift 0.
    let stage0 = &wq[8..8 + DW_QUAD_STAGE];
    assert_eq!(
        stage0[..4],
        [
            12 + 16,
            -4i32 as u32,
            (5 << 1) + (1 << 30),
            (-6i32 << 3) as u32 + 1
        ]
    );
    assert_eq!(stage0[4], 5 | 31 << 16 | 1 << 24);
    assert_eq!(wq[8 + DW_QUAD_STAGE..], [(7 << 4) + 32, 0, 0, 0, 6]);
    // Per-layer shifts give every channel the same.
    widen_conv_weights(&w, &bias, &[1], &[2], 5, 5, 5, 2, &mut wq).unwrap();
    assert_eq!(
        wq[8..8 + DW_QUAD_STAGE],
        [
            6 + 2,
            -8i32 as u32 + 2,
            12,
            -12i32 as u32 + 2,
            2 | 2 << 8 | 2 << 16 | 2 << 24
        ]
    );
    assert_eq!(
        widen_conv_weights(&w[..9], &bias, &bl, &or, 5, 5, 5, 2, &mut wq),
        Err(KernelError::Length)
    );
    assert_eq!(
        widen_conv_weights(&w, &bias, &bl[..2], &or, 5, 5, 5, 2, &mut wq),
        Err(KernelError::Length)
    );
    assert_eq!(
        widen_conv_weights(&w, &bias, &[32], &or, 5, 5, 5, 2, &mut wq),
        Err(KernelError::Shift)
    );
    // A grouped but not depthwise layer keeps the im2col layout.
    assert!(!is_depthwise(4, 8, 4));
    assert_eq!(conv_widened_len(4, 8, 4, 9), widened_weights_len(8, 4, 9));
}

#[test]
fn zero_dilation_is_refused() {
    let d = Dims { h: 3, w: 3, c: 2 };
    let mut out = [0i8; 18];
    for groups in [1, 2] {
        assert_eq!(
            conv_hwc_q7(
                &[0; 18],
                d,
                &vec![0; 2 * 2 / groups],
                D1,
                Pair { h: 0, w: 0 },
                D1,
                Pair { h: 1, w: 0 },
                groups,
                &[0, 0],
                0,
                0,
                &mut out,
                d
            ),
            Err(KernelError::Geometry)
        );
    }
}
