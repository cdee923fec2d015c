"""A per-machine plan for the float32 ascent on CPU: filters per chunk per target layer
(and optionally the conv formulation per layer shape), timed on this machine and cached
like FFTW's wisdom. Opt-in: set ``JAXVIZ_PLAN``.

The fastest chunk size differs between CPUs (bench/README.md): a constant tuned on one is
a guess on the next. Decisions, each from medians of interleaved timings:

* chunk per target layer (VGG16): on first use for a layer and size, ``chunk_for`` runs the
  seed ascent itself (its 40 steps) in one chunk of each candidate size and keeps the lowest
  time per image (about a minute per layer on a 2-core CPU). Convs timed alone ranked chunks
  the other way round from the ascent on a Sapphire Rapids and a Zen 5 (bench/README.md):
  the ascent's relu, pool and memory traffic move with the chunk too.
* conv per layer shape (size, in, out channels), only when built with ``--convs
  wino4,xla``: each conv alone (forward + input gradient, kernels transformed once) at
  every chunk, the lowest time per image. XLA's conv timed alone beat Winograd at 64
  channels on a Sapphire Rapids, yet the ascent ran 2x slower with it: for experiments.

``JAXVIZ_PLAN``: unset or ``off`` (or ``0``, ``no``, ``false``, ``none``): no plan, the built-in
constants (``ascent.CPU_BATCH``, ``ops.choice``); ``auto``: ``plan.json`` in jaxviz's cache folder, beside
the oneDNN and XLA caches (``$JAXVIZ_CACHE``, else ``$XDG_CACHE_HOME/jaxviz``, else ``~/.cache/jaxviz``);
any other value: that file. Timings are keyed by CPU model + jaxlib
version. ``JAXVIZ_PLAN=auto python -m jaxviz.plan`` rebuilds this machine's entry. Where a run cannot
save what it timed (a full disk), it says so in a notice and uses the timings, unsaved, for the rest of the process.
"""
from __future__ import annotations

import json
import os
import platform as _platform
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxviz.errors import notice

ENV = "JAXVIZ_PLAN"
CHUNKS = (8, 16, 32, 64)
CONVS = ("wino4",)  # timed by default; ALL_CONVS with --convs
ALL_CONVS = ("wino4", "xla")
AUTO = ("auto", "on", "1")
TIMING = "ascent chunks"  # how chunks are timed: part of the key, so older timings are redone
# timings this process measured but could not save (a full disk): {(plan file, machine): timings}, merged
# into what ``load`` reads, so that later layers and calls use them rather than time again
_UNSAVED: dict[tuple[str, str], dict] = {}
STEPS = 40  # ascent steps per timed chunk: the seed's; with fewer, the per-call work (kernel transforms, start
# images) dominated and made small chunks look slow (4 steps ranked chunk 8 last on a Zen 5; 40 first)


class Shape(NamedTuple):
    """A 3x3 conv layer's input: square size, input and output channels."""

    size: int
    cin: int
    cout: int

    def key(self) -> str:
        return f"{self.size}x{self.cin}x{self.cout}"


def cache_path() -> Path | None:
    """The plan file, or None when ``JAXVIZ_PLAN`` is unset or off."""
    from jaxviz.checks import off

    env = os.environ.get(ENV, "").strip()
    if not env or off(env):
        return None
    if env.lower() not in AUTO:
        path = os.path.expanduser(env)
        if path.startswith("~"):  # ~user of no such user: not a folder ./~user to create
            from jaxviz.errors import JaxvizError

            raise JaxvizError(f"{ENV}={env}: no such user's home folder; set {ENV} to a file path, auto or off")
        return Path(path)
    from jaxviz.weights import default_cache_dir

    return default_cache_dir() / "plan.json"  # JAXVIZ_CACHE was ignored: the plan alone went elsewhere


