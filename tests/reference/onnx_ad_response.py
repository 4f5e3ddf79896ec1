#!/usr/bin/env python3
"""External reference for advguard's feature responses: the input gradient of an ONNX
image classifier, built by the independent autodiff `onnx-ad` (PyPI, 0.3.0) and run on
ONNX Runtime. Nothing here shares code with the Rust guard-graph compiler.

    python3 tests/reference/onnx_ad_response.py --model MODEL.onnx --mode plain|guided \
        (--seed-tensor NAME | --seed-onehot NAME:INDEX) --shape 1,3,H,W \
        --pair IN1.f32 OUT1.f32 [--pair IN2.f32 OUT2.f32 ...]

Inputs and outputs are raw little-endian float32 files of `--shape`: the preprocessed model
input in, the gradient with respect to it out.

  --seed-tensor NAME     gradient of 1/2 ||t||^2 for the intermediate tensor t = NAME
                         (so the seed gradient is t itself)
  --seed-onehot NAME:I   gradient of t[0, I] for the tensor t = NAME of shape [N, K, ...]
                         (trailing singleton axes allowed, e.g. SqueezeNet's pool10_1)
  --mode plain           the true gradient; at a kink Relu'(0) = 0 and Clip passes the
                         gradient only on lo < x < hi (as PyTorch; --clip-boundary
                         inclusive gives onnx-ad's own lo <= x <= hi instead)
  --mode guided          guided backprop (Springenberg et al.): at every Relu the backward is
                         Relu(g) * [x > 0], at every Clip(lo, hi) Relu(g) * [lo < x < hi];
                         every other operation is differentiated plainly

The gradient graph is built once per invocation (model + mode + seed) and one ONNX Runtime
session serves every --pair. MaxPool keeps onnx-ad's adjoint (MaxPool Indices + ScatterND):
the gradient of each window goes to one position, the first maximum in row-major order.

Traps handled (see shared/STACK.md, "Peers of the guard-graph compiler"):
  * onnx-ad writes ConvTranspose with both `pads` and `output_shape`; the ONNX spec (and ONNX
    Runtime) then ignore `pads`, which shifts the adjoint of every strided Conv with
    asymmetric padding. Every ConvTranspose is rewritten to `pads` + `output_padding`.
  * Models below opset 16 (SqueezeNet 1.1 is opset 7) are converted with
    onnx.version_converter first: the MaxPool adjoint needs ScatterND(reduction=add).
  * Dropout is inference-mode, so its adjoint is the identity (onnx-ad's rule; a
    training-mode Dropout is refused).
  * Dead branches (Clip's min/max adjoints, unused helpers) are pruned before the session
    is built, so the graph costs what it must.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper, shape_inference, version_converter
    import onnx_ad
    from onnx_ad import rules as onnx_ad_rules
    import onnxruntime as ort
except ImportError as error:  # pragma: no cover - environment problem
    sys.exit("onnx_ad_response: missing Python package (%s); install with\n"
             "  python3 -m pip install onnx==1.23.2 onnx-ad==0.3.0 onnxruntime==1.32.0"
             % error)

PROG = "onnx_ad_response"
MIN_OPSET = 16


class ReferenceError_(Exception):
    pass


def fail(message):
    raise ReferenceError_(message)


# --- guided rules --------------------------------------------------------------------------

def _guided_relu(ctx, node, grads):
    """Relu(g) * [x > 0]."""
    x = node.input[0]
    dtype = ctx.dtype(x, node.output[0])
    positive = ctx.b.op("Cast", [ctx.b.op("Greater", [x, ctx.constant(0.0, dtype)])], to=dtype)
    rectified = ctx.b.op("Relu", [grads[0]], stem="guided_g")
    return [ctx.b.op("Mul", [rectified, ctx.lift(positive)], stem="a_guided_" + x)]


def _clip_bounds(ctx, node):
    """(lo, hi) as tensor names (None when absent), from inputs (opset >= 11) or attributes."""
    dtype = ctx.dtype(node.input[0], node.output[0])
    lo = node.input[1] if len(node.input) > 1 and node.input[1] else None
    hi = node.input[2] if len(node.input) > 2 and node.input[2] else None
    for attr in node.attribute:  # opset < 11 spelling
        if attr.name == "min":
            lo = ctx.constant(float(attr.f), dtype)
        elif attr.name == "max":
            hi = ctx.constant(float(attr.f), dtype)
    return lo, hi


def clip_rule(guided, strict):
    """A reverse rule for Clip: g * [lo < x < hi] (strict) or g * [lo <= x <= hi]
    (inclusive, onnx-ad's own convention), with g rectified first in guided mode. It gives
    the bounds no contribution, so none of onnx-ad's dead Where branches is emitted."""
    def rule(ctx, node, grads):
        x = node.input[0]
        dtype = ctx.dtype(x, node.output[0])
        lo, hi = _clip_bounds(ctx, node)
        inside = None
        for bound, comparison in ((lo, "Greater" if strict else "GreaterOrEqual"),
                                  (hi, "Less" if strict else "LessOrEqual")):
            if bound is None:
                continue
            term = ctx.b.op(comparison, [x, bound])
            inside = term if inside is None else ctx.b.op("And", [inside, term])
        g = ctx.b.op("Relu", [grads[0]], stem="guided_g") if guided else grads[0]
        if inside is None:
            contribution = g
        else:
            mask = ctx.b.op("Cast", [inside], to=dtype)
            contribution = ctx.b.op("Mul", [g, ctx.lift(mask)], stem="a_clip_" + x)
        return [contribution] + [None] * (len(node.input) - 1)
    return rule


@contextlib.contextmanager
def adjoint_rules(mode, clip_boundary="strict"):
    """Install the Relu and Clip reverse rules for `mode` into onnx-ad, then restore.

    onnx-ad dispatches reverse mode through the module-level table `onnx_ad.rules.REVERSE`
    (op_type -> fn(ctx, node, grads) returning one contribution per operand input); its own
    `@reverse_rule` decorator just writes into that table, so overriding is a table entry.
    guided: Relu(g)[x > 0] and Relu(g)[lo < x < hi]. plain: onnx-ad's Relu rule
    (g [x > 0]) and g [lo < x < hi]; with clip_boundary="inclusive", onnx-ad's Clip rule
    unchanged (g [lo <= x <= hi]).
    """
    table = onnx_ad_rules.REVERSE
    saved = {op: table[op] for op in ("Relu", "Clip")}
    strict = clip_boundary == "strict"
    if mode == "guided":
        table["Relu"] = _guided_relu
        table["Clip"] = clip_rule(True, strict)
    elif strict:
        table["Clip"] = clip_rule(False, True)
    try:
        yield
    finally:
        table.update(saved)


# --- model preparation ---------------------------------------------------------------------

def image_input(model):
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        fail("expected exactly one non-initializer graph input, found %s"
             % [i.name for i in inputs])
    return inputs[0]


def set_static_shape(value, shape):
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        fail("input '%s' has rank %d, --shape has rank %d" % (value.name, len(dims), len(shape)))
    for dim, size in zip(dims, shape):
        if dim.HasField("dim_value") and dim.dim_value not in (0, size):
            fail("input '%s' is declared %s, --shape says %s"
                 % (value.name, [d.dim_value or d.dim_param for d in dims], list(shape)))
        dim.Clear()
        dim.dim_value = size


def opset_of(model):
    return max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [0])


