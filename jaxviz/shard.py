"""Devices and hosts: the render engine sharded over a 1-D mesh of the local devices.

A round is ``batch`` filters (objective items) per device; the filters (and their start images) are
split across the mesh's one axis, ``"batch"``, and the weights are replicated. Every
round has the same per-device shape (the last one is padded with copies of its last
filter), so each device runs the same compiled program whatever the device count:
the same filter gives the same image, bit for bit, on 1 device or 8, on one host or
several (checked in tests/test_atlas.py).

Across hosts, :func:`init_distributed` calls ``jax.distributed.initialize``; each
process then renders its own share of the work on its own local devices. Nothing
is communicated between processes except through the shared output folder.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from typing import Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxviz import checks
from jaxviz.errors import JaxvizError, error_line, notice

AXIS = "batch"


class Process(NamedTuple):
    """This process's index and the number of processes of the job."""

    index: int = 0
    count: int = 1


MAX_PROCESSES = 1 << 16  # the command line's bound on --num-processes


def _env_int(name: str, lo: int) -> int | None:
    """An integer from the environment, checked as the command line checks its option
    (JAX_NUM_PROCESSES=0 made a range "0--1" in the error line)."""
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        v = int(text)
    except ValueError:
        raise JaxvizError(f"environment variable {name}={text!r} is not an integer") from None
    return checks.integer(f"environment variable {name}", v, lo, MAX_PROCESSES)


def _address(text: str) -> str:
    """``HOST:PORT``, checked before JAX takes it: without a port JAX failed with an IndexError; a host
    that is no host name (``::1:1234``, ``http://h:1234``) had it wait for minutes, then abort."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise JaxvizError(f"the coordinator {text!r} (--coordinator or JAX_COORDINATOR_ADDRESS) is not HOST:PORT; "
                          "give process 0's address and a free port, e.g. 10.0.0.1:12345")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in host and bare == host and set(host.lower()) <= set("0123456789abcdef:."):
        raise JaxvizError(f"the coordinator {text!r}: an IPv6 address goes in brackets, e.g. [{host}]:{port}")
    try:
        socket.getaddrinfo(bare, int(port), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise JaxvizError(f"the coordinator {text!r}: no such host {bare!r}; give process 0's host name or "
                          "address and a port, e.g. 10.0.0.1:12345") from None
    return text


def _port_free(address: str) -> None:
    """Process 0 serves the job on every address at the coordinator's port (as JAX does, ``[::]``): a
    port already taken (another job's coordinator) failed inside JAX with "Failed to start RPC server"."""
    port = int(address.rpartition(":")[2])
    family, host = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "")
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return  # no IPv6 here, or another limit: JAX says what it finds
            raise JaxvizError(f"the coordinator's port {port} is in use on this machine (another job's "
                              "coordinator?); give every process another --coordinator port") from None


def _watchdog(what: str, timeout: float) -> threading.Event:
    """An event to set once ``what`` is done; if it is not within ``timeout`` s, one error line and exit
    status 2: JAX's own timeout of joining aborted the process with a C++ stack trace (nothing is
    written before the job is joined, so nothing is left half done)."""
    done = threading.Event()

    def watch():
        if not done.wait(timeout):
            sys.stderr.write(error_line("jaxviz", f"{what} within {timeout:.0f} s; start every process "
                                        "with the same --coordinator and --num-processes") + "\n")
            sys.stderr.flush()
            os._exit(2)

    threading.Thread(target=watch, daemon=True).start()
    return done


def _cpp_log_level(level: int | None) -> None:
    """Set XLA's C++ log threshold (None: back to ``TF_CPP_MIN_LOG_LEVEL``'s, else warnings): the recoverable
    job's coordinator logs a warning on every start, past --quiet. A private API: absent, nothing changes."""
    try:
        from jax._src.lib import utils

        env = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1")
        default = int(env) if env.isdigit() else 1
        utils.absl_set_min_log_level(default if level is None else max(level, default))
    except Exception:
        pass


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, auto: bool = False, timeout: float = 300.0) -> Process:
    """Join a multi-process job with ``jax.distributed.initialize`` when one is asked for.

    Values not given fall back to the environment: ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. With none of them (and ``auto``
    false) this is a single-process job and JAX is left alone. ``auto`` lets JAX
    detect a cluster (SLURM, Open MPI, ...) for whatever is still unset. Must run
    before anything else touches a device. Processes that have not all joined within
    ``timeout`` seconds end this one (one line, exit status 2).
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES", 1)
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID", 0)
    if coordinator is not None:
        _address(coordinator)
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise JaxvizError(f"--process-id {process_id} must be in 0-{num_processes - 1} for --num-processes {num_processes}")
    if not auto and coordinator is None and (num_processes is None or num_processes == 1):
        if process_id not in (None, 0):
            raise JaxvizError(f"--process-id {process_id} needs --num-processes and --coordinator")
        return Process(0, 1)
    if not auto:
        missing = [n for n, v in (("--coordinator", coordinator), ("--num-processes", num_processes),
                                  ("--process-id", process_id)) if v is None]
        if missing:
            raise JaxvizError(
                f"a multi-process run needs {', '.join(missing)} (or JAX_COORDINATOR_ADDRESS, "
                "JAX_NUM_PROCESSES, JAX_PROCESS_ID); e.g. --coordinator 10.0.0.1:12345 --num-processes 2 --process-id 0"
            )
    # the processes share nothing but the folder: without this, process 0 was aborted (a C++ stack dump, status
    # 134) about 100 s after another process died, instead of waiting --wait for its chunks and saying so
    jax.config.update("jax_enable_recoverability", True)
    if coordinator is not None and process_id == 0:
        _port_free(coordinator)
    where = f" at {coordinator}" if coordinator else ""
    if num_processes is not None and process_id is not None:
        notice(f"process {process_id}/{num_processes}: joining the job{where} (waiting up to {timeout:.0f} s for "
               "the other processes)")
    joined = _watchdog(f"the {num_processes or 'cluster'} processes did not all join the job{where}", timeout)
    _cpp_log_level(2)  # errors only
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=int(timeout) + 60)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if coordinator is None:  # auto: JAX's cluster detection found none (it said "at None")
            raise JaxvizError(f"--cluster: JAX found no cluster to join here ({first}); give --coordinator, "
                              "--num-processes and --process-id, or run without --cluster") from None
        raise JaxvizError(f"cannot join the distributed job at {coordinator} ({first})") from None
    finally:
        joined.set()
        _cpp_log_level(None)
    return Process(jax.process_index(), jax.process_count())


def local_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh, axis ``"batch"``, over this process's devices (all of them by default)."""
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devices, dtype=object), (AXIS,))


