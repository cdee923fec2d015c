"""Images/s of the dataset-examples pass (jaxviz.examples.collect) against the model's plain forward.

Both at the same batch and size, in one process, interleaved: forward, pass, forward, pass.
The pass includes decoding, resizing, the forward pass, the per-channel max and the top-k
merge (its compile, the receptive fields and the thumbnails are timed apart).

    python bench/examples_rate.py [--images N] [--batch 16] [--size 224] [--layers block3_conv1,block4_conv1]
"""
import argparse
import os
import tempfile
import time

import jax
import numpy as np
from PIL import Image

from jaxviz import examples, models


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--layers", default="block3_conv1,block4_conv1")
    a = p.parse_args()
    layers = tuple(a.layers.split(","))
    model = models.vgg16()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.images):
            Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(
                os.path.join(d, f"{i:04d}.jpg"), quality=90)
        fwd = jax.jit(jax.vmap(lambda x: model.activations(model.params, model.preprocess(x), layers)))
        x = jax.numpy.asarray(rng.random((a.batch, a.size, a.size, 3), np.float32))
        jax.block_until_ready(fwd(x))
        cfg = examples.Config(size=a.size, batch=a.batch)

        def forward_rate():
            t = time.perf_counter()
            for _ in range(a.images // a.batch):
                jax.block_until_ready(fwd(x))
            return a.images // a.batch * a.batch / (time.perf_counter() - t)

        def pass_rate():
            marks = []
            t = time.perf_counter()
            examples.collect(model, d, layers, cfg, progress=lambda done, total: marks.append((done, time.perf_counter())))
            total = time.perf_counter() - t
            (d0, t0), (d1, t1) = marks[1], marks[-1]  # from after the first batch (compile) to the end
            return (d1 - d0) / (t1 - t0), total

        pass_rate()  # compile
        for r in range(2):
            f = forward_rate()
            pr, total = pass_rate()
            print(f"round {r}: forward {f:.1f} img/s, pass {pr:.1f} img/s ({pr / f:.2f}x), "
                  f"collect total {total:.1f} s for {a.images} images (receptive fields and thumbnails included)")


if __name__ == "__main__":
    main()