def prune_to(model, outputs):
    """Keep only the nodes needed to compute `outputs`; drop unused initializers/inputs."""
    graph = model.graph
    needed = set(outputs)
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs capture outer values
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_captured(attr.g))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _captured(graph):
    names = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names.update(_captured(attr.g))
    return names


def inferred_shapes(model):
    inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + \
            list(inferred.graph.output):
        kind = value.type.tensor_type
        if kind.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in kind.shape.dim]
    for tensor in model.graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def fix_conv_transpose(model):
    """Rewrite every ConvTranspose carrying `output_shape` to `pads` + `output_padding`.

    With `output_shape` present the spec lets the runtime derive the pads itself, and ONNX
    Runtime ignores the explicit `pads` onnx-ad wrote: for stride-2 convolutions with
    asymmetric padding (TF "SAME", as in MobileNetV2) the adjoint comes out a pixel off. Output size without output_shape:
    stride*(in-1) + output_padding + (k-1)*dilation + 1 - pad_begin - pad_end.
    """
    shapes = inferred_shapes(model)
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "ConvTranspose":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "output_shape" not in attrs:
            continue
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            fail("ConvTranspose with auto_pad and output_shape: not handled")
        target = list(attrs["output_shape"])
        spatial = len(target)
        in_shape = shapes.get(node.input[0])
        w_shape = shapes.get(node.input[1])
        if in_shape is None or None in in_shape[2:] or w_shape is None:
            fail("cannot fix ConvTranspose '%s': shape of its input unknown" % node.output[0])
        strides = list(attrs.get("strides", [1] * spatial))
        dilations = list(attrs.get("dilations", [1] * spatial))
        pads = list(attrs.get("pads", [0] * (2 * spatial)))
        kernel = list(w_shape[2:])
        padding = []
        for i in range(spatial):
            natural = (strides[i] * (in_shape[2 + i] - 1) + (kernel[i] - 1) * dilations[i] + 1
                       - pads[i] - pads[spatial + i])
            extra = target[i] - natural
            if extra < 0 or extra >= max(strides[i], dilations[i]):
                fail("ConvTranspose '%s': output_padding %d out of range" % (node.output[0], extra))
            padding.append(extra)
        keep = [a for a in node.attribute if a.name not in ("output_shape", "output_padding")]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.append(helper.make_attribute("output_padding", padding))
        fixed += 1
    return fixed