def cpu_model(cpuinfo: str) -> str:
    """The first CPU's model name, family, model number and vector flags in ``/proc/cpuinfo``'s
    text (or ``onednn.cpu_signature``'s lines of it): two EPYCs here (a Zen 4 and a Zen 5) share
    the name "AMD EPYC" and these flags, not their family and model."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if not key and fields:
            break  # the end of the first processor's block
        fields.setdefault(key, value.strip())
    flags = set(fields.get("flags", "").split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    parts = [fields.get("model name", ""), fields.get("cpu family", ""), fields.get("model", ""), "+".join(sorted(flags))]
    return " ".join(p for p in parts if p)


def machine() -> str:
    """CPU model + jaxlib version + the CPUs this process may run on (``taskset``, a container's
    cpuset: XLA's and oneDNN's threads follow them, and with them the fastest chunk): a plan is
    valid only where all match."""
    import jaxlib

    from jaxviz.onednn import cpu_signature

    model = cpu_model(cpu_signature().decode(errors="replace")) or _platform.processor() or _platform.machine()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} | jaxlib {jaxlib.__version__} | {cpus} cpus | {TIMING}"


def _read(path: Path) -> dict:
    try:
        if not path.is_file():  # missing, or a pipe whose read would wait for good
            return {}
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
        return {}  # a missing or damaged file is rebuilt, never an error


def load(path: Path | None = None) -> dict:
    """This machine's timings ``{"shape/b/conv": seconds per image}`` (empty if none); entries
    of another shape (a file edited by hand, another version's: a conv jaxviz does not time, a
    chunk outside 1-64) are dropped and measured again."""
    path = cache_path() if path is None else path
    if path is None:
        return {}
    here = machine()
    entry = _read(path).get(here, {})
    saved = {k: v for k, v in entry.items() if _well_formed(k, v)} if isinstance(entry, dict) else {}
    return {**saved, **_UNSAVED.get((os.path.abspath(path), here), {})}


_CHUNK_TEXTS = frozenset(str(b) for b in range(1, max(CHUNKS) + 1))


def _well_formed(key, value) -> bool:
    """Whether ``key: value`` is a timing this module writes: "layer@size/chunk/ascent" or
    "shape/chunk/conv" of ALL_CONVS, a chunk of 1 to max(CHUNKS) (a chunk of 0 or 10**9, or a
    conv name ops does not have, or one of another precision, was adopted), a time above 0."""
    parts = key.split("/") if isinstance(key, str) else []
    return (len(parts) == 3 and parts[1] in _CHUNK_TEXTS
            and parts[2] in (("ascent",) if "@" in parts[0] else ALL_CONVS)
            and not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < float("inf"))


def writable(path: Path) -> Path:
    """``path``, once its folder exists and the file can be written; else one JaxvizError, before
    any timing (minutes) is spent on a plan that could not be kept."""
    from jaxviz.errors import JaxvizError
    from jaxviz.image import in_the_way

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        real = Path(os.path.realpath(path))  # a symbolic link is written through (image.atomic_write): its target
        ok = os.access(real.parent, os.W_OK) and (not real.exists() or os.access(real, os.W_OK) and real.is_file())
        why = ("a folder" if real.is_dir() else f"a link to {real}, whose folder is missing" if not real.parent.is_dir()
               else "not writable" if real.is_file() or not real.exists() else "not a regular file")
    except OSError as e:
        ok, why = False, in_the_way(path.parent) or e.strerror or str(e)
    if not ok:
        raise JaxvizError(f"{_setting()}: cannot write the plan to {path} ({why}); {_fix()}")
    if not _plan_like(path):
        raise JaxvizError(f"{ENV}: {path} is not a plan file (a plan is JSON text), so it is kept, not replaced; "
                          f"set {ENV} to another file, auto or off")
    return path


def _folder_setting() -> str | None:
    """The variable the plan's folder came from with ``JAXVIZ_PLAN=auto`` (``JAXVIZ_CACHE`` or
    ``XDG_CACHE_HOME``), or None (``JAXVIZ_PLAN`` itself, or the home folder's ``.cache``)."""
    if os.environ.get(ENV, "").strip().lower() not in AUTO:
        return None
    if os.environ.get("JAXVIZ_CACHE"):
        return "JAXVIZ_CACHE"
    return "XDG_CACHE_HOME" if os.path.isabs(os.environ.get("XDG_CACHE_HOME", "")) else None


def _setting() -> str:
    var = _folder_setting()
    return f"{ENV}=auto with {var}={os.environ[var]}" if var else ENV


def _fix() -> str:
    if var := _folder_setting():
        return f"set {var} to a writable folder, or {ENV} to a writable file or off"
    return f"set {ENV} to a writable file, auto or off"


def _plan_like(path: Path) -> bool:
    """Whether the file at ``path`` may be replaced by a plan: missing, empty, or text that begins
    as a plan's JSON does (a damaged plan is rebuilt; an image or a script a mistyped setting
    names is not overwritten)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return not head or head.startswith(b"{")


def save(timings: dict, path: Path | None = None) -> None:
    """Store this machine's timings (other machines' entries are kept), atomically."""
    from jaxviz.image import atomic_write

    path = cache_path() if path is None else path
    if path is None:
        return
    writable(path)
    data = _read(path)
    data[machine()] = timings
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, sort_keys=True).encode()),
                 fix=f"set {ENV} to another file, auto or off")


def time_conv(conv: str, shape: Shape, batch: int) -> callable:
    """A zero-argument callable running one conv's forward + input gradient (jit, blocking)."""
    from jaxviz import ops

    f = ops.VARIANTS[conv]
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (batch, shape.size, shape.size, shape.cin), jnp.float32)
    # transformed once, as the ascent does for all its steps: timing the kernel transform in
    # every call made large chunks look cheap (it does not grow with the chunk)
    k = ops.prepare(jax.random.normal(k2, (3, 3, shape.cin, shape.cout), jnp.float32) * 0.05)
    step = jax.jit(jax.grad(lambda a, w: jnp.sum(f(a, w) ** 2)))
    return lambda: jax.block_until_ready(step(x, k))


