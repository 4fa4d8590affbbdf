//! Per-channel formats: the `_pc` kernels (one `bias_lshift`/`out_rshift` per output channel)
//! against an oracle built from the per-layer kernels (output channel `c` of a per-channel layer
//! is channel `c` of the per-layer kernel run with channel `c`'s shifts), portable and DSP
//! algorithms, i8 and pre-widened weights, every convolution path (im2col pairs, direct,
//! depthwise quads, dilated) and fc; the fused conv → pool kernel; the simulator's every path
//! against `kernels.rs` with per-channel shifts; model files and formats files.

use nnquant::fixed::graph::{ChannelFormats, Formats, Frac, Hwc, QBlob, QConv, QFc, QLayer};
use nnquant::fixed::kernels::{
    conv_pool_ring_len, conv_scratch_len, conv_widened_len, variants, widen_conv_weights, Dims,
    Fused, Pair, PoolSpec,
};
use nnquant::fixed::{run_reference, Keep, QGraph, QOp, SimdPath, Simulator};
use nnquant::ir::Hw;
use proptest::prelude::*;
use std::collections::BTreeMap;

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

/// Shifts per channel: realistic ones, sometimes anywhere in `0..=31`.
fn shifts(n: usize, seed: u64, max: i32) -> Vec<i32> {
    bytes(n, seed)
        .iter()
        .map(|b| {
            let v = *b as u8 as i32;
            if v % 5 == 0 {
                v % 32
            } else {
                v % (max + 1)
            }
        })
        .collect()
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
    relu: bool,
    seed: u64,
}

/// Dense, grouped, depthwise (groups = channels, incl. quads and their tails) and dilated
/// convolutions.
fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..9, 1usize..9, 1usize..4),
        (1usize..4, 1usize..4, 0usize..3, 0usize..3, 1usize..3),
        (0u8..4, 1usize..3, 1usize..4, any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((h, w, cin_g), (kh, kw, ph, pw, s), (kind, dil, cout_g, relu, seed))| {
                let (groups, cin, cout) = match kind {
                    // Depthwise: channel counts with whole quads and tails.
                    0 => {
                        let c = [1, 3, 4, 5, 8, 9, 12][(seed % 7) as usize];
                        (c, c, c)
                    }
                    1 => (2, 2 * cin_g, 2 * cout_g),
                    // Channel counts that are multiples of 4 (the DSP's direct widening).
                    2 => (1, 4 * cin_g, cout_g + 1),
                    _ => (1, cin_g, cout_g),
                };
                let dilation = if seed % 3 == 0 {
                    Pair {
                        h: dil,
                        w: 1 + (seed as usize >> 8) % 2,
                    }
                } else {
                    Pair { h: 1, w: 1 }
                };
                Case {
                    in_dims: Dims {
                        h: h + kh * dilation.h,
                        w: w + kw * dilation.w,
                        c: cin,
                    },
                    cout,
                    groups,
                    kernel: Pair { h: kh, w: kw },
                    pad: Pair { h: ph, w: pw },
                    stride: Pair {
                        h: s,
                        w: 1 + (seed as usize >> 4) % 2,
                    },
                    dilation,
                    relu,
                    seed,
                }
            },
        )
}

impl Case {
    fn out_dims(&self) -> Dims {
        let o = |i: usize, k: usize, p: usize, s: usize, d: usize| {
            (i + 2 * p - (d * (k - 1) + 1)) / s + 1
        };
        Dims {
            h: o(
                self.in_dims.h,
                self.kernel.h,
                self.pad.h,
                self.stride.h,
                self.dilation.h,
            ),
            w: o(
                self.in_dims.w,
                self.kernel.w,
                self.pad.w,
                self.stride.w,
                self.dilation.w,
            ),
            c: self.cout,
        }
    }
    fn ksize(&self) -> usize {
        self.kernel.h * self.kernel.w * self.in_dims.c / self.groups
    }
    /// Input, weights, bias, bias shifts and output shifts.
    #[allow(clippy::type_complexity)]
    fn data(&self) -> (Vec<i8>, Vec<i8>, Vec<i8>, Vec<i32>, Vec<i32>) {
        let input = bytes(self.in_dims.len(), self.seed);
        let weights = bytes(self.cout * self.ksize(), self.seed ^ 0x55);
        let bias = bytes(self.cout, self.seed ^ 0xaa);
        (
            input,
            weights,
            bias,
            shifts(self.cout, self.seed ^ 0x1234, 6),
            shifts(self.cout, self.seed ^ 0x4321, 14),
        )
    }

