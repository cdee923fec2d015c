"""Winograd's blocks of tiles: each thread on blocks of its own, against every core on each block.

    .venv/bin/python bench/engine/own_blocks.py [--rounds 20] [--own-tiles 64,96,160]

For the seed's layer shapes (16 images at 64 px), times ``onednn.winograd4`` in one
interleaved loop with shared blocks (``BLOCK_BYTES`` of transformed tiles, every core on each
block's transforms and matmul in turn) and with own blocks of about ``--own-tiles`` tiles
(each thread whole blocks: its transforms and a one-thread matmul). Prints min and median ms,
the median of the rounds' own/shared ratios, and whether the floats are the same.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxviz import onednn, ops  # noqa: E402

SHAPES = [(16, 64, 64, 64), (16, 32, 64, 128), (16, 32, 128, 128), (16, 16, 128, 256), (16, 16, 256, 256),
          (16, 8, 256, 512), (16, 8, 512, 512)]


def compiled(x, u, own_tiles: int | None):
    """winograd4 on (x, u) compiled with shared blocks (None) or own blocks of about own_tiles."""
    keep = onednn.OWN_TILES, onednn.OWN_MIN_TILES
    onednn.OWN_TILES, onednn.OWN_MIN_TILES = (own_tiles, 1) if own_tiles else (keep[0], 1 << 40)
    try:
        return jax.jit(lambda x, u: onednn.winograd4(x, u)).lower(x, u).compile()  # a new function: a new trace
    finally:
        onednn.OWN_TILES, onednn.OWN_MIN_TILES = keep


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--own-tiles", default="64,96,160")
    args = ap.parse_args()
    if not onednn.available():
        sys.exit("oneDNN's handlers are not available here")
    sizes = [None] + [int(s) for s in args.own_tiles.split(",")]
    print(f"threads {onednn._threads()}; ms min / median (own / shared, paired median)")
    for n, h, c, o in SHAPES:
        k = jax.random.split(jax.random.key(0), 2)
        x = jax.random.normal(k[0], (n, h, h, c))
        u = ops.winograd_kernel(jax.random.normal(k[1], (3, 3, c, o)), 4)
        fns = {s: compiled(x, u, s) for s in sizes}
        outs = {s: np.asarray(f(x, u)) for s, f in fns.items()}
        times = {s: [] for s in sizes}
        for r in range(args.rounds):
            for s in (sizes if r % 2 == 0 else sizes[::-1]):
                t = time.perf_counter()
                jax.block_until_ready(fns[s](x, u))
                times[s].append(time.perf_counter() - t)
        tiles = n * (-(-h // 4)) ** 2
        row = [f"{c:3d}->{o:3d} {tiles:4d} tiles: shared {1e3 * min(times[None]):.2f}/{1e3 * statistics.median(times[None]):.2f}"]
        for s in sizes[1:]:
            ratio = statistics.median(a / b for a, b in zip(times[s], times[None]))
            same = "same" if np.array_equal(outs[s], outs[None]) else "DIFFERENT"
            row.append(f"own {s}: {1e3 * min(times[s]):.2f}/{1e3 * statistics.median(times[s]):.2f} ({ratio:.2f}x, {same})")
        print("  ".join(row), flush=True)


if __name__ == "__main__":
    main()