def measure(shapes, chunks=CHUNKS, convs=CONVS, reps: int = 3) -> dict:
    """Seconds per image of each (shape, chunk, conv), median of ``reps`` interleaved runs."""
    return _medians({f"{s.key()}/{b}/{c}": time_conv(c, s, b) for s in shapes for b in chunks for c in convs}, reps)


def _medians(runs: dict, reps: int) -> dict:
    """{key: seconds per image}: each run (keys ".../chunk/...") warmed up once, then ``reps`` rounds interleaved."""
    for r in runs.values():
        r()  # compile + warm up
    ts = {k: [] for k in runs}
    for _ in range(reps):
        for k, r in runs.items():
            t0 = time.perf_counter()
            r()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) / int(k.split("/")[1]) for k, v in ts.items()}


def shapes_below(layer: str, size: int, spec=None) -> list[Shape]:
    """The conv shapes (Winograd-eligible ones) that run below ``layer`` at ``size`` px."""
    from jaxviz import ops
    from jaxviz.model import VGG16, layer_info, layers

    layer_info(layer, spec or VGG16)  # a JaxvizError naming the valid layers
    out, s = [], size
    for l in layers(spec or VGG16):
        if l.name == layer:
            break
        if l.kind == "pool":
            s //= 2
        elif l.in_channels >= ops.WINOGRAD_MIN_IN_CHANNELS:
            out.append(Shape(s, l.in_channels, l.out_channels))
    return out


def best_conv(timings: dict, shape: Shape) -> str | None:
    """The conv with the lowest time per image at any chunk, or None if not measured."""
    best = min(((t, k.split("/")[2]) for k, t in timings.items() if k.startswith(shape.key() + "/")), default=None)
    return best[1] if best else None


def time_ascent(params: dict, layer: str, size: int, chunk: int, steps: int = STEPS) -> callable:
    """A zero-argument callable running ``chunk`` filters of the seed ascent at ``layer`` (VGG16
    ``params``) in one compiled call of ``steps`` steps, blocking."""
    from jaxviz.ascent import AscentConfig, ascend

    config = AscentConfig(size=size, steps=steps)
    return lambda: jax.block_until_ready(ascend(params, layer, range(chunk), config=config, batch_size=chunk).images)


def ascent_key(layer: str, size: int, chunk: int) -> str:
    return f"{layer}@{size}/{chunk}/ascent"


def measure_chunks(layer: str, size: int, chunks=CHUNKS, reps: int = 3) -> dict:
    """Seconds per image of a chunk of the ascent at each size (the embedded VGG16 weights),
    median of ``reps`` interleaved runs."""
    from jaxviz.api import load_params

    params = load_params()
    return _medians({ascent_key(layer, size, b): time_ascent(params, layer, size, b) for b in chunks}, reps)


def candidates(layer: str, size: int) -> tuple[int, ...]:
    """The chunk sizes to time for ``layer`` at ``size``: CHUNKS up to the memory bound."""
    from jaxviz.ascent import batch_size_for

    fits = batch_size_for(layer, size, max(CHUNKS))
    return tuple(b for b in CHUNKS if b <= fits) or (fits,)


