"""A conv layer's custom calls with bias, relu and pool fused in, against the same ops apart.

    .venv/bin/python bench/engine/fused_layers.py [--shape N,H,C,O] [--rounds 30]

For one layer shape (default: block1_conv2's, 16 images at 64 px), times in one interleaved
loop: the plain Winograd call; the forward with bias + relu (and + the 2x2 max pool) fused
into its output transform (``onednn.winograd4_bias_relu``; with the pool, the pool and its hits
in place of the output) against the plain call followed by XLA's ops, and with the layer
before's bias and relu made as it reads its input (``x_bias``); the input gradient with the
relu's (and pool's, from the hits) gradient fused into its input transform
(``winograd4_relu_grad``, ``winograd4_pool_grad``) against XLA's ops then the plain call. Prints
each one's min and median ms and checks the fused results' bits against the apart.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxviz import onednn, ops  # noqa: E402
from jaxviz.model import max_pool2  # noqa: E402


def candidates(n: int, h: int, c: int, o: int) -> dict:
    """name -> (jitted function, its arguments), the fused and apart forms in pairs."""
    k = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(k[0], (n, h, h, c))
    kernel = jax.random.normal(k[1], (3, 3, c, o)) / (3.0 * c**0.5)
    b = jax.random.normal(k[2], (o,)) * 0.1
    u, u_flip = ops.winograd_kernel(kernel, 4), ops.winograd_kernel(ops._flip(kernel), 4)
    b0 = jnp.linspace(-0.5, 0.5, c)
    y, mask = jax.jit(onednn.winograd4_bias_relu)(x, u, b)
    pooled, hits = jax.jit(lambda x: onednn.winograd4_bias_relu(x, u, b, pool=True))(x)
    g, gp = jax.random.normal(k[3], y.shape), jax.random.normal(k[4], pooled.shape)

    def relu_apart(x, u, b):
        return jax.nn.relu(onednn.winograd4(x, u) + b)

    def pool_apart(x, u, b):
        y = relu_apart(x, u, b)
        return max_pool2(y), ops.pool_hits(y)

    def pool_grad_apart(y, gp, u):
        return onednn.winograd4(jnp.where(y > 0, jax.vjp(max_pool2, y)[1](gp)[0], 0), u)

    pool_grad = lambda hits, gp, u: onednn.winograd4_pool_grad(hits, gp, u, size=(h, h))

    return {
        "plain call": (jax.jit(onednn.winograd4), (x, u)),
        "bias+relu apart": (jax.jit(relu_apart), (x, u, b)),
        "bias+relu fused": (jax.jit(onednn.winograd4_bias_relu), (x, u, b)),
        "bias+relu+pool apart": (jax.jit(pool_apart), (x, u, b)),
        "bias+relu+pool fused": (jax.jit(lambda x, u, b: onednn.winograd4_bias_relu(x, u, b, pool=True)), (x, u, b)),
        "input relu, bias+relu+pool apart": (jax.jit(lambda x, u, b: pool_apart(jax.nn.relu(x + b0), u, b)), (x, u, b)),
        "input relu, bias+relu+pool fused": (
            jax.jit(lambda x, u, b: onednn.winograd4_bias_relu(x, u, b, pool=True, x_bias=b0)), (x, u, b)),
        "relu grad apart": (jax.jit(lambda y, g, u: onednn.winograd4(jnp.where(y > 0, g, 0), u)), (y, g, u_flip)),
        "relu grad fused": (jax.jit(onednn.winograd4_relu_grad), (mask, g, u_flip)),
        "pool+relu grad apart": (jax.jit(pool_grad_apart), (y, gp, u_flip)),
        "pool+relu grad fused": (jax.jit(pool_grad), (hits, gp, u_flip)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="16,64,64,64", help="N,H,C,O: images, size, in and out channels")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    if not onednn.available():
        sys.exit("oneDNN is not available here: nothing to compare")
    n, h, c, o = (int(v) for v in args.shape.split(","))
    fns = candidates(n, h, c, o)
    out = {name: jax.block_until_ready(f(*a)) for name, (f, a) in fns.items()}
    times = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, (f, a) in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            times[name].append(time.perf_counter() - t)
    print(f"{n} images, {h} px, {c} -> {o} channels; {args.rounds} interleaved rounds")
    print("| call | min ms | median ms | vs plain call (min) | same bits as apart |")
    print("|---|---:|---:|---:|---|")
    plain = min(times["plain call"])
    for name, ts in times.items():
        same = ""
        if name.endswith("fused"):
            pairs = zip(jax.tree.leaves(out[name]), jax.tree.leaves(out[name.replace("fused", "apart")]))
            same = "yes" if all(np.array_equal(a, b) for a, b in pairs) else "NO"
        print(f"| {name} | {1e3 * min(ts):.2f} | {1e3 * np.median(ts):.2f} | {min(ts) / plain:.2f} | {same} |")


if __name__ == "__main__":
    main()
