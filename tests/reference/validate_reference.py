#!/usr/bin/env python3
"""Checks the external reference `onnx_ad_response.py` against references that share no
code with it. Run by hand (needs Pillow for the photos: python3 -m pip install pillow):

    python3 tests/reference/validate_reference.py [--data ../shared/data] [--quick]

1. A small random Conv/Relu/MaxPool/Dropout/depthwise-Conv/Clip/GAP/Gemm network built
   with onnx.helper, with stride-2 convolutions whose pads are asymmetric or whose last
   input row is unused (the ConvTranspose trap). A hand-written numpy forward/backward in
   float64 is itself checked by finite differences, then compared with the reference in
   plain and guided mode, both seed kinds; once with continuous values and once with
   small-integer values, which make exact MaxPool ties and exact Relu/Clip boundaries
   (so the first-max-in-row-major routing and the mask conventions are checked).
2. The three real models, plain mode: central finite differences of the original model on
   ONNX Runtime (float32) along random directions on real photos, both seed kinds.
3. The command line itself, timed, on every model and mode.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True   # no __pycache__ in the work tree
import onnx_ad_response as ref  # noqa: E402

SCRIPT = os.path.join(HERE, "onnx_ad_response.py")

MODELS = {
    # file, kind, seed tensor (last spatial activation), one-hot tensor
    "squeezenet": ("squeezenet1.1.onnx", "conv10_2", "pool10_1"),
    "mobilenet": ("mobilenet_v2_1.0_224.onnx", "Relu6__90:0", "logits"),
    "efficientnet": ("efficientnet_lite0.onnx", "/_swish_1/Clip_output_0", "logits"),
}
PHOTOS = ["n02669723_academic_gown.JPEG", "n01440764_tench.JPEG",
          "n02823428_beer_bottle.JPEG", "n02930766_cab.JPEG"]


# --- preprocessing (for the checks only) -----------------------------------------------------

def preprocess(path, kind):
    from PIL import Image
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = 256.0 / min(w, h)
    image = image.resize((max(256, round(w * scale)), max(256, round(h * scale))),
                         Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    a = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32)
    if kind == "squeezenet":
        a = a[:, :, ::-1] - np.array([104, 117, 123], np.float32)   # BGR, Caffe mean
    elif kind == "mobilenet":
        a = a / 127.5 - 1.0
    else:
        a = (a - 127.0) / 128.0
    return np.ascontiguousarray(a.transpose(2, 0, 1)[None], dtype=np.float32)


# --- 1. the small network and its numpy twin -------------------------------------------------

def conv_fwd(x, w, b, stride, pads, group=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - kh) // stride + 1
    ow = (xp.shape[3] - kw) // stride + 1
    og = o // group
    y = np.zeros((n, o, oh, ow))
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride * (oh - 1) + 1:stride,
                           j:j + stride * (ow - 1) + 1:stride]
                y[:, g * og:(g + 1) * og] += np.einsum("oc,nchw->nohw", ws[:, :, i, j], patch)
    return y + b.reshape(1, -1, 1, 1)


def conv_bwd(gy, w, x_shape, stride, pads, group=1):
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    oh, ow = gy.shape[2:]
    og = o // group
    gxp = np.zeros((n, c, h + pads[0] + pads[2], wd + pads[1] + pads[3]))
    for g in range(group):
        ws = w[g * og:(g + 1) * og]
        gs = gy[:, g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                gxp[:, g * cg:(g + 1) * cg, i:i + stride * (oh - 1) + 1:stride,
                    j:j + stride * (ow - 1) + 1:stride] += np.einsum("oc,nohw->nchw",
                                                                     ws[:, :, i, j], gs)
    return gxp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd]


def maxpool_fwd(x, k, s, last=False):
    """Max over each window and the flat index of its FIRST maximum in row-major order
    (the LAST one with last=True, only to show that the tie rule is actually exercised)."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    y = np.zeros((n, c, oh, ow))
    arg = np.zeros((n, c, oh, ow, 2), int)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, c, k * k)
            a = np.argmax(win, axis=-1)          # numpy: first occurrence
            if last:
                a = k * k - 1 - np.argmax(win[..., ::-1], axis=-1)
            y[:, :, i, j] = np.take_along_axis(win, a[..., None], -1)[..., 0]
            arg[:, :, i, j, 0] = i * s + a // k
            arg[:, :, i, j, 1] = j * s + a % k
    return y, arg


def maxpool_bwd(gy, arg, x_shape):
    gx = np.zeros(x_shape)
    n, c, oh, ow = gy.shape
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    r, q = arg[b, ch, i, j]
                    gx[b, ch, r, q] += gy[b, ch, i, j]
    return gx


