//! The fused kernels equal the unfused ones byte for byte (portable and DSP algorithms, the DSP
//! instructions modelled in Rust): conv + ReLU in the requantization with caller scratch, and
//! conv → (ReLU) → max/average pool → (ReLU) through a row ring buffer, on random shapes with
//! padding, strides, groups, odd sizes and Caffe's ceil-mode clipped last windows.

use nnquant::fixed::kernels::{
    conv_pool_ring_len, conv_scratch_len, conv_widened_len, is_depthwise, variants,
    widen_conv_weights, widen_weights, widened_weights_len, Dims, Fused, KernelError, Pair,
    PoolSpec,
};
use nnquant::ir::{
    shape::{conv_out, pool_out},
    RoundMode,
};
use proptest::prelude::*;

fn bytes(n: usize, seed: u64) -> Vec<i8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as i8
        })
        .collect()
}

fn relu(v: &mut [i8]) {
    for x in v {
        *x = (*x).max(0);
    }
}

#[derive(Debug, Clone)]
struct Case {
    in_dims: Dims,
    cout: usize,
    groups: usize,
    kernel: Pair,
    pad: Pair,
    stride: Pair,
    dilation: Pair,
    pool: PoolSpec,
    relu_conv: bool,
    relu_out: bool,
    bias_lshift: i32,
    out_rshift: i32,
    seed: u64,
    misalign: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..11, 1usize..11, 1usize..4, 1usize..5, 1usize..3),
        (
            1usize..6,
            1usize..6,
            0usize..3,
            0usize..3,
            1usize..3,
            1usize..3,
        ),
        (
            1usize..5,
            1usize..5,
            0usize..3,
            0usize..3,
            1usize..4,
            1usize..4,
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0i32..6,
            0i32..12,
        ),
        (
            any::<u64>(),
            0usize..4,
            prop_oneof![3 => Just(1usize), 1 => 1usize..4],
        ),
    )
        .prop_map(
            |(
                (h, w, cin_g, cout_g, groups),
                (kh, kw, ph, pw, sh, sw),
                pool,
                flags,
                (seed, mis, dil),
            )| {
                let (pkh, pkw, pph, ppw, psh, psw) = pool;
                let (max, relu_conv, relu_out, bl, or) = flags;
                Case {
                    in_dims: Dims {
                        h,
                        w,
                        c: cin_g * groups,
                    },
                    cout: cout_g * groups,
                    groups,
                    kernel: Pair { h: kh, w: kw },
                    pad: Pair {
                        h: ph.min(kh - 1),
                        w: pw.min(kw - 1),
                    },
                    stride: Pair { h: sh, w: sw },
                    dilation: Pair { h: dil, w: dil },
                    pool: PoolSpec {
                        kernel: Pair { h: pkh, w: pkw },
                        // Caffe requires pad < kernel.
                        pad: Pair {
                            h: pph.min(pkh - 1),
                            w: ppw.min(pkw - 1),
                        },
                        stride: Pair { h: psh, w: psw },
                        max,
                        // The seed's low bit picks the average pool's rounding.
                        round: seed & 1 == 1,
                    },
                    relu_conv,
                    relu_out,
                    bias_lshift: bl,
                    out_rshift: or,
                    seed,
                    misalign: mis,
                }
            },
        )
}

/// Conv output dims, or None when the kernel does not fit.
fn conv_dims(c: &Case) -> Option<Dims> {
    Some(Dims {
        h: conv_out(c.in_dims.h, c.kernel.h, c.stride.h, c.pad.h, c.dilation.h).ok()?,
        w: conv_out(c.in_dims.w, c.kernel.w, c.stride.w, c.pad.w, c.dilation.w).ok()?,
        c: c.cout,
    })
    .filter(|d| d.h > 0 && d.w > 0)
}

struct Tensors {
    input: Vec<i8>,
    weights: Vec<i8>,
    bias: Vec<i8>,
}

fn tensors(c: &Case) -> Tensors {
    let ksize = c.kernel.h * c.kernel.w * c.in_dims.c / c.groups;
    Tensors {
        input: bytes(c.in_dims.len(), c.seed),
        weights: bytes(c.cout * ksize, c.seed ^ 0x9e37),
        bias: bytes(c.cout, c.seed ^ 0x7f4a),
    }
}

/// The weights pre-widened for the DSP kernels.
fn widened(c: &Case, t: &Tensors) -> Vec<u32> {
    let ksize = c.kernel.h * c.kernel.w * c.in_dims.c / c.groups;
    let (ic, oc) = (c.in_dims.c, c.cout);
    let mut wq = vec![0u32; conv_widened_len(ic, oc, c.groups, ksize)];
    let (bl, or) = ([c.bias_lshift], [c.out_rshift]);
    widen_conv_weights(
        &t.weights, &t.bias, &bl, &or, ic, oc, c.groups, ksize, &mut wq,
    )
    .unwrap();
    wq
}

