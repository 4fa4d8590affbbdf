#!/usr/bin/env python3
"""Build the `glyphs` demo: a tiny image-classification task plus a small
Caffe CNN trained on it, written as a genuine Caffe prototxt + binary
caffemodel so nnquant has realistic, reproducible input.

Everything is deterministic from --seed.  Only numpy and the standard library
are used; the protobuf encoder/decoder for the caffemodel is hand-written.

    python3 tools/make_demo.py --out testdata/glyphs

Outputs (under --out):
    calib_u8_hwc.npy / calib_labels.npy    calibration images (N,16,16,3) u8 RGB + labels u8
    test_u8_hwc.npy  / test_labels.npy     test images + labels
    glyphs.prototxt                        Caffe train_test net definition
    glyphs.caffemodel                      trained weights (binary NetParameter)
    test_float_logits.npy                  float64 reference logits on the test set, as float32 (N,10)
    manifest.json                          seed, sizes, accuracies, sha256 of every file
"""

import os

# Pin BLAS to one thread *before* numpy is imported: the machine is shared
# with compilers, and a fixed thread count keeps float summation order (and
# therefore the trained weights) bit-reproducible from run to run.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import hashlib
import json
import math
import struct
import sys
import time

import numpy as np

# --------------------------------------------------------------------------
# Task constants
# --------------------------------------------------------------------------

IMG = 16            # images are IMG x IMG x 3
NUM_CLASSES = 10
N_TRAIN = 8000      # used for training only; never written
N_CALIB = 200
N_TEST = 300

# Caffe transform_param: x = (pixel - mean) * scale
MEAN = 128.0
SCALE = 0.0078125

# Seven-segment layout in "glyph units": x in [-W, W], y in [-1, 1] (y down).
# Segment order a..g is the conventional one.
_GW = 0.55
SEGMENTS = np.array([
    [(-_GW, -1.0), (_GW, -1.0)],   # a  top
    [(_GW, -1.0), (_GW, 0.0)],     # b  top right
    [(_GW, 0.0), (_GW, 1.0)],      # c  bottom right
    [(-_GW, 1.0), (_GW, 1.0)],     # d  bottom
    [(-_GW, 0.0), (-_GW, 1.0)],    # e  bottom left
    [(-_GW, -1.0), (-_GW, 0.0)],   # f  top left
    [(-_GW, 0.0), (_GW, 0.0)],     # g  middle
], dtype=np.float64)               # (7, 2 endpoints, xy)

DIGIT_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc",
                  "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]
SEGMENT_MASK = np.array([[c in segs for c in "abcdefg"] for segs in DIGIT_SEGMENTS])

# --------------------------------------------------------------------------
# Network definition (single source of truth for prototxt, caffemodel, code)
# --------------------------------------------------------------------------

CONV1 = dict(num_output=8, kernel=5, pad=2, stride=1)
POOL1 = dict(pool="MAX", kernel=3, stride=2, pad=0)
CONV2 = dict(num_output=16, kernel=3, pad=1, stride=1)
POOL2 = dict(pool="AVE", kernel=3, stride=2, pad=0)
IP1 = dict(num_output=NUM_CLASSES)


def pooled_size(size, kernel, stride, pad):
    """Caffe PoolingLayer::Reshape: ceil rule, then drop a window that would
    start entirely inside the padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def conv_size(size, kernel, stride, pad):
    """Caffe ConvolutionLayer output size (floor rule)."""
    return (size + 2 * pad - kernel) // stride + 1


def layer_shapes():
    """Blob shapes (C, H, W) after each layer, derived with Caffe's rules."""
    h1 = conv_size(IMG, CONV1["kernel"], CONV1["stride"], CONV1["pad"])
    p1 = pooled_size(h1, POOL1["kernel"], POOL1["stride"], POOL1["pad"])
    h2 = conv_size(p1, CONV2["kernel"], CONV2["stride"], CONV2["pad"])
    p2 = pooled_size(h2, POOL2["kernel"], POOL2["stride"], POOL2["pad"])
    c1, c2 = CONV1["num_output"], CONV2["num_output"]
    return {"data": (3, IMG, IMG), "conv1": (c1, h1, h1), "pool1": (c1, p1, p1),
            "conv2": (c2, h2, h2), "pool2": (c2, p2, p2), "ip1": (NUM_CLASSES,)}


