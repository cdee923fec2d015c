"""Microbenchmark: one 3x3 conv per VGG16 layer shape (batch 64, 64 px input) under the
current XLA_FLAGS; prints GFLOP/s per shape. Run it under alternating envs via a loop.
Kernels are transformed ahead (ops.prepare), as the ascent does once per chunk: timing the
Winograd kernel transform in every call made Winograd look slow at 8 and 16 px."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import jax, jax.numpy as jnp
from jaxviz import ops

SHAPES = [(64, 3, 64), (64, 64, 64), (32, 64, 128), (32, 128, 128), (16, 128, 256), (16, 256, 256), (8, 256, 512), (8, 512, 512)]
names = sys.argv[1].split(",") if len(sys.argv) > 1 else ["xla"]
b = int(sys.argv[2]) if len(sys.argv) > 2 else 64
tag = os.environ.get("XLA_FLAGS", "") or "default"
for s, ci, co in SHAPES:
    x = jax.random.normal(jax.random.key(0), (b, s, s, ci)); k = ops.prepare(jax.random.normal(jax.random.key(1), (3, 3, ci, co)))
    fl = 2 * b * s * s * 9 * ci * co
    row = []
    for n in names:
        f = jax.jit(lambda x, k, n=n: ops.VARIANTS[n](x, k))
        f(x, k).block_until_ready(); t = []
        for _ in range(3):
            t0 = time.perf_counter(); f(x, k).block_until_ready(); t.append(time.perf_counter() - t0)
        row.append(f"{n} {fl / min(t) / 1e9:6.1f}")
    print(f"{tag[-30:]:30s} {s:3d}px {ci:3d}->{co:3d}  " + "  ".join(row), flush=True)
