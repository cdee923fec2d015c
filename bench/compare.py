"""Benchmark jaxviz against peer implementations of the same filter-visualization ascent.

Every implementation runs as its own long-lived worker process (bench/peers/,
line protocol in bench/peers/_protocol.py) in its own virtual environment:

    keras_seed   the book's Keras code, TF1 graph mode, filter after filter  (bench/.venvs/tf)
    tf_batched   eager TF2, one batch of all filters, loop in one tf.function (bench/.venvs/tf)
    torch_f32    eager PyTorch, batched, channels_last, float32            (bench/.venvs/torch)
    torch_bf16   the same under torch.autocast(bfloat16)                    (bench/.venvs/torch)
    jaxviz_f32   jaxviz's engine, the seed recipe on VGG16, float32           (this interpreter)
    jaxviz_f32_const  the same with JAXVIZ_PLAN=off: built-in constants, no per-machine plan
    jaxviz_bf16  the same in bfloat16 (models.vgg(precision="bfloat16"))      (this interpreter)

All of them start from the same numpy start images (seed 0), so their final
losses and images can be compared image by image.

Per layer, every worker first does --warmup call(s) (tracing / compilation /
graph building; reported as "warm-up s"), then --rounds timed rounds run
interleaved (A B C ... A B C ...) so that drifts of the machine hit everyone
alike. The FLOP count of a grid is 2 x (forward conv MACs up to the layer, per
image) x 2 (forward + input gradient) x filters x steps; the f32 matmul peak
is the best of numpy's and jax's GFLOP/s on a 2048 x 2048 float32 matmul,
measured at the start of the run and again after each layer's warm-up (the
run's best of them all is "the peak"; jaxviz's own-multiplies rate is also given
against the one measured beside its layer, as the host's speed drifts by the hour).

Run it from the repository root with the project's interpreter, on a quiet
machine (the peers' venvs come from bench/setup_peers.sh):

    .venv/bin/python bench/compare.py --markdown-out bench/results-compare.md
    .venv/bin/python bench/compare.py --filters 4 --size 32 --steps 2 --rounds 1 \\
        --layers block1_conv1,block2_conv1          # a smoke test, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    BENCH,
    DEFAULT_WEIGHTS,
    REPO,
    cpu_ticks,
    fmt,
    grid_flops,
    winograd_flops,
    machine_lines,
    matmul_peak,
    md_table,
    stolen,
)

PEERS_DIR = os.path.join(BENCH, "peers")
VENVS = os.path.join(BENCH, ".venvs")
ALL_PEERS = ("keras_seed", "tf_batched", "torch_f32", "torch_bf16", "jaxviz_f32", "jaxviz_f32_const", "jaxviz_bf16")
DEFAULT_LAYERS = "block1_conv1,block2_conv1,block3_conv1,block4_conv1"
# (first, second): the mean |difference| of second's images from first's is reported.
DRIFT_PAIRS = (
    ("jaxviz_f32", "jaxviz_bf16"),
    ("torch_f32", "torch_bf16"),
    ("keras_seed", "jaxviz_f32"),
    ("keras_seed", "tf_batched"),
    ("keras_seed", "torch_f32"),
)


def peer_command(name: str) -> tuple[list[str] | None, str | None]:
    """(argv without --weights, None) or (None, why it cannot run)."""
    def venv_python(venv):
        py = os.path.join(VENVS, venv, "bin", "python")
        if not os.path.exists(py):
            return None
        return py

    if name in ("keras_seed", "tf_batched"):
        py = venv_python("tf")
        if py is None:
            return None, f"missing {os.path.relpath(os.path.join(VENVS, 'tf'), REPO)} (run bash bench/setup_peers.sh)"
        return [py, os.path.join(PEERS_DIR, f"{name}.py")], None
    if name.startswith("torch_"):
        py = venv_python("torch")
        if py is None:
            return None, f"missing {os.path.relpath(os.path.join(VENVS, 'torch'), REPO)} (run bash bench/setup_peers.sh)"
        return [py, os.path.join(PEERS_DIR, "torch_batched.py"), "--mode", name.split("_", 1)[1]], None
    if name.startswith("jaxviz_"):
        mode = name.split("_")[1]
        prec = {"f32": "float32", "bf16": "bfloat16"}[mode]
        plan = ["--plan", "off"] if name.endswith("_const") else []
        return [sys.executable, os.path.join(PEERS_DIR, "jaxviz_worker.py"), "--precision", prec, *plan], None
    return None, f"unknown peer {name!r}; known: {', '.join(ALL_PEERS)}"


class WorkerError(RuntimeError):
    pass


class Worker:
    """One peer process: JSON line out, JSON line back, stderr to a log file."""

    def __init__(self, name, argv, log_path, env):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env, bufsize=0
        )
        self.buf = b""
        self.hello = None

    def _readline(self, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                raise WorkerError(f"{self.name}: no reply within {timeout:.0f} s (log: {self.log_path})")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerError(
                    f"{self.name}: worker exited (rc={self.proc.poll()}); last log lines:\n{tail(self.log_path)}"
                )
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def wait_hello(self, timeout):
        self.hello = self._readline(timeout)
        if not self.hello.get("hello"):
            raise WorkerError(f"{self.name}: failed to start: {self.hello.get('error')}\n{tail(self.log_path)}")
        return self.hello

    def call(self, req, timeout):
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        reply = self._readline(timeout)
        if "error" in reply:
            raise WorkerError(f"{self.name}: {reply['error']} (log: {self.log_path})")
        return reply

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(b'{"quit": true}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=20)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="bench/compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layers", default=DEFAULT_LAYERS, help=f"comma-separated conv layers (default {DEFAULT_LAYERS})")
    p.add_argument("--filters", type=int, default=64, help="filters 0..N-1 per grid (default 64)")
    p.add_argument("--size", type=int, default=64, help="image size in px (default 64)")
    p.add_argument("--steps", type=int, default=40, help="ascent steps (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per layer (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per layer and peer (default 1)")
    p.add_argument("--seed-rounds", type=int, default=None,
                   help="timed rounds for keras_seed, which is slow (default: --rounds)")
    p.add_argument("--seed-warmup", type=int, default=None,
                   help="warm-up calls for keras_seed (default: --warmup; 0 counts its first call as a round)")
    p.add_argument("--peers", default=",".join(ALL_PEERS), help=f"comma-separated subset of {','.join(ALL_PEERS)}")
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, help="Keras VGG16 notop h5 (default weights/vgg16_imagenet_notop.h5)")
    p.add_argument("--gap", type=float, default=0.5,
                   help="seconds of idle between calls, so spinning thread pools settle (default 0.5)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n f32 matmul peak (default 2048)")
    p.add_argument("--call-timeout", type=float, default=3600, help="seconds before a silent worker is given up (default 3600)")
    p.add_argument("--work-dir", default=None, help="where worker logs and saved images go (default: a new /tmp dir)")
    p.add_argument("--markdown-out", default=None, help="also write the tables (and machine, versions, date) to FILE")
    a = p.parse_args(argv)
    a.layers = [s.strip() for s in a.layers.split(",") if s.strip()]
    a.peers = [s.strip() for s in a.peers.split(",") if s.strip()]
    for name in a.peers:
        if name not in ALL_PEERS:
            p.error(f"unknown peer {name!r}; known: {', '.join(ALL_PEERS)}")
    if a.seed_rounds is None:
        a.seed_rounds = a.rounds
    if a.seed_warmup is None:
        a.seed_warmup = a.warmup
    if a.rounds < 1 or a.seed_rounds < 0 or a.warmup < 0 or a.seed_warmup < 0:
        p.error("--rounds must be >= 1; --seed-rounds, --warmup, --seed-warmup >= 0")
    if not os.path.exists(a.weights):
        p.error(f"weights file {a.weights} not found (--weights)")
    return a


def progress(msg):
    print(msg, file=sys.stderr, flush=True)


def start_workers(a, notes):
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONUNBUFFERED"] = "1"
    workers = {}
    for name in a.peers:
        argv, why = peer_command(name)
        if argv is None:
            notes.append(f"{name} skipped: {why}")
            progress(f"note: {name} skipped: {why}")
            continue
        argv = argv + ["--weights", os.path.abspath(a.weights)]
        log = os.path.join(a.work_dir, f"{name}.log")
        progress(f"starting {name}: {' '.join(shlex.quote(x) for x in argv)}  (log {log})")
        workers[name] = Worker(name, argv, log, env)
    for name in list(workers):
        try:
            h = workers[name].wait_hello(timeout=600)
            progress(f"{name} ready in {h['load_seconds']:.1f} s: {h['versions']}")
        except (WorkerError, json.JSONDecodeError) as e:
            notes.append(f"{name} skipped: it did not start ({str(e).splitlines()[0]})")
            progress(f"note: {e}")
            workers.pop(name).close()
    return workers


def run(a):
    a.work_dir = a.work_dir or tempfile.mkdtemp(prefix="jaxviz-bench-")
    os.makedirs(a.work_dir, exist_ok=True)
    notes: list[str] = []
    machine = machine_lines()  # before anything loads the machine (load average)

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    progress(f"measuring the f32 matmul peak ({a.matmul_size}^3) ...")
    peaks = {"start": matmul_peak(a.matmul_size, reps=5, use_jax=True)}
    progress("matmul peak GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in peaks["start"].items()))

    workers = start_workers(a, notes)
    hellos = {n: w.hello for n, w in workers.items()}
    # results[layer][peer] = {"warmup": [s...], "times": [s...], "loss": x, "rss": mb, "save": path}
    results: dict[str, dict[str, dict]] = {}
    rss: dict[str, float] = {n: w.hello.get("rss_mb", 0.0) for n, w in workers.items()}
    try:
        for layer in a.layers:
            results[layer] = {}
            base = {"layer": layer, "filters": a.filters, "size": a.size, "steps": a.steps}

            def call(name, kind):
                w = workers[name]
                r = results[layer].setdefault(name, {"warmup": [], "times": [], "stolen": [], "first_in_rounds": False})
                req = dict(base)
                if "save" not in r:
                    r["save"] = os.path.join(a.work_dir, f"{layer}-{name}.npz")
                    req["save"] = r["save"]
                time.sleep(a.gap)
                ticks = cpu_ticks()
                try:
                    rep = w.call(req, a.call_timeout)
                except (WorkerError, json.JSONDecodeError) as e:
                    notes.append(f"{name} failed on {layer}: {str(e).splitlines()[0]}")
                    progress(f"note: {e}")
                    r["failed"] = True
                    if w.proc.poll() is not None:
                        workers.pop(name).close()
                    return
                (r["warmup"] if kind == "warmup" else r["times"]).append(rep["seconds"])
                share = stolen(ticks, cpu_ticks())
                if kind != "warmup" and share is not None:
                    r["stolen"].append(100 * share)
                if kind != "warmup" and rep["first"]:
                    r["first_in_rounds"] = True
                r["loss"] = rep["loss_mean"]
                rss[name] = max(rss.get(name, 0.0), rep["rss_mb"])
                progress(f"  {layer:13s} {name:12s} {kind:7s} {rep['seconds']:9.3f} s  loss {rep['loss_mean']:.5g}")

            def alive(name):
                return name in workers and not results[layer].get(name, {}).get("failed")

            progress(f"== {layer}: warm-up")
            for name in list(workers):
                for _ in range(a.seed_warmup if name == "keras_seed" else a.warmup):
                    if alive(name):
                        call(name, "warmup")
            peaks[layer] = matmul_peak(a.matmul_size, reps=5, use_jax=True)
            progress(f"== {layer}: matmul peak beside it {peaks[layer]['peak']:.1f} GFLOP/s")
            for rnd in range(max(a.rounds, a.seed_rounds)):
                progress(f"== {layer}: round {rnd + 1}")
                for name in list(workers):
                    if rnd < (a.seed_rounds if name == "keras_seed" else a.rounds) and alive(name):
                        call(name, "round")
    finally:
        for w in workers.values():
            w.close()
    return report(a, machine, peaks, results, rss, hellos, notes)


def drift(path_a, path_b):
    if not (path_a and path_b and os.path.exists(path_a) and os.path.exists(path_b)):
        return None
    with np.load(path_a) as za, np.load(path_b) as zb:
        x, y = za["images"].astype(np.int16), zb["images"].astype(np.int16)
    if x.shape != y.shape:
        return None
    return float(np.abs(x - y).mean())


def report(a, machine, peaks, results, rss, hellos, notes):
    """The run's markdown; ``peaks`` maps "start" and each layer to matmul_peak's figures."""
    out = []
    best = max(p["peak"] for p in peaks.values())
    out.append("# jaxviz vs peers: filter-visualization grids\n")
    out.append(
        f"Settings: layers {', '.join(a.layers)}; {a.filters} filters, {a.size} px, {a.steps} steps; "
        f"{a.warmup} warm-up call(s) then {a.rounds} interleaved round(s) per layer"
        + (f" (keras_seed: {a.seed_warmup} warm-up, {a.seed_rounds} round(s))" if "keras_seed" in a.peers else "")
        + "; all peers start from the same images.\n"
    )
    out.extend(machine)
    out.append(
        f"- f32 matmul peak ({a.matmul_size}x{a.matmul_size}, best of 5) at the start: "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks["start"].items() if k != "peak")
        + "; beside each layer (after its warm-up): "
        + ", ".join(f"{k} {p['peak']:.1f}" for k, p in peaks.items() if k != "start")
        + f" -> the run's peak {best:.1f} GFLOP/s"
    )
    out.append("- versions:")
    for name in ALL_PEERS:
        h = (hellos or {}).get(name)
        if h:
            v = ", ".join(f"{k} {val}" for k, val in h["versions"].items() if val)
            out.append(f"  - {name}: {v}; Python {h.get('python')}; threads {h.get('threads')}; "
                       f"start-up {h.get('load_seconds', 0):.1f} s")
    out.append("")

    medians: dict[str, dict[str, float]] = {}
    for layer, per in results.items():
        flops = grid_flops(layer, a.size, a.filters, a.steps)
        ref = per.get("jaxviz_f32", {}).get("times")
        ref_med = statistics.median(ref) if ref else None
        rows = []
        for name in ALL_PEERS:
            r = per.get(name)
            if not r or not r["times"]:
                if r and r.get("failed"):
                    rows.append([name, "failed", "", "", "", "", "", "", ""])
                continue
            med, mn = statistics.median(r["times"]), min(r["times"])
            medians.setdefault(name, {})[layer] = med
            gfs = flops / med / 1e9
            warm = fmt(r["warmup"][0]) if r["warmup"] else "—"
            rows.append([
                name + (" *" if r.get("first_in_rounds") else ""),
                warm, fmt(mn), fmt(med),
                fmt(med / ref_med) if ref_med else "—",
                fmt(gfs), fmt(100 * gfs / best, 2),
                fmt(statistics.median(r["stolen"]), 2) if r.get("stolen") else "—",
                fmt(r.get("loss"), 5),
            ])
        out.append(f"## {layer}  ({fmt(flops / 1e9)} GFLOP per grid)\n")
        out.append(md_table(
            ["implementation", "warm-up s", "min s", "median s", "ratio to jaxviz_f32",
             "GFLOP/s", "% of f32 matmul peak", "CPU stolen %", "final loss"], rows))
        own = winograd_flops(layer, a.size, a.filters, a.steps)
        if ref_med and own:
            rate = own / ref_med / 1e9
            beside = peaks.get(layer, {}).get("peak")
            out.append(f"\njaxviz_f32 in its own multiplies (its Winograd layers below {layer}, as run on CPU: "
                       f"{fmt(own / 1e12)} TFLOP a grid): {fmt(rate)} GFLOP/s, "
                       f"{fmt(100 * rate / best, 3)} % of the run's f32 matmul peak"
                       + (f", {fmt(100 * rate / beside, 3)} % of the {fmt(beside)} measured beside this layer"
                          if beside else ""))
        out.append("")
    if any(r.get("first_in_rounds") for per in results.values() for r in per.values()):
        out.append("\\* its first timed call was also its first call for that layer (no warm-up).\n")
    out.append("ratio = implementation median / jaxviz_f32 median (> 1: jaxviz is faster). "
               "CPU stolen % = median over its rounds of the share of both CPUs' time that the "
               "hypervisor gave to other guests during the call (/proc/stat's steal; the host's noise, "
               "which a best-of-5 matmul peak avoids). "
               "final loss = mean over filters of the loss on the final image.\n")

    # Summary over all layers.
    out.append("## Summary\n")
    seed_total = sum(medians["keras_seed"].values()) if "keras_seed" in medians else None
    seed_complete = "keras_seed" in medians and len(medians["keras_seed"]) == len(results)
    rows = []
    for name in ALL_PEERS:
        if name not in medians and name not in rss:
            continue
        m = medians.get(name, {})
        total = sum(m.values()) if m else None
        complete = len(m) == len(results)
        speedup = seed_total / total if (total and seed_total and complete and seed_complete) else None
        rows.append([
            name,
            (fmt(total) + ("" if complete else " (incomplete)")) if total else "—",
            fmt(speedup), fmt(rss.get(name), 4),
        ])
    out.append(md_table([
        "implementation", f"total s (sum of {len(results)} medians)", "speed-up vs keras_seed (×)", "peak RSS MB"
    ], rows))
    out.append("")

    # Image drift.
    pairs = [(x, y) for x, y in DRIFT_PAIRS if any(x in per and y in per for per in results.values())]
    if pairs:
        out.append("## Image drift (mean |difference| in grey levels, uint8 images)\n")
        rows = []
        for x, y in pairs:
            rows.append([f"{y} vs {x}"] + [
                fmt(drift(per.get(x, {}).get("save"), per.get(y, {}).get("save")), 3)
                for per in results.values()
            ])
        out.append(md_table(["pair"] + list(results), rows))
        out.append("")
    if notes:
        out.append("## Notes\n")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    out.append(f"Worker logs and saved images: {a.work_dir}\n")
    text = "\n".join(out)
    print(text)
    if a.markdown_out:
        with open(a.markdown_out, "w") as f:
            f.write(text)
        progress(f"wrote {a.markdown_out}")
    return 0


def main(argv=None):
    a = parse_args(argv)
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