def param_shapes():
    s = layer_shapes()
    return {
        "conv1": [(CONV1["num_output"], 3, CONV1["kernel"], CONV1["kernel"]), (CONV1["num_output"],)],
        "conv2": [(CONV2["num_output"], CONV1["num_output"], CONV2["kernel"], CONV2["kernel"]),
                  (CONV2["num_output"],)],
        "ip1": [(NUM_CLASSES, int(np.prod(s["pool2"]))), (NUM_CLASSES,)],
    }


# --------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------

def _luma(rgb):
    return rgb @ np.array([0.299, 0.587, 0.114])


def _random_colours(rng, n, min_contrast=60.0):
    """Foreground/background RGB pairs whose luma differs by >= min_contrast.
    Rejection sampling keeps it simple and still deterministic per rng."""
    fg = np.empty((n, 3))
    bg = np.empty((n, 3))
    filled = 0
    while filled < n:
        f = rng.uniform(0, 255, size=(n, 3))
        b = rng.uniform(0, 255, size=(n, 3))
        ok = np.abs(_luma(f) - _luma(b)) >= min_contrast
        take = min(int(ok.sum()), n - filled)
        fg[filled:filled + take] = f[ok][:take]
        bg[filled:filled + take] = b[ok][:take]
        filled += take
    return fg, bg


def _segment_distance(px, a, b):
    """Distance from points px (P,2) to segments a->b (N,S,2) -> (N,S,P)."""
    ab = b - a                                             # (N,S,2)
    ap = px[None, None, :, :] - a[:, :, None, :]           # (N,S,P,2)
    denom = np.maximum((ab * ab).sum(-1), 1e-12)[:, :, None]
    t = np.clip((ap * ab[:, :, None, :]).sum(-1) / denom, 0.0, 1.0)
    closest = ap - t[..., None] * ab[:, :, None, :]
    return np.sqrt((closest * closest).sum(-1))


def _render_chunk(rng, labels):
    """Render one chunk of glyph images (N,16,16,3) uint8 for the given labels."""
    n = len(labels)
    shift = rng.uniform(-2.0, 2.0, size=(n, 2))            # px
    scale = rng.uniform(0.8, 1.2, size=n)
    shear = rng.uniform(-0.2, 0.2, size=n)                  # slight italic slant
    thick = rng.uniform(1.0, 2.6, size=n)                   # stroke width, px
    noise_sigma = rng.uniform(4.0, 24.0, size=n)
    fg, bg = _random_colours(rng, n)

    # Glyph units -> pixels: half-height of 5 px at scale 1, centred on the
    # image centre plus the random shift.
    half_h = 5.0 * scale
    gx, gy = SEGMENTS[..., 0][None], SEGMENTS[..., 1][None]      # (1,7,2)
    x = (gx - shear[:, None, None] * gy) * half_h[:, None, None] + IMG / 2 + shift[:, 0, None, None]
    y = gy * half_h[:, None, None] + IMG / 2 + shift[:, 1, None, None]
    ends = np.stack([x, y], axis=-1)                              # (N,7,2,2)

    ys, xs = np.mgrid[0:IMG, 0:IMG]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=-1)   # (P,2) pixel centres
    dist = _segment_distance(centres, ends[:, :, 0], ends[:, :, 1])      # (N,7,P)
    dist = np.where(SEGMENT_MASK[labels][:, :, None], dist, np.inf).min(axis=1)  # (N,P)

    # Anti-aliased coverage: 1 inside the stroke, linear ramp over one pixel.
    cover = np.clip(thick[:, None] / 2.0 + 0.5 - dist, 0.0, 1.0)        # (N,P)
    img = bg[:, None, :] + cover[..., None] * (fg - bg)[:, None, :]     # (N,P,3)
    img = img + rng.normal(size=img.shape) * noise_sigma[:, None, None]
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img.reshape(n, IMG, IMG, 3)


def make_dataset(rng, n, chunk=1000):
    """Balanced-in-expectation random labels, rendered in chunks to bound memory."""
    labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.uint8)
    parts = [_render_chunk(rng, labels[i:i + chunk].astype(np.intp)) for i in range(0, n, chunk)]
    return np.concatenate(parts), labels


