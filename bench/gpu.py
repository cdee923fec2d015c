"""jaxviz on whatever accelerator JAX sees: the seed's four grids and a full VGG16 atlas pass.

Run once where a GPU is lent (CI never runs benchmarks):

    PYTHONPATH=. python bench/gpu.py --markdown-out gpu.md

Prints seconds per grid (first call = compile + run, then the best and median of the
next rounds) for block1..4_conv1 at 64 px, 40 steps, per precision and conv
algorithm (``--modes``; "auto" is XLA's conv off CPU), and with ``--atlas`` the time to render all
4,224 conv filters of VGG16 at 64 px, 40 steps (the atlas's work, without writing the site), twice:
cold (compiles included) and warm (compiled), with TFLOP/s in direct-conv equivalents.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

SEED_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--modes", default="float32:auto,bfloat16:auto,float32:winograd",
                   help="comma-separated PRECISION:CONV pairs (CONV: auto, winograd or xla)")
    p.add_argument("--atlas", action="store_true", help="also time every filter of every conv layer")
    p.add_argument("--max-gb", type=float, default=16.0, help="memory bound per chunk for the atlas pass")
    p.add_argument("--markdown-out", default=None)
    a = p.parse_args(argv)

    import jax

    import numpy as np

    import jaxviz
    from jaxviz.ascent import AscentConfig, ascend
    from jaxviz.model import conv_layers, layer_info

    dev = jax.devices()[0]
    lines = [f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, {len(jax.devices())} device(s)", ""]
    t_load, params = timed(lambda: jaxviz.load_params())
    lines.append(f"load_params: {t_load:.2f} s (first, includes imports of h5py and device transfer)")
    lines += ["", "| layer | precision | conv | first call s | best s | median s | mean final loss |",
              "|---|---|---|---|---|---|---|"]
    totals = {}
    for mode in a.modes.split(","):
        prec, _, conv = mode.partition(":")
        conv = conv or "auto"
        for layer in SEED_LAYERS:
            config = AscentConfig(size=a.size, steps=a.steps, precision=prec, conv=conv)
            run = lambda: jax.block_until_ready(ascend(params, layer, range(64), config=config))
            first, _ = timed(run)
            times, losses = [], None
            for _ in range(a.rounds):
                t, (_, losses) = timed(run)
                losses = np.asarray(losses)
                times.append(t)
            totals[mode] = totals.get(mode, 0.0) + min(times)
            lines.append(f"| {layer} | {prec} | {conv} | {first:.2f} | {min(times):.3f} | {statistics.median(times):.3f} | {losses.mean():.1f} |")
            print(lines[-1], flush=True)
    lines.append("")
    for mode, t in totals.items():
        lines.append(f"four grids, {mode}: {t:.2f} s (sum of best)")
    if a.atlas:
        # twice in one process: the first pass compiles each layer's program, the second runs them
        # compiled (what a warm persistent compilation cache gives, less reading it back)
        from _common import grid_flops

        layers = conv_layers()
        flops = sum(grid_flops(l, a.size, layer_info(l).out_channels, a.steps) for l in layers)
        total_filters = sum(layer_info(l).out_channels for l in layers)
        walls = []
        for name in ("cold (compiles included)", "warm (compiled)"):
            per_layer, t0 = [], time.perf_counter()
            for layer in layers:
                config = AscentConfig(size=a.size, steps=a.steps)
                n = layer_info(layer).out_channels
                t, _ = timed(lambda: jax.block_until_ready(ascend(params, layer, range(n), config=config,
                                                                  max_bytes=int(a.max_gb * 1024**3))))
                per_layer.append(f"{layer} {t:.2f}s")
                print(name, per_layer[-1], flush=True)
            walls.append(time.perf_counter() - t0)
            lines += ["", f"full atlas pass, {name} ({total_filters} filters, {a.size} px, {a.steps} steps, float32): "
                      f"{walls[-1]:.2f} s, {total_filters / walls[-1]:.1f} filters/s, "
                      f"{flops / walls[-1] / 1e12:.3g} TFLOP/s in direct-conv equivalents ({flops / 1e15:.3f} PFLOP)",
                      "per layer: " + ", ".join(per_layer)]
        lines.append(f"compiles: about {walls[0] - walls[1]:.1f} s (cold less warm)")
    text = "\n".join(lines)
    print(text)
    if a.markdown_out:
        with open(a.markdown_out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
