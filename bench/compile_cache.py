"""The command line with and without its persistent compilation cache (jaxviz.compile_cache).

Runs ``python -m jaxviz.grid`` (the book's four grids unless told otherwise) as a user does,
a fresh process each time: once with an empty cache folder (the first run, which writes it),
then --rounds interleaved pairs, the cache off (``JAXVIZ_COMPILE_CACHE=0``) and on (warm), the
order swapped every round. Prints each setting's median wall seconds, peak RSS and the
command's own per-layer seconds, the ratio on/off (median of the rounds' paired ratios), and
whether every PNG was the same bytes in every run. The oneDNN build cache is shared by all
runs (built before timing), so only XLA's compiles differ.

    .venv/bin/python bench/compile_cache.py --rounds 4
    .venv/bin/python bench/compile_cache.py --rounds 2 --args "--filters 0-7 --steps 4"   # small jobs
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, machine_lines, md_table  # noqa: E402


def run(args: list[str], env: dict, out: Path) -> dict:
    """One command in a fresh process: wall s, peak RSS MB, its per-layer seconds, the PNGs' digest."""
    cmd = ["/usr/bin/time", "-f", "RSS %M", sys.executable, "-m", "jaxviz.grid", "--out", str(out), *args]
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"jaxviz.grid failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    layers = dict(re.findall(r"(\w+) ([\d.]+) s", r.stdout.split("done:")[-1]))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(out.glob("*.png")))).hexdigest()[:16]
    rss = int(re.search(r"RSS (\d+)", r.stderr).group(1)) / 1024
    return {"wall": wall, "rss": rss, "layers": {k: float(v) for k, v in layers.items()}, "digest": digest}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--args", default="", help="more jaxviz.grid options, quoted (default: the book's job)")
    p.add_argument("--markdown-out", default=None)
    a = p.parse_args()
    extra = shlex.split(a.args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "JAXVIZ_CACHE": str(tmp / "cache")}
        off = {**env, "JAXVIZ_COMPILE_CACHE": "0"}
        run(["--layers", "block1_conv1", "--filters", "0", "--steps", "1", "--size", "32"], off, tmp / "build")  # oneDNN's build
        first = run(extra, env, tmp / "first")
        results = {"off": [], "on": []}
        for i in range(a.rounds):
            for name in (("off", "on") if i % 2 == 0 else ("on", "off")):
                results[name].append(run(extra, off if name == "off" else env, tmp / f"{name}{i}"))
                print(f"round {i + 1} {name}: {results[name][-1]['wall']:.2f} s", flush=True)
        entries = sum(f.stat().st_size for f in (tmp / "cache" / "xla").rglob("*-cache"))
    digests = {r["digest"] for rs in results.values() for r in rs} | {first["digest"]}
    layers = list(first["layers"])
    med = lambda rs, f: statistics.median(f(r) for r in rs)
    rows = [["first run (empty cache)", f"{first['wall']:.2f}", f"{first['rss']:.0f}"]
            + [f"{first['layers'][l]:.2f}" for l in layers]]
    for name, label in (("off", "cache off"), ("on", "cache on (warm)")):
        rs = results[name]
        rows.append([label, f"{med(rs, lambda r: r['wall']):.2f}", f"{med(rs, lambda r: r['rss']):.0f}"]
                    + [f"{med(rs, lambda r: r['layers'][l]):.2f}" for l in layers])
    paired = [on["wall"] / off["wall"] for on, off in zip(results["on"], results["off"])]
    text = "\n".join([
        f"`python -m jaxviz.grid {a.args}`".replace(" `", "`"), "",
        *machine_lines(), "",
        md_table(["setting", "wall s", "peak RSS MB", *(f"{l} s" for l in layers)], rows), "",
        f"wall, cache on / off: {statistics.median(paired):.3f} (paired median of {a.rounds} rounds, range "
        f"{min(paired):.3f}-{max(paired):.3f}); cache entries {entries / 1e6:.2f} MB; "
        f"PNGs {'the same bytes in every run' if len(digests) == 1 else 'DIFFERENT between runs'}",
    ])
    print("\n" + text)
    if a.markdown_out:
        Path(a.markdown_out).write_text(text + "\n")


if __name__ == "__main__":
    main()
