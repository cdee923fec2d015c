"""Where one core's time goes inside the Winograd conv: input transform, matmuls, output transform.

    .venv/bin/python bench/engine/winograd_phases.py [--rounds 6] [--images 1,8] [--block 48,96]

Compiles winograd_phases.cc (which includes jaxviz/native/onednn_conv.cc whole, with the
flags jaxviz.onednn builds it with) and runs it on one thread (``OMP_NUM_THREADS=1``: own
blocks, as each thread of the ascent runs them) for the seed's layer shapes, the shapes
interleaved round by round. Prints per shape the median over rounds of each phase's best-of-3
time, in ns per 4x4 tile, the matmuls' GFLOP/s (in situ, and again on a block already in
cache) and the transforms' share of the call. A phase that slows down as the images grow
(``--images``) waits on memory, not on arithmetic. Several block sizes run interleaved.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from jaxviz import onednn  # noqa: E402

SHAPES = [(64, 64, 64), (32, 64, 128), (32, 128, 128), (32, 128, 64), (16, 128, 256), (16, 256, 256),
          (8, 256, 512), (8, 512, 512)]  # (H, C, O) of the seed's Winograd layers at 64 px, and a gradient


def build(out: str) -> str:
    prefix = onednn._prefix()
    if prefix is None:
        sys.exit("oneDNN is not installed in this environment")
    exe = os.path.join(out, "winograd_phases")
    here = os.path.dirname(os.path.abspath(__file__))
    lib = prefix / "lib"
    cmd = [os.environ.get("CXX", "g++"), "-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-std=c++17", "-w",
           f"-I{os.path.dirname(onednn.SOURCE)}", f"-I{jax.ffi.include_dir()}", f"-I{prefix / 'include'}",
           os.path.join(here, "winograd_phases.cc"), "-o", exe, f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"]
    subprocess.run(cmd, check=True)
    return exe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--images", default="1,8", help="images per call, comma-separated")
    ap.add_argument("--block", default=str(onednn.OWN_TILES), help="tiles per block, comma-separated, interleaved "
                    "(default OWN_TILES)")
    ap.add_argument("--kinds", default="plain", help="comma-separated: plain (the conv alone), layer (bias and relu "
                    "out, and the relu's mask), forward (the fused layer: relu(x + bias) in, bias, relu and 2x2 pool "
                    "out), pool_grad, relu_grad (their gradients)")
    ap.add_argument("--shapes", default=None, help="H:C:O,... (default: the seed's Winograd layers at 64 px)")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    images = [int(s) for s in args.images.split(",")]
    kinds = args.kinds.split(",")
    blocks = [int(b) for b in args.block.split(",")]
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        exe = build(d)
        runs = {(kind, n, *s, b): [] for kind in kinds for n in images for s in shapes for b in blocks}
        for _ in range(args.rounds):
            for key in runs:
                kind, n, h, c, o, b = key
                line = subprocess.run([exe, str(n), str(h), str(c), str(o), str(b), "3", kind], env=env,
                                      capture_output=True, text=True, check=True).stdout.split()
                runs[key].append([int(line[0])] + [float(t) for t in line[1:]])
    print(f"one thread, blocks of {args.block} tiles (or the call's tiles, if fewer), median of {args.rounds} rounds (best of 3 each); ns per tile")
    print(f"{'kind':>9} {'images x px  C -> O':>22} {'block':>5} {'in':>7} {'matmul':>7} {'out':>7} {'total':>7}  matmul GFLOP/s (again)  transforms")
    for (kind, n, h, c, o, b), rs in runs.items():
        tiles = rs[0][0]
        med = [statistics.median(r[k] for r in rs) for k in range(1, 6)]
        ns = [1e9 * t / tiles for t in med[:4]]
        flops = 2 * 36 * tiles * c * o
        print(f"{kind:>9} {n:>6} x {h:>3} {c:>4} -> {o:<4} {b:>5} {ns[0]:7.0f} {ns[1]:7.0f} {ns[2]:7.0f} {ns[3]:7.0f}  "
              f"{flops / med[1] / 1e9:8.0f} ({flops / med[4] / 1e9:4.0f}) {100 * (med[0] + med[2]) / med[3]:12.0f} %")


if __name__ == "__main__":
    main()