def best_chunk(timings: dict, layer: str, size: int) -> int | None:
    """The measured chunk with the lowest time per image for ``layer`` at ``size``, or None."""
    prefix = f"{layer}@{size}/"
    best = min(((t, int(k.split("/")[1])) for k, t in timings.items() if k.startswith(prefix)), default=None)
    return best[1] if best else None


def ensure(shapes, path: Path | None = None, reps: int = 3, chunks=CHUNKS, convs=CONVS, strict: bool = False) -> dict:
    """This machine's timings, measuring (and caching) the conv shapes not yet in them; a failed save
    is an error with ``strict`` (``python -m jaxviz.plan``), else a notice (``_add``)."""
    timings = load(path)
    missing = [s for s in shapes if not any(k.startswith(s.key() + "/") for k in timings)]
    if missing:
        writable(path or cache_path())
        notice(f"jaxviz: timing {len(missing)} conv shape(s) on this CPU once "
               f"(cached in {path or cache_path()}; {ENV}=off to skip)")
        timings = _add(measure(missing, chunks, convs, reps=reps), path, strict)
    return timings


def ensure_chunks(layer: str, size: int, path: Path | None = None, reps: int = 3, chunks=CHUNKS,
                  strict: bool = False) -> dict:
    """This machine's timings, with ``layer``'s ascent chunks at ``size`` measured (and cached) once; a
    failed save is an error with ``strict`` (``python -m jaxviz.plan``), else a notice (``_add``)."""
    timings = load(path)
    if best_chunk(timings, layer, size) is None:
        writable(path or cache_path())
        notice(f"jaxviz: timing the ascent at {layer} ({size} px) in chunks of {', '.join(map(str, chunks))} "
               f"on this CPU once (cached in {path or cache_path()}; {ENV}=off to skip)")
        timings = _add(measure_chunks(layer, size, chunks, reps), path, strict)
    return timings


def _add(new: dict, path: Path | None, strict: bool = False) -> dict:
    """Save ``new`` timings into this machine's plan as the file holds it now (read again: another
    process may have saved its own during the minutes ``new`` took) and return the whole. A failed
    save (a full disk) raises with ``strict``; else it is a notice, and ``new`` is kept in memory for
    ``load``: a run failed after its minutes of timing, for a plan that only speeds it up."""
    from jaxviz.errors import JaxvizError

    path = cache_path() if path is None else path
    timings = {**load(path), **new}
    key = (os.path.abspath(path), machine())
    try:
        save(timings, path)
    except JaxvizError as e:
        if strict:
            raise
        _UNSAVED.setdefault(key, {}).update(new)
        notice(f"jaxviz: the timings just measured serve this run but are not saved: {e}")
        return timings
    _UNSAVED.pop(key, None)  # saved with the rest
    return timings


def chunk_for(layer: str, size: int, spec=None) -> int | None:
    """The planned filters per chunk for ``layer`` at ``size`` px; None when the plan is off,
    for other models than VGG16 (their weights may not be here to time), or for a layer
    with no Winograd-eligible conv below it."""
    from jaxviz.model import VGG16

    if cache_path() is None or (spec is not None and spec != VGG16) or not shapes_below(layer, size):
        return None
    return best_chunk(ensure_chunks(layer, size, chunks=candidates(layer, size)), layer, size)


def conv_choice(size: int, cin: int, cout: int) -> str | None:
    """The planned conv for a layer shape, if this machine's plan has measured it."""
    if cache_path() is None:
        return None
    return best_conv(load(), Shape(size, cin, cout))


