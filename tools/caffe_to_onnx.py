#!/usr/bin/env python3
"""Convert a small Caffe CNN (prototxt + HDF5 caffemodel) to ONNX, for onnxruntime comparisons.

Handles the layer types of ARM's CIFAR-10 model: Convolution, Pooling (MAX/AVE with Caffe's ceil
rule), ReLU, InnerProduct (plus Flatten/Dropout/Softmax as pass-through or plain ops). Data layers
become one float input `data` of shape [N, C, H, W] with a dynamic batch; the mean subtraction stays
outside the graph (the caller subtracts it, as nnquant's float engine is fed).

Caffe's pooling is reproduced with *explicit* end pads instead of `ceil_mode`, so that the ONNX
output size equals Caffe's (ceil rule + "last window starts inside image or left padding" clip)
whatever an ONNX runtime does with ceil_mode. AVE's divisor only matches Caffe when it can be
expressed exactly: pad 0 (Caffe divides by the in-image cells, = count_include_pad 0) or windows
that never pass the padded image (Caffe counts the padding, = count_include_pad 1); anything else
is refused rather than converted wrongly.

    python3 tools/caffe_to_onnx.py --prototxt P --weights W.caffemodel.h5 -o model.onnx \
        [--input-shape 3,32,32] [--check-images X_u8_hwc.npy --mean mean.binaryproto \
         --reference logits.npy [--tolerance 1e-4]]

With --check-*, runs the ONNX model on the images with onnxruntime and exits 1 unless every logit
is within the tolerance of the reference. Errors are one paragraph on stderr, exit code 2.
"""
import argparse
import math
import re
import struct
import sys

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class ConvertError(Exception):
    pass


# ---------------------------------------------------------------- prototxt (text format) parsing

