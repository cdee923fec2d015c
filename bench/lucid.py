"""Time the quality recipe (jaxviz.lucid) against the seed's recipe, per layer.

    .venv/bin/python bench/lucid.py                      # 8 filters, 128 px, block4_conv1 + block5_conv1, 512 steps
    .venv/bin/python bench/lucid.py --steps 64 --filters 4 --layers block4_conv1   # a quick look on a small CPU

For each layer it runs the same filters twice with each recipe: the first call includes
compilation, the second is the steady-state time that a grid pays per batch. Prints a
markdown table (seconds, and milliseconds per image-step) after the machine's details.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the working tree's jaxviz

from _common import machine_lines, md_table  # noqa: E402


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    import jax

    jax.block_until_ready(out)
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="block4_conv1,block5_conv1")
    p.add_argument("--filters", type=int, default=8, help="filters 0..N-1 (default 8)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=512, help="quality recipe steps (default 512)")
    p.add_argument("--seed-steps", type=int, default=40, help="seed recipe steps (default 40)")
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--no-seed", action="store_true", help="time the quality recipe only")
    p.add_argument("--weights", default=None)
    args = p.parse_args(argv)

    import jax

    import jaxviz
    from jaxviz.ascent import AscentConfig, ascend
    from jaxviz.lucid import LucidConfig, lucid

    params = jaxviz.load_params(args.weights, progress=False)
    fs = list(range(args.filters))
    cfg = LucidConfig(size=args.size, steps=args.steps, precision=args.precision)
    rows = []
    for layer in args.layers.split(","):
        runs = [("lucid", args.steps, lambda: lucid(params, layer, fs, config=cfg).images)]
        if not args.no_seed:
            seed_cfg = AscentConfig(size=args.size, steps=args.seed_steps, precision=args.precision)
            runs.append(("seed", args.seed_steps, lambda: ascend(params, layer, fs, config=seed_cfg).images))
        for name, steps, fn in runs:
            first = _timed(fn)
            second = _timed(fn)
            per = 1e3 * second / max(1, len(fs) * steps)
            rows.append([f"{layer} {name}", str(len(fs)), str(args.size), str(steps), f"{first:.1f}", f"{second:.1f}",
                         f"{per:.2f}"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print("\n".join(machine_lines()))
    print(f"- jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, precision {args.precision}")
    print()
    print(md_table(["layer recipe", "filters", "px", "steps", "first call s (with compile)", "steady s",
                    "ms / image-step"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
