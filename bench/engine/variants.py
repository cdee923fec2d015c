"""Compare conv formulations / batch sizes for the seed grid, interleaved in one process.

    .venv/bin/python bench/engine/variants.py --layers block3_conv1 --steps 10 \
        --variants xla:xla rows_f32:rows_f32 --batch 64 --reps 2

A variant is SMALL:LARGE (ops.VARIANTS names): SMALL for layers with fewer than
ops.BF16_MIN_IN_CHANNELS input channels, LARGE for the others; ``@B`` appended sets
the batch per chunk (e.g. xla:xla@16) and ``/T`` before it moves the threshold to T
input channels (e.g. xla:wino4/16); ``+noynn`` at the end compiles with
XLA:CPU's YNNPACK fusions off (OPTIONS). Each variant is compiled first (compile time
reported apart), then the reps run A B C A B C ... so that a shared, noisy CPU
affects all variants alike. Seconds per 64-filter grid are reported as measured at
--steps and scaled to 40 steps (x 40/steps), with GFLOP/s of the full-grid FLOPs
(4 x conv MACs x 64 x 40) and the best f32 matmul rate measured in the same run.
With --check, the final losses and images of each variant are compared with the
first variant's (same start images): max relative loss deviation, mean |grey| diff.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxviz import ascent, ops  # noqa: E402
from jaxviz.convert import load_keras_h5  # noqa: E402
from jaxviz.model import layers  # noqa: E402

TFLOP = {}


def grid_flops(layer, size=64, n=64, steps=40):
    macs, s = 0, size
    for l in layers():
        if l.kind == "pool":
            s //= 2
        else:
            macs += s * s * 9 * l.in_channels * l.out_channels
        if l.name == layer:
            break
    return 4.0 * macs * n * steps


def deprocess(x):
    """The book's deprocess_image, as numpy (uint8)."""
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    x = x / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-5) * 0.1 + 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


# Compiler options a variant can name after "+" (e.g. xla:xla@16+noynn).
OPTIONS = {"": None, "noynn": {"xla_cpu_experimental_ynn_fusion_type": ""}}


def make_runner(params, layer, variant, steps, size=64, n=64):
    variant, _, opts = variant.partition("+")
    spec, _, b = variant.partition("@")
    b = int(b) if b else n
    spec, _, thr = spec.partition("/")
    small, _, large = spec.partition(":")
    large = large or small
    precision = "bfloat16" if "bf16" in spec else "float32"
    conv = ops.dispatch(small, large, int(thr) if thr else None)
    fs = jnp.arange(n, dtype=jnp.int32)
    x0 = ascent.start_images(jax.random.key(0), layer, range(n), size)
    saved = ops.conv_for
    ops.conv_for = lambda p, c=0, **_: conv
    try:
        one = lambda p, x, f: ascent.ascend_one(p, x, f, steps, 1.0, layer, precision=precision)
        fn = jax.jit(lambda p, x, f: jax.vmap(lambda xi, fi: one(p, xi, fi))(x, f), compiler_options=OPTIONS[opts])
        t0 = time.perf_counter()
        exe = fn.lower(params, x0[:b], fs[:b]).compile()
        compile_s = time.perf_counter() - t0
    finally:
        ops.conv_for = saved

    def run():
        outs = [exe(params, x0[i : i + b], fs[i : i + b]) for i in range(0, n, b)]
        jax.block_until_ready(outs)
        return np.concatenate([np.asarray(o[0]) for o in outs]), np.concatenate([np.asarray(o[1]) for o in outs])

    return run, compile_s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="block1_conv1,block2_conv1,block3_conv1,block4_conv1")
    ap.add_argument("--variants", nargs="+", default=["xla:xla"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--matmul", action="store_true", help="measure matmul rates first")
    args = ap.parse_args()
    params = jax.tree.map(jnp.asarray, load_keras_h5(os.path.join(os.path.dirname(__file__), "../../weights/vgg16_imagenet_notop.h5")))
    print(f"jax {jax.__version__}  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}  steps={args.steps}", flush=True)
    best_mm = None
    if args.matmul:
        import matmul
        r = matmul.rates(2048)
        best_mm = max(r["numpy f32"], r["jax f32"])
        print("  ".join(f"{k} {v:.0f}" for k, v in r.items()), "GFLOP/s", flush=True)
    for layer in args.layers.split(","):
        runners, times, results = {}, {v: [] for v in args.variants}, {}
        for v in args.variants:
            runners[v], c = make_runner(params, layer, v, args.steps)
            results[v] = runners[v]()  # warm-up
            print(f"{layer} {v:24s} compile {c:6.1f} s", flush=True)
        for _ in range(args.reps):
            for v in args.variants:
                t0 = time.perf_counter()
                runners[v]()
                times[v].append(time.perf_counter() - t0)
        base = args.variants[0]
        for v in args.variants:
            t = min(times[v]) * 40 / args.steps
            gf = grid_flops(layer) / t / 1e9
            extra = f"  {100 * gf / best_mm:5.1f}% of matmul" if best_mm else ""
            ratio = min(times[v]) / min(times[base])
            med = float(np.median(times[v])) * 40 / args.steps
            mratio = np.median(times[v]) / np.median(times[base])
            line = (f"{layer} {v:24s} {t:8.2f} s/grid(40) [min of {args.reps}; median {med:.2f}, x{mratio:5.2f}; all "
                    f"{' '.join(f'{x * 40 / args.steps:.1f}' for x in times[v])}]  x{ratio:5.2f} vs {base}  {gf:6.1f} GFLOP/s{extra}")
            if args.check and v != base:
                li, lb = results[v][1], results[base][1]
                dev = np.abs(li - lb) / np.maximum(np.abs(lb), 1e-6)
                grey = np.abs(deprocess(results[v][0]).astype(float) - deprocess(results[base][0]).astype(float)).mean()
                line += f"  loss dev max {100 * dev.max():.2f}% mean {100 * dev.mean():.2f}%  grey {grey:.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
