"""How XLA:CPU runs the conv pieces of the ascent on this machine: YNNPACK on/off, batched dots, bf16.

    .venv/bin/python bench/engine/xla_paths.py            # all three tables, ~3 min
    .venv/bin/python bench/engine/xla_paths.py --only bf16

* ``convs``: forward + input gradient of XLA's conv and of Winograd F(4x4, 3x3) (16 images),
  compiled with the default fusions and with YNNPACK off (``compiler_options``, per jit);
  direct-conv GFLOP/s.
* ``dots``: the 36 batched matmuls of Winograd at VGG's shapes, default and YNNPACK off.
* ``bf16``: forward bf16 forms of the conv (im2col cast last, row-shifted, nine taps; f32
  accumulation) against float32 Winograd with a prepared kernel; direct-conv GFLOP/s.

Every figure is a median of --reps calls after one warm-up, in one process: compare within a
table, not across sessions (bench/README.md, "Intel Xeon with AMX, second session").
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxviz import ops  # noqa: E402

OPTIONS = {"default": None, "ynn off": {"xla_cpu_experimental_ynn_fusion_type": ""}}
CONV_SHAPES = ((64, 64, 64), (32, 128, 128), (16, 256, 256), (8, 512, 512))  # px, in, out


def timed(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def data(px, cin, cout, n=16):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((n, px, px, cin), np.float32))
    k = jnp.asarray(rng.normal(0, 0.05, (3, 3, cin, cout)).astype(np.float32))
    return x, k, 2.0 * n * px * px * cin * cout * 9


def convs(reps):
    for px, cin, cout in CONV_SHAPES[:3]:
        x, k, flops = data(px, cin, cout)
        row = []
        for name in ("xla", "wino4"):
            conv = ops.VARIANTS[name]
            for label, opts in OPTIONS.items():
                g = jax.jit(jax.grad(lambda x, k: jnp.sum(jax.nn.relu(conv(x, k)) ** 2)), compiler_options=opts)
                row.append(f"{name} {label} {2 * flops / timed(g, x, k, reps=reps) / 1e9:5.0f}")
        print(f"conv fwd+grad {px}px {cin}->{cout}: " + " | ".join(row), flush=True)


def dots(reps):
    rng = np.random.default_rng(0)
    for m, c, o in ((4096, 64, 64), (1024, 128, 128), (256, 256, 256)):
        a = jnp.asarray(rng.random((36, m, c), np.float32))
        b = jnp.asarray(rng.random((36, c, o), np.float32))
        row = []
        for label, opts in OPTIONS.items():
            f = jax.jit(lambda a, b: jnp.einsum("pmc,pco->pmo", a, b), compiler_options=opts)
            row.append(f"{label} {2 * 36 * m * c * o / timed(f, a, b, reps=reps) / 1e9:5.0f}")
        print(f"batched dot 36x{m}x{c}x{o}: " + " | ".join(row), flush=True)


def _dot(a, b):
    return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def im2col_cast_last(x, k):
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    p = jnp.concatenate([xp[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=-1)
    return _dot(p.astype(jnp.bfloat16), k.reshape(9 * c, -1).astype(jnp.bfloat16))


def bf16(reps):
    forms = {"im2col bf16": jax.jit(im2col_cast_last), "rows bf16": jax.jit(ops.VARIANTS["rows_bf16"]),
             "taps bf16": jax.jit(ops.VARIANTS["taps_bf16"])}
    wino = jax.jit(ops.VARIANTS["wino4"])
    for px, cin, cout in CONV_SHAPES:
        x, k, flops = data(px, cin, cout)
        row = [f"wino4 f32 (prepared) {flops / timed(wino, x, jax.jit(ops.prepare)(k), reps=reps) / 1e9:5.0f}"]
        row += [f"{name} {flops / timed(f, x, k, reps=reps) / 1e9:5.0f}" for name, f in forms.items()]
        print(f"forward {px}px {cin}->{cout}: " + " | ".join(row), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("convs", "dots", "bf16"), default=None)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    print(f"jax {jax.__version__}; direct-conv / matmul GFLOP/s, median of {a.reps}", flush=True)
    for name, fn in (("convs", convs), ("dots", dots), ("bf16", bf16)):
        if a.only in (None, name):
            fn(a.reps)


if __name__ == "__main__":
    main()