def to_net_input(images_u8_hwc, dtype):
    """Caffe Data-layer transform: HWC u8 -> NCHW, (pixel - mean) * scale."""
    x = images_u8_hwc.astype(dtype).transpose(0, 3, 1, 2)
    return (x - dtype(MEAN)) * dtype(SCALE)


# --------------------------------------------------------------------------
# Training-path layers (vectorised, with backward).  Pooling here assumes
# pad == 0, which is all this net uses; the reference forward below is general.
# --------------------------------------------------------------------------

def _im2col(x, k, pad, stride):
    """(N,C,H,W) -> (N*OH*OW, C*k*k); column order (c, kh, kw) matches Caffe's
    weight layout (out, in, kh, kw) flattened."""
    n, c, h, w = x.shape
    oh, ow = conv_size(h, k, stride, pad), conv_size(w, k, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, oh, ow, c, k, k), dtype=x.dtype)
    for kh in range(k):
        for kw in range(k):
            cols[:, :, :, :, kh, kw] = xp[:, :, kh:kh + stride * (oh - 1) + 1:stride,
                                          kw:kw + stride * (ow - 1) + 1:stride].transpose(0, 2, 3, 1)
    return cols.reshape(n * oh * ow, c * k * k), (oh, ow)


def _col2im(dcols, x_shape, k, pad, stride, oh, ow):
    n, c, h, w = x_shape
    dcols = dcols.reshape(n, oh, ow, c, k, k)
    dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dcols.dtype)
    for kh in range(k):
        for kw in range(k):
            dxp[:, :, kh:kh + stride * (oh - 1) + 1:stride,
                kw:kw + stride * (ow - 1) + 1:stride] += dcols[:, :, :, :, kh, kw].transpose(0, 3, 1, 2)
    return dxp[:, :, pad:pad + h, pad:pad + w]


def conv_forward(x, w, b, pad, stride):
    cols, (oh, ow) = _im2col(x, w.shape[2], pad, stride)
    y = cols @ w.reshape(w.shape[0], -1).T + b
    y = y.reshape(x.shape[0], oh, ow, w.shape[0]).transpose(0, 3, 1, 2)
    return y, (cols, x.shape, oh, ow)


def conv_backward(dy, w, pad, stride, cache):
    cols, x_shape, oh, ow = cache
    dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, w.shape[0])
    dw = (dy2.T @ cols).reshape(w.shape)
    db = dy2.sum(axis=0)
    dx = _col2im(dy2 @ w.reshape(w.shape[0], -1), x_shape, w.shape[2], pad, stride, oh, ow)
    return dx, dw, db


def _pool_windows(x, k, stride, fill):
    """Pad x on the bottom/right with `fill` so every ceil-rule window fits,
    and return the k*k strided views (one per window offset)."""
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, k, stride, 0), pooled_size(w, k, stride, 0)
    hp, wp = (oh - 1) * stride + k, (ow - 1) * stride + k
    xp = np.full((n, c, hp, wp), fill, dtype=x.dtype)
    xp[:, :, :h, :w] = x
    views = [xp[:, :, kh:kh + stride * (oh - 1) + 1:stride, kw:kw + stride * (ow - 1) + 1:stride]
             for kh in range(k) for kw in range(k)]
    return views, (oh, ow), (hp, wp)


def maxpool_forward(x, k, stride):
    # -inf padding means out-of-image positions never win, i.e. the clipped
    # last window takes the max over in-bounds pixels only, as Caffe does.
    views, _, padded = _pool_windows(x, k, stride, -np.inf)
    stacked = np.stack(views)
    arg = stacked.argmax(axis=0)   # first max in (kh, kw) raster order, like Caffe's strict '>'
    return stacked.max(axis=0), (arg, x.shape, padded)


def maxpool_backward(dy, k, stride, cache):
    arg, x_shape, (hp, wp) = cache
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    dxp = np.zeros((n, c, hp, wp), dtype=dy.dtype)
    for i in range(k * k):
        kh, kw = divmod(i, k)
        dxp[:, :, kh:kh + stride * (oh - 1) + 1:stride, kw:kw + stride * (ow - 1) + 1:stride] += dy * (arg == i)
    return dxp[:, :, :h, :w]


