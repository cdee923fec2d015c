"""How jaxviz's time and memory scale with image size and number of filters.

Seconds per grid for one layer (default block3_conv1):
  * at --sizes px (default 64,128,150,224) with 64 filters, and
  * for --counts filters (default 64,256,512) at 64 px; jaxviz splits large
    requests into chunks itself (``jaxviz.ascent.ascend(..., max_bytes=...)``),
plus the time ``jaxviz.load_params()`` takes to load the weights (first call in
a fresh process, and the best of 3 calls).

Each configuration runs in a fresh subprocess, so the peak RSS (ru_maxrss) it
reports is that configuration's own. In it, the first render call (which
compiles) is reported as "first s", then --repeats more calls are timed and
their median is "s per grid".

    .venv/bin/python bench/scaling.py --markdown-out bench/results-scaling.md
    .venv/bin/python bench/scaling.py --sizes 32,48 --counts 4,8 --steps 2   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import DEFAULT_WEIGHTS, REPO, fmt, grid_flops, machine_lines, md_table  # noqa: E402


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="bench/scaling.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layer", default="block3_conv1", help="conv layer (default block3_conv1)")
    p.add_argument("--sizes", type=_ints, default=[64, 128, 150, 224],
                   help="image sizes at --base-count filters (default 64,128,150,224)")
    p.add_argument("--counts", type=_ints, default=[64, 256, 512],
                   help="filter counts at --base-size px (default 64,256,512); a count above the layer's filters "
                        "runs at the first deeper conv layer that has that many (block4_conv1 for 512)")
    p.add_argument("--base-size", type=int, default=64, help="size for the --counts runs (default 64)")
    p.add_argument("--base-count", type=int, default=64, help="filters for the --sizes runs (default 64)")
    p.add_argument("--steps", type=int, default=40, help="ascent steps (default 40)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls after the first one (default 1; 0: report the first only)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--max-bytes", type=int, default=None, help="ascend(max_bytes=...) (default: jaxviz's own)")
    p.add_argument("--load-repeats", type=int, default=3, help="load_params calls in the fresh process (default 3)")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per configuration (default 3600)")
    p.add_argument("--markdown-out", default=None, help="also write the tables (and machine, date) to FILE")
    # Internal: run one measurement in this (fresh) process and print one JSON line.
    p.add_argument("--child", choices=("render", "load"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------- child side

def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_load(a):
    t = time.perf_counter()
    import jax

    import jaxviz

    import_s = time.perf_counter() - t
    times = []
    for _ in range(max(1, a.load_repeats)):
        t = time.perf_counter()
        params = jaxviz.load_params(a.weights)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t)
    return {"import_s": import_s, "first_s": times[0], "best_s": min(times), "times": times, "rss_mb": _peak_rss_mb()}


def child_render(a):
    import jax
    import numpy as np

    import jaxviz

    params = jaxviz.load_params(a.weights)
    jax.block_until_ready(params)
    from jaxviz.ascent import AscentConfig, ascend

    kwargs = dict(config=AscentConfig(size=a.size, steps=a.steps, precision=a.precision))
    if a.max_bytes:
        kwargs["max_bytes"] = a.max_bytes
    from jaxviz.ascent import DEFAULT_MAX_BYTES, chunk_size

    batch = int(chunk_size(a.layer, a.size, a.count, a.max_bytes or DEFAULT_MAX_BYTES))  # as ascend chunks
    filters = list(range(a.count))
    times, loss = [], None
    for _ in range(1 + max(0, a.repeats)):
        t = time.perf_counter()
        raw, losses = ascend(params, a.layer, filters, **kwargs)
        jax.block_until_ready((raw, losses))
        times.append(time.perf_counter() - t)
        loss = float(np.mean(losses))
    return {"first_s": times[0], "times": times[1:], "batch": batch, "loss_mean": loss, "rss_mb": _peak_rss_mb()}


# ---------------------------------------------------------------- parent side

def layer_for(layer: str, n: int) -> str:
    """layer, or the first conv layer after it with at least n filters (VGG16)."""
    from jaxviz.model import layers

    convs = [l for l in layers() if l.kind == "conv"]
    names = [l.name for l in convs]
    for l in convs[names.index(layer):]:
        if l.out_channels >= n:
            return l.name
    raise SystemExit(f"no conv layer from {layer} on has {n} filters")


def run_child(a, kind, layer=None, **extra):
    argv = [sys.executable, os.path.abspath(__file__), "--child", kind, "--layer", layer or a.layer, "--steps", str(a.steps),
            "--repeats", str(a.repeats), "--precision", a.precision, "--weights", a.weights,
            "--load-repeats", str(a.load_repeats)]
    if a.max_bytes:
        argv += ["--max-bytes", str(a.max_bytes)]
    for k, v in extra.items():
        argv += [f"--{k}", str(v)]
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    label = kind + "".join(f" {k}={v}" for k, v in extra.items())
    print(f"running {label} ...", file=sys.stderr, flush=True)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=a.timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout:.0f} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        print(out.stderr[-3000:], file=sys.stderr)
        return {"error": f"exit {out.returncode}: {last}"}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {label}: {res}", file=sys.stderr, flush=True)
    return res


def main(argv=None):
    a = parse_args(argv)
    if a.child:
        res = child_load(a) if a.child == "load" else child_render(a)
        print(json.dumps(res), flush=True)
        return 0

    a.weights = os.path.abspath(a.weights)
    machine = machine_lines()
    load = run_child(a, "load")
    configs = [(a.base_count, s) for s in a.sizes]
    configs += [(n, a.base_size) for n in a.counts if (n, a.base_size) not in configs]
    at = {cfg: layer_for(a.layer, cfg[0]) for cfg in configs}
    results = {cfg: run_child(a, "render", at[cfg], count=cfg[0], size=cfg[1]) for cfg in configs}

    out = ["# jaxviz scaling\n"]
    out.append(f"Layer {a.layer}, {a.steps} steps, precision {a.precision}, "
               f"max_bytes {a.max_bytes or 'jaxviz default'}; each row is a fresh process; "
               f"\"first s\" includes compilation, \"s per grid\" is the median of {a.repeats} more call(s).\n")
    out.extend(machine)
    out.append("")
    rows = []

    def label(n, s):
        return f"{n} x {s} px" + ("" if at[(n, s)] == a.layer else f" ({at[(n, s)]})")

    for (n, s), r in results.items():
        if "error" in r:
            rows.append([label(n, s), "error: " + r["error"], "", "", "", "", "", ""])
            continue
        per = statistics.median(r["times"]) if r["times"] else None
        ref = per if per is not None else r["first_s"]
        gfs = grid_flops(at[(n, s)], s, n, a.steps) / ref / 1e9
        rows.append([label(n, s), fmt(r.get("batch")), fmt(r["first_s"]), fmt(per),
                     fmt(1000 * ref / n), fmt(gfs), fmt(r["rss_mb"], 4), fmt(r["loss_mean"], 5)])
    out.append(md_table(["filters x size", "batch (chunk)", "first s", "s per grid", "ms per image",
                         "GFLOP/s", "peak RSS MB", "final loss"], rows))
    out.append("")
    out.append("## Loading the weights\n")
    if "error" in load:
        out.append(f"load_params failed: {load['error']}\n")
    else:
        out.append(md_table(["measure", "seconds"], [
            ["import jax + jaxviz (fresh process)", fmt(load["import_s"])],
            ["load_params(), first call in a fresh process", fmt(load["first_s"])],
            [f"load_params(), best of {len(load['times'])}", fmt(load["best_s"])],
        ]))
        out.append(f"\nPeak RSS of that process: {fmt(load['rss_mb'], 4)} MB.\n")
    text = "\n".join(out)
    print(text)
    if a.markdown_out:
        with open(a.markdown_out, "w") as f:
            f.write(text)
        print(f"wrote {a.markdown_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
