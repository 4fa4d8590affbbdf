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
    )
    .unwrap();
    assert_eq!(out, [3]);
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
    avepool_hwc_q7(&x, ind, k, p0, s, &mut out, outd).unwrap();
    // (-144)/9 = -16 | (-7-4-100)/3 = -37 | (-3-2-100)/3 = -35 | -100
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