def ave_divisor(size_h, size_w, k, stride, pad):
    """Caffe AVE pooling divisor per output cell: the window is clipped to
    size+pad (not size) *before* counting, then clipped to the image for the
    sum.  With pad 0 this is exactly the in-bounds pixel count."""
    oh, ow = pooled_size(size_h, k, stride, pad), pooled_size(size_w, k, stride, pad)
    div = np.empty((oh, ow))
    for ph in range(oh):
        for pw in range(ow):
            hs, ws = ph * stride - pad, pw * stride - pad
            he, we = min(hs + k, size_h + pad), min(ws + k, size_w + pad)
            div[ph, pw] = (he - hs) * (we - ws)
    return div


def avepool_forward(x, k, stride):
    views, _, padded = _pool_windows(x, k, stride, 0.0)
    div = ave_divisor(x.shape[2], x.shape[3], k, stride, 0).astype(x.dtype)
    return sum(views) / div, (div, x.shape, padded)


def avepool_backward(dy, k, stride, cache):
    div, x_shape, (hp, wp) = cache
    n, c, h, w = x_shape
    oh, ow = dy.shape[2:]
    g = dy / div
    dxp = np.zeros((n, c, hp, wp), dtype=dy.dtype)
    for kh in range(k):
        for kw in range(k):
            dxp[:, :, kh:kh + stride * (oh - 1) + 1:stride, kw:kw + stride * (ow - 1) + 1:stride] += g
    return dxp[:, :, :h, :w]


def train_forward(params, x, keep_cache=False):
    """Fast forward used during training; returns logits (and caches)."""
    c1, k1 = conv_forward(x, *params["conv1"], CONV1["pad"], CONV1["stride"])
    r1 = np.maximum(c1, 0)
    p1, kp1 = maxpool_forward(r1, POOL1["kernel"], POOL1["stride"])
    c2, k2 = conv_forward(p1, *params["conv2"], CONV2["pad"], CONV2["stride"])
    r2 = np.maximum(c2, 0)
    p2, kp2 = avepool_forward(r2, POOL2["kernel"], POOL2["stride"])
    flat = p2.reshape(len(x), -1)                 # C-major flatten, as Caffe's InnerProduct
    w, b = params["ip1"]
    logits = flat @ w.T + b
    if not keep_cache:
        return logits
    return logits, (k1, r1, kp1, k2, r2, kp2, p2.shape, flat)


def train_backward(params, dlogits, cache):
    k1, r1, kp1, k2, r2, kp2, p2_shape, flat = cache
    w, _ = params["ip1"]
    grads = {"ip1": (dlogits.T @ flat, dlogits.sum(axis=0))}
    dp2 = (dlogits @ w).reshape(p2_shape)
    dr2 = avepool_backward(dp2, POOL2["kernel"], POOL2["stride"], kp2) * (r2 > 0)
    dp1, dw2, db2 = conv_backward(dr2, params["conv2"][0], CONV2["pad"], CONV2["stride"], k2)
    grads["conv2"] = (dw2, db2)
    dr1 = maxpool_backward(dp1, POOL1["kernel"], POOL1["stride"], kp1) * (r1 > 0)
    _, dw1, db1 = conv_backward(dr1, params["conv1"][0], CONV1["pad"], CONV1["stride"], k1)
    grads["conv1"] = (dw1, db1)
    return grads


