#!/usr/bin/env python3
"""What would q15 activations buy? An integer emulation of a quantized model with chosen blobs
widened from q7 to q15, to measure the gain before writing q15 kernels (issue 9).

    python3 tools/q15_what_if.py M.nnq.json --images test_u8_hwc.npy --labels test_labels.npy \
        --float-logits float.npy [--check-q7 q7_outputs.npy] [--blobs conv3,relu3,pool3 ...]

The model must be a chain of Conv / Fc / MaxPool / AvePool / Relu (ARM's cifar10_m4 is). The
emulation follows `kernels.rs` exactly: uint8 input with the mean and shift rounded half away from
zero; convolution and fully connected `acc = (bias << bias_lshift) + round + Σ x·w` (per-channel
shifts), `sat(acc >> out_rshift)`; max pool; average pool over the clipped window, rounded or
truncated as the model says; ReLU. `--check-q7` (the `int8` outputs of
`nnquant eval --quantized M --save-outputs`) proves it: with no blob widened, every output byte
must equal the simulator's, or the script exits 1.

A widened blob ("q15") keeps the q7 blob's format plus 8 fraction bits, saturated to int16: its
producer shifts 8 bits less, and a consumer's accumulator has 8 more fraction bits (its bias shift
and output shift grow by 8). That is the arithmetic of a q15 activation path with the model's q7
weights, the "mixed q7/q15" of issue 9. Each set of blobs given with `--blobs` (comma-separated;
repeat the flag for several sets; `all` widens every activation) is reported with top-1, agreement
with float and output SQNR against float, and the bytes its activations add.
"""
import argparse
import json
import sys

import numpy as np

WIDEN = 8


def rshift_half_away(x, s):
    if s == 0:
        return x
    half = np.int64(1) << np.int64(s - 1)
    return np.where(x >= 0, (x + half) >> s, -((-x + half) >> s))


def shift(acc, s):
    """`acc >> s` for s >= 0, `acc << -s` otherwise (a widened output may need fewer bits than
    the accumulator has)."""
    s = np.asarray(s, dtype=np.int64)
    return np.where(s >= 0, acc >> np.maximum(s, 0), acc << np.maximum(-s, 0))


def round_term(s):
    s = np.asarray(s, dtype=np.int64)
    return np.where(s > 0, np.int64(1) << np.maximum(s - 1, 0), 0)


def sat(x, wide):
    lim = 32767 if wide else 127
    return np.clip(x, -lim - 1, lim)


def shifts(op, n):
    pc = op.get("per_channel")
    if pc:
        return np.array(pc["bias_lshift"], np.int64), np.array(pc["out_rshift"], np.int64)
    return (np.full(n, op["bias_lshift"], np.int64), np.full(n, op["out_rshift"], np.int64))


def conv(x, op, in_w, out_w):
    """x: [N, H, W, C] int64."""
    i, o, k, p, s = op["in_dims"], op["out_dims"], op["kernel"], op["pad"], op["stride"]
    assert op["groups"] == 1 and op["dilation"] == {"h": 1, "w": 1}, "only dense convolutions"
    n = x.shape[0]
    xp = np.zeros((n, i["h"] + 2 * p["h"] + k["h"], i["w"] + 2 * p["w"] + k["w"], i["c"]), np.int64)
    xp[:, p["h"]:p["h"] + i["h"], p["w"]:p["w"] + i["w"], :] = x
    w = np.array(op["weights"], np.int64).reshape(o["c"], k["h"], k["w"], i["c"])
    acc = np.zeros((n, o["h"], o["w"], o["c"]), np.int64)
    for ky in range(k["h"]):
        for kx in range(k["w"]):
            win = xp[:, ky:ky + s["h"] * o["h"]:s["h"], kx:kx + s["w"] * o["w"]:s["w"], :]
            acc += np.einsum("nhwc,oc->nhwo", win[:, :o["h"], :o["w"], :], w[:, ky, kx, :])
    return requant(acc, op, o["c"], in_w, out_w)


def fc(x, op, in_w, out_w):
    w = np.array(op["weights"], np.int64).reshape(op["out_len"], op["in_len"])
    acc = x.reshape(x.shape[0], -1) @ w.T
    return requant(acc, op, op["out_len"], in_w, out_w).reshape(x.shape[0], 1, 1, -1)


def requant(acc, op, n, in_w, out_w):
    bl, orr = shifts(op, n)
    bl = bl + (WIDEN if in_w else 0)
    orr = orr + (WIDEN if in_w else 0) - (WIDEN if out_w else 0)
    bias = np.array(op["bias"], np.int64) << bl
    return sat(shift(acc + bias + round_term(orr), orr), out_w)


def window(o, st, pad, k, size):
    a = o * st - pad
    return max(a, 0), min(max(a + k, 0), size)


