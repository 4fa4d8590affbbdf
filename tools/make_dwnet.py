#!/usr/bin/env python3
"""Build the depthwise / dilated test models: small Caffe nets with random (He-initialised,
deterministic) weights, written as a genuine prototxt + binary caffemodel, and smooth random
RGB images to calibrate and run them on.

They exercise the q7 depthwise kernels (3x3 stride 1 and 2, a rectangular 5x3 window) and
dilated convolution (depthwise and ordinary); they classify nothing, so nnquant compares them
with float by SQNR / agreement, and `nnquant verify` by bytes. Only numpy and the standard
library are used (the protobuf encoder is the one of tools/make_demo.py).

    python3 tools/make_dwnet.py --out testdata/dwnet

Outputs: dwnet.prototxt / dwnet.caffemodel (depthwise-separable, no dilation),
dilnet.prototxt / dilnet.caffemodel (the same trunk with dilated layers),
calib_u8_hwc.npy (48 images), test_u8_hwc.npy (16 images), both (N, 32, 40, 3) uint8.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_demo import encode_blob, pb_bytes, pb_string, NET_LAYER, NET_NAME, LAYER_BLOBS  # noqa: E402
from make_demo import LAYER_NAME, LAYER_TYPE, LAYER_BOTTOM, LAYER_TOP  # noqa: E402

H, W = 32, 40

# (name, kind, params): conv params are (out, group, kh, kw, stride, pad_h, pad_w, dilation)
DWNET = [
    ("conv1", "conv", (16, 1, 3, 3, 2, 1, 1, 1)),
    ("dw1", "conv", (16, 16, 3, 3, 1, 1, 1, 1)),
    ("pw1", "conv", (32, 1, 1, 1, 1, 0, 0, 1)),
    ("dw2", "conv", (32, 32, 3, 3, 2, 1, 1, 1)),
    ("pw2", "conv", (32, 1, 1, 1, 1, 0, 0, 1)),
    ("dw3", "conv", (32, 32, 3, 3, 1, 1, 1, 1)),
    ("pw3", "conv", (24, 1, 1, 1, 1, 0, 0, 1)),
    ("dw4", "conv", (24, 24, 5, 3, 1, 2, 1, 1)),
    ("fc", "fc", 10),
]
DILNET = [
    ("conv1", "conv", (16, 1, 3, 3, 2, 1, 1, 1)),
    ("dw1", "conv", (16, 16, 3, 3, 1, 2, 2, 2)),
    ("pw1", "conv", (24, 1, 1, 1, 1, 0, 0, 1)),
    ("cd2", "conv", (16, 1, 3, 3, 1, 3, 3, 3)),
    ("dw3", "conv", (16, 16, 3, 3, 2, 2, 2, 2)),
    ("fc", "fc", 10),
]


def shapes(net):
    """Per layer: (name, kind, params, in_shape (c, h, w), weight shapes)."""
    c, h, w = 3, H, W
    out = []
    for name, kind, p in net:
        if kind == "conv":
            n, g, kh, kw, s, ph, pw, d = p
            ws = [(n, c // g, kh, kw), (n,)]
            out.append((name, kind, p, (c, h, w), ws))
            h = (h + 2 * ph - (d * (kh - 1) + 1)) // s + 1
            w = (w + 2 * pw - (d * (kw - 1) + 1)) // s + 1
            c = n
        else:
            out.append((name, kind, p, (c, h, w), [(p, c * h * w), (p,)]))
    return out


def prototxt(net_name, layers):
    s = [f'name: "{net_name}"\n',
         'layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
         f'  input_param {{\n    shape {{\n      dim: 1\n      dim: 3\n      dim: {H}\n      dim: {W}\n    }}\n  }}\n}}\n']
    bottom = "data"
    for name, kind, p, _, _ in layers:
        if kind == "conv":
            n, g, kh, kw, st, ph, pw, d = p
            s.append(f'layer {{\n  name: "{name}"\n  type: "Convolution"\n  bottom: "{bottom}"\n  top: "{name}"\n'
                     f'  convolution_param {{\n    num_output: {n}\n    group: {g}\n'
                     f'    kernel_h: {kh}\n    kernel_w: {kw}\n    stride: {st}\n'
                     f'    pad_h: {ph}\n    pad_w: {pw}\n    dilation: {d}\n  }}\n}}\n')
            s.append(f'layer {{\n  name: "{name}_relu"\n  type: "ReLU"\n  bottom: "{name}"\n  top: "{name}"\n}}\n')
        else:
            s.append(f'layer {{\n  name: "{name}"\n  type: "InnerProduct"\n  bottom: "{bottom}"\n  top: "{name}"\n'
                     f'  inner_product_param {{\n    num_output: {p}\n  }}\n}}\n')
        bottom = name
    return "".join(s)


def caffemodel(net_name, layers, rng):
    msg = pb_string(NET_NAME, net_name)
    for name, kind, _, _, ws in layers:
        fan_in = int(np.prod(ws[0][1:]))
        wt = rng.normal(0.0, np.sqrt(2.0 / fan_in), ws[0]).astype(np.float32)
        b = rng.normal(0.0, 0.05, ws[1]).astype(np.float32)
        layer = pb_string(LAYER_NAME, name)
        layer += pb_string(LAYER_TYPE, "Convolution" if kind == "conv" else "InnerProduct")
        layer += pb_string(LAYER_BOTTOM, "x") + pb_string(LAYER_TOP, name)
        layer += pb_bytes(LAYER_BLOBS, encode_blob(wt)) + pb_bytes(LAYER_BLOBS, encode_blob(b))
        msg += pb_bytes(NET_LAYER, layer)
    return msg


def images(rng, n):
    """Smooth colour fields: low-resolution noise, bilinearly upsampled, plus a little grain."""
    lo = rng.uniform(0, 255, (n, 5, 6, 3))
    ys, xs = np.linspace(0, 4, H), np.linspace(0, 5, W)
    y0, x0 = np.floor(ys).astype(int).clip(0, 3), np.floor(xs).astype(int).clip(0, 4)
    fy, fx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    a = lo[:, y0][:, :, x0]
    b = lo[:, y0][:, :, x0 + 1]
    c = lo[:, y0 + 1][:, :, x0]
    d = lo[:, y0 + 1][:, :, x0 + 1]
    img = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for net_name, net in (("dwnet", DWNET), ("dilnet", DILNET)):
        layers = shapes(net)
        with open(os.path.join(args.out, f"{net_name}.prototxt"), "w") as f:
            f.write(prototxt(net_name, layers))
        with open(os.path.join(args.out, f"{net_name}.caffemodel"), "wb") as f:
            f.write(caffemodel(net_name, layers, rng))
    np.save(os.path.join(args.out, "calib_u8_hwc.npy"), images(rng, 48))
    np.save(os.path.join(args.out, "test_u8_hwc.npy"), images(rng, 16))


if __name__ == "__main__":
    main()