class SmallNet:
    """x[1,3,24,24] -> Conv s2 (row 23 unused) -> Relu -> MaxPool 3/2 (overlapping) ->
    Dropout -> depthwise Conv pads (1,1,2,2) -> Clip(0,6) -> Conv s2 pads (0,0,1,1) on an
    even size (ORT's output_shape pads would shift it) -> Clip(0,6) =: f -> GAP -> Gemm
    =: logits."""

    SHAPE = (1, 3, 24, 24)

    def __init__(self, rng, integer):
        def q(a, scale):  # small dyadic values: exact in float32, so ties are exact
            return np.round(a * scale) / scale if integer else a
        self.W1 = q(rng.normal(0, 0.5, (6, 3, 3, 3)), 4)
        self.b1 = q(rng.normal(0, 0.5, 6), 4)
        self.W2 = q(rng.normal(0, 0.5, (6, 1, 3, 3)), 4)
        self.b2 = q(rng.normal(1.0, 0.5, 6), 4)
        self.W3 = q(rng.normal(0, 0.4, (8, 6, 3, 3)), 4)
        self.b3 = q(rng.normal(1.0, 0.5, 8), 4)
        self.W4 = q(rng.normal(0, 0.5, (5, 8)), 4)
        self.b4 = q(rng.normal(0, 0.5, 5), 4)

    def onnx_model(self, opset=13):
        f32 = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)
        inits = [f32(self.W1, "W1"), f32(self.b1, "b1"), f32(self.W2, "W2"),
                 f32(self.b2, "b2"), f32(self.W3, "W3"), f32(self.b3, "b3"),
                 f32(self.W4, "W4"), f32(self.b4, "b4"), f32(0.0, "lo"), f32(6.0, "hi")]
        nodes = [
            helper.make_node("Conv", ["x", "W1", "b1"], ["a"], strides=[2, 2],
                             pads=[0, 0, 0, 0], kernel_shape=[3, 3]),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[3, 3], strides=[2, 2]),
            helper.make_node("Dropout", ["m"], ["md"]),
            helper.make_node("Conv", ["md", "W2", "b2"], ["d"], group=6, pads=[1, 1, 2, 2],
                             kernel_shape=[3, 3]),
            helper.make_node("Clip", ["d", "lo", "hi"], ["c"]),
            helper.make_node("Conv", ["c", "W3", "b3"], ["e"], strides=[2, 2],
                             pads=[0, 0, 1, 1], kernel_shape=[3, 3]),
            helper.make_node("Clip", ["e", "lo", "hi"], ["f"]),
            helper.make_node("GlobalAveragePool", ["f"], ["g"]),
            helper.make_node("Flatten", ["g"], ["gf"]),
            helper.make_node("Gemm", ["gf", "W4", "b4"], ["logits"], transB=1),
        ]
        graph = helper.make_graph(
            nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.SHAPE)],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    def forward(self, x, last=False):
        s = {}
        s["a"] = conv_fwd(x, self.W1, self.b1, 2, (0, 0, 0, 0))
        s["r"] = np.maximum(s["a"], 0)
        s["m"], s["arg"] = maxpool_fwd(s["r"], 3, 2, last)
        s["d"] = conv_fwd(s["m"], self.W2, self.b2, 1, (1, 1, 2, 2), group=6)
        s["c"] = np.clip(s["d"], 0, 6)
        s["e"] = conv_fwd(s["c"], self.W3, self.b3, 2, (0, 0, 1, 1))
        s["f"] = np.clip(s["e"], 0, 6)
        s["g"] = s["f"].mean(axis=(2, 3))
        s["logits"] = s["g"] @ self.W4.T + self.b4
        return s

    def backward(self, x, s, seed, mode, gf=None, glogits=None, inclusive=False):
        """d L / d x with gf seeding f, or glogits seeding the logits. Masks: Relu x > 0,
        Clip lo < x < hi (strict), or lo <= x <= hi with inclusive=True; guided mode
        rectifies g first."""
        def relu_b(g, x_):
            return (np.maximum(g, 0) if mode == "guided" else g) * (x_ > 0)

        def clip_b(g, x_):
            inside = ((x_ >= 0) & (x_ <= 6)) if inclusive else ((x_ > 0) & (x_ < 6))
            return (np.maximum(g, 0) if mode == "guided" else g) * inside
        if seed == "f":
            g_f = gf
        else:
            g_g = glogits @ self.W4
            g_f = np.broadcast_to(g_g[:, :, None, None], s["f"].shape) / \
                (s["f"].shape[2] * s["f"].shape[3])
        g_e = clip_b(g_f, s["e"])
        g_c = conv_bwd(g_e, self.W3, s["c"].shape, 2, (0, 0, 1, 1))
        g_d = clip_b(g_c, s["d"])
        g_m = conv_bwd(g_d, self.W2, s["m"].shape, 1, (1, 1, 2, 2), group=6)
        g_r = maxpool_bwd(g_m, s["arg"], s["r"].shape)
        g_a = relu_b(g_r, s["a"])
        return conv_bwd(g_a, self.W1, x.shape, 2, (0, 0, 0, 0))