def pool(x, op, ave, wide):
    i, o, k, p, s = op["in_dims"], op["out_dims"], op["kernel"], op["pad"], op["stride"]
    out = np.zeros((x.shape[0], o["h"], o["w"], o["c"]), np.int64)
    for oy in range(o["h"]):
        y0, y1 = window(oy, s["h"], p["h"], k["h"], i["h"])
        for ox in range(o["w"]):
            x0, x1 = window(ox, s["w"], p["w"], k["w"], i["w"])
            win = x[:, y0:y1, x0:x1, :]
            if not ave:
                out[:, oy, ox, :] = win.max(axis=(1, 2))
                continue
            cnt = (y1 - y0) * (x1 - x0)
            sm = win.sum(axis=(1, 2))
            half = cnt // 2 if op.get("rounding") == "nearest" else 0
            num = np.where(sm >= 0, sm + half, sm - half)
            q = np.abs(num) // cnt * np.sign(num)  # C division: toward zero
            out[:, oy, ox, :] = sat(q, wide)
    return out


def run(model, pixels, wide):
    """q values of the output blob (int64, logical = physical order for a 1×1×N output), and the
    extra activation bytes of the widened blobs."""
    inp = model["input"]
    mean = np.array(inp["mean_u8"], np.int64)
    d = (pixels.reshape(pixels.shape[0], -1).astype(np.int64) - mean) * inp["mul"]
    x = sat(rshift_half_away(d, inp["rshift"]), False)
    g = model["graph"]
    blobs = {g["input"]: x.reshape(pixels.shape)}
    extra = 0
    for layer in g["layers"]:
        op, name = layer["op"], layer["name"]
        src = layer["inputs"][0]
        x, in_w, out_w = blobs[src], src in wide, layer["output"] in wide
        if op == "Relu":
            y = np.maximum(x, 0)
            assert in_w == out_w, f"{name}: a ReLU keeps its input's width"
        else:
            kind, p = next(iter(op.items()))
            if kind == "Conv":
                y = conv(x, p, in_w, out_w)
            elif kind == "Fc":
                y = fc(x, p, in_w, out_w)
            elif kind in ("MaxPool", "AvePool"):
                assert in_w == out_w, f"{name}: a pool keeps its input's width"
                y = pool(x, p, kind == "AvePool", out_w)
            else:
                raise SystemExit(f"error: layer '{name}' is {kind}; this emulation handles "
                                 "Conv, Fc, MaxPool, AvePool and Relu")
        if out_w:
            extra += int(np.prod(y.shape[1:]))
        blobs[layer["output"]] = y
    out = g["outputs"][0]
    return blobs[out].reshape(pixels.shape[0], -1), g["blobs"][out]["frac_bits"], extra


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--images", required=True, help="uint8 NHWC .npy")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--float-logits", required=True, help="the float model's outputs (.npy)")
    ap.add_argument("--check-q7", help="the simulator's int8 outputs: must be equal with nothing widened")
    ap.add_argument("--blobs", action="append", default=[], help="blobs to widen (comma-separated, or `all`)")
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    try:
        model = json.load(open(a.model))
        px = np.load(a.images)
        labels = np.load(a.labels).astype(np.int64).reshape(-1)
        fl = np.load(a.float_logits).reshape(px.shape[0], -1).astype(np.float64)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    acts = [lay["output"] for lay in model["graph"]["layers"]]
    sets = [[]] + [acts if b == "all" else [s for s in b.split(",") if s] for b in a.blobs]
    unknown = sorted({b for s in sets for b in s} - set(acts))
    if unknown:
        print(f"error: no layer writes {', '.join(unknown)}; blobs: {', '.join(acts)}", file=sys.stderr)
        return 2
    fcorrect = int((fl.argmax(1) == labels).sum())
    print(f"{model['name']}: {px.shape[0]} images, float top-1 {fcorrect}")
    for wide in sets:
        q, frac, extra = [], None, 0
        for i in range(0, px.shape[0], a.batch):
            out, f, e = run(model, px[i:i + a.batch], set(wide))
            q.append(out)
            frac, extra = f, e
        q = np.concatenate(q)
        if not wide and a.check_q7:
            ref = np.load(a.check_q7).reshape(q.shape)
            bad = int((ref.astype(np.int64) != q).sum())
            print(f"q7 emulation vs the simulator: {bad} differing bytes of {q.size}")
            if bad:
                return 1
        deq = q.astype(np.float64) / 2.0 ** (frac + (WIDEN if g_out(model) in wide else 0))
        correct = int((q.argmax(1) == labels).sum())
        agree = float((q.argmax(1) == fl.argmax(1)).mean())
        sqnr = 10 * np.log10((fl ** 2).sum() / ((fl - deq) ** 2).sum())
        name = "q7 everywhere" if not wide else "q15: " + ",".join(wide)
        print(f"{name:<48} top-1 {correct:5d}  agreement {agree * 100:6.2f} %  "
              f"output SQNR {sqnr:5.1f} dB  +{extra} B of activations per image")
    return 0


def g_out(model):
    return model["graph"]["outputs"][0]


if __name__ == "__main__":
    sys.exit(main())
