"""Render docs/seed_vs_lucid.png: the seed recipe beside the quality recipe, same filters.

    .venv/bin/python docs/make_figures.py            # the committed figure (a few minutes on 2 CPU cores)

Rows are block3_conv1, block4_conv1 and block5_conv1; the left panel is the seed's
recipe (Chollet 5.4: 40 steps of normalized gradient ascent), the right panel the
quality recipe (jaxviz.lucid: Fourier parameterization, decorrelated colours,
transformation robustness, Adam), both seed 0, same filters, same tile size. The
equivalent command-line grids are

    python -m jaxviz.grid --layers block3_conv1,block4_conv1,block5_conv1 --filters 0-3 --size 64
    python -m jaxviz.grid --recipe lucid --layers block3_conv1,block4_conv1,block5_conv1 --filters 0-3 --size 64 --steps 128
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the working tree's jaxviz

LAYERS = ("block3_conv1", "block4_conv1", "block5_conv1")


def _label(img, text):
    """Draw ``text`` in white into the top-left of a uint8 image (in place)."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(img)
    ImageDraw.Draw(pil).text((4, 2), text, fill=(255, 255, 255))
    img[:] = pil


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--filters", default="0,1,2,3")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=128, help="quality recipe steps (default 128)")
    p.add_argument("--out", default=os.path.join(HERE, "seed_vs_lucid.png"))
    args = p.parse_args(argv)

    import numpy as np

    import jaxviz
    from jaxviz.lucid import LucidConfig

    params = jaxviz.load_params(progress=False)
    fs = [int(f) for f in args.filters.split(",")]
    n, s, m, gap, head = len(fs), args.size, 2, 12, 16
    panel_w = n * s + (n - 1) * m
    rows = []
    for layer in LAYERS:
        t = time.perf_counter()
        seed = jaxviz.render(params, layer, fs, size=s)
        quality = jaxviz.render(params, layer, fs, recipe="lucid", lucid_config=LucidConfig(size=s, steps=args.steps))
        row = np.zeros((head + s, 2 * panel_w + gap, 3), np.uint8)
        row[head:, :panel_w] = jaxviz.make_grid(seed, cols=n, margin=m)
        row[head:, panel_w + gap:] = jaxviz.make_grid(quality, cols=n, margin=m)
        _label(row, f"{layer} f{fs[0]}-{fs[-1]}: seed (40 steps)")
        sub = row[:, panel_w + gap:]
        _label(sub, f"quality ({args.steps} steps)")
        rows.append(row)
        print(f"{layer}: {time.perf_counter() - t:.0f} s", flush=True)
    jaxviz.save_png(args.out, np.concatenate(rows))
    print(args.out, os.path.getsize(args.out), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
