"""The bfloat16 mode's convs against each other and float32, whole grids in one process.

    .venv/bin/python bench/engine/bf16_modes.py [--layers block2_conv1,block3_conv1] [--filters 16] [--rounds 4]

Runs the seed ascent (64 px, 40 steps) for each layer in three settings, interleaved (the
order reversed every other round, after one untimed call each): float32 (the default),
bfloat16 as ``ops.choice`` picks it on this CPU, and bfloat16 with ``--conv onednn`` (oneDNN's
direct bf16 conv). Prints seconds per grid (median), the paired medians of the ratios, each
bfloat16 setting's image drift from float32 (mean |difference| of the uint8 tiles, grey levels)
and the median relative difference of the final losses. Needs oneDNN and a CPU with native bf16.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxviz import ops  # noqa: E402
from jaxviz.api import load_params  # noqa: E402
from jaxviz.ascent import AscentConfig, ascend  # noqa: E402
from jaxviz.image import deprocess_batch  # noqa: E402

SETTINGS = {"float32": dict(precision="float32"), "bf16_auto": dict(precision="bfloat16"),
            "bf16_onednn": dict(precision="bfloat16", conv="onednn")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="block2_conv1,block3_conv1,block4_conv1")
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    params = load_params()
    print(f"bfloat16 auto here: {ops.choice('bfloat16')[1]}; {args.filters} filters, 64 px, 40 steps")

    def run(layer, name):
        cfg = AscentConfig(size=64, steps=40, **SETTINGS[name])
        return jax.block_until_ready(ascend(params, layer, range(args.filters), config=cfg, batch_size=16))

    for layer in args.layers.split(","):
        first = {name: run(layer, name) for name in SETTINGS}
        images = {name: np.asarray(deprocess_batch(r.images)).astype(float) for name, r in first.items()}
        times = {name: [] for name in SETTINGS}
        for i in range(args.rounds):
            for name in (list(SETTINGS) if i % 2 == 0 else list(SETTINGS)[::-1]):
                t = time.perf_counter()
                run(layer, name)
                times[name].append(time.perf_counter() - t)
        t = {name: np.array(v) for name, v in times.items()}
        loss32 = np.asarray(first["float32"].losses)
        print(f"{layer}: " + ", ".join(f"{n} {np.median(v):.2f} s" for n, v in t.items()))
        print(f"  paired medians: auto / onednn {np.median(t['bf16_auto'] / t['bf16_onednn']):.3f}, "
              f"auto / float32 {np.median(t['bf16_auto'] / t['float32']):.3f}")
        for name in ("bf16_auto", "bf16_onednn"):
            loss = np.asarray(first[name].losses)
            ok = loss32 != 0
            print(f"  {name}: drift {np.mean(np.abs(images[name] - images['float32'])):.2f} grey levels, losses "
                  f"{np.median(np.abs(loss[ok] - loss32[ok]) / np.abs(loss32[ok])):.4f} relative (median)")


if __name__ == "__main__":
    main()
