"""docs/examples.png: the top dataset examples of a few VGG16 filters, from natural images.

The images are scikit-image's bundled sample images, used for documentation only and
not a dependency of jaxviz: fetch the wheel (nothing is installed) and point the script
at it::

    pip download --no-deps scikit-image -d /tmp/skimage
    python docs/make_examples_figure.py --wheel /tmp/skimage/scikit_image-*.whl

Images used (licences as stated in skimage/data/_fetchers.py):
astronaut, rocket, hubble_deep_field (NASA/SpaceX, public domain); camera, chelsea,
coffee (CC0 by their photographers); brick, grass, gravel (CC0Textures, CC0);
retina (CC0 1.0); coins (Brooklyn Museum, no known copyright restrictions).
Each is cut into its four quadrants (no overlap, so no patch repeats), so the pass
sees 44 images. The filters shown are, among filters 0-63 of each layer, the
two whose 6th example is strongest relative to the layer (selective and often excited);
``--filters`` picks others. Each row starts with the filter's seed-recipe image (40 steps)
and its quality-recipe image (128 steps), both 64 px, then its top examples.
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

FILES = ["astronaut.png", "rocket.jpg", "hubble_deep_field.jpg", "camera.png", "chelsea.png", "coffee.png",
         "brick.png", "grass.png", "gravel.png", "retina.jpg", "coins.png"]
LAYERS = ("block3_conv1", "block4_conv1")
K, THUMB = 6, 64


def build_folder(wheel: str, folder: str) -> int:
    """Write the four quadrants of each sample image into ``folder``; returns the count."""
    n = 0
    with zipfile.ZipFile(wheel) as z:
        for name in FILES:
            img = Image.open(io.BytesIO(z.read(f"skimage/data/{name}"))).convert("RGB")
            stem = os.path.splitext(name)[0]
            w, h = img.size
            for i, (x, y) in enumerate([(0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)]):
                img.crop((x, y, x + w // 2, y + h // 2)).save(os.path.join(folder, f"{stem}_q{i}.png"))
            n += 4
    return n


def pick(summary, layer: str, count: int = 2) -> list[int]:
    v = summary.layers[layer].values[:64]
    score = v[:, -1] / (v[:, -1].mean() + 1e-6)
    return [int(f) for f in np.argsort(-score, kind="stable")[:count]]


def visualizations(model, chosen: list[tuple[str, int]]) -> dict:
    """(layer, filter) -> (seed tile, quality tile), 64 px each, one render per layer and recipe."""
    import jaxviz
    from jaxviz.objectives import channel

    out = {}
    for layer in dict.fromkeys(l for l, _ in chosen):
        fs = [f for l, f in chosen if l == layer]
        seed = jaxviz.render(model, channel(layer, fs), jaxviz.SEED._replace(size=THUMB)).tiles
        quality = jaxviz.render(model, channel(layer, fs), jaxviz.LUCID._replace(size=THUMB, steps=128)).tiles
        out.update({(layer, f): (seed[i], quality[i]) for i, f in enumerate(fs)})
    return out


def figure(summary, chosen: list[tuple[str, int]], tiles: dict) -> np.ndarray:
    label_w, gap, sep = 96, 4, 12
    x0 = label_w + 2 * (THUMB + gap) + sep
    rows = []
    head = Image.new("RGB", (x0 + K * (THUMB + gap), 14), (255, 255, 255))
    d = ImageDraw.Draw(head)
    for x, text in ((label_w, "seed"), (label_w + THUMB + gap, "quality"), (x0, "top dataset examples")):
        d.text((x, 1), text, fill=(0, 0, 0))
    rows.append(np.asarray(head))
    for layer, f in chosen:
        row = Image.new("RGB", (x0 + K * (THUMB + gap), THUMB + gap), (255, 255, 255))
        d = ImageDraw.Draw(row)
        d.text((4, THUMB // 2 - 12), f"{layer}\nfilter {f}", fill=(0, 0, 0))
        for i, tile in enumerate(tiles[layer, f]):
            row.paste(Image.fromarray(tile), (label_w + i * (THUMB + gap), 0))
        for j in range(K):
            row.paste(Image.fromarray(summary.thumbs[layer][f, j]), (x0 + j * (THUMB + gap), 0))
        rows.append(np.asarray(row))
    return np.concatenate(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", required=True, help="a scikit-image wheel (pip download --no-deps scikit-image)")
    p.add_argument("--filters", default=None, help="LAYER:F,... (default: two selective filters per layer)")
    p.add_argument("--out", default=os.path.join(HERE, "examples.png"))
    a = p.parse_args()
    wheel = sorted(glob.glob(a.wheel))[-1]

    from jaxviz import examples, models

    model = models.vgg16()
    with tempfile.TemporaryDirectory() as folder:
        n = build_folder(wheel, folder)
        s = examples.collect(model, folder, LAYERS, examples.Config(k=K, size=224, batch=8, thumb=THUMB))
        if a.filters:
            chosen = [(t.split(":")[0], int(t.split(":")[1])) for t in a.filters.split(",")]
        else:
            chosen = [(l, f) for l in LAYERS for f in pick(s, l)]
        for layer, f in chosen:
            names = [s.names[i] for i in s.layers[layer].index[f]]
            print(f"{layer} filter {f}: " + ", ".join(f"{nm} {v:.0f}" for nm, v in zip(names, s.layers[layer].values[f])))
        Image.fromarray(figure(s, chosen, visualizations(model, chosen))).save(a.out, optimize=True)
    print(f"{a.out}: {n} images, {os.path.getsize(a.out) // 1024} KB")


if __name__ == "__main__":
    main()
