"""Full 40-step grids through the public API, float32 and bfloat16, interleaved per layer.

    .venv/bin/python bench/engine/final.py [--layers block1_conv1,...] [--batch N]

Per layer: ascend(params, layer, range(64)) in float32 then bfloat16 (same start
images), each timed after a compile call on 1 step; prints seconds per grid,
GFLOP/s of the grid's FLOPs against the best f32 matmul rate measured first, the
bfloat16 final-loss deviation from float32 and the mean grey-level difference of the
deprocessed images.
"""
import argparse, os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE))); sys.path.insert(0, HERE)
import jax, jax.numpy as jnp, numpy as np
from jaxviz.ascent import AscentConfig, ascend
from jaxviz.convert import load_keras_h5
import matmul
from variants import grid_flops, deprocess

ap = argparse.ArgumentParser()
ap.add_argument("--layers", default="block1_conv1,block2_conv1,block3_conv1,block4_conv1")
ap.add_argument("--batch", type=int, default=None)
ap.add_argument("--steps", type=int, default=40)
a = ap.parse_args()
params = jax.tree.map(jnp.asarray, load_keras_h5(os.path.join(HERE, "../../weights/vgg16_imagenet_notop.h5")))
r = matmul.rates(2048); best = max(r["numpy f32"], r["jax f32"])
print(f"jax {jax.__version__} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; matmul " + ", ".join(f"{k} {v:.0f}" for k, v in r.items()) + " GFLOP/s", flush=True)
tot = {"float32": 0.0, "bfloat16": 0.0}
for layer in a.layers.split(","):
    res = {}
    for prec in ("float32", "bfloat16"):
        ascend(params, layer, range(64), config=AscentConfig(steps=1, precision=prec), batch_size=a.batch).images.block_until_ready()
        cfg = AscentConfig(steps=a.steps, precision=prec)
        t0 = time.perf_counter()
        out = ascend(params, layer, range(64), config=cfg, batch_size=a.batch)
        out.images.block_until_ready()
        t = time.perf_counter() - t0
        tot[prec] += t
        res[prec] = (np.asarray(out.images), np.asarray(out.losses))
        gf = grid_flops(layer, steps=a.steps) / t / 1e9
        print(f"{layer} {prec:8s} {t:7.2f} s/grid  {gf:6.1f} GFLOP/s = {100 * gf / best:5.1f}% of best f32 matmul", flush=True)
    lf, lb = res["float32"][1], res["bfloat16"][1]
    dev = np.abs(lb - lf) / np.maximum(np.abs(lf), 1e-6)
    grey = np.abs(deprocess(res["bfloat16"][0]).astype(float) - deprocess(res["float32"][0]).astype(float)).mean()
    print(f"{layer} bf16 vs f32: final loss dev max {100 * dev.max():.2f}% (filters >2%: {int((dev > 0.02).sum())}, "
          f"loss at those {np.round(lf[dev > 0.02], 2).tolist()}) mean {100 * dev.mean():.3f}%; mean |grey| diff {grey:.2f}", flush=True)
print(f"total f32 {tot['float32']:.1f} s  bf16 {tot['bfloat16']:.1f} s", flush=True)