def softmax_xent(logits, labels):
    """Mean softmax cross-entropy and its gradient w.r.t. logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels] + 1e-12).mean()
    p[np.arange(n), labels] -= 1.0
    return loss, p / n


# --------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------

def init_params(rng):
    """He-normal weights, zero biases, float32 (what Caffe stores)."""
    params = {}
    for name, (wshape, bshape) in param_shapes().items():
        fan_in = int(np.prod(wshape[1:]))
        w = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=wshape).astype(np.float32)
        params[name] = (w, np.zeros(bshape, dtype=np.float32))
    return params


def train(params, x, y, rng, epochs=14, batch=50, lr=3e-3, weight_decay=1e-4):
    """Adam with a cosine learning-rate schedule and light L2 decay (the decay
    keeps weights small, which is friendlier to int8 quantization)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m = {k: [np.zeros_like(p) for p in v] for k, v in params.items()}
    v2 = {k: [np.zeros_like(p) for p in v] for k, v in params.items()}
    steps_per_epoch = len(x) // batch
    total = epochs * steps_per_epoch
    t = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses, correct = [], 0
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            logits, cache = train_forward(params, x[idx], keep_cache=True)
            loss, dlogits = softmax_xent(logits, y[idx])
            grads = train_backward(params, dlogits.astype(np.float32), cache)
            losses.append(loss)
            correct += int((logits.argmax(axis=1) == y[idx]).sum())

            t += 1
            step_lr = lr * 0.5 * (1.0 + math.cos(math.pi * (t - 1) / total))
            for name in params:
                new = []
                for i, (p, g) in enumerate(zip(params[name], grads[name])):
                    if i == 0:
                        g = g + weight_decay * p     # decay weights, not biases
                    m[name][i] = beta1 * m[name][i] + (1 - beta1) * g
                    v2[name][i] = beta2 * v2[name][i] + (1 - beta2) * g * g
                    mh = m[name][i] / (1 - beta1 ** t)
                    vh = v2[name][i] / (1 - beta2 ** t)
                    new.append((p - step_lr * mh / (np.sqrt(vh) + eps)).astype(np.float32))
                params[name] = tuple(new)
        print(f"  epoch {epoch + 1:2d}/{epochs}  loss {np.mean(losses):.4f}  "
              f"train-batch acc {correct / (steps_per_epoch * batch):.4f}", flush=True)
    return params


# --------------------------------------------------------------------------
# Reference forward: float64, written directly from Caffe's layer code
# (shift-and-accumulate convolution, explicit per-window pooling loops).
# Independent of the training path so it can validate both it and the Rust
# float engine.
# --------------------------------------------------------------------------

def ref_conv(x, w, b, pad, stride):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = conv_size(h, k, stride, pad), conv_size(wd, k, stride, pad)
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    y = np.zeros((n, o, oh, ow)) + b[None, :, None, None]
    for kh in range(k):
        for kw in range(k):
            patch = xp[:, :, kh:kh + stride * (oh - 1) + 1:stride, kw:kw + stride * (ow - 1) + 1:stride]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, kh, kw])
    return y


