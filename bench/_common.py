"""Helpers shared by bench/compare.py and bench/scaling.py (stdlib + numpy only)."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
DEFAULT_WEIGHTS = os.path.join(REPO, "weights", "vgg16_imagenet_notop.h5")

sys.path.insert(0, os.path.join(BENCH, "peers"))
from _protocol import convs_up_to  # noqa: E402


def conv_macs(layer: str, size: int) -> int:
    """Forward multiply-accumulates of every conv up to and including ``layer``, per image.

    H x W x 9 x Cin x Cout per 3x3 SAME conv, with H = W = size // 2**pools_before
    (2x2/2 'valid' pools floor odd sizes, like Keras).
    """
    total = 0
    for _name, cin, cout, pools in convs_up_to(layer):
        s = size
        for _ in range(pools):
            s //= 2
        total += s * s * 9 * cin * cout
    return total


def grid_flops(layer: str, size: int, n: int, steps: int) -> float:
    """2 x forward MACs x 2 (forward + input gradient) x images x steps."""
    return 2.0 * conv_macs(layer, size) * 2.0 * n * steps


def winograd_flops(layer: str, size: int, n: int, steps: int) -> float:
    """jaxviz's own multiplies (2 flops each) on CPU: its Winograd F(4x4, 3x3) convs below
    ``layer`` (16 input channels or more: 36 multiplies per 4x4 tile and channel pair), forward
    and input gradient, x images x steps. The colour layer's direct conv and the target layer's
    one channel per image are not counted."""
    total = 0
    for name, cin, cout, pools in convs_up_to(layer):
        if name == layer:
            break
        s = size
        for _ in range(pools):
            s //= 2
        if cin >= 16:
            total += 36 * (-(-s // 4)) ** 2 * cin * cout
    return 2.0 * total * 2.0 * n * steps


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def git_rev() -> str:
    try:
        out = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        rev = out.stdout.strip() or "(no commit)"
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return rev + (" (dirty tree)" if dirty.stdout.strip() else "")
    except Exception:
        return "?"


def machine_lines() -> list[str]:
    mem = mem_total_gb()
    return [
        f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores"
        + (f", {mem:.0f} GB RAM" if mem else ""),
        f"- load average at start: {loadavg()}",
        f"- OS: {platform.platform()}, Python {platform.python_version()}",
        f"- jaxviz tree: {git_rev()}",
    ] + [f"- {k}={os.environ[k]} (code paths restricted)" for k in ISA_LIMITS if os.environ.get(k)]


# What confines each peer's code to fewer vector extensions than the CPU has (an AVX2 run on an
# AVX-512 CPU, say): named in every table made under them.
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE", "XLA_FLAGS", "CXX")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    def line(cells):
        return "| " + " | ".join(
            (str(c).ljust(w) if i == 0 else str(c).rjust(w)) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"
    sep = "|" + "|".join(
        (":" + "-" * (w + 1)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)
    ) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def fmt(x, digits=3, none="—") -> str:
    if x is None:
        return none
    if isinstance(x, float):
        if x != x:
            return none
        if abs(x) >= 10 ** digits:
            return f"{x:.0f}"
        return f"{x:#.{digits}g}".rstrip(".")
    return str(x)


def matmul_peak(n: int = 2048, reps: int = 5, use_jax: bool = True) -> dict:
    """Best-of-``reps`` GFLOP/s of an n x n float32 matmul with numpy and (optionally) jax."""
    import numpy as np

    res = {}
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    res["numpy"] = flops / best / 1e9
    if use_jax:
        try:
            import jax
            import jax.numpy as jnp

            ja, jb = jnp.asarray(a), jnp.asarray(b)
            f = jax.jit(jnp.matmul)
            f(ja, jb).block_until_ready()
            best = min(_timed(lambda: f(ja, jb).block_until_ready()) for _ in range(reps))
            res["jax"] = flops / best / 1e9
        except Exception as e:  # jax missing or broken: numpy's number still stands
            print(f"note: jax matmul peak not measured ({type(e).__name__}: {e})", file=sys.stderr)
    res["peak"] = max(res.values())
    return res


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs from /proc/stat, or None where there is none.

    Steal is the time the hypervisor ran something else on this VM's CPUs: on a shared host
    it is part of the noise that a grid's wall time carries and a best-of-5 matmul does not."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(x) for x in fields[1:]]
    # guest time (fields 9, 10) is already counted in user and nice
    return ticks[7], sum(ticks[:8])


def stolen(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of all CPUs' time stolen between two ``cpu_ticks()`` readings, or None."""
    if not before or not after or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