def main(argv=None) -> int:
    from jaxviz.checks import MAX_SIZE
    from jaxviz.cli_args import OneLineParser, parse_layers, positive_int
    from jaxviz.model import min_size

    ap = OneLineParser(prog="python -m jaxviz.plan",
                       description="Rebuild this machine's conv/chunk plan (see jaxviz/plan.py).")
    ap.add_argument("--layers", default="block2_conv1,block3_conv1,block4_conv1,block5_conv1",
                    help="target layers whose chunk to time, comma-separated, or 'all' (default: the first of "
                         "blocks 2-5)")
    ap.add_argument("--size", type=positive_int("--size", 1, MAX_SIZE), default=64,
                    help="image size in pixels the timings are for (default 64)")
    ap.add_argument("--reps", type=positive_int("--reps", 1, 1000), default=3,
                    help="interleaved timed rounds of each candidate, the median kept (default 3)")
    ap.add_argument("--convs", default=",".join(CONVS), help=f"formulations to time, of {','.join(ALL_CONVS)}")
    ap.add_argument("--show", action="store_true", help="print the cached plan, measure nothing")
    args = ap.parse_args(argv)
    from jaxviz.errors import JaxvizError

    try:
        path = cache_path()
    except JaxvizError as e:
        return _error(str(e))
    if path is None:
        return _error(f"the plan is off ({ENV}={os.environ.get(ENV, '')!r}); set {ENV}=auto (or a file) to use one")
    convs = tuple(args.convs.split(","))
    if not set(convs) <= set(ALL_CONVS):
        return _error(f"--convs must be among {','.join(ALL_CONVS)}, not {args.convs}")
    try:
        layer_shapes = {l: shapes_below(l, args.size) for l in parse_layers(args.layers)}
        for l in layer_shapes:
            if args.size < min_size(l):
                raise JaxvizError(f"--size {args.size} is too small for {l}; the minimum is {min_size(l)} px")
        from jaxviz import checks

        if not args.show:
            writable(path)
            for l, below in layer_shapes.items():
                if below:  # one image must fit; candidates() bounds the chunks by the rest
                    checks.run_budget(l, args.size, 1, 1)
        checks.backend()
    except JaxvizError as e:
        return _error(str(e))
    from jaxviz.cli_run import WriteGate, run_interruptible

    def interrupted():
        print("jaxviz.plan: interrupted; what was measured is kept, rerun to measure the rest", file=sys.stderr)

    try:
        return run_interruptible(lambda: _build(args, path, layer_shapes, convs), WriteGate(), interrupted)
    except JaxvizError as e:
        return _error(str(e))


def _error(message: str) -> int:
    """Print ``message`` as the command's one error line (``jaxviz.plan: error: ...``, the
    prefix grid, atlas and examples use) and return the bad-input status, 2."""
    from jaxviz.errors import error_line

    print(error_line("jaxviz.plan", message), file=sys.stderr)
    return 2


def _build(args, path: Path, layer_shapes: dict, convs: tuple) -> int:
    """``main``'s work: measure what ``args`` asks (unless --show), then print the plan."""
    if not args.show and any(layer_shapes.values()):
        shapes = sorted({s for v in layer_shapes.values() for s in v}) if convs != CONVS else []
        stale = [f"{l}@{args.size}/" for l in layer_shapes] + [s.key() + "/" for s in shapes]
        save({k: v for k, v in load(path).items() if not k.startswith(tuple(stale))}, path)
        if shapes:
            fits = min(max(candidates(l, args.size)) for l, below in layer_shapes.items() if below)
            ensure(shapes, path, reps=args.reps, chunks=tuple(b for b in CHUNKS if b <= fits) or (fits,), convs=convs,
                   strict=True)
        for l, below in layer_shapes.items():
            if below:
                ensure_chunks(l, args.size, path, reps=args.reps, chunks=candidates(l, args.size), strict=True)
    from jaxviz.cli_run import show

    timings = load(path)
    lines = [f"{machine()}\n{path}"]
    if not timings and any(layer_shapes.values()):  # --show only: a build has measured something
        why = "no such file" if not os.path.exists(path) else "unreadable, or timed on other machines only"
        lines.append(f"no timings for this machine ({why}): the built-in choices hold; python -m jaxviz.plan measures them")
    for l, shapes in layer_shapes.items():
        if not shapes:
            lines.append(f"{l} @ {args.size}px: nothing to plan (no Winograd layer below it): the built-in chunk holds")
            continue
        per_image = ", ".join(f"{b}: {1e3 * timings[ascent_key(l, args.size, b)]:.1f}" for b in CHUNKS
                              if ascent_key(l, args.size, b) in timings)
        chunk = best_chunk(timings, l, args.size)
        convs_line = " ".join(f"{s.key()}:{best_conv(timings, s) or 'wino4'}" for s in shapes)
        lines.append(f"{l} @ {args.size}px: " + (f"chunk {chunk} (ms per image: {per_image})" if chunk
                                                else "chunk not measured") + f"; convs {convs_line}")
    show("\n".join(lines))
    return 0


if __name__ == "__main__":
    from jaxviz.cli_run import exit_command

    exit_command(main())  # a late Ctrl-C cannot turn the status into -2 (cli_run.exit_command)
