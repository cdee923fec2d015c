"""Where a seed grid's time goes on this CPU: each piece of each layer, timed on its own.

    .venv/bin/python bench/engine/profile_layers.py --batch 16 --reps 5

For every conv layer up to block4_conv1 at the seed's shapes (64 px input, ``--batch``
images), each piece is jit-compiled alone and timed (median of ``--reps``, after
one warm-up), interleaved piece by piece so a shared CPU affects all alike:

* ``xla``: XLA's conv, forward; ``wino4``: the Winograd F(4x4, 3x3) conv, forward, its kernel
  transformed ahead (``ops.prepare``), as in the ascent;
* Winograd's pieces: ``in``: pad + input transform (x -> V); ``mm``: the 36 batched
  matmuls (V, U -> M); ``out``: the output transform (M -> y); ``ker``: the kernel
  transform (g -> U);
* ``relu``/``pool``: relu + its gradient, 2x2 max-pool (model.max_pool2) + its gradient, on the
  layer's output.

Each ascent step runs every layer below the target forward and backward (the input
gradient is the same conv on the flipped kernel, so about 2x the forward), so the
"per grid" column is 2 x (forward) x steps x (64 / batch) chunks. Also prints the
same run's 2048^2 f32 matmul rate (numpy and jax, best of 5) and each piece's
GFLOP/s where it has multiplies.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from jaxviz import ops  # noqa: E402
from jaxviz.model import layers, max_pool2  # noqa: E402


def wino_pieces(m=4):
    """The Winograd conv split in its three stages (the same code as ops.conv3x3_winograd)."""
    bt, at = ops._tile_transforms(m)
    a = m + 2

    def inp(x):
        n, h, w, c = x.shape
        th, tw = -(-h // m), -(-w // m)
        xp = jnp.pad(x, ((0, 0), (1, (th + 1) * m - h - 1), (1, (tw + 1) * m - w - 1), (0, 0)))
        xr = xp.reshape(n, th + 1, m, (tw + 1) * m, c)
        rows = [xr[:, i // m: i // m + th, i % m] for i in range(a)]
        r = jnp.stack(bt(rows)).reshape(a, n, th, tw + 1, m, c)
        cols = [r[:, :, :, j // m: j // m + tw, j % m] for j in range(a)]
        v = jnp.stack(bt(cols), axis=1)
        return v.reshape(a * a, n * th * tw, c)

    def mm(v, u):
        return lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))

    def out(mmv, shape):
        n, h, w, o = shape
        th, tw = -(-h // m), -(-w // m)
        mmv = mmv.reshape(a, a, n, th, tw, o)
        s_ = at([mmv[p] for p in range(a)])
        y = jnp.stack([jnp.stack(at([su[q] for q in range(a)]), axis=3) for su in s_], axis=2)
        return y.reshape(n, th * m, tw * m, o)[:, :h, :w]

    return inp, mm, out


def timeit(fns, reps):
    """{name: median seconds}, the callables run interleaved rep by rep after a warm-up."""
    for f in fns.values():
        jax.block_until_ready(f())
    ts = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--upto", default="block4_conv1")
    args = ap.parse_args()
    import matmul
    r = matmul.rates(2048)
    print("  ".join(f"{k} {v:.0f}" for k, v in r.items()), "GFLOP/s (2048^2, best of 5)", flush=True)
    inp, mm, out = wino_pieces(4)
    key = jax.random.key(0)
    scale = 2 * args.steps * 64 / args.batch  # fwd + bwd, per grid of 64 filters
    s, b = args.size, args.batch
    tot = {}
    print(f"batch {b}, {args.size} px; ms per call (median of {args.reps}); 'grid s' = 2 x call x "
          f"{args.steps} steps x {64 // b} chunks", flush=True)
    for l in layers():
        if l.kind == "pool":
            s //= 2
            continue
        if l.name == args.upto:
            break
        cin, cout = l.in_channels, l.out_channels
        x = jax.random.normal(key, (b, s, s, cin), jnp.float32)
        k = jax.random.normal(key, (3, 3, cin, cout), jnp.float32) * 0.05
        kp = ops.prepare(k)  # as the ascent runs it: the kernel transformed once, ahead ("ker" times that)
        u = kp.u
        v = jax.jit(inp)(x)
        mmv = jax.jit(mm)(v, u)
        y = jax.random.normal(key, (b, s, s, cout), jnp.float32)
        jitted = {
            "xla": jax.jit(ops.conv3x3_xla), "wino4": jax.jit(lambda a, c: ops.conv3x3_winograd(a, c, 4)),  # c prepared
            "in": jax.jit(inp), "mm": jax.jit(mm), "out": jax.jit(out, static_argnums=1),
            "ker": jax.jit(lambda c: ops.winograd_kernel(c, 4)),
            "relu": jax.jit(jax.grad(lambda t: jax.nn.relu(t).sum())),
            "pool": jax.jit(jax.grad(lambda t: max_pool2(t).sum())),
        }
        fx = {
            "xla": lambda: jitted["xla"](x, k), "wino4": lambda: jitted["wino4"](x, kp),
            "in": lambda: jitted["in"](x), "mm": lambda: jitted["mm"](v, u),
            "out": lambda: jitted["out"](mmv, (b, s, s, cout)), "ker": lambda: jitted["ker"](k),
            "relu": lambda: jitted["relu"](y), "pool": lambda: jitted["pool"](y),
        }
        t = timeit(fx, args.reps)
        mm_flops = 2.0 * v.shape[0] * v.shape[1] * cin * cout
        direct = 2.0 * b * s * s * 9 * cin * cout
        parts = "  ".join(f"{n} {1e3 * t[n]:7.2f}" for n in fx)
        print(f"{l.name:13s} {s:3d}px {cin:3d}->{cout:3d}  {parts}  | mm {mm_flops / t['mm'] / 1e9:5.0f} GF/s, "
              f"wino4 {direct / t['wino4'] / 1e9:5.0f} direct-GF/s, xla {direct / t['xla'] / 1e9:5.0f} GF/s; "
              f"in+out {100 * (t['in'] + t['out']) / t['wino4']:.0f}% of wino4, mm {100 * t['mm'] / t['wino4']:.0f}%",
              flush=True)
        for n in fx:
            tot.setdefault(n, {})[l.name] = t[n] * scale
    print("grid s (2 x forward x steps x chunks), by layer:")
    for n, d in tot.items():
        print(f"  {n:6s} " + "  ".join(f"{k} {v:6.2f}" for k, v in d.items()) + f"  sum {sum(d.values()):6.2f}")


if __name__ == "__main__":
    main()