def build_gradient_model(model_path, mode, seed_name, onehot, shape, clip_boundary="strict"):
    """The gradient model: one input (the image), one output (d L / d image)."""
    model = onnx.load(model_path)
    value = image_input(model)
    input_name = value.name
    set_static_shape(value, shape)
    if opset_of(model) < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    # old IR versions list initializers as graph inputs too; they are constants here
    initializers = {t.name for t in model.graph.initializer}
    keep_inputs = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(keep_inputs)
    if model.ir_version < 7:
        model.ir_version = 7

    produced = {o for n in model.graph.node for o in n.output}
    if seed_name not in produced and seed_name not in [o.name for o in model.graph.output]:
        fail("seed tensor '%s' is not produced by any node of %s" % (seed_name, model_path))

    shapes = inferred_shapes(model)
    t_shape = shapes.get(seed_name)
    if t_shape is None or None in t_shape:
        fail("the shape of seed tensor '%s' is unknown after shape inference" % seed_name)
    if onehot is not None:
        per_sample = int(np.prod(t_shape[1:]))
        if not 0 <= onehot < per_sample:
            fail("--seed-onehot index %d out of range for '%s' of shape %s"
                 % (onehot, seed_name, t_shape))

    # the primal up to t, with t as the only output
    t_info = helper.make_tensor_value_info(seed_name, TensorProto.FLOAT, t_shape)
    del model.graph.output[:]
    model.graph.output.extend([t_info])
    prune_to(model, [seed_name])
    model = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)

    with adjoint_rules(mode, clip_boundary):
        adjoint = onnx_ad.reverse(model, inputs=[input_name], outputs=[seed_name],
                                  layout="onnx")

    graph = adjoint.graph
    seed_inputs = [i for i in graph.input if i.name != input_name]
    grad_outputs = [o for o in graph.output if o.name != seed_name]
    if len(seed_inputs) != 1 or len(grad_outputs) != 1:
        fail("unexpected onnx-ad signature: inputs %s, outputs %s"
             % ([i.name for i in graph.input], [o.name for o in graph.output]))
    seed_input, grad_output = seed_inputs[0].name, grad_outputs[0].name

    # the seed, wired inside the graph: shape(t) ++ [nseed = 1]
    if onehot is None:
        seed_node = helper.make_node("Unsqueeze", [seed_name, "ref_seed_axis"], [seed_input])
        graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64),
                                                         "ref_seed_axis"))
        graph.node.append(seed_node)
    else:
        seed = np.zeros(t_shape + [1], np.float32)
        seed.reshape(t_shape[0], -1)[0, onehot] = 1.0
        graph.initializer.append(numpy_helper.from_array(seed, seed_input))
    del graph.input[:]
    graph.input.extend([_input_info(input_name, shape)])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(grad_output, TensorProto.FLOAT,
                                                       list(shape) + [None])])
    # nodes must be topologically sorted: the seed node reads t, emitted by the primal part
    _toposort(graph)
    del graph.value_info[:]
    prune_to(adjoint, [grad_output])
    fixed = fix_conv_transpose(adjoint)
    onnx.checker.check_model(adjoint)
    return adjoint, input_name, grad_output, fixed, t_shape


def _input_info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _toposort(graph):
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = []
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                progressed.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if not progressed:
            fail("gradient graph has a cycle or a missing value: %s"
                 % sorted({i for n in rest for i in n.input if i not in available})[:5])
        ordered.extend(progressed)
        pending = rest
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)


