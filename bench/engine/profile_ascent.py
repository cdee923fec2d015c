"""Where one chunk of the seed's ascent spends its time, from the JAX profiler (in situ).

    .venv/bin/python bench/engine/profile_ascent.py --layer block3_conv1 --filters 16 --steps 10

Runs ``ascent.ascend`` once to compile, then once under ``jax.profiler.trace`` and sums the
trace's XLA:CPU op events by kind: the Winograd custom calls, oneDNN's conv and matmul, and
XLA's own fusions (by name). Prints ms per step and the share of each kind, and the Winograd
calls' rate in their own multiplies (36 C O per 4x4 tile, forward and input gradient alike).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

from jaxviz.api import load_params  # noqa: E402
from jaxviz.ascent import AscentConfig, ascend  # noqa: E402
from jaxviz.model import layers  # noqa: E402


def winograd_flops(layer: str, size: int, n: int, steps: int) -> float:
    """Own multiplies (2 flops each) of the Winograd convs below ``layer``: forward and input gradient."""
    total, s = 0.0, size
    for l in layers():
        if l.name == layer:
            break
        if l.kind == "pool":
            s //= 2
        elif l.in_channels >= 16:
            tiles = (-(-s // 4)) ** 2
            total += 2 * 2 * 36 * tiles * l.in_channels * l.out_channels
    return total * n * steps


CUSTOM = "custom calls (Winograd, oneDNN)"
CONTAINERS = ("while", "conditional", "call")  # their events span their body's ops, counted on their own


def kind(name: str) -> str:
    """An op's kind: its name less the number XLA gives each instance; every custom call is one kind."""
    if name.startswith(("ffi_call", "custom-call", "custom_call")):
        return CUSTOM
    return re.sub(r"[.\d]+$", "", name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", default="block3_conv1")
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    args = ap.parse_args()
    params = load_params()
    cfg = AscentConfig(size=args.size, steps=args.steps, precision=args.precision)
    run = lambda: jax.block_until_ready(ascend(params, args.layer, range(args.filters), config=cfg, batch_size=args.filters))
    run()
    with tempfile.TemporaryDirectory() as d:  # the trace is read here and not kept
        t0 = time.perf_counter()
        with jax.profiler.trace(d, create_perfetto_trace=True):
            run()
        wall = time.perf_counter() - t0
        (path,) = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    by_op, by_kind = collections.Counter(), collections.Counter()
    for e in events:
        # XLA's ops have lower-case names (fusion.3, ffi_call.12); the runtime's and Python's do not
        if e.get("ph") != "X" or not e["name"][:1].islower() or e["name"].startswith("end: "):
            continue
        if kind(e["name"]) in CONTAINERS:
            continue
        by_op[e["name"]] += e["dur"] / 1e3
        by_kind[kind(e["name"])] += e["dur"] / 1e3
    total = sum(by_kind.values())
    print(f"{args.layer}: {args.filters} filters x {args.steps} steps, {args.size} px; wall {wall:.2f} s "
          f"(profiled), ops {total / 1e3:.2f} s = {total / args.steps:.1f} ms per step")
    for k, ms in by_kind.most_common(args.top):
        print(f"  {ms / args.steps:8.1f} ms/step  {100 * ms / total:5.1f} %  {k}")
    wino = by_kind[CUSTOM]
    if wino:
        gf = winograd_flops(args.layer, args.size, args.filters, args.steps) / (wino / 1e3) / 1e9
        print(f"  custom calls: {gf:.0f} GFLOP/s in Winograd's own multiplies (all their time counted)")
    print("largest single ops:")
    for k, ms in by_op.most_common(args.top):
        print(f"  {ms / args.steps:8.1f} ms/step  {100 * ms / total:5.1f} %  {k}")


if __name__ == "__main__":
    main()