/// Dilated layers that are not depthwise read the i8 weights even on DSP targets (the direct
/// path); the firmware passes both.
fn i8_needed(c: &Case) -> bool {
    let dilated = c.dilation.h != 1 || c.dilation.w != 1;
    dilated && !is_depthwise(c.in_dims.c, c.cout, c.groups)
}

fn unfused_conv(dsp: bool, c: &Case, t: &Tensors, cd: Dims) -> Vec<i8> {
    let mut y = vec![0i8; cd.len()];
    variants::conv_hwc_q7(
        dsp,
        &t.input,
        c.in_dims,
        &t.weights,
        c.kernel,
        c.pad,
        c.stride,
        c.dilation,
        c.groups,
        &t.bias,
        c.bias_lshift,
        c.out_rshift,
        &mut y,
        cd,
    )
    .unwrap();
    y
}

proptest! {
    // Dilated kernels overhang small images more often: more rejected cases to allow.
    #![proptest_config(ProptestConfig { cases: 600, max_global_rejects: 8192, ..ProptestConfig::default() })]

    #[test]
    fn conv_with_scratch_and_relu_equals_conv_then_relu(
        c in case(), dsp in any::<bool>(), pre_widened in any::<bool>(),
    ) {
        let cd = conv_dims(&c);
        prop_assume!(cd.is_some());
        let cd = cd.unwrap();
        let t = tensors(&c);
        let mut expected = unfused_conv(dsp, &c, &t, cd);
        if c.relu_conv {
            relu(&mut expected);
        }
        let ksize = c.kernel.h * c.kernel.w * c.in_dims.c / c.groups;
        let mut scratch = vec![0x55i8; conv_scratch_len(ksize, dsp) + c.misalign];
        let mut got = vec![0i8; cd.len()];
        // DSP with pre-widened weights (the i8 weights then omitted, as the firmware does).
        let wq = if dsp && pre_widened { widened(&c, &t) } else { Vec::new() };
        let w: &[i8] = if wq.is_empty() || i8_needed(&c) { &t.weights } else { &[] };
        variants::conv_hwc_q7_scratch(
            dsp, &t.input, c.in_dims, w, &wq, c.kernel, c.pad, c.stride, c.dilation, c.groups, &t.bias,
            c.bias_lshift, c.out_rshift, c.relu_conv, &mut scratch[c.misalign..], &mut got, cd,
        )
        .unwrap();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn fused_conv_pool_equals_unfused(
        c in case(), dsp in any::<bool>(), pre_widened in any::<bool>(),
    ) {
        let cd = conv_dims(&c);
        prop_assume!(cd.is_some());
        let cd = cd.unwrap();
        let p = c.pool;
        let (Ok(oh), Ok(ow)) = (
            pool_out(cd.h, p.kernel.h, p.stride.h, p.pad.h, RoundMode::Ceil),
            pool_out(cd.w, p.kernel.w, p.stride.w, p.pad.w, RoundMode::Ceil),
        ) else {
            prop_assume!(false);
            unreachable!()
        };
        let od = Dims { h: oh, w: ow, c: c.cout };
        let t = tensors(&c);
        let mut y = unfused_conv(dsp, &c, &t, cd);
        if c.relu_conv {
            relu(&mut y);
        }
        let mut expected = vec![0i8; od.len()];
        if p.max {
            variants::maxpool_hwc_q7(dsp, &y, cd, p.kernel, p.pad, p.stride, &mut expected, od)
                .unwrap();
        } else {
            nnquant::fixed::kernels::avepool_hwc_q7(
                &y,
                cd,
                p.kernel,
                p.pad,
                p.stride,
                &mut expected,
                od,
                p.round,
            )
            .unwrap();
        }
        if c.relu_out {
            relu(&mut expected);
        }
        let ksize = c.kernel.h * c.kernel.w * c.in_dims.c / c.groups;
        // Garbage in the ring and scratch must not matter.
        let mut ring = bytes(conv_pool_ring_len(cd, p.kernel.h), c.seed ^ 1);
        let mut scratch = bytes(conv_scratch_len(ksize, dsp) + c.misalign, c.seed ^ 2);
        let mut got = vec![0i8; od.len()];
        let fuse = Fused { relu_conv: c.relu_conv, pool: p, relu_out: c.relu_out };
        let wq = if dsp && pre_widened { widened(&c, &t) } else { Vec::new() };
        let w: &[i8] = if wq.is_empty() || i8_needed(&c) { &t.weights } else { &[] };
        variants::conv_pool_hwc_q7(
            dsp, &t.input, c.in_dims, w, &wq, c.kernel, c.pad, c.stride, c.dilation, c.groups, &t.bias,
            c.bias_lshift, c.out_rshift, cd, fuse, &mut ring, &mut scratch[c.misalign..], &mut got,
            od,
        )
        .unwrap();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn short_ring_or_scratch_is_refused() {
    let d = Dims { h: 4, w: 4, c: 2 };
    let k = Pair { h: 3, w: 3 };
    let one = Pair { h: 1, w: 1 };
    let input = vec![1i8; d.len()];
    let weights = vec![1i8; 2 * 9 * 2];
    let bias = [0i8; 2];
    let pool = PoolSpec {
        kernel: Pair { h: 2, w: 2 },
        pad: Pair { h: 0, w: 0 },
        stride: Pair { h: 2, w: 2 },
        max: true,
        round: false,
    };
    let fuse = Fused {
        relu_conv: false,
        pool,
        relu_out: false,
    };
    let od = Dims { h: 2, w: 2, c: 2 };
    let mut out = vec![0i8; od.len()];
    for dsp in [false, true] {
        let need_ring = conv_pool_ring_len(d, 2);
        let need_scr = conv_scratch_len(18, dsp);
        for (r, s) in [(need_ring - 1, need_scr), (need_ring, need_scr - 1)] {
            let (mut ring, mut scr) = (vec![0i8; r], vec![0i8; s]);
            assert_eq!(
                variants::conv_pool_hwc_q7(
                    dsp,
                    &input,
                    d,
                    &weights,
                    &[],
                    k,
                    one,
                    one,
                    one,
                    1,
                    &bias,
                    0,
                    0,
                    d,
                    fuse,
                    &mut ring,
                    &mut scr,
                    &mut out,
                    od,
                ),
                Err(KernelError::Length)
            );
        }
        let (mut ring, mut scr) = (vec![0i8; need_ring], vec![0i8; need_scr]);
        variants::conv_pool_hwc_q7(
            dsp,
            &input,
            d,
            &weights,
            &[],
            k,
            one,
            one,
            one,
            1,
            &bias,
            0,
            0,
            d,
            fuse,
            &mut ring,
            &mut scr,
            &mut out,
            od,
        )
        .unwrap();
        // Interior pixels see 3×3×2 ones (18); the 2×2 max pool sees at least one of them.
        assert_eq!(out, vec![18i8; od.len()]);
    }
}

#[test]
fn wrong_widened_weights_are_refused() {
    let d = Dims { h: 3, w: 3, c: 4 };
    let k = Pair { h: 3, w: 3 };
    let one = Pair { h: 1, w: 1 };
    let od = Dims { h: 3, w: 3, c: 3 };
    let (input, bias) = (vec![1i8; d.len()], [0i8; 3]);
    let need = widened_weights_len(3, 1, 36);
    // Two channel pairs (the third channel paired with itself), 9 groups of 4 words each.
    assert_eq!(need, 2 * 9 * 4);
    let mut out = vec![0i8; od.len()];
    let mut scratch = vec![0i8; conv_scratch_len(36, true)];
    assert_eq!(
        variants::conv_hwc_q7_scratch(
            true,
            &input,
            d,
            &[],
            &vec![0u32; need - 1],
            k,
            one,
            one,
            one,
            1,
            &bias,
            0,
            0,
            false,
            &mut scratch,
            &mut out,
            od,
        ),
        Err(KernelError::Length)
    );
    // Without widened weights the i8 weights are required (and on the portable path always).
    for dsp in [false, true] {
        assert_eq!(
            variants::conv_hwc_q7_scratch(
                dsp,
                &input,
                d,
                &[],
                &[],
                k,
                one,
                one,
                one,
                1,
                &bias,
                0,
                0,
                false,
                &mut scratch,
                &mut out,
                od,
            ),
            Err(KernelError::Length)
        );
    }
    let mut bad = vec![0u32; need];
    assert_eq!(
        widen_weights(&[0; 107], 3, 1, 36, &mut bad),
        Err(KernelError::Length)
    );
    assert_eq!(
        widen_weights(&[0; 108], 3, 2, 36, &mut bad),
        Err(KernelError::Geometry)
    );
}

proptest! {
    #[test]
    fn input_conversion_in_place_equals_out_of_place(
        n in 1usize..64, per_channel in any::<bool>(), mul in -300i32..300, rshift in 0i32..20,
        seed in any::<u64>(),
    ) {
        use nnquant::fixed::kernels::{input_u8_q7, input_u8_q7_in_place};
        let pixels: Vec<u8> = bytes(3 * n, seed).iter().map(|b| *b as u8).collect();
        let mean: Vec<u8> = bytes(if per_channel { 3 } else { 3 * n }, seed ^ 5)
            .iter()
            .map(|b| *b as u8)
            .collect();
        let mut expected = vec![0i8; pixels.len()];
        input_u8_q7(&pixels, &mean, mul, rshift, &mut expected).unwrap();
        let mut buf: Vec<i8> = pixels.iter().map(|p| *p as i8).collect();
        input_u8_q7_in_place(&mut buf, &mean, mul, rshift).unwrap();
        prop_assert_eq!(buf, expected);
    }
}
