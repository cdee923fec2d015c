"""Running a command line's work so that Ctrl-C and SIGTERM end it at once, without a crash.

A Python signal handler only runs between bytecodes of the main thread, so while the
main thread waits inside a compiled XLA call an interrupt takes effect only when the
call returns (seconds, or minutes); and unwinding to interpreter shutdown while XLA
work is still in flight can crash the process (SIGSEGV). So the work runs in a daemon
thread; the main thread waits in short slices, and on SIGINT or SIGTERM it closes the
``WriteGate`` (waiting for a write in progress to finish, so no file is partial and
no temporary file stays), says what was done, and leaves with ``os._exit(130)``: no
interpreter teardown while compiled work runs.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
EXIT_INTERRUPTED = 130


class WriteGate:
    """Held around each atomic write (``with gate: save(...)``); closing it waits for the
    write in progress and then blocks every later one for good."""

    def __init__(self):
        self._lock = threading.Lock()

    def __enter__(self) -> "WriteGate":
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def close(self, timeout: float = 30.0) -> bool:
        """Wait (at most ``timeout`` s) for the write in progress; later writes never start."""
        return self._lock.acquire(timeout=timeout)


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def run_interruptible(work: Callable[[], T], gate: WriteGate, on_interrupt: Callable[[], None]) -> T:
    """``work()`` in a worker thread; its result or exception comes back here.

    On SIGINT or SIGTERM (main thread only): close ``gate``, call ``on_interrupt()``
    (print the message, release locks), flush and ``os._exit(130)``. A KeyboardInterrupt
    raised by ``work`` itself is re-raised like any exception. Outside the main thread
    ``work`` simply runs in the caller's thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return work()
    box: dict = {}

    def target():
        try:
            box["value"] = work()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread as is
            box["error"] = e

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    worker = threading.Thread(target=target, name="jaxviz-work", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        gate.close()
        try:
            on_interrupt()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(EXIT_INTERRUPTED)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if "error" in box:
        raise box["error"]
    return box["value"]