def ref_pool(x, method, k, stride, pad):
    """Literal transcription of Caffe PoolingLayer::Forward_cpu."""
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, k, stride, pad), pooled_size(w, k, stride, pad)
    y = np.empty((n, c, oh, ow))
    for ph in range(oh):
        for pw in range(ow):
            hstart, wstart = ph * stride - pad, pw * stride - pad
            if method == "MAX":
                hend, wend = min(hstart + k, h), min(wstart + k, w)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                y[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:  # AVE
                hend, wend = min(hstart + k, h + pad), min(wstart + k, w + pad)
                pool_size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, h), min(wend, w)
                y[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / pool_size
    return y


def ref_forward(params, images_u8_hwc, chunk=1000):
    """Float64 logits of the whole net for u8 HWC images."""
    p = {k: tuple(np.asarray(a, dtype=np.float64) for a in v) for k, v in params.items()}
    out = []
    for i in range(0, len(images_u8_hwc), chunk):
        x = to_net_input(images_u8_hwc[i:i + chunk], np.float64)
        x = np.maximum(ref_conv(x, *p["conv1"], CONV1["pad"], CONV1["stride"]), 0.0)
        x = ref_pool(x, POOL1["pool"], POOL1["kernel"], POOL1["stride"], POOL1["pad"])
        x = np.maximum(ref_conv(x, *p["conv2"], CONV2["pad"], CONV2["stride"]), 0.0)
        x = ref_pool(x, POOL2["pool"], POOL2["kernel"], POOL2["stride"], POOL2["pad"])
        w, b = p["ip1"]
        out.append(x.reshape(len(x), -1) @ w.T + b)
    return np.concatenate(out)


# --------------------------------------------------------------------------
# Caffe prototxt
# --------------------------------------------------------------------------

def _data_layer(phase, source):
    return f"""layer {{
  name: "data"
  type: "Data"
  top: "data"
  top: "label"
  include {{
    phase: {phase}
  }}
  transform_param {{
    scale: {SCALE}
    mean_value: {int(MEAN)}
    mean_value: {int(MEAN)}
    mean_value: {int(MEAN)}
  }}
  data_param {{
    source: "{source}"
    batch_size: 50
    backend: LMDB
  }}
}}
"""


def _learnable_params():
    return """  param {
    lr_mult: 1
  }
  param {
    lr_mult: 2
  }
"""


def _fillers():
    return """    weight_filler {
      type: "xavier"
    }
    bias_filler {
      type: "constant"
      value: 0
    }
"""


def _conv_layer(name, bottom, cfg):
    return (f'layer {{\n  name: "{name}"\n  type: "Convolution"\n  bottom: "{bottom}"\n  top: "{name}"\n'
            + _learnable_params()
            + f"  convolution_param {{\n    num_output: {cfg['num_output']}\n    pad: {cfg['pad']}\n"
              f"    kernel_size: {cfg['kernel']}\n    stride: {cfg['stride']}\n"
            + _fillers() + "  }\n}\n")


def _relu_layer(name, blob):
    return f'layer {{\n  name: "{name}"\n  type: "ReLU"\n  bottom: "{blob}"\n  top: "{blob}"\n}}\n'


def _pool_layer(name, bottom, cfg):
    return (f'layer {{\n  name: "{name}"\n  type: "Pooling"\n  bottom: "{bottom}"\n  top: "{name}"\n'
            f"  pooling_param {{\n    pool: {cfg['pool']}\n    kernel_size: {cfg['kernel']}\n"
            f"    stride: {cfg['stride']}\n  }}\n}}\n")


def make_prototxt():
    parts = [
        'name: "glyphs"\n',
        _data_layer("TRAIN", "glyphs_train_lmdb"),
        _data_layer("TEST", "glyphs_test_lmdb"),
        _conv_layer("conv1", "data", CONV1),
        _relu_layer("relu1", "conv1"),
        _pool_layer("pool1", "conv1", POOL1),
        _conv_layer("conv2", "pool1", CONV2),
        _relu_layer("relu2", "conv2"),
        _pool_layer("pool2", "conv2", POOL2),
        'layer {\n  name: "ip1"\n  type: "InnerProduct"\n  bottom: "pool2"\n  top: "ip1"\n'
        + _learnable_params()
        + f"  inner_product_param {{\n    num_output: {IP1['num_output']}\n" + _fillers() + "  }\n}\n",
        'layer {\n  name: "accuracy"\n  type: "Accuracy"\n  bottom: "ip1"\n  bottom: "label"\n'
        '  top: "accuracy"\n  include {\n    phase: TEST\n  }\n}\n',
        'layer {\n  name: "loss"\n  type: "SoftmaxWithLoss"\n  bottom: "ip1"\n  bottom: "label"\n'
        '  top: "loss"\n}\n',
    ]
    return "".join(parts)


# --------------------------------------------------------------------------
# Minimal protobuf (proto2 wire format) encoder / decoder for caffemodel
# --------------------------------------------------------------------------

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5

# Caffe field numbers (caffe.proto)
NET_NAME, NET_LAYER = 1, 100
LAYER_NAME, LAYER_TYPE, LAYER_BOTTOM, LAYER_TOP, LAYER_BLOBS = 1, 2, 3, 4, 7
BLOB_DATA, BLOB_SHAPE = 5, 7
SHAPE_DIM = 1


def pb_varint(value):
    value &= (1 << 64) - 1            # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_key(field, wire_type):
    return pb_varint((field << 3) | wire_type)


def pb_bytes(field, payload):
    return pb_key(field, WT_LEN) + pb_varint(len(payload)) + payload


def pb_string(field, text):
    return pb_bytes(field, text.encode("utf-8"))


def pb_packed_floats(field, values):
    return pb_bytes(field, np.ascontiguousarray(values, dtype="<f4").tobytes())


def pb_packed_varints(field, values):
    return pb_bytes(field, b"".join(pb_varint(int(v)) for v in values))


def encode_blob(array):
    shape = pb_packed_varints(SHAPE_DIM, array.shape)
    return pb_bytes(BLOB_SHAPE, shape) + pb_packed_floats(BLOB_DATA, array.ravel())


def encode_layer(name, type_, bottoms=(), tops=(), blobs=()):
    msg = pb_string(LAYER_NAME, name) + pb_string(LAYER_TYPE, type_)
    msg += b"".join(pb_string(LAYER_BOTTOM, b) for b in bottoms)
    msg += b"".join(pb_string(LAYER_TOP, t) for t in tops)
    msg += b"".join(pb_bytes(LAYER_BLOBS, encode_blob(b)) for b in blobs)
    return msg


def caffemodel_layers(params):
    """Layers of the TRAIN-phase net in prototxt order, as Caffe's
    Net::ToProto would save them (the TEST-only Accuracy layer is absent)."""
    return [
        ("data", "Data", [], ["data", "label"], []),
        ("conv1", "Convolution", ["data"], ["conv1"], list(params["conv1"])),
        ("relu1", "ReLU", ["conv1"], ["conv1"], []),
        ("pool1", "Pooling", ["conv1"], ["pool1"], []),
        ("conv2", "Convolution", ["pool1"], ["conv2"], list(params["conv2"])),
        ("relu2", "ReLU", ["conv2"], ["conv2"], []),
        ("pool2", "Pooling", ["conv2"], ["pool2"], []),
        ("ip1", "InnerProduct", ["pool2"], ["ip1"], list(params["ip1"])),
        ("loss", "SoftmaxWithLoss", ["ip1", "label"], ["loss"], []),
    ]


def encode_caffemodel(params):
    msg = pb_string(NET_NAME, "glyphs")
    for layer in caffemodel_layers(params):
        msg += pb_bytes(NET_LAYER, encode_layer(*layer))
    return msg


def pb_read_varint(buf, pos):
    result, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def pb_fields(buf):
    """Parse one message into [(field, wire_type, value)]; LEN values are bytes."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = pb_read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == WT_VARINT:
            value, pos = pb_read_varint(buf, pos)
        elif wt == WT_I64:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wt == WT_LEN:
            length, pos = pb_read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wt == WT_I32:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        fields.append((field, wt, value))
    if pos != len(buf):
        raise ValueError("truncated message")
    return fields


def decode_blob(buf):
    dims, data = [], []
    for field, wt, value in pb_fields(buf):
        if field == BLOB_SHAPE:
            for f2, wt2, v2 in pb_fields(value):
                if f2 == SHAPE_DIM and wt2 == WT_LEN:        # packed
                    pos = 0
                    while pos < len(v2):
                        d, pos = pb_read_varint(v2, pos)
                        dims.append(d)
                elif f2 == SHAPE_DIM:                         # unpacked
                    dims.append(v2)
        elif field == BLOB_DATA:
            if wt == WT_LEN:
                data.append(np.frombuffer(value, dtype="<f4"))
            else:
                data.append(np.frombuffer(value, dtype="<f4", count=1))
    flat = np.concatenate(data) if data else np.zeros(0, dtype="<f4")
    return flat.astype(np.float32).reshape(dims)


def decode_caffemodel(buf):
    name, layers = None, []
    for field, _, value in pb_fields(buf):
        if field == NET_NAME:
            name = value.decode("utf-8")
        elif field == NET_LAYER:
            layer = {"name": None, "type": None, "bottom": [], "top": [], "blobs": []}
            for f2, _, v2 in pb_fields(value):
                if f2 == LAYER_NAME:
                    layer["name"] = v2.decode("utf-8")
                elif f2 == LAYER_TYPE:
                    layer["type"] = v2.decode("utf-8")
                elif f2 == LAYER_BOTTOM:
                    layer["bottom"].append(v2.decode("utf-8"))
                elif f2 == LAYER_TOP:
                    layer["top"].append(v2.decode("utf-8"))
                elif f2 == LAYER_BLOBS:
                    layer["blobs"].append(decode_blob(v2))
            layers.append(layer)
    return name, layers


def check_roundtrip(buf, params):
    """Decode the bytes we wrote and require an exact match with what we meant."""
    name, layers = decode_caffemodel(buf)
    assert name == "glyphs", name
    expected = caffemodel_layers(params)
    assert len(layers) == len(expected)
    for got, (lname, ltype, bottoms, tops, blobs) in zip(layers, expected):
        assert (got["name"], got["type"], got["bottom"], got["top"]) == (lname, ltype, bottoms, tops), got
        assert len(got["blobs"]) == len(blobs), lname
        for g, e in zip(got["blobs"], blobs):
            assert g.shape == e.shape and np.array_equal(g, e), lname
    return layers


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_outputs(out_dir, seed, calib, test, params, test_logits, accuracies, train_size):
    os.makedirs(out_dir, exist_ok=True)
    (calib_x, calib_y), (test_x, test_y) = calib, test
    arrays = {
        "calib_u8_hwc.npy": calib_x,
        "calib_labels.npy": calib_y,
        "test_u8_hwc.npy": test_x,
        "test_labels.npy": test_y,
        "test_float_logits.npy": test_logits.astype(np.float32),
    }
    for fname, arr in arrays.items():
        np.save(os.path.join(out_dir, fname), arr, allow_pickle=False)

    with open(os.path.join(out_dir, "glyphs.prototxt"), "w", newline="\n") as f:
        f.write(make_prototxt())

    model = encode_caffemodel(params)
    layers = check_roundtrip(model, params)
    with open(os.path.join(out_dir, "glyphs.caffemodel"), "wb") as f:
        f.write(model)
    with open(os.path.join(out_dir, "glyphs.caffemodel"), "rb") as f:
        check_roundtrip(f.read(), params)

    files = sorted(list(arrays) + ["glyphs.prototxt", "glyphs.caffemodel"])
    manifest = {
        "task": "glyphs: 10-class seven-segment digit glyphs, RGB 16x16 uint8 (HWC)",
        "seed": seed,
        "regenerate": f"python3 tools/make_demo.py --out testdata/glyphs --seed {seed}",
        "sizes": {"train": train_size, "calib": len(calib_x), "test": len(test_x),
                  "image_hwc": [IMG, IMG, 3], "num_classes": NUM_CLASSES},
        "input_transform": {"mean_value": [MEAN] * 3, "scale": SCALE, "channel_order": "RGB",
                            "formula": "(pixel - mean) * scale"},
        "float_top1": accuracies,
        "blob_shapes": {k: list(v) for k, v in layer_shapes().items()},
        "caffemodel_layers": [{"name": l["name"], "type": l["type"],
                               "blobs": [list(b.shape) for b in l["blobs"]]} for l in layers],
        "files": {f: {"bytes": os.path.getsize(os.path.join(out_dir, f)),
                      "sha256": sha256_file(os.path.join(out_dir, f))} for f in files},
    }
    with open(os.path.join(out_dir, "manifest.json"), "w", newline="\n") as f:
        json.dump(manifest, f, indent=2, sort_keys=False)
        f.write("\n")
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="testdata/glyphs", help="output directory")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--epochs", type=int, default=14)
    args = ap.parse_args(argv)

    t0 = time.time()
    # Independent RNG streams so changing e.g. the training set size never
    # changes the committed calib/test images.
    s_train, s_calib, s_test, s_init, s_shuffle = (
        np.random.Generator(np.random.PCG64(s))
        for s in np.random.SeedSequence(args.seed).spawn(5))

    print("generating data ...", flush=True)
    train_x, train_y = make_dataset(s_train, N_TRAIN)
    calib = make_dataset(s_calib, N_CALIB)
    test = make_dataset(s_test, N_TEST)

    print(f"training ({args.epochs} epochs, {N_TRAIN} images) ...", flush=True)
    params = init_params(s_init)
    params = train(params, to_net_input(train_x, np.float32), train_y.astype(np.intp),
                   s_shuffle, epochs=args.epochs)

    print("evaluating with the float64 reference forward ...", flush=True)
    accuracies = {}
    for name, (x, y) in (("train", (train_x, train_y)), ("calib", calib), ("test", test)):
        logits = ref_forward(params, x)
        accuracies[name] = float((logits.argmax(axis=1) == y).mean())
        if name == "test":
            test_logits = logits
    # Cross-check the two independent implementations against each other.
    fast = train_forward(params, to_net_input(test[0], np.float32)).astype(np.float64)
    diff = float(np.abs(fast - test_logits).max())
    print(f"  fast-path vs reference max |logit diff| on test: {diff:.2e}")
    assert diff < 1e-3, "training forward and reference forward disagree"

    manifest = write_outputs(args.out, args.seed, calib, test, params, test_logits,
                             accuracies, N_TRAIN)
    print(f"float top-1: train {accuracies['train']:.4f}  calib {accuracies['calib']:.4f}  "
          f"test {accuracies['test']:.4f}")
    total = sum(v["bytes"] for v in manifest["files"].values())
    print(f"wrote {len(manifest['files']) + 1} files to {args.out} ({total} bytes + manifest)")
    print(f"done in {time.time() - t0:.1f} s")
    if accuracies["test"] < 0.90:
        print("ERROR: float test accuracy below 90 %", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
