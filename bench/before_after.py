"""The seed job before and after a change: same machine, one interleaved run, bit-for-bit check.

Two long-lived workers, one per tree (a git revision checked out in a temporary worktree,
and this working tree), each import their own ``jaxviz`` and run the seed's grids through
``jaxviz.ascent.ascend`` (the same call in both). After one untimed warm-up per layer
(compiles), timed calls alternate between the trees, swapping which goes first every
round. Prints seconds per grid (median), the ratio new/base, the median and range of the
rounds' own ratios (each round's pair ran back to back), and whether the images and losses
are bit-identical.

    .venv/bin/python bench/before_after.py --base 6f97e2b --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKER = r"""
import hashlib, json, sys, time
import numpy as np, jax
from jaxviz.api import load_params
from jaxviz.ascent import AscentConfig, ascend
params = load_params()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    layer, n, size, steps = line.split()
    t = time.perf_counter()
    r = ascend(params, layer, range(int(n)), config=AscentConfig(size=int(size), steps=int(steps)))
    images, losses = np.asarray(r.images), np.asarray(r.losses)
    dt = time.perf_counter() - t
    h = hashlib.sha256(images.tobytes() + losses.tobytes()).hexdigest()[:16]
    print(json.dumps({"time": dt, "hash": h}), flush=True)
"""


class Worker:
    def __init__(self, tree: str):
        env = dict(os.environ, PYTHONPATH=tree)
        self.p = subprocess.Popen([sys.executable, "-c", WORKER], cwd=tree, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        json.loads(self.p.stdout.readline())

    def run(self, layer, n, size, steps) -> dict:
        self.p.stdin.write(f"{layer} {n} {size} {steps}\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="git revision to compare against")
    p.add_argument("--layers", default="block1_conv1,block2_conv1,block3_conv1,block4_conv1")
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--markdown-out", default=None)
    a = p.parse_args()
    base_dir = tempfile.mkdtemp(prefix="jaxviz-base-")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", base_dir, a.base], check=True,
                   stdout=subprocess.DEVNULL)
    try:
        workers = {"base": Worker(base_dir), "new": Worker(ROOT)}
        layers = a.layers.split(",")
        times = {(t, l): [] for t in workers for l in layers}
        hashes = {}
        for l in layers:
            for t, w in workers.items():
                hashes[t, l] = w.run(l, a.filters, a.size, a.steps)["hash"]  # warm-up (compile)
        for r in range(a.rounds):
            order = list(workers) if r % 2 == 0 else list(workers)[::-1]
            for l in layers:
                for t in order:
                    out = workers[t].run(l, a.filters, a.size, a.steps)
                    times[t, l].append(out["time"])
                    print(f"round {r + 1} {l} {t}: {out['time']:.2f} s", file=sys.stderr, flush=True)
        for w in workers.values():
            w.close()
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base_dir], check=False)
    cpu = _cpu()
    lines = [f"Seed job before ({a.base}) and after (working tree), {a.filters} filters, {a.size} px, {a.steps} steps; "
             f"median of {a.rounds} interleaved rounds; CPU: {cpu}", "",
             "| layer | base s | new s | new / base | paired: median, range | images and losses identical |",
             "|---|---:|---:|---:|---|---|"]
    tb = tn = 0.0
    for l in layers:
        b, n = statistics.median(times["base", l]), statistics.median(times["new", l])
        tb, tn = tb + b, tn + n
        same = "yes" if hashes["base", l] == hashes["new", l] else "NO"
        lines.append(f"| {l} | {b:.2f} | {n:.2f} | {n / b:.3f} | {_paired(times['new', l], times['base', l])} | {same} |")
    total = lambda t: [sum(times[t, l][r] for l in layers) for r in range(a.rounds)]
    lines.append(f"| four grids | {tb:.2f} | {tn:.2f} | {tn / tb:.3f} | {_paired(total('new'), total('base'))} | |")
    text = "\n".join(lines)
    print(text)
    if a.markdown_out:
        with open(a.markdown_out, "w") as f:
            f.write(text + "\n\n" + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + "\n")


def _paired(new: list, base: list) -> str:
    """The median and range of each round's new / base: the two ran back to back, so a slow
    minute of a noisy host slows both of a pair (steadier than the ratio of the medians)."""
    r = [n / b for n, b in zip(new, base)]
    return f"{statistics.median(r):.3f}, {min(r):.3f}-{max(r):.3f}"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        flags = next(l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags"))
        ext = [x for x in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if x in flags]
        return f"{name} ({', '.join(ext)})"
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
