#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets that Python can make (run from the
repo root: python3 fuzz/make_seeds.py). Spool files (and more records) come from Rust:
cargo test --test spool_recovery -- --ignored write_fuzz_seeds.

- onnx_compile / onnx_engine: tiny classifiers (input 1x3x8x8) built with `onnx`, covering
  the op families of the three real models (Conv/Relu/MaxPool/Concat as SqueezeNet,
  depthwise Conv/Clip/BatchNorm/residual Add as MobileNetV2, HardSwish/Sigmoid/Mul as
  EfficientNet-Lite), an FP16 copy, and one with an op the compiler does not support.
- manifest: the built-in manifests in engines/.
- cameras_toml: the documented config examples (docs/STREAMING.md, docs/ALERTS.md).
- image_decode: tiny PNG and JPEG variants made with Pillow.
- spool_record: records written from the documented record layout (py_*).
"""
import io
import os
import re
import shutil

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
rng = np.random.default_rng(17)


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


class G:
    """A tiny graph builder: nodes, initializers, fresh names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def w(self, shape, scale=0.3):
        n = self.name("w")
        self.inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), n))
        return n

    def c(self, arr):
        n = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def op(self, op, ins, **attrs):
        o = self.name(op.lower())
        self.nodes.append(helper.make_node(op, ins, [o], name=o, **attrs))
        return o

    def conv(self, x, cin, cout, k=3, stride=1, group=1):
        p = k // 2
        return self.op("Conv", [x, self.w([cout, cin // group, k, k]), self.w([cout], 0.1)],
                       kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p], group=group)

    def head(self, x, c, classes=5):
        g = self.op("GlobalAveragePool", [x])
        f = self.op("Flatten", [g], axis=1)
        return self.op("Gemm", [f, self.w([classes, c]), self.w([classes], 0.1)], transB=1)

    def model(self, logits, softmax=True):
        y = self.op("Softmax", [logits], axis=1) if softmax else logits
        g = helper.make_graph(
            self.nodes, "seed",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 5])],
            initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
        m.ir_version = 8
        return m


