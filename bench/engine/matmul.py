"""Best f32 / bf16 matmul GFLOP/s on this machine: numpy and jax (2 threads)."""
import time, sys
import numpy as np
import jax, jax.numpy as jnp
from jax import lax

def best(f, reps=5):
    f(); t = []
    for _ in range(reps):
        t0 = time.perf_counter(); f(); t.append(time.perf_counter() - t0)
    return min(t)

def rates(n=2048):
    fl = 2 * n**3
    a = np.random.rand(n, n).astype(np.float32); b = np.random.rand(n, n).astype(np.float32)
    out = {"numpy f32": fl / best(lambda: a @ b) / 1e9}
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(lambda x, y: x @ y)
    out["jax f32"] = fl / best(lambda: f(ja, jb).block_until_ready()) / 1e9
    g = jax.jit(lambda x, y: lax.dot(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16), preferred_element_type=jnp.float32))
    ab, bb = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    g2 = jax.jit(lambda x, y: lax.dot(x, y, preferred_element_type=jnp.float32))
    out["jax bf16->f32"] = fl / best(lambda: g2(ab, bb).block_until_ready()) / 1e9
    return out

if __name__ == "__main__":
    for k, v in rates(int(sys.argv[1]) if len(sys.argv) > 1 else 2048).items():
        print(f"{k:16s} {v:8.1f} GFLOP/s")