class Round(NamedTuple):
    """One finished round: which entries of the request it covers, and their results."""

    start: int
    stop: int
    images: np.ndarray  # uint8 (n, size, size, 3), what the PNGs hold
    losses: np.ndarray  # (n,) each item's final objective value
    seconds: float
    frames: np.ndarray | None = None  # uint8 (n, frames, size, size, 3) with snapshots


_deprocess_one = None


def to_uint8(recipe, images: np.ndarray) -> np.ndarray:
    """Final images -> uint8; the seed's deprocess one image at a time (a fixed shape, so the
    same bits whatever the batch or device count), else ``jaxviz.api.to_uint8``."""
    global _deprocess_one
    from jaxviz.api import to_uint8 as plain

    if not recipe.param.build(1).raw:
        return plain(recipe, images)
    checks.showable("the images", images)
    if _deprocess_one is None:
        from jaxviz.image import deprocess

        _deprocess_one = jax.jit(deprocess)
    flat = images.reshape((-1,) + images.shape[-3:])
    out = np.stack([np.asarray(_deprocess_one(r)) for r in flat]) if len(flat) else np.zeros(flat.shape, np.uint8)
    return out.reshape(images.shape)


class ShardedRender:
    """The engine's compiled run (``jaxviz.engine.run_chunk``) over a mesh, in rounds of a
    number of items per device, for any model, objective and recipe."""

    def __init__(self, model, recipe, mesh: Mesh | None = None, every: int = 0):
        from jaxviz import engine

        if recipe.diversity != 1:
            raise JaxvizError("the atlas renders one image per filter; use diversity 1")
        self.mesh = mesh if mesh is not None else local_mesh()
        self.devices = self.mesh.size
        self.split = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.model, self.recipe, self.every = model.static(), recipe, every
        self.blank, self.hyper = engine._split_optimizer(recipe)
        self.params = jax.device_put(model.params, NamedSharding(self.mesh, PartitionSpec()))
        self.ids = model.layer_index

    def rounds(self, objective, key: jax.Array, batch: int) -> Iterator[Round]:
        """Yield each round's results as it finishes: ``batch`` items per device, every round the
        same shape (one compile)."""
        from jaxviz import engine

        engine.check(self.model._replace(params=self.params), objective, self.recipe)
        if batch < 1:
            raise JaxvizError(f"--batch must be 1 or more, not {batch}")
        round_size = batch * self.devices
        n = len(objective)
        keys = engine.item_keys(key, objective.key_ids(self.model))
        args = objective.batched_args()
        for start in range(0, n, round_size):
            t0 = time.perf_counter()
            stop = min(n, start + round_size)
            pad = round_size - (stop - start)
            take = lambda a: jnp.concatenate([a[start:stop]] + [a[stop - 1:stop]] * pad) if pad else a[start:stop]
            k = take(keys)
            x0 = engine.initial(self.recipe, k)
            put = lambda a: jax.device_put(jnp.asarray(a), self.split)
            out = engine.run_chunk(self.model, self.params, objective.term, self.blank, self.every, self.hyper,
                                   jax.tree.map(lambda a: put(take(jnp.asarray(a))), args), put(k), put(x0))
            m = stop - start
            images, values = np.asarray(out[0])[:m], np.asarray(out[1])[:m]
            frames = None if out[3] is None else to_uint8(self.recipe, np.asarray(out[3])[:m])
            yield Round(start, stop, to_uint8(self.recipe, images), values, time.perf_counter() - t0, frames)


def _client():
    """The distributed runtime's client when jax.distributed is initialized, else None."""
    try:
        from jax._src import distributed

        return distributed.global_state.client
    except Exception:  # private API: absent or changed in this JAX version
        return None


def publish(key: str, value: str) -> bool:
    """Set ``key`` in the distributed key-value store; False when there is none."""
    client = _client()
    if client is None:
        return False
    client.key_value_set(key, value)
    return True


def receive(key: str, timeout_s: float) -> str | None:
    """Wait for ``key`` in the distributed key-value store; None when there is no store."""
    client = _client()
    if client is None:
        return None
    try:
        return client.blocking_key_value_get(key, int(timeout_s * 1000))
    except Exception as e:  # a timeout surfaces as a runtime error from the client
        raise JaxvizError(f"process 0 did not publish {key} within {timeout_s:.0f} s ({str(e).splitlines()[0]})") from None


def shutdown() -> None:
    """Leave the distributed job, if one was joined (errors are ignored: the work is on disk)."""
    if _client() is not None:
        try:
            jax.distributed.shutdown()
        except Exception:
            pass
