"""Render the docs' figures: the seed recipe beside the quality recipe, and the objectives.

    .venv/bin/python docs/make_figures.py               # docs/seed_vs_lucid.png (a few minutes on 2 CPU cores)
    .venv/bin/python docs/make_figures.py objectives    # docs/objectives.png (about ten minutes)

The second figure is the quality recipe on VGG16's block4_conv1 with four objectives side
by side: channel 7 (mean over the feature map), neuron 7 (the centre unit only), a random
direction in the layer's 512 channels (seed 0), and deepdream (all channels squared).

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


def objectives_figure(size: int = 96, steps: int = 256, out: str = os.path.join(HERE, "objectives.png")) -> str:
    """docs/objectives.png: four objectives of block4_conv1, the quality recipe, labelled."""
    import numpy as np

    import jaxviz
    from jaxviz import objectives as o

    model = jaxviz.models.vgg16()
    v = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    panels = [("channel 7", o.channel("block4_conv1", 7)), ("neuron 7", o.neuron("block4_conv1", 7)),
              ("direction", o.direction("block4_conv1", v / np.linalg.norm(v))),
              ("deepdream", o.deepdream("block4_conv1"))]
    recipe, head, m = jaxviz.LUCID._replace(size=size, steps=steps), 14, 4
    row = np.zeros((head + size, len(panels) * (size + m) - m, 3), np.uint8)
    for i, (name, objective) in enumerate(panels):
        t = time.perf_counter()
        x = i * (size + m)
        row[head:, x:x + size] = jaxviz.render(model, objective, recipe).tiles[0]
        _label(row[:, x:x + size], name)
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    jaxviz.save_png(out, row)
    print(out, os.path.getsize(out), "bytes")
    return out


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["objectives"]:
        objectives_figure()
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--filters", default="0,1,2,3")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=128, help="quality recipe steps (default 128)")
    p.add_argument("--out", default=os.path.join(HERE, "seed_vs_lucid.png"))
    args = p.parse_args(argv)

    import numpy as np

    import jaxviz

    params = jaxviz.load_params(progress=False)
    fs = [int(f) for f in args.filters.split(",")]
    n, s, m, gap, head = len(fs), args.size, 2, 12, 16
    panel_w = n * s + (n - 1) * m
    rows = []
    for layer in LAYERS:
        t = time.perf_counter()
        objective = jaxviz.objectives.channel(layer, fs)
        seed = jaxviz.render(params, objective, jaxviz.SEED._replace(size=s)).tiles
        quality = jaxviz.render(params, objective, jaxviz.LUCID._replace(size=s, steps=args.steps)).tiles
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