    /// The oracle: channel `c` from the per-layer kernel with channel `c`'s shifts.
    fn oracle(&self, input: &[i8], weights: &[i8], bias: &[i8], bl: &[i32], or: &[i32]) -> Vec<i8> {
        let od = self.out_dims();
        let mut want = vec![0i8; od.len()];
        let mut one = vec![0i8; od.len()];
        let mut scratch = vec![0i8; conv_scratch_len(self.ksize(), true)];
        for c in 0..self.cout {
            variants::conv_hwc_q7_scratch(
                false,
                input,
                self.in_dims,
                weights,
                &[],
                self.kernel,
                self.pad,
                self.stride,
                self.dilation,
                self.groups,
                bias,
                bl[c],
                or[c],
                self.relu,
                &mut scratch,
                &mut one,
                od,
            )
            .unwrap();
            for (w, o) in want
                .chunks_exact_mut(self.cout)
                .zip(one.chunks_exact(self.cout))
            {
                w[c] = o[c];
            }
        }
        want
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Every convolution path, portable and DSP, i8 and pre-widened weights, equals the oracle.
    #[test]
    fn conv_pc_matches_per_layer_channel_by_channel(c in case()) {
        let (input, weights, bias, bl, or) = c.data();
        let want = c.oracle(&input, &weights, &bias, &bl, &or);
        let od = c.out_dims();
        let k = c.ksize();
        let mut wq = vec![0u32; conv_widened_len(c.in_dims.c, c.cout, c.groups, k)];
        widen_conv_weights(
            &weights, &bias, &bl, &or, c.in_dims.c, c.cout, c.groups, k, &mut wq,
        )
        .unwrap();
        for (dsp, wq) in [(false, &[][..]), (true, &[][..]), (true, &wq[..])] {
            let mut scratch = vec![0i8; conv_scratch_len(k, dsp) + 3];
            let mut got = vec![0i8; od.len()];
            variants::conv_hwc_q7_scratch_pc(
                dsp, &input, c.in_dims, &weights, wq, c.kernel, c.pad, c.stride, c.dilation,
                c.groups, &bias, &bl, &or, c.relu, &mut scratch[1..], &mut got, od,
            ).unwrap();
            prop_assert_eq!(&got, &want, "dsp {} widened {}", dsp, !wq.is_empty());
        }
        if !c.relu {
            // The stack-scratch entry point too.
            for dsp in [false, true] {
                let mut got = vec![0i8; od.len()];
                variants::conv_hwc_q7_pc(
                    dsp, &input, c.in_dims, &weights, c.kernel, c.pad, c.stride, c.dilation,
                    c.groups, &bias, &bl, &or, &mut got, od,
                ).unwrap();
                prop_assert_eq!(&got, &want, "conv_hwc_q7_pc dsp {}", dsp);
            }
        }
    }

    /// Shift slices of length 1 are exactly the per-layer kernel (today's bytes).
    #[test]
    fn conv_pc_with_one_shift_is_the_per_layer_kernel(c in case()) {
        let (input, weights, bias, bl, or) = c.data();
        let od = c.out_dims();
        for dsp in [false, true] {
            let mut scratch = vec![0i8; conv_scratch_len(c.ksize(), dsp)];
            let (mut a, mut b) = (vec![0i8; od.len()], vec![0i8; od.len()]);
            variants::conv_hwc_q7_scratch(
                dsp, &input, c.in_dims, &weights, &[], c.kernel, c.pad, c.stride, c.dilation,
                c.groups, &bias, bl[0], or[0], c.relu, &mut scratch, &mut a, od,
            ).unwrap();
            variants::conv_hwc_q7_scratch_pc(
                dsp, &input, c.in_dims, &weights, &[], c.kernel, c.pad, c.stride, c.dilation,
                c.groups, &bias, &bl[..1], &or[..1], c.relu, &mut scratch, &mut b, od,
            ).unwrap();
            prop_assert_eq!(a, b);
        }
    }

    /// The fused conv → max/average pool with per-channel shifts equals conv then pool.
    #[test]
    fn conv_pool_pc_matches_unfused(c in case(), max in any::<bool>(), round in any::<bool>(), pk in 1usize..3) {
        let (input, weights, bias, bl, or) = c.data();
        let cd = c.out_dims();
        let pool = PoolSpec { kernel: Pair { h: pk, w: pk }, pad: Pair { h: 0, w: 0 }, stride: Pair { h: pk, w: pk }, max, round };
        let od = Dims { h: cd.h.div_ceil(pk), w: cd.w.div_ceil(pk), c: cd.c };
        let conv = c.oracle(&input, &weights, &bias, &bl, &or);
        let mut want = vec![0i8; od.len()];
        if max {
            variants::maxpool_hwc_q7(false, &conv, cd, pool.kernel, pool.pad, pool.stride, &mut want, od).unwrap();
        } else {
            nnquant::fixed::kernels::avepool_hwc_q7(&conv, cd, pool.kernel, pool.pad, pool.stride, &mut want, od, round).unwrap();
        }
        for dsp in [false, true] {
            let mut ring = vec![0i8; conv_pool_ring_len(cd, pk)];
            let mut scratch = vec![0i8; conv_scratch_len(c.ksize(), dsp)];
            let mut got = vec![0i8; od.len()];
            let fuse = Fused { relu_conv: c.relu, pool, relu_out: false };
            variants::conv_pool_hwc_q7_pc(
                dsp, &input, c.in_dims, &weights, &[], c.kernel, c.pad, c.stride, c.dilation,
                c.groups, &bias, &bl, &or, cd, fuse, &mut ring, &mut scratch, &mut got, od,
            ).unwrap();
            prop_assert_eq!(&got, &want, "dsp {}", dsp);
        }
    }

    /// Fully connected with per-output shifts, portable and DSP, against the per-layer kernel
    /// output by output.
    #[test]
    fn fc_pc_matches_per_layer_output_by_output(k in 1usize..80, o in 1usize..20, seed in any::<u64>()) {
        let input = bytes(k, seed);
        let weights = bytes(k * o, seed ^ 7);
        let bias = bytes(o, seed ^ 9);
        let (bl, or) = (shifts(o, seed ^ 1, 6), shifts(o, seed ^ 2, 14));
        let mut want = vec![0i8; o];
        let mut one = vec![0i8; o];
        for c in 0..o {
            variants::fc_q7(false, &input, &weights, &bias, bl[c], or[c], &mut one).unwrap();
            want[c] = one[c];
        }
        for dsp in [false, true] {
            let mut got = vec![0i8; o];
            variants::fc_q7_pc(dsp, &input, &weights, &bias, &bl, &or, &mut got).unwrap();
            prop_assert_eq!(&got, &want, "dsp {}", dsp);
        }
    }

    /// The simulator's every path equals `kernels.rs` on per-channel convolutions (dense,
    /// grouped, depthwise, dilated) and fully connected layers.
    #[test]
    fn simulator_matches_kernels_per_channel(c in case(), n in 1usize..3, fo in 1usize..40) {
        let (_, weights, bias, bl, or) = c.data();
        let od = c.out_dims();
        let hwc = |d: Dims| Hwc { h: d.h, w: d.w, c: d.c };
        let conv = QConv {
            in_dims: hwc(c.in_dims),
            out_dims: hwc(od),
            kernel: Hw { h: c.kernel.h, w: c.kernel.w },
            pad: Hw { h: c.pad.h, w: c.pad.w },
            stride: Hw { h: c.stride.h, w: c.stride.w },
            dilation: Hw { h: c.dilation.h, w: c.dilation.w },
            groups: c.groups,
            weights,
            bias,
            weight_frac_bits: 0,
            bias_frac_bits: 0,
            bias_lshift: bl[0],
            out_rshift: or[0],
            per_channel: Some(ChannelFormats {
                weight_frac_bits: vec![0; c.cout],
                bias_frac_bits: vec![0; c.cout],
                bias_lshift: bl,
                out_rshift: or,
            }),
        };
        let fbl = shifts(fo, c.seed ^ 3, 6);
        let for_ = shifts(fo, c.seed ^ 4, 14);
        let fc = QFc {
            in_len: od.len(),
            out_len: fo,
            weights: bytes(od.len() * fo, c.seed ^ 5),
            bias: bytes(fo, c.seed ^ 6),
            weight_frac_bits: 0,
            bias_frac_bits: 0,
            bias_lshift: fbl[0],
            out_rshift: for_[0],
            per_channel: Some(ChannelFormats {
                weight_frac_bits: vec![0; fo],
                bias_frac_bits: vec![0; fo],
                bias_lshift: fbl,
                out_rshift: for_,
            }),
        };
        let g = two(QOp::Conv(conv), QOp::Fc(fc), hwc(c.in_dims), hwc(od), fo);
        let input = bytes(n * c.in_dims.len(), c.seed ^ 8);
        let slow = run_reference(&g, &input, n).unwrap();
        for path in SimdPath::supported_paths() {
            let fast = Simulator::with_path(&g, path).unwrap().run(&input, n, &Keep::All).unwrap();
            for b in ["y", "z"] {
                prop_assert_eq!(fast.get(b).unwrap(), slow.get(b).unwrap(), "path {} blob {}", path, b);
            }
        }
    }
}

/// `x -conv-> y -fc-> z`.
fn two(conv: QOp, fc: QOp, ind: Hwc, mid: Hwc, fo: usize) -> QGraph {
    let blob = |l: Hwc, shape: Vec<usize>| QBlob {
        shape,
        layout: l,
        frac_bits: 0,
    };
    let mut blobs = BTreeMap::new();
    blobs.insert("x".to_string(), blob(ind, vec![ind.c, ind.h, ind.w]));
    blobs.insert("y".to_string(), blob(mid, vec![mid.c, mid.h, mid.w]));
    blobs.insert("z".to_string(), blob(Hwc { h: 1, w: 1, c: fo }, vec![fo]));
    let layer = |name: &str, op, i: &str, o: &str| QLayer {
        name: name.into(),
        op,
        inputs: vec![i.into()],
        output: o.into(),
    };
    QGraph {
        name: "t".into(),
        input: "x".into(),
        blobs,
        layers: vec![layer("c", conv, "x", "y"), layer("f", fc, "y", "z")],
        outputs: vec!["z".into()],
    }
}

#[test]
fn kernels_refuse_bad_shift_slices() {
    use nnquant::fixed::kernels::KernelError;
    let d = Dims { h: 2, w: 2, c: 2 };
    let (input, w, b) = (vec![1i8; 8], vec![1i8; 4], vec![0i8; 2]);
    let one = Pair { h: 1, w: 1 };
    let z = Pair { h: 0, w: 0 };
    let run = |bl: &[i32], or: &[i32]| {
        let mut out = vec![0i8; 8];
        variants::conv_hwc_q7_pc(
            false, &input, d, &w, one, z, one, one, 1, &b, bl, or, &mut out, d,
        )
    };
    assert_eq!(run(&[0, 0], &[1, 2]), Ok(()));
    assert_eq!(run(&[0], &[1]), Ok(()));
    assert_eq!(run(&[0, 0, 0], &[1, 1, 1]), Err(KernelError::Length));
    assert_eq!(run(&[0], &[1, 2]), Err(KernelError::Length));
    assert_eq!(run(&[], &[]), Err(KernelError::Length));
    let mut out = vec![0i8; 2];
    assert_eq!(
        variants::fc_q7_pc(false, &input[..4], &[1; 8], &b, &[0, 32], &[1, 1], &mut out),
        Err(KernelError::Shift)
    );
}

#[test]
fn formats_accept_per_channel_lists_and_numbers() {
    let f = Formats::from_json_str(
        r#"{"activations_frac_bits": {"data": 7},
            "layers": {"conv1": {"weight_frac_bits": [7, 6, 5], "bias_frac_bits": 4},
                       "ip1": {"weight_frac_bits": 7, "bias_frac_bits": [3, 4]}}}"#,
    )
    .unwrap();
    assert_eq!(
        f.layers["conv1"].weight_frac_bits,
        Frac::Channels(vec![7, 6, 5])
    );
    assert!(f.layers["conv1"].per_channel() && f.layers["ip1"].per_channel());
    assert_eq!(f.layers["ip1"].weight_frac_bits, Frac::Layer(7));
    // Numbers serialize as numbers (ARM's schema round-trips).
    let s = serde_json::to_string(&f.layers["ip1"]).unwrap();
    assert!(s.contains(r#""weight_frac_bits":7"#), "{s}");
    for (bad, want) in [
        (
            r#"{"layers": {"c": {"weight_frac_bits": [7, 99]}}}"#,
            "layers.c.weight_frac_bits[1] = 99",
        ),
        (
            r#"{"layers": {"c": {"weight_frac_bits": 7, "bias_frac_bits": [-70]}}}"#,
            "layers.c.bias_frac_bits[0] = -70",
        ),
        (
            r#"{"layers": {"c": {"weight_frac_bits": [7], "out_rshift": 3}}}"#,
            "are per layer",
        ),
    ] {
        let e = format!("{:#}", Formats::from_json_str(bad).unwrap_err());
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn model_files_without_per_channel_read_as_per_layer() {
    // A conv as model files before per-channel formats wrote it.
    let old = r#"{"in_dims":{"h":1,"w":1,"c":1},"out_dims":{"h":1,"w":1,"c":2},
        "kernel":{"h":1,"w":1},"pad":{"h":0,"w":0},"stride":{"h":1,"w":1},"groups":1,
        "weights":[1,2],"bias":[0,0],"weight_frac_bits":3,"bias_frac_bits":3,
        "bias_lshift":0,"out_rshift":3}"#;
    let c: QConv = serde_json::from_str(old).unwrap();
    assert!(c.per_channel.is_none());
    assert_eq!(c.shifts(), (&[0][..], &[3][..]));
    // And per-layer convs are written without the field.
    assert!(!serde_json::to_string(&c).unwrap().contains("per_channel"));
}

mod common;

/// `quantize` of the depthwise test model with these extra arguments; returns the outcome and
/// the model file's JSON (when written).
fn quantize_dwnet(
    f: &common::Fixture,
    name: &str,
    extra: &[&str],
) -> (common::Outcome, Option<serde_json::Value>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/dwnet");
    let (proto, weights) = (dir.join("dwnet.prototxt"), dir.join("dwnet.caffemodel"));
    let (calib, model) = (
        dir.join("calib_u8_hwc.npy"),
        f.path(&format!("{name}.nnq.json")),
    );
    let eval = dir.join("test_u8_hwc.npy");
    let report = f.path(&format!("{name}.json"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"quantize",
        &"--model",
        &proto,
        &"--weights",
        &weights,
        &"--calib",
        &calib,
        &"--eval",
        &eval,
        &"--mean-value",
        &"128",
        &"--scale",
        &"0.0078125",
        &"--search",
        &"none",
        &"-o",
        &model,
        &"--report",
        &report,
        &"--quiet",
    ];
    for e in extra {
        args.push(e);
    }
    let o = common::nnquant(&args);
    let m = std::fs::read_to_string(&model)
        .ok()
        .map(|s| serde_json::from_str(&s).unwrap());
    (o, m)
}

/// Per-channel is the default and `--per-layer` gives per-layer formats; a formats file with
/// per-channel lists reproduces the model; bad lists are refused with exit code 2 and a message
/// that names the layer.
#[test]
fn cli_per_channel_default_per_layer_flag_and_formats_files() {
    let f = common::Fixture::new();
    let (o, pc) = quantize_dwnet(&f, "pc", &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let pc = pc.unwrap();
    let layers = pc["graph"]["layers"].as_array().unwrap();
    let conv1 = &layers[0]["op"]["Conv"];
    assert!(
        conv1["per_channel"]["out_rshift"].as_array().unwrap().len() == 16,
        "{conv1}"
    );
    assert!(pc["formats"]["layers"]["conv1"]["weight_frac_bits"].is_array());
    let (o, pl) = quantize_dwnet(&f, "pl", &["--per-layer"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let pl = pl.unwrap();
    assert!(!pl["graph"].to_string().contains("per_channel"));
    assert!(pl["formats"]["layers"]["conv1"]["weight_frac_bits"].is_number());

    // The per-channel formats as a formats file give the same graph.
    let formats = f.path("formats.json");
    std::fs::write(&formats, pc["formats"].to_string()).unwrap();
    let fs = formats.to_str().unwrap();
    let (o, again) = quantize_dwnet(&f, "again", &["--formats", fs]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(again.unwrap()["graph"], pc["graph"]);

    // Bad per-channel lists: wrong channel count, fraction bits out of range.
    let bad = |name: &str, edit: &dyn Fn(&mut serde_json::Value), want: &str| {
        let mut fm = pc["formats"].clone();
        edit(&mut fm);
        let p = f.path(&format!("{name}.formats.json"));
        std::fs::write(&p, fm.to_string()).unwrap();
        let (o, _) = quantize_dwnet(&f, name, &["--formats", p.to_str().unwrap()]);
        assert_eq!(o.code, 2, "{name}: {}", o.stderr);
        assert!(o.stderr.contains(want), "{name}: {}", o.stderr);
        assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    };
    bad(
        "short",
        &|fm| {
            fm["layers"]["conv1"]["weight_frac_bits"]
                .as_array_mut()
                .unwrap()
                .pop();
        },
        "layers.conv1.weight_frac_bits lists 15 per-channel fraction bits, but the layer has 16 output channels",
    );
    bad(
        "bias_long",
        &|fm| {
            fm["layers"]["dw1"]["bias_frac_bits"]
                .as_array_mut()
                .unwrap()
                .push(3.into());
        },
        "layers.dw1.bias_frac_bits lists 17",
    );
    bad(
        "range",
        &|fm| fm["layers"]["pw1"]["weight_frac_bits"][2] = 65.into(),
        "layers.pw1.weight_frac_bits[2] = 65 fraction bits is outside -64..=64",
    );
    bad(
        "shift",
        &|fm| fm["layers"]["pw1"]["weight_frac_bits"][3] = (-40).into(),
        "(output channel 3)",
    );
}