TOKEN = re.compile(r'\s*(?:#[^\n]*\n?|("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')|([{}:])|([^\s{}:#"\']+))')


def tokens(text):
    pos = 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                return
            raise ConvertError(f"prototxt: cannot parse near {text[pos:pos + 30]!r}")
        pos = m.end()
        if m.group(1):
            yield ("str", m.group(1)[1:-1])
        elif m.group(2):
            yield ("punct", m.group(2))
        elif m.group(3):
            yield ("word", m.group(3))


def parse_block(toks, closing):
    """A message: key -> list of values (scalars or nested dicts), in order."""
    msg = {}
    for kind, tok in toks:
        if kind == "punct" and tok == "}":
            if not closing:
                raise ConvertError("prototxt: unbalanced '}'")
            return msg
        if kind != "word":
            raise ConvertError(f"prototxt: expected a field name, got {tok!r}")
        kind2, tok2 = next(toks, (None, None))
        if tok2 == ":":
            kind2, tok2 = next(toks, (None, None))
        if kind2 == "punct" and tok2 == "{":
            msg.setdefault(tok, []).append(parse_block(toks, True))
        elif kind2 in ("word", "str"):
            msg.setdefault(tok, []).append(tok2)
        else:
            raise ConvertError(f"prototxt: field {tok!r} has no value")
    if closing:
        raise ConvertError("prototxt: missing '}'")
    return msg


def one(msg, key, default=None, conv=str):
    vals = msg.get(key)
    if not vals:
        return default
    return conv(vals[-1])


def hw(p, key, default):
    """Caffe's `kernel_size` (repeated, or _h/_w) convention."""
    h, w = one(p, key + "_h", None, int), one(p, key + "_w", None, int)
    if h is not None and w is not None:
        return h, w
    vals = [int(v) for v in p.get(key + "_size" if key == "kernel" else key, [])]
    if not vals:
        return default, default
    return (vals[0], vals[-1])


def in_test_phase(layer):
    for inc in layer.get("include", []):
        if one(inc, "phase") == "TRAIN":
            return False
    for exc in layer.get("exclude", []):
        if one(exc, "phase") == "TEST":
            return False
    return True


# ---------------------------------------------------------------- Caffe shape rules

def caffe_pool_out(size, k, s, p):
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


# ---------------------------------------------------------------- conversion

def convert(prototxt_path, weights_path, input_shape):
    with open(prototxt_path) as f:
        net = parse_block(tokens(f.read()), False)
    layers = [l for l in net.get("layer", []) if in_test_phase(l)]
    if not layers:
        raise ConvertError(f"{prototxt_path}: no layers (old V1 'layers' nets are not supported)")
    h5 = h5py.File(weights_path, "r")

    def blobs(name):
        if f"data/{name}" not in h5:
            raise ConvertError(f"layer '{name}' has no weights in {weights_path}")
        g = h5[f"data/{name}"]
        return [np.asarray(g[str(i)], dtype=np.float32) for i in range(len(g))]

    nodes, inits = [], []
    shapes = {}  # blob -> (C, H, W) or (K,)
    alias = {}  # Caffe blob name -> current ONNX tensor name (in-place layers)
    counter = [0]

    def fresh(base):
        counter[0] += 1
        return f"{base}__{counter[0]}"

    def cur(b):
        return alias.get(b, b)

    graph_input = None
    last = None
    for l in layers:
        name, typ = one(l, "name"), one(l, "type")
        bottoms, tops = l.get("bottom", []), l.get("top", [])
        if typ in ("Data", "Input", "ImageData", "HDF5Data"):
            graph_input = tops[0]
            shapes[graph_input] = tuple(input_shape)
            continue
        if typ in ("Accuracy", "SoftmaxWithLoss", "Silence"):
            continue
        if not bottoms or cur(bottoms[0]) is None or bottoms[0] not in shapes:
            raise ConvertError(f"layer '{name}': input '{bottoms[:1]}' is not produced before it")
        x, shape = cur(bottoms[0]), shapes[bottoms[0]]
        top = tops[0]
        y = fresh(top) if top in shapes else top
        if typ == "Convolution":
            p = l["convolution_param"][0]
            (kh, kw), (sh, sw), (ph, pw) = hw(p, "kernel", 0), hw(p, "stride", 1), hw(p, "pad", 0)
            group, dil = one(p, "group", 1, int), [int(v) for v in p.get("dilation", [])] or [1]
            bs = blobs(name)
            w = bs[0]
            c, h, wd = shape
            oh = (h + 2 * ph - (dil[0] * (kh - 1) + 1)) // sh + 1
            ow = (wd + 2 * pw - (dil[-1] * (kw - 1) + 1)) // sw + 1
            inits.append(numpy_helper.from_array(w, f"{name}_W"))
            ins = [x, f"{name}_W"]
            if one(p, "bias_term", "true") == "true":
                inits.append(numpy_helper.from_array(bs[1], f"{name}_B"))
                ins.append(f"{name}_B")
            nodes.append(helper.make_node(
                "Conv", ins, [y], name=name, kernel_shape=[kh, kw], strides=[sh, sw],
                pads=[ph, pw, ph, pw], dilations=[dil[0], dil[-1]], group=group))
            shapes[top] = (w.shape[0], oh, ow)
        elif typ == "Pooling":
            p = l.get("pooling_param", [{}])[0]
            method = one(p, "pool", "MAX")
            c, h, wd = shape
            if one(p, "global_pooling", "false") == "true":
                op = "GlobalMaxPool" if method == "MAX" else "GlobalAveragePool"
                nodes.append(helper.make_node(op, [x], [y], name=name))
                shapes[top] = (c, 1, 1)
            else:
                (kh, kw), (sh, sw), (ph, pw) = hw(p, "kernel", 0), hw(p, "stride", 1), hw(p, "pad", 0)
                oh, ow = caffe_pool_out(h, kh, sh, ph), caffe_pool_out(wd, kw, sw, pw)
                # End pads so that floor-mode ONNX pooling yields Caffe's output size.
                eh, ew = (oh - 1) * sh + kh - h - ph, (ow - 1) * sw + kw - wd - pw
                attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, max(eh, 0), max(ew, 0)])
                if method == "MAX":
                    nodes.append(helper.make_node("MaxPool", [x], [y], name=name, **attrs))
                elif method == "AVE":
                    if ph == 0 and pw == 0:
                        include = 0
                    elif eh <= ph and ew <= pw:
                        include = 1
                    else:
                        raise ConvertError(
                            f"layer '{name}': AVE pooling with pad {ph},{pw} whose last window passes the "
                            "padded image has a divisor ONNX cannot express")
                    nodes.append(helper.make_node(
                        "AveragePool", [x], [y], name=name, count_include_pad=include, **attrs))
                else:
                    raise ConvertError(f"layer '{name}': pooling method {method} is not supported")
                shapes[top] = (c, oh, ow)
        elif typ == "ReLU":
            slope = one(l.get("relu_param", [{}])[0], "negative_slope", 0.0, float)
            if slope == 0.0:
                nodes.append(helper.make_node("Relu", [x], [y], name=name))
            else:
                nodes.append(helper.make_node("LeakyRelu", [x], [y], name=name, alpha=slope))
            shapes[top] = shape
        elif typ == "InnerProduct":
            p = l["inner_product_param"][0]
            if one(p, "axis", 1, int) != 1:
                raise ConvertError(f"layer '{name}': InnerProduct axis other than 1 is not supported")
            bs = blobs(name)
            w = bs[0]
            if one(p, "transpose", "false") == "true":
                w = w.T
            flat = fresh(f"{name}_flat")
            nodes.append(helper.make_node("Flatten", [x], [flat], axis=1))
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w), f"{name}_W"))
            ins = [flat, f"{name}_W"]
            if one(p, "bias_term", "true") == "true":
                inits.append(numpy_helper.from_array(bs[1], f"{name}_B"))
                ins.append(f"{name}_B")
            nodes.append(helper.make_node("Gemm", ins, [y], name=name, transB=1))
            shapes[top] = (w.shape[0],)
        elif typ in ("Dropout", "Split"):
            for t in tops:
                alias[t] = x
                shapes[t] = shape
            continue
        elif typ == "Flatten":
            nodes.append(helper.make_node("Flatten", [x], [y], name=name, axis=1))
            shapes[top] = (int(np.prod(shape)),)
        elif typ == "Softmax":
            nodes.append(helper.make_node("Softmax", [x], [y], name=name, axis=1))
            shapes[top] = shape
        else:
            raise ConvertError(f"layer '{name}': type {typ} is not supported by this converter")
        alias[top] = y
        last = top
    if graph_input is None:
        raise ConvertError("the net has no Data/Input layer to take the input from")
    out = cur(last)
    graph = helper.make_graph(
        nodes, one(net, "name", "caffe"),
        [helper.make_tensor_value_info(graph_input, TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", *shapes[last]])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="nnquant tools/caffe_to_onnx.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------- mean.binaryproto (BlobProto)

def read_varint(buf, pos):
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise ConvertError("mean file: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def read_blobproto(path):
    """BlobProto.data (field 5, packed or not) as float32; the shape is the caller's to check."""
    buf = open(path, "rb").read()
    pos, data = 0, []
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            if field == 5:
                data.append(struct.unpack_from("<f", buf, pos)[0])
            pos += 4
        elif wire == 2:
            n, pos = read_varint(buf, pos)
            if field == 5:
                data.extend(np.frombuffer(buf[pos:pos + n], dtype="<f4").tolist())
            pos += n
        else:
            raise ConvertError(f"{path}: unsupported protobuf wire type {wire}")
    return np.asarray(data, dtype=np.float32)


def nchw_minus_mean(images_u8_hwc, mean_chw):
    x = images_u8_hwc.astype(np.float32).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x - mean_chw.reshape(1, *x.shape[1:]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prototxt", required=True)
    ap.add_argument("--weights", required=True, help="HDF5 caffemodel (.caffemodel.h5)")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--input-shape", default="3,32,32", help="C,H,W")
    ap.add_argument("--check-images", help="uint8 N×H×W×C .npy to run through the ONNX model")
    ap.add_argument("--mean", help="mean.binaryproto subtracted from the images (CHW)")
    ap.add_argument("--reference", help="float32 N×classes .npy of reference logits")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    a = ap.parse_args()
    try:
        shape = [int(v) for v in a.input_shape.split(",")]
        if len(shape) != 3 or min(shape) <= 0:
            raise ConvertError(f"--input-shape must be C,H,W with positive sizes, got {a.input_shape!r}")
        model = convert(a.prototxt, a.weights, shape)
        onnx.save(model, a.output)
        print(f"wrote {a.output} ({len(model.graph.node)} nodes)")
        if a.check_images:
            if not (a.mean and a.reference):
                raise ConvertError("--check-images needs --mean and --reference")
            import onnxruntime as ort

            imgs = np.load(a.check_images)
            mean = read_blobproto(a.mean)
            if mean.size != int(np.prod(shape)):
                raise ConvertError(f"{a.mean}: {mean.size} values, expected {np.prod(shape)}")
            x = nchw_minus_mean(imgs, mean)
            ref = np.load(a.reference)
            sess = ort.InferenceSession(a.output, providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            if got.shape != ref.shape:
                raise ConvertError(f"output shape {got.shape} differs from the reference {ref.shape}")
            diff = float(np.abs(got - ref).max())
            top1 = float((got.argmax(1) == ref.argmax(1)).mean())
            print(f"onnxruntime vs reference: max |diff| = {diff:.3g} over {got.size} logits, "
                  f"top-1 agreement {top1 * 100:.2f} %")
            if not diff <= a.tolerance:
                print(f"FAIL: max |diff| {diff:.3g} > tolerance {a.tolerance:g}", file=sys.stderr)
                return 1
    except (ConvertError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
