"""bf16 loss deviation vs f32 at a layer for BF16_MIN_IN_CHANNELS = 128 and 256 (40 steps, 64 filters)."""
import os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__)); sys.path.insert(0, os.path.dirname(os.path.dirname(HERE))); sys.path.insert(0, HERE)
import jax, jax.numpy as jnp, numpy as np
from jaxviz import ops, ascent
from jaxviz.ascent import AscentConfig, ascend
from jaxviz.convert import load_keras_h5
from variants import deprocess
layer = sys.argv[1] if len(sys.argv) > 1 else "block4_conv1"
params = jax.tree.map(jnp.asarray, load_keras_h5(os.path.join(HERE, "../../weights/vgg16_imagenet_notop.h5")))
t0 = time.perf_counter(); f32 = ascend(params, layer, range(64)); f32.images.block_until_ready()
print(f"f32 {time.perf_counter() - t0:.1f} s", flush=True)
for th in [int(t) for t in (sys.argv[2] if len(sys.argv) > 2 else '128,256').split(',')]:
    ops.BF16_MIN_IN_CHANNELS = th; ops._CONVS.clear(); jax.clear_caches()
    t0 = time.perf_counter(); b = ascend(params, layer, range(64), config=AscentConfig(precision="bfloat16")); b.images.block_until_ready()
    dev = np.abs(np.asarray(b.losses) - np.asarray(f32.losses)) / np.maximum(np.abs(np.asarray(f32.losses)), 1e-6)
    grey = np.abs(deprocess(np.asarray(b.images)).astype(float) - deprocess(np.asarray(f32.images)).astype(float)).mean()
    print(f"threshold {th}: {time.perf_counter() - t0:.1f} s (incl. compile) loss dev max {100*dev.max():.2f}% mean {100*dev.mean():.2f}% >2%: {np.nonzero(dev > .02)[0].tolist()} grey {grey:.2f}", flush=True)