def squeeze_like():
    g = G()
    x = g.op("Relu", [g.conv("input", 3, 4, stride=2)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    s = g.op("Relu", [g.conv(x, 4, 2, k=1)])
    a = g.op("Relu", [g.conv(s, 2, 3, k=1)])
    b = g.op("Relu", [g.conv(s, 2, 3, k=3)])
    x = g.op("Concat", [a, b], axis=1)
    x = g.op("Relu", [g.conv(x, 6, 5, k=1)])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    return g.model(y)


def mobile_like():
    g = G()
    x = g.conv("input", 3, 4, stride=2)
    bn = [g.c(np.ones(4, np.float32)), g.c(np.zeros(4, np.float32)),
          g.c(np.full(4, 0.1, np.float32)), g.c(np.full(4, 0.9, np.float32))]
    x = g.op("BatchNormalization", [x] + bn, epsilon=1e-5)
    x = g.op("Clip", [x, g.c(np.float32(0)), g.c(np.float32(6))])
    d = g.op("Clip", [g.conv(x, 4, 4, group=4), g.c(np.float32(0)), g.c(np.float32(6))])
    d = g.conv(d, 4, 4, k=1)
    x = g.op("Add", [x, d])
    return g.model(g.head(x, 4), softmax=False)


def efficient_like():
    g = G()
    x = g.op("HardSwish", [g.conv("input", 3, 4)])
    s = g.op("GlobalAveragePool", [x])
    s = g.op("Sigmoid", [g.conv(s, 4, 4, k=1)])
    x = g.op("Mul", [x, s])
    x = g.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("Pad", [x, g.c(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    x = g.op("LeakyRelu", [g.conv(x, 4, 4, stride=2)], alpha=0.1)
    f = g.op("Reshape", [g.op("GlobalAveragePool", [x]), g.c(np.array([1, 4], np.int64))])
    y = g.op("Add", [g.op("MatMul", [f, g.w([4, 5])]), g.w([5], 0.1)])
    return g.model(y)


def fp16(m):
    """The same model with FP16 weights behind Cast nodes, as FP16 exports are."""
    m = onnx.ModelProto.FromString(m.SerializeToString())
    g = m.graph
    casts = []
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT and len(t.dims) > 1:
            a = numpy_helper.to_array(t).astype(np.float16)
            t.CopyFrom(numpy_helper.from_array(a, t.name + "_h"))
            casts.append(helper.make_node("Cast", [t.name], [t.name[:-2]], to=TensorProto.FLOAT))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return m


def unsupported():
    g = G()
    x = g.op("Erf", [g.conv("input", 3, 4)])
    return g.model(g.head(x, 4))


def onnx_seeds():
    models = {"squeeze_like": squeeze_like(), "mobile_like": mobile_like(),
              "efficient_like": efficient_like(), "squeeze_fp16": fp16(squeeze_like()),
              "unsupported_erf": unsupported()}
    for name, m in models.items():
        onnx.checker.check_model(m)
        for t in ("onnx_compile", "onnx_engine"):
            out(t, name + ".onnx", m.SerializeToString())


def toml_seeds():
    for f in sorted(os.listdir(os.path.join(ROOT, "engines"))):
        if f.endswith(".toml") and f != "clips.toml":
            shutil.copy(os.path.join(ROOT, "engines", f), os.path.join(CORPUS, "manifest", f))
    for doc in ("STREAMING.md", "ALERTS.md"):
        text = open(os.path.join(ROOT, "docs", doc)).read()
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", text, re.S)):
            out("cameras_toml", f"{doc[:-3].lower()}_{i}.toml", block.encode())


def image_seeds():
    px = (rng.integers(0, 256, (6, 10, 3))).astype(np.uint8)
    im = Image.fromarray(px, "RGB")
    variants = {
        "rgb.png": (im, "PNG", {}),
        "gray.png": (im.convert("L"), "PNG", {}),
        "palette.png": (im.convert("P"), "PNG", {}),
        "rgba.png": (im.convert("RGBA"), "PNG", {}),
        "gray16.png": (Image.fromarray(px[..., 0].astype(np.uint16) * 257), "PNG", {}),
        "optimized.png": (im, "PNG", {"optimize": True}),
        "baseline.jpg": (im, "JPEG", {"quality": 80}),
        "progressive.jpg": (im, "JPEG", {"quality": 80, "progressive": True}),
        "gray.jpg": (im.convert("L"), "JPEG", {}),
        "cmyk.jpg": (im.convert("CMYK"), "JPEG", {}),
        "subsampled.jpg": (im, "JPEG", {"subsampling": 2}),
    }
    for name, (img, fmt, kw) in variants.items():
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        out("image_decode", name, b.getvalue())


def spool_record_seeds():
    """Records in the layout of src/alert/spool.rs (`AGS1` | u32 len | JSON | flags | [u32 len |
    jpeg] | [u32 len | png]), written from its documented format, not by its encoder."""
    import json
    import struct
    event = {"id": "0192f0c4-3", "event_id": "0192f0c4", "phase": "update", "seq": 3,
             "camera": "front-door", "model": "resnet50", "detector": "concentration",
             "time": "2026-11-25T05:01:02.345+00:00", "start_time": "2026-11-25T05:00:58.001+00:00",
             "start_pts_ms": 120400, "pts_ms": 124720, "score": 0.91, "peak_score": 0.97,
             "peak_pts_ms": 122000, "threshold": 0.62, "frames_over": 87,
             "top1": {"index": 859, "label": "toaster", "prob": 0.93}, "bbox": [312, 140, 96, 80]}
    for name, jpeg, png in (("py_plain", None, None), ("py_jpeg", b"\xff\xd8\xff\xe0jpeg", None),
                            ("py_both", b"\xff\xd8", b"\x89PNG\r\n")):
        head = json.dumps({"queued_at_ms": 1767225600000, "event": event}).encode()
        rec = b"AGS1" + struct.pack("<I", len(head)) + head
        rec += bytes([(jpeg is not None) | (png is not None) << 1])
        for a in (jpeg, png):
            if a is not None:
                rec += struct.pack("<I", len(a)) + a
        out("spool_record", name, rec)


if __name__ == "__main__":
    os.makedirs(os.path.join(CORPUS, "manifest"), exist_ok=True)
    onnx_seeds()
    toml_seeds()
    image_seeds()
    spool_record_seeds()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(CORPUS) for f in fs)
    print(f"seeds written under {CORPUS}: {total} bytes")
