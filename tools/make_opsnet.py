#!/usr/bin/env python3
"""Build the q7 ops test model: a small Caffe net with every op issue 8 asked for — PReLU, LRN
(across and within channels), Sigmoid, Deconvolution, Eltwise PROD, a standalone Scale (after a
ReLU: it cannot be folded) and a trailing Softmax — with random (He-initialised, deterministic)
weights, written as a genuine prototxt + binary caffemodel, and smooth random RGB images.

It classifies nothing; nnquant compares it with float by SQNR (`quantize --softmax keep`: the
output is the q7 probabilities) and `nnquant verify` compares the firmware byte for byte.
Also writes an independent numpy reference for Caffe's Deconvolution (zero insertion + a full
correlation with the flipped kernel, a different method from nnquant's scatter), which
tests/new_ops2.rs holds the float engine to. Only numpy and the standard library are used.

    python3 tools/make_opsnet.py --out testdata/opsnet

Outputs: opsnet.prototxt / opsnet.caffemodel, calib_u8_hwc.npy (96 images), test_u8_hwc.npy
(100 images), both (N, 16, 16, 3) uint8; deconv_case.prototxt / .caffemodel with
deconv_case_in.npy (float NCHW) and deconv_case_out.npy (the reference output).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo import encode_blob, pb_bytes, pb_string, NET_LAYER, NET_NAME, LAYER_BLOBS  # noqa: E402
from make_demo import LAYER_NAME, LAYER_TYPE, LAYER_BOTTOM, LAYER_TOP  # noqa: E402
from make_dwnet import images  # noqa: E402

H = W = 16

PROTOTXT = f"""name: "opsnet"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {H} dim: {W} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 }} }}
layer {{ name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "lrn1" type: "LRN" bottom: "conv1" top: "lrn1"
  lrn_param {{ local_size: 5 alpha: 1 beta: 0.75 k: 1 }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "lrn1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param {{ num_output: 12 kernel_size: 3 pad: 1 }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }}
layer {{ name: "scale2" type: "Scale" bottom: "conv2" top: "scale2" scale_param {{ bias_term: true }} }}
layer {{ name: "lrn2" type: "LRN" bottom: "scale2" top: "lrn2"
  lrn_param {{ local_size: 3 alpha: 1 beta: 0.75 norm_region: WITHIN_CHANNEL }} }}
layer {{ name: "up1" type: "Deconvolution" bottom: "lrn2" top: "up1"
  convolution_param {{ num_output: 8 kernel_size: 4 stride: 2 pad: 1 }} }}
layer {{ name: "sig1" type: "Sigmoid" bottom: "up1" top: "sig1" }}
layer {{ name: "gate" type: "Eltwise" bottom: "sig1" bottom: "lrn1" top: "gate"
  eltwise_param {{ operation: PROD }} }}
layer {{ name: "conv3" type: "Convolution" bottom: "gate" top: "conv3"
  convolution_param {{ num_output: 6 kernel_size: 3 stride: 2 pad: 1 }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "conv3" top: "ip1" inner_product_param {{ num_output: 5 }} }}
layer {{ name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }}
"""

# (layer, type, blob shapes); He initialisation over the fan-in, small biases.
BLOBS = [
    ("conv1", "Convolution", [(8, 3, 3, 3), (8,)]),
    ("prelu1", "PReLU", [(8,)]),
    ("conv2", "Convolution", [(12, 8, 3, 3), (12,)]),
    ("scale2", "Scale", [(12,), (12,)]),
    ("up1", "Deconvolution", [(12, 8, 4, 4), (8,)]),
    ("conv3", "Convolution", [(6, 8, 3, 3), (6,)]),
    ("ip1", "InnerProduct", [(5, 6 * 8 * 8), (5,)]),
]


def blobs_for(name, shapes, rng):
    if name == "prelu1":
        return [rng.uniform(0.05, 0.4, shapes[0]).astype(np.float32)]
    if name == "scale2":
        return [rng.uniform(0.3, 1.5, shapes[0]).astype(np.float32),
                rng.normal(0.0, 0.2, shapes[1]).astype(np.float32)]
    fan_in = int(np.prod(shapes[0][1:]))
    w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shapes[0]).astype(np.float32)
    return [w, rng.normal(0.0, 0.05, shapes[1]).astype(np.float32)]


def caffemodel(net_name, layers):
    msg = pb_string(NET_NAME, net_name)
    for name, ty, arrays in layers:
        layer = pb_string(LAYER_NAME, name) + pb_string(LAYER_TYPE, ty)
        layer += pb_string(LAYER_BOTTOM, "x") + pb_string(LAYER_TOP, name)
        for a in arrays:
            layer += pb_bytes(LAYER_BLOBS, encode_blob(a))
        msg += pb_bytes(NET_LAYER, layer)
    return msg


def deconv_reference(x, w, b, stride, pad, dilation, group):
    """Caffe's Deconvolution of x [N, C, H, W] with w [C, O/g, KH, KW]: insert stride-1 zeros
    between the input pixels, pad by dilation·(k-1) - pad, correlate with the spatially flipped,
    transposed kernel (dilated), per group; plus the bias."""
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // group
    up = np.zeros((n, c, (h - 1) * stride + 1, (wd - 1) * stride + 1))
    up[:, :, ::stride, ::stride] = x
    eh, ew = dilation * (kh - 1), dilation * (kw - 1)
    ph, pw = eh - pad, ew - pad
    assert ph >= 0 and pw >= 0, "the reference handles pad <= dilation·(k-1)"
    up = np.pad(up, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = up.shape[2] - eh, up.shape[3] - ew
    out = np.zeros((n, og * group, oh, ow))
    for g in range(group):
        # Flipped kernel, as a correlation kernel [O/g, C/g, KH, KW].
        k = w[g * cg:(g + 1) * cg, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        for ky in range(kh):
            for kx in range(kw):
                patch = up[:, g * cg:(g + 1) * cg, ky * dilation:ky * dilation + oh,
                           kx * dilation:kx * dilation + ow]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, k[:, :, ky, kx])
    return out + b[None, :, None, None]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    with open(os.path.join(args.out, "opsnet.prototxt"), "w") as f:
        f.write(PROTOTXT)
    layers = [(n, t, blobs_for(n, s, rng)) for n, t, s in BLOBS]
    with open(os.path.join(args.out, "opsnet.caffemodel"), "wb") as f:
        f.write(caffemodel("opsnet", layers))
    # make_dwnet's smooth fields are 32 x 40: take a 16 x 16 window of each.
    np.save(os.path.join(args.out, "calib_u8_hwc.npy"), images(rng, 96)[:, 8:8 + H, 12:12 + W].copy())
    np.save(os.path.join(args.out, "test_u8_hwc.npy"), images(rng, 100)[:, 8:8 + H, 12:12 + W].copy())

    # The float Deconvolution reference: groups, stride, pad, dilation, a rectangular input.
    stride, pad, dil, group, k = 2, 1, 2, 2, 3
    x = rng.normal(0, 1, (2, 4, 5, 6)).astype(np.float32)
    w = rng.normal(0, 0.5, (4, 3, k, k)).astype(np.float32)
    b = rng.normal(0, 0.5, (6,)).astype(np.float32)
    y = deconv_reference(x.astype(np.float64), w.astype(np.float64), b, stride, pad, dil, group)
    with open(os.path.join(args.out, "deconv_case.prototxt"), "w") as f:
        f.write('name: "deconv_case"\n'
                'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 6 } } }\n'
                'layer { name: "up" type: "Deconvolution" bottom: "data" top: "up"\n'
                f'  convolution_param {{ num_output: 6 kernel_size: {k} stride: {stride} pad: {pad} dilation: {dil} group: {group} }} }}\n')
    with open(os.path.join(args.out, "deconv_case.caffemodel"), "wb") as f:
        f.write(caffemodel("deconv_case", [("up", "Deconvolution", [w, b])]))
    np.save(os.path.join(args.out, "deconv_case_in.npy"), x)
    np.save(os.path.join(args.out, "deconv_case_out.npy"), y.astype(np.float32))


if __name__ == "__main__":
    main()
