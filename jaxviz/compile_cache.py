"""The commands' persistent XLA compilation cache: a second run loads what the first compiled.

Each run of ``python -m jaxviz.grid`` (or ``jaxviz.atlas``, ``jaxviz.examples``) compiles one
program per layer and chunk shape, up to two seconds each on a 2-core CPU, the same programs
every time. The commands keep them in JAX's persistent compilation cache, in jaxviz's cache
folder (``xla/``, a folder per CPU and jax version: XLA:CPU compiles for the CPU it runs on).
Only the commands do: the library leaves a program's JAX settings to the program.
``JAXVIZ_COMPILE_CACHE=0`` turns it off; a path (``/fast/xla``, ``~/xla``, ``./xla``: a value
holding a path separator or starting with ``~`` or ``.``) keeps it in that folder instead, a
folder per CPU and jax version inside; one it cannot use (a file, not writable) is said in one
line, and the run goes on without a cache. A cache the user set up (``JAX_COMPILATION_CACHE_DIR``)
is left as it is. Like the compiled library beside it, what the folder holds is run: keep it
the user's own.

Some CPUs refuse every executable XLA:CPU reloads, logging an error each time (tuning flags
taken for missing CPU features, jax-ml/jax#38445); so before the first use of a folder, one
tiny program is compiled, serialized and loaded back, quietly, and the folder remembers the
answer (``reload-ok`` or ``reload-refused``).

The cache only saves time: a folder with under ``MIN_FREE`` bytes free is not used, and an entry
JAX cannot write or read (a disk that fills during the run) is skipped without its warning, one
per program, a dozen in a grid.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

ENV = "JAXVIZ_COMPILE_CACHE"  # "0" (or off, no, false, none): never; a path: that folder
MAX_BYTES = 1 << 30  # the folder's size at most (JAX evicts the least recently used entries)
MIN_FREE = 64 << 20  # bytes free in its file system for the cache to be used (an entry: up to ~0.2 MB here)
OK, REFUSED = "reload-ok", "reload-refused"


def folder(base: str | os.PathLike | None = None) -> Path:
    """This CPU's and jax version's folder in ``base``, by default ``xla/`` of jaxviz's cache."""
    import jax
    import jaxlib

    from jaxviz.onednn import cpu_signature
    from jaxviz.weights import default_cache_dir

    tag = hashlib.sha256(b"\0".join([cpu_signature(), jax.__version__.encode(), jaxlib.__version__.encode()]))
    return (default_cache_dir() / "xla" if base is None else Path(base)) / tag.hexdigest()[:16]


def chosen(value: str | None) -> str | None:
    """The folder a ``JAXVIZ_COMPILE_CACHE`` value names where it looks like a path (it holds a path
    separator, or starts with ``~`` or ``.``), ``~`` expanded; None for a switch ("1", "on", unset)."""
    from jaxviz.checks import home

    value = value or ""
    if not (os.sep in value or os.altsep and os.altsep in value or value.startswith(("~", "."))):
        return None
    return os.path.abspath(home(value))


def use() -> Path | None:
    """Point JAX's persistent compilation cache at ``folder()`` (in the folder ``JAXVIZ_COMPILE_CACHE``
    names, if it names one) before anything compiles; the folder, or None where it is off, set up by
    the user already, not writable, or refused by this CPU (then nothing changes; a folder the user
    chose and it cannot use is said in one line)."""
    from jaxviz.checks import off
    from jaxviz.errors import JaxvizError

    if off(os.environ.get(ENV)):
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return None
    value = os.environ.get(ENV)
    try:
        base = chosen(value)
    except JaxvizError:
        return _unusable(value, "no such user's home folder")
    mine, path = value if base is not None else None, None  # the user's folder: why it is not used is said
    try:
        path = folder(base)
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):  # JAX would warn at every entry
            return _unusable(mine, f"cannot write to {path}")
        if shutil.disk_usage(path).free < MIN_FREE:
            return _unusable(mine, f"under {MIN_FREE >> 20} MB free at {path}")
        if not (path / OK).exists():
            if (path / REFUSED).exists():
                return None
            ok = _reloads()
            (path / (OK if ok else REFUSED)).touch()
            if not ok:
                return None
    except OSError as e:
        from jaxviz.image import in_the_way

        where = path or base
        return _unusable(mine, where and in_the_way(where) or f"cannot use {where} ({e.strerror})")
    warnings.filterwarnings("ignore", r"Error (writing|reading) persistent compilation cache entry", UserWarning)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if importlib.util.find_spec("filelock"):  # JAX evicts with it; without, the size is not capped
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path


def _unusable(value: str | None, why: str) -> None:
    """No cache: said in one line where the user chose its folder (``value``), quietly for jaxviz's own."""
    if value:
        from jaxviz.errors import notice, printable

        notice(printable(f"{ENV}={value}: {why}; no compile cache this run (give another folder, or 0 for none)"))
    return None


def for_command() -> Path | None:
    """``use()`` where this process runs one of jaxviz's commands (``python -m jaxviz.grid`` and
    the like), not where the library runs in someone's program or tests call a ``main``."""
    from jaxviz.cli_run import launched_command

    return use() if launched_command() else None


def _reloads() -> bool:
    """Whether XLA loads back, with nothing logged, an executable it just compiled and serialized
    (through JAX's own calls for its cache; any failure, or a change in them, counts as no).
    In the main thread, SIGINT, SIGTERM and SIGHUP wait until the terminal has its stderr back."""
    from jaxviz.cli_run import stop_signals

    main = threading.current_thread() is threading.main_thread()
    held: list[int] = []
    handlers = {s: signal.signal(s, lambda n, _: held.append(n)) for s in stop_signals()} if main else {}
    try:
        with tempfile.TemporaryFile() as log:
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)  # XLA logs a refusal from C++: kept from the terminal
            try:
                ok = _roundtrip()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            log.seek(0)
            return ok and not log.read()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        for n in held:
            signal.raise_signal(n)


def _roundtrip() -> bool:
    """A tiny program compiled, serialized and deserialized (as JAX's cache does it); False on any error."""
    try:
        import jax
        import numpy as np
        from jax._src import compiler, xla_bridge
        from jax._src.lib import xla_client

        exe = jax.jit(lambda x: x * 2.0 + 1.0).lower(np.zeros(8, np.float32)).compile().runtime_executable()
        backend = xla_bridge.get_backend()
        back = backend.deserialize_executable(backend.serialize_executable(exe),
                                              xla_client.DeviceList(tuple(jax.devices()[:1])),
                                              compiler.get_compile_options(num_replicas=1, num_partitions=1))
        return back is not None
    except Exception:
        return False
