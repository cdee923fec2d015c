"""Winograd's block constants in situ: whole seed grids with other OWN_TILES / OWN_MIN_TILES.

    .venv/bin/python bench/engine/own_blocks_ascent.py [--layers block2_conv1,block3_conv1] [--rounds 3]

``own_blocks.py`` times single calls; the gain of own blocks shows only among XLA's threads,
so this times the seed's 64-filter grid (``ascent.ascend``) once per configuration, each in a
fresh process (the constants are read when a call is traced) after a compile, the
configurations interleaved round by round and reversed every other round. Prints each
configuration's best of two grids per round, the medians, and a digest of the images
(own and shared blocks give the same bits).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import hashlib, json, sys, time
import numpy as np
from jaxviz import onednn
onednn.OWN_TILES, onednn.OWN_MIN_TILES = int(sys.argv[1]), int(sys.argv[2])
from jaxviz.api import load_params
from jaxviz.ascent import ascend
params, layer = load_params(), sys.argv[3]
ascend(params, layer, range(64)).images.block_until_ready()
times = []
for _ in range(2):
    t = time.perf_counter()
    r = ascend(params, layer, range(64))
    r.images.block_until_ready()
    times.append(time.perf_counter() - t)
print(json.dumps({"s": min(times), "digest": hashlib.md5(np.asarray(r.images).tobytes()).hexdigest()[:8]}))
"""

CONFIGS = {"default 96/128": (96, 128), "shared only": (96, 10**9), "own 192": (192, 128), "own 48": (48, 96)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="block2_conv1,block3_conv1,block4_conv1")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(args.rounds):
        for layer in args.layers.split(","):
            order = list(CONFIGS.items())[:: 1 if rnd % 2 == 0 else -1]
            for name, (own_tiles, own_min) in order:
                out = subprocess.run([sys.executable, "-c", CHILD, str(own_tiles), str(own_min), layer],
                                     capture_output=True, text=True, cwd=ROOT, check=True)
                d = json.loads(out.stdout.strip().splitlines()[-1])
                runs.setdefault((layer, name), []).append(d)
                print(f"round {rnd}  {layer}  {name:15s} {d['s']:7.3f} s  {d['digest']}", flush=True)
    for (layer, name), ds in runs.items():
        base = statistics.median(d["s"] for d in runs[(layer, "default 96/128")])
        med = statistics.median(d["s"] for d in ds)
        print(f"{layer}  {name:15s} median {med:7.3f} s  {med / base:5.2f}x the default  "
              f"digests {sorted({d['digest'] for d in ds})}")


if __name__ == "__main__":
    main()
