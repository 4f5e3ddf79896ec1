#!/usr/bin/env python3
"""Per-op profile of a guard graph on ONNX Runtime CPU (1 thread), beside the
original model's forward pass, interleaved in one process.

    advguard compile MODEL.onnx -o guard.onnx
    python3 scripts/profile_guard.py MODEL.onnx guard.onnx [--runs 50]

Prints the median times, their ratio, and the share of the guard frame spent
in each op type (from ONNX Runtime's own profiler), so a ratio above the goal
comes with the ops that keep it there. ORT_OPT=ORT_ENABLE_EXTENDED (or another
GraphOptimizationLevel name) changes the optimisation level, e.g. to see the
cost of the NCHWc layout transforms that ORT_ENABLE_ALL adds.
"""
import argparse
import collections
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort


def session(path, profile=False):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, os.environ.get("ORT_OPT", "ORT_ENABLE_ALL"))
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "guard")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feed(sess, rng):
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("guard")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    fwd = session(a.model)
    grd = session(a.guard)
    xf, xg = feed(fwd, rng), feed(grd, rng)
    for _ in range(5):
        fwd.run(None, xf)
        grd.run(None, xg)
    tf, tg = [], []
    for _ in range(a.runs):
        t = time.perf_counter()
        fwd.run(None, xf)
        tf.append(time.perf_counter() - t)
        t = time.perf_counter()
        grd.run(None, xg)
        tg.append(time.perf_counter() - t)
    mf, mg = statistics.median(tf) * 1e3, statistics.median(tg) * 1e3
    print(f"forward {mf:.2f} ms   guard {mg:.2f} ms   ratio {mg / mf:.2f}x   "
          f"(ORT {ort.__version__}, 1 thread, {a.runs} interleaved runs)")

    prof = session(a.guard, profile=True)
    for _ in range(20):
        prof.run(None, xg)
    path = prof.end_profiling()
    per_op = collections.Counter()
    count = collections.Counter()
    with open(path) as f:
        events = json.load(f)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] += e["dur"]
            count[op] += 1
    total = sum(per_op.values())
    print(f"{'op':<22}{'share':>8}{'ms/frame':>10}{'nodes':>7}")
    for op, d in per_op.most_common(a.top):
        print(f"{op:<22}{100 * d / total:>7.1f}%{d / 20 / 1e3:>10.2f}{count[op] // 20:>7}")


if __name__ == "__main__":
    main()