# --- 1b. a numpy interpreter for the real models: forward in float64, backward by hand --------

def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def conv_fwd_grouped(x, w, b, strides, pads, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    sh, sw = strides
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - kh) // sh + 1
    ow = (xp.shape[3] - kw) // sw + 1
    xg = xp.reshape(n, group, cg, xp.shape[2], xp.shape[3])
    wg = w.reshape(group, o // group, cg, kh, kw)
    y = np.zeros((n, group, o // group, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xg[:, :, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            if cg == 1 and o == group:           # depthwise: elementwise per channel
                y[:, :, 0] += wg[None, :, 0, 0, i, j, None, None] * patch[:, :, 0]
            else:
                y += np.einsum("goc,ngchw->ngohw", wg[:, :, :, i, j], patch, optimize=True)
    y = y.reshape(n, o, oh, ow)
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def conv_bwd_grouped(gy, w, x_shape, strides, pads, group):
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    sh, sw = strides
    oh, ow = gy.shape[2:]
    gxp = np.zeros((n, group, cg, h + pads[0] + pads[2], wd + pads[1] + pads[3]))
    wg = w.reshape(group, o // group, cg, kh, kw)
    gg = gy.reshape(n, group, o // group, oh, ow)
    for i in range(kh):
        for j in range(kw):
            view = gxp[:, :, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            if cg == 1 and o == group:
                view[:, :, 0] += wg[None, :, 0, 0, i, j, None, None] * gg[:, :, 0]
            else:
                view += np.einsum("goc,ngohw->ngchw", wg[:, :, :, i, j], gg, optimize=True)
    gx = gxp.reshape(n, c, gxp.shape[3], gxp.shape[4])
    return gx[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd]


def maxpool_fwd_nd(x, kernel, strides, pads):
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                   constant_values=-np.inf)
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = strides
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    windows = np.stack([x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                        for i in range(kh) for j in range(kw)], axis=-1)
    arg = np.argmax(windows, axis=-1)      # first maximum in row-major window order
    y = np.take_along_axis(windows, arg[..., None], -1)[..., 0]
    return y, arg


def maxpool_bwd_nd(gy, arg, x_shape, kernel, strides, pads):
    n, c, h, w = x_shape
    kh, kw = kernel
    sh, sw = strides
    gxp = np.zeros((n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]))
    oh, ow = gy.shape[2:]
    for i in range(kh):
        for j in range(kw):
            hit = np.where(arg == i * kw + j, gy, 0.0)
            gxp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += hit
    return gxp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w]


def unbroadcast(g, shape):
    while g.ndim > len(shape):
        g = g.sum(0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = g.sum(axis, keepdims=True)
    return g


class NumpyBackprop:
    """Walks the ONNX graph in float64: forward, then plain or guided backward by hand.
    Covers exactly the operations of the three models; anything else is refused."""

    def __init__(self, model_path):
        model = onnx.load(model_path)
        if ref.opset_of(model) < 13:
            model = onnx.version_converter.convert_version(model, 13)
        self.model = model
        self.consts = {t.name: numpy_helper.to_array(t).astype(np.float64)
                       if t.data_type == TensorProto.FLOAT else numpy_helper.to_array(t)
                       for t in model.graph.initializer}
        self.input = ref.image_input(model).name

    def gradient(self, x, mode, seed, onehot=None, masks_from=None):
        """masks_from: {Relu/Clip input name: array} to take the kink decisions from (e.g.
        ORT's float32 activations) instead of this float64 forward."""
        self.masks_from = masks_from or {}
        v = dict(self.consts)
        v[self.input] = np.asarray(x, np.float64)
        self.near_kink = 0   # Relu/Clip inputs within float32 noise of a bound, not on it
        nodes = []
        for node in self.model.graph.node:
            nodes.append(node)
            self._forward(node, v)
            if seed in node.output:
                break
        t = v[seed]
        if onehot is None:
            g = {seed: t.copy()}
        else:
            s = np.zeros_like(t)
            s.reshape(t.shape[0], -1)[0, onehot] = 1.0
            g = {seed: s}
        for node in reversed(nodes):
            if not any(o in g for o in node.output):
                continue
            self._backward(node, v, g, mode)
        return g.get(self.input, np.zeros_like(v[self.input]))

    def _forward(self, node, v):
        op, a = node.op_type, _attrs(node)
        ins = [v[i] if i else None for i in node.input]
        if op == "Constant":
            out = numpy_helper.to_array(a["value"])
            out = out.astype(np.float64) if out.dtype == np.float32 else out
        elif op == "Conv":
            k = list(ins[1].shape[2:])
            if a.get("dilations", [1, 1]) != [1, 1] or a.get("auto_pad", b"NOTSET") != b"NOTSET":
                raise SystemExit("numpy twin: unsupported Conv attributes %s" % a)
            out = conv_fwd_grouped(ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                                   a.get("strides", [1, 1]), a.get("pads", [0, 0, 0, 0]),
                                   a.get("group", 1))
        elif op == "Relu":
            out = np.maximum(ins[0], 0)
            self.near_kink += int(np.sum((np.abs(ins[0]) > 0) & (np.abs(ins[0]) < 1e-6)))
        elif op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else -np.inf
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else np.inf
            out = np.clip(ins[0], lo, hi)
            for bound in (lo, hi):
                gap = np.abs(ins[0] - bound)
                self.near_kink += int(np.sum((gap > 0) & (gap < 1e-6)))
        elif op == "MaxPool":
            out, v[node.output[0] + "#arg"] = maxpool_fwd_nd(
                ins[0], a["kernel_shape"], a.get("strides", [1, 1]), a.get("pads", [0] * 4))
        elif op == "AveragePool":
            if any(a.get("pads", [0] * 4)) or a.get("strides", [1, 1]) != [1, 1] or \
                    list(a["kernel_shape"]) != list(ins[0].shape[2:]):
                raise SystemExit("numpy twin: only a whole-map AveragePool is handled")
            out = ins[0].mean(axis=(2, 3), keepdims=True)
        elif op == "GlobalAveragePool":
            out = ins[0].mean(axis=(2, 3), keepdims=True)
        elif op == "Concat":
            out = np.concatenate(ins, axis=a["axis"])
        elif op in ("Dropout", "Identity"):
            out = ins[0]
        elif op == "Add":
            out = ins[0] + ins[1]
        elif op == "Reshape":
            out = ins[0].reshape([d if d != 0 else ins[0].shape[i]
                                  for i, d in enumerate(ins[1].astype(int))])
        elif op == "Flatten":
            axis = a.get("axis", 1)
            out = ins[0].reshape(int(np.prod(ins[0].shape[:axis])), -1)
        elif op == "Gemm":
            A = ins[0].T if a.get("transA", 0) else ins[0]
            B = ins[1].T if a.get("transB", 0) else ins[1]
            out = a.get("alpha", 1.0) * (A @ B) + (a.get("beta", 1.0) * ins[2]
                                                   if len(ins) > 2 else 0)
        else:
            raise SystemExit("numpy twin: no forward for %s" % op)
        v[node.output[0]] = out

    def _backward(self, node, v, g, mode):
        op, a = node.op_type, _attrs(node)
        gy = g.pop(node.output[0], None)
        if gy is None:
            return
        x = self.masks_from.get(node.input[0], v[node.input[0]]) \
            if op in ("Relu", "Clip") else v[node.input[0]]
        guided = mode == "guided"

        def put(name, value):
            if name in self.consts:
                return
            g[name] = g[name] + value if name in g else value
        if op == "Conv":
            put(node.input[0], conv_bwd_grouped(gy, v[node.input[1]], x.shape,
                                                a.get("strides", [1, 1]),
                                                a.get("pads", [0, 0, 0, 0]), a.get("group", 1)))
        elif op == "Relu":
            put(node.input[0], (np.maximum(gy, 0) if guided else gy) * (x > 0))
        elif op == "Clip":
            lo = v[node.input[1]] if len(node.input) > 1 and node.input[1] else -np.inf
            hi = v[node.input[2]] if len(node.input) > 2 and node.input[2] else np.inf
            if guided:
                put(node.input[0], np.maximum(gy, 0) * ((x > lo) & (x < hi)))
            else:   # the reference's default (strict) convention at the bounds
                put(node.input[0], gy * ((x > lo) & (x < hi)))
        elif op == "MaxPool":
            put(node.input[0], maxpool_bwd_nd(gy, v[node.output[0] + "#arg"], x.shape,
                                              a["kernel_shape"], a.get("strides", [1, 1]),
                                              a.get("pads", [0] * 4)))
        elif op in ("AveragePool", "GlobalAveragePool"):
            put(node.input[0], np.broadcast_to(gy, x.shape) / (x.shape[2] * x.shape[3]))
        elif op == "Concat":
            axis, start = a["axis"], 0
            for name in node.input:
                size = v[name].shape[axis]
                put(name, np.take(gy, range(start, start + size), axis=axis))
                start += size
        elif op in ("Dropout", "Identity"):
            put(node.input[0], gy)
        elif op == "Add":
            for name in node.input:
                put(name, unbroadcast(gy, v[name].shape))
        elif op in ("Reshape", "Flatten"):
            put(node.input[0], gy.reshape(x.shape))
        elif op == "Gemm":
            if a.get("transA", 0):
                raise SystemExit("numpy twin: Gemm transA")
            B = v[node.input[1]].T if a.get("transB", 0) else v[node.input[1]]
            put(node.input[0], a.get("alpha", 1.0) * gy @ B.T)
        else:
            raise SystemExit("numpy twin: no backward for %s" % op)


def check_twin(data, quick, results):
    print("== 1b. real models: hand-written numpy backprop (float64) vs reference (ORT "
          "float32)", flush=True)
    photos = PHOTOS[:2] if quick else PHOTOS
    for kind, (file, seed_t, logits) in MODELS.items():
        path = os.path.join(data, "models", file)
        twin = NumpyBackprop(path)
        kink_inputs = [n.input[0] for n in twin.model.graph.node
                       if n.op_type in ("Relu", "Clip")]
        kink_sess = forward_session(path, kink_inputs)
        for mode in ("plain", "guided"):
            for seed_kind, name in (("tensor", seed_t), ("onehot", logits)):
                onehot = 0 if seed_kind == "onehot" else None
                built = None
                for photo in photos:
                    x = preprocess(os.path.join(data, "images", "dev", photo), kind)
                    if seed_kind == "onehot":
                        # the top class of this photo; rebuild the graph per class
                        onehot = predicted_class(path, name, x)
                        built = None
                    if built is None:
                        model, inp, out, _, _ = ref.build_gradient_model(
                            path, mode, name, onehot, list(x.shape))
                        built = ort.InferenceSession(model.SerializeToString(),
                                                     providers=["CPUExecutionProvider"])
                    got = built.run([out], {inp: x})[0].reshape(x.shape).astype(np.float64)
                    t0 = time.perf_counter()
                    want = twin.gradient(x, mode, name, onehot)
                    elapsed = time.perf_counter() - t0
                    # the same, with the Relu/Clip kink decisions taken from ORT's float32
                    # forward: what is left is then the arithmetic, not the masks
                    acts = dict(zip(kink_inputs, [a.astype(np.float64) for a in
                                                  kink_sess.run(None, {twin.input: x})]))
                    want32 = twin.gradient(x, mode, name, onehot, masks_from=acts)
                    err32 = rel(got, want32)
                    err = rel(got, want)
                    cos = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
                    key = "twin %s %s %s %s" % (kind, mode, "seed-tensor " + name
                                                if seed_kind == "tensor"
                                                else "onehot %s:%d" % (name, onehot),
                                                photo.split("_", 1)[1].rsplit(".", 1)[0])
                    results[key] = err
                    results[key + " float32 masks"] = err32
                    print("   %-74s rel err %.1e (cos %.7f, max|diff|/max|g| %.0e, %d near-kink"
                          " units); float32 masks: %.1e  (%.1f s)"
                          % (key[5:], err, cos, float(np.abs(got - want).max()
                                                      / np.abs(want).max()), twin.near_kink,
                             err32, elapsed), flush=True)
                    if err32 > 1e-4 or err > 3e-2:
                        raise SystemExit("FAILED: %s" % key)


def predicted_class(path, logits_name, x):
    sess = forward_session(path, [logits_name])
    name = ref.image_input(onnx.load(path)).name
    return int(np.argmax(sess.run(None, {name: x})[0].reshape(-1)))


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_small(rng, results):
    print("== 1. small network: numpy (float64) vs reference", flush=True)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for integer in (False, True):
            net = SmallNet(rng, integer)
            path = os.path.join(tmp, "small.onnx")
            onnx.save(net.onnx_model(), path)
            if integer:
                x = rng.integers(-3, 4, SmallNet.SHAPE).astype(np.float64)
            else:
                x = rng.normal(0, 1, SmallNet.SHAPE)
            x32 = x.astype(np.float32)
            s = net.forward(x.astype(np.float32).astype(np.float64))
            if integer:
                ties = count_ties(s["r"], 3, 2)
                print("   integer net: %d of %d MaxPool windows have a tied positive max; "
                      "%d Relu inputs == 0, %d Clip inputs on a bound"
                      % (ties, s["m"].size, int(np.sum(s["a"] == 0)),
                         int(np.sum(np.isin(s["d"], [0, 6])) + np.sum(np.isin(s["e"], [0, 6])))))
            # numpy's own plain backward vs float64 finite differences (continuous net only)
            if not integer:
                for seed in ("f", "logits"):
                    k = 3
                    loss = (lambda z: 0.5 * np.sum(net.forward(z)["f"] ** 2)) if seed == "f" \
                        else (lambda z: net.forward(z)["logits"][0, k])
                    ss = net.forward(x)
                    gl = np.zeros((1, 5)); gl[0, k] = 1
                    g = net.backward(x, ss, seed, "plain", gf=ss["f"], glogits=gl)
                    for _ in range(3):
                        v = rng.normal(0, 1, x.shape)
                        h = 1e-5
                        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
                        err = abs(fd - np.sum(g * v)) / max(abs(fd), 1e-30)
                        worst = max(worst, err)
                print("   numpy plain backward vs float64 FD: worst rel err %.1e" % worst)
                results["small numpy vs FD"] = worst
            for mode, boundary in (("plain", "strict"), ("guided", "strict"),
                                   ("plain", "inclusive")):
                for seed in ("f", "logits"):
                    k = 3
                    model, inp, out, fixed, _ = ref.build_gradient_model(
                        path, mode, seed, None if seed == "f" else k, list(SmallNet.SHAPE),
                        boundary)
                    sess = ort.InferenceSession(model.SerializeToString(),
                                                providers=["CPUExecutionProvider"])
                    got = sess.run([out], {inp: x32})[0].reshape(SmallNet.SHAPE)
                    gl = np.zeros((1, 5)); gl[0, k] = 1
                    want = net.backward(x, s, seed, mode, gf=s["f"], glogits=gl,
                                        inclusive=boundary == "inclusive")
                    err = rel(got, want)
                    key = "small %s %s%s %s" % ("integer" if integer else "continuous", mode,
                                                " (clip inclusive)" if boundary == "inclusive"
                                                else "",
                                              "seed-tensor f" if seed == "f" else
                                              "onehot logits:%d" % k)
                    results[key] = err
                    print("   %-50s rel err %.2e  (|g| %.3g, max |diff| %.1e, nonzero %.2f)"
                          % (key, err, float(np.linalg.norm(want)),
                             float(np.abs(got - want).max()), float(np.mean(want != 0))))
                    if err > 1e-5 or not np.any(want):
                        raise SystemExit("FAILED: %s" % key)
                    if integer:
                        s_last = net.forward(x.astype(np.float32).astype(np.float64), last=True)
                        other = net.backward(x, s_last, seed, mode, gf=s_last["f"], glogits=gl,
                                             inclusive=boundary == "inclusive")
                        print("   %-50s (last-max tie routing would be off by %.2e)"
                              % ("", rel(got, other)))
            # without the ConvTranspose fix the reference would be wrong: show it
            if not integer:
                broken = unfixed_gradient(path, x32)
                s32 = net.forward(x)
                want = net.backward(x, s32, "f", "plain", gf=s32["f"])
                print("   (onnx-ad unpatched, pads + output_shape on ORT: rel err %.2f)"
                      % rel(broken, want))
                results["small unpatched onnx-ad"] = rel(broken, want)


def unfixed_gradient(path, x):
    import onnx_ad
    model = onnx.load(path)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("f", TensorProto.FLOAT,
                                                                 [1, 8, 3, 3]))
    ref.prune_to(model, ["f"])
    model = onnx.version_converter.convert_version(model, 16)
    adj = onnx_ad.reverse(model, inputs=["x"], outputs=["f"], layout="onnx")
    sess = ort.InferenceSession(adj.SerializeToString(), providers=["CPUExecutionProvider"])
    f = sess.run(["f"], {"x": x, "adj_f": np.zeros((1, 8, 3, 3, 1), np.float32)})[0]
    return sess.run(["adj_x"], {"x": x, "adj_f": f[..., None]})[0].reshape(x.shape)


def count_ties(r, k, s):
    n, c, h, w = r.shape
    ties = 0
    for i in range((h - k) // s + 1):
        for j in range((w - k) // s + 1):
            win = r[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, c, -1)
            mx = win.max(-1)
            ties += int(np.sum((mx > 0) & (np.sum(win == mx[..., None], -1) > 1)))
    return ties


# --- 2. finite differences on the real models ------------------------------------------------

def forward_session(model_path, names):
    model = onnx.load(model_path)
    if ref.opset_of(model) < 16:
        model = onnx.version_converter.convert_version(model, 16)
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in names])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def double_evaluator(model_path, name):
    """The original model in float64 on onnx's own numpy ReferenceEvaluator (no ORT), cut
    at tensor `name`: an independent forward precise enough for h = 1e-6 differences."""
    from onnx.reference import ReferenceEvaluator
    model = onnx.load(model_path)
    if ref.opset_of(model) < 16:
        model = onnx.version_converter.convert_version(model, 16)

    def to64(t):
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            to64(t)
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                to64(a.t)
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info(name, TensorProto.DOUBLE, None)])
    ref.prune_to(model, [name])
    evaluator = ReferenceEvaluator(model)
    input_name = ref.image_input(model).name
    return lambda z: evaluator.run(None, {input_name: np.asarray(z, np.float64)})[0]


def check_fd(data, quick, rng, results):
    print("== 2. real models, plain mode: central finite differences of the original model",
          flush=True)
    print("   (a) ORT float32 along the gradient, v = g/|g|*sqrt(n): |fd - g.v| / g.v, per h")
    print("   (b) float64 forward on onnx's ReferenceEvaluator (no ORT), random Gaussian v, "
          "h = %s:\n       worst |fd - g.v| / |g.v| for g = the reference | g = the float64 "
          "numpy twin of 1b" % "/".join("%g" % h for h in FD64_STEPS))
    photos = PHOTOS[:2] if quick else PHOTOS
    for kind, (file, seed_t, logits) in MODELS.items():
        path = os.path.join(data, "models", file)
        input_name = ref.image_input(onnx.load(path)).name
        fwd = forward_session(path, [seed_t, logits])
        fwd_ties = forward_session(path, TIE_TENSORS) if kind == "squeezenet" else None
        twin = NumpyBackprop(path)
        steps32 = (1e-4, 1e-3, 1e-2) if kind == "squeezenet" else (1e-6, 1e-5, 1e-4)
        f64 = {seed_t: double_evaluator(path, seed_t), logits: double_evaluator(path, logits)}
        for seed_kind, name in (("tensor", seed_t), ("onehot", logits)):
            for photo in (photos if seed_kind == "tensor" else photos[:2]):
                x = preprocess(os.path.join(data, "images", "dev", photo), kind)
                lg = fwd.run(None, {input_name: x})[1]
                onehot = int(np.argmax(lg.reshape(-1))) if seed_kind == "onehot" else None
                model, inp, out, _, _ = ref.build_gradient_model(
                    path, "plain", name, onehot, list(x.shape))
                sess = ort.InferenceSession(model.SerializeToString(),
                                            providers=["CPUExecutionProvider"])
                g = sess.run([out], {inp: x})[0].reshape(x.shape).astype(np.float64)
                index = 0 if seed_kind == "tensor" else 1

                def loss32(z):
                    t = fwd.run(None, {input_name: z.astype(np.float32)})[index]
                    if seed_kind == "tensor":
                        return 0.5 * float(np.sum(t.astype(np.float64) ** 2))
                    return float(t.reshape(-1)[onehot])

                def loss64(z):
                    t = f64[name](z)
                    if seed_kind == "tensor":
                        return 0.5 * float(np.sum(t ** 2))
                    return float(t.reshape(-1)[onehot])
                # (a) ORT float32 along g
                v = g / np.linalg.norm(g) * np.sqrt(g.size)
                gv = float(np.sum(g * v))
                along = {h: abs((loss32(x + h * v) - loss32(x - h * v)) / (2 * h) - gv) / gv
                         for h in steps32}
                # (b) float64, random directions, against the reference and the twin
                x64 = x.astype(np.float64)
                gt = twin.gradient(x64, "plain", name, onehot)
                e_ref, e_twin = fd64(loss64, [g, gt], x64, rng, quick)
                key = "%s %s %s" % (kind, "seed-tensor " + name if seed_kind == "tensor"
                                    else "onehot %s:%d" % (name, onehot),
                                    photo.split("_", 1)[1].rsplit(".", 1)[0])
                best32 = min(along.values())
                results[key + " ORT32 along g"] = best32
                results[key + " f64 FD vs reference"] = e_ref
                results[key + " f64 FD vs twin"] = e_twin
                ties = tied_windows(fwd_ties, x)
                print("   %-62s (a) %.0e [%s]  (b) %.1e | %.1e%s"
                      % (key, best32, " ".join("%g:%.0e" % hv for hv in along.items()),
                         e_ref, e_twin, "  (%d tied MaxPool windows)" % ties if ties else ""),
                      flush=True)
                if ties:
                    # Exact MaxPool ties make the function non-differentiable: central FD
                    # then averages the tied positions, where the reference (like PyTorch
                    # and the twin) routes to the first. Break them with a 0.01 jitter: FD
                    # must then agree with the float64 twin. (The float32 reference may
                    # not, to ~1e-2: the jitter leaves near-ties that float32 rounding
                    # decides; see 1b for the exact-tie photo itself.)
                    xj = (x + rng.normal(0, 0.01, x.shape)).astype(np.float64)
                    gj = sess.run([out], {inp: xj.astype(np.float32)})[0].reshape(
                        x.shape).astype(np.float64)
                    gtj = twin.gradient(xj, "plain", name, onehot)
                    j_ref, j_twin = fd64(loss64, [gj, gtj], xj, rng, quick)
                    results[key + " jittered f64 FD vs reference"] = j_ref
                    results[key + " jittered f64 FD vs twin"] = j_twin
                    print("   %-62s     jittered (x + 0.01 noise): (b) %.1e | %.1e"
                          % ("", j_ref, j_twin), flush=True)
                    if j_twin > 1e-3:
                        raise SystemExit("FAILED: FD vs twin, %s jittered" % key)
                elif e_twin > 1e-3:
                    print("   WARNING: %s: the float64 twin disagrees with float64 FD" % key)


FD64_STEPS = (1e-8, 1e-7)


def fd64(loss64, grads, x, rng, quick):
    """For each gradient in `grads`: the worst |fd - g.v| / |g.v| over random Gaussian
    directions, taking per direction the better of the steps in FD64_STEPS (the larger
    one crosses more Relu/Clip kinks, the smaller one has more rounding)."""
    worst = [0.0] * len(grads)
    for _ in range(1 if quick else 2):
        v = rng.normal(0, 1, x.shape)
        fds = [(loss64(x + h * v) - loss64(x - h * v)) / (2 * h) for h in FD64_STEPS]
        for k, g in enumerate(grads):
            gv = float(np.sum(g * v))
            worst[k] = max(worst[k], min(abs(fd - gv) / abs(gv) for fd in fds))
    return worst


TIE_TENSORS = ["conv1_2", "fire3/concat_1", "fire5/concat_1"]   # SqueezeNet MaxPool inputs


def tied_windows(sess, x):
    if sess is None:
        return 0
    return sum(count_ties(r, 3, 2) for r in sess.run(None, {"data_0": x}))


def tie_census(data):
    """How tie-heavy the photos are for SqueezeNet's three MaxPools."""
    path = os.path.join(data, "models", "squeezenet1.1.onnx")
    sess = forward_session(path, TIE_TENSORS)
    for photo in PHOTOS:
        x = preprocess(os.path.join(data, "images", "dev", photo), "squeezenet")
        outs = sess.run(None, {"data_0": x})
        parts = ["%s %d/%d" % (name, count_ties(r, 3, 2),
                               ((r.shape[2] - 3) // 2 + 1) ** 2 * r.shape[1])
                 for name, r in zip(TIE_TENSORS, outs)]
        print("   SqueezeNet MaxPool windows with a tied positive max, %s: %s"
              % (photo, ", ".join(parts)))


# --- 3. the command line, timed --------------------------------------------------------------

def check_cli(data, results):
    print("== 3. the command line: 3 models x 4 photos x 2 modes (seed tensor), timed",
          flush=True)
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (file, seed_t, _) in MODELS.items():
            pairs = []
            for photo in PHOTOS:
                src = os.path.join(tmp, "%s_%s.f32" % (kind, photo))
                preprocess(os.path.join(data, "images", "dev", photo), kind).astype(
                    "<f4").tofile(src)
                pairs += ["--pair", src, src + ".grad"]
            for mode in ("plain", "guided"):
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, SCRIPT, "--model", os.path.join(data, "models", file),
                     "--mode", mode, "--seed-tensor", seed_t, "--shape", "1,3,224,224"] + pairs,
                    capture_output=True, text=True)
                wall = time.perf_counter() - t0
                total += wall
                if proc.returncode != 0:
                    raise SystemExit("FAILED: CLI %s %s: %s" % (kind, mode, proc.stderr))
                runs = [float(line.rsplit(" ", 2)[-2]) for line in proc.stderr.splitlines()
                        if line.endswith(" ms")]
                results["cli %s %s wall s" % (kind, mode)] = wall
                print("   %-12s %-6s wall %.1f s for %d photos (per photo %s ms)"
                      % (kind, mode, wall, len(runs), "/".join("%.0f" % r for r in runs)),
                      flush=True)
    print("   total %.1f s" % total)
    results["cli total s"] = total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "..", "shared", "data"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: 1,1b,2,3")
    args = parser.parse_args()
    rng = np.random.default_rng(20261201)
    results = {}
    skip = set(args.skip.split(","))
    if "1" not in skip:
        check_small(rng, results)
    if "1b" not in skip:
        check_twin(args.data, args.quick, results)
    if "2" not in skip:
        tie_census(args.data)
        check_fd(args.data, args.quick, rng, results)
    if "3" not in skip:
        check_cli(args.data, results)
    print("all checks passed")


if __name__ == "__main__":
    main()