# --- command line --------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="onnx_ad_response.py",
        description="Input gradient (plain or guided backprop) of an ONNX image model, "
                    "via onnx-ad on ONNX Runtime: an external reference for advguard.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--mode", required=True, choices=("plain", "guided"))
    seed = parser.add_mutually_exclusive_group(required=True)
    seed.add_argument("--seed-tensor", metavar="NAME",
                      help="gradient of 1/2 ||t||^2 for the intermediate tensor t")
    seed.add_argument("--seed-onehot", metavar="NAME:INDEX",
                      help="gradient of t[0, INDEX] for the [N, K, ...] tensor t")
    parser.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224")
    parser.add_argument("--pair", nargs=2, action="append", required=True,
                        metavar=("IN.f32", "OUT.f32"))
    parser.add_argument("--clip-boundary", choices=("strict", "inclusive"), default="strict",
                        help="where Clip passes the gradient: lo < x < hi (strict, default, as "
                             "PyTorch's ReLU6/hardtanh and as Relu'(0) = 0) or lo <= x <= hi "
                             "(inclusive, onnx-ad's own rule); matters only for inputs exactly "
                             "on a bound")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--save-graph", metavar="PATH",
                        help="also write the generated gradient model here (for debugging)")
    args = parser.parse_args(argv)
    try:
        args.shape = [int(s) for s in args.shape.split(",")]
    except ValueError:
        parser.error("--shape must be comma-separated integers, got %r" % args.shape)
    if any(s <= 0 for s in args.shape):
        parser.error("--shape must be positive, got %r" % args.shape)
    if args.seed_onehot is not None:
        name, sep, index = args.seed_onehot.rpartition(":")  # names may contain ':'
        if not sep or not name:
            parser.error("--seed-onehot wants NAME:INDEX, got %r" % args.seed_onehot)
        try:
            args.onehot = int(index)
        except ValueError:
            parser.error("--seed-onehot index must be an integer, got %r" % index)
        args.seed = name
    else:
        args.seed, args.onehot = args.seed_tensor, None
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if not os.path.isfile(args.model):
            fail("model not found: %s" % args.model)
        started = time.perf_counter()
        model, input_name, grad_output, fixed, t_shape = build_gradient_model(
            args.model, args.mode, args.seed, args.onehot, args.shape, args.clip_boundary)
        if args.save_graph:
            onnx.save(model, args.save_graph)
        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        built = time.perf_counter() - started
        seed_desc = ("onehot %s[%d]" % (args.seed, args.onehot) if args.onehot is not None
                     else "tensor %s" % args.seed)
        print("%s: %s mode=%s seed=%s %s; graph %d nodes, %d ConvTranspose fixed, built in "
              "%.2f s" % (PROG, os.path.basename(args.model), args.mode, seed_desc, t_shape,
                          len(model.graph.node), fixed, built), file=sys.stderr)
        count = int(np.prod(args.shape))
        for source, target in args.pair:
            try:
                data = np.fromfile(source, dtype="<f4")
            except OSError as error:
                fail("cannot read %s: %s" % (source, error))
            if data.size != count:
                fail("%s holds %d float32 values, --shape %s needs %d"
                     % (source, data.size, args.shape, count))
            x = data.reshape(args.shape).astype(np.float32)
            t0 = time.perf_counter()
            (grad,) = session.run([grad_output], {input_name: x})
            elapsed = time.perf_counter() - t0
            grad = np.asarray(grad, dtype=np.float32).reshape(args.shape)
            if not np.all(np.isfinite(grad)):
                fail("non-finite gradient for %s" % source)
            grad.astype("<f4").tofile(target)
            print("%s: %s -> %s  |g|=%.6g max|g|=%.6g nonzero=%.4f  %.1f ms"
                  % (PROG, source, target, float(np.linalg.norm(grad)),
                     float(np.abs(grad).max()), float(np.mean(grad != 0)), elapsed * 1e3),
                  file=sys.stderr)
    except ReferenceError_ as error:
        print("%s: error: %s" % (PROG, error), file=sys.stderr)
        return 1
    except (onnx_ad.UnsupportedOperator, onnx.checker.ValidationError) as error:
        print("%s: error: %s: %s" % (PROG, type(error).__name__, error), file=sys.stderr)
        return 1
    except Exception as error:  # ORT failures and the like: still a clear one-liner
        print("%s: error: %s: %s" % (PROG, type(error).__name__, error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
