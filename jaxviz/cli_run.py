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
    write in progress and then blocks every later one for good. ``final_write``, if the work
    set one (a state at its last completed step, say), runs once as the gate closes, so an
    interrupt loses no completed step however rarely the work saves on its own."""

    def __init__(self):
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.final_write: Callable[[], None] | None = None

    def __enter__(self) -> "WriteGate":
        self._lock.acquire()
        if self._closed.is_set():  # the process is about to exit: this write never starts
            self._lock.release()
            threading.Event().wait()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def close(self, timeout: float = 30.0) -> bool:
        """Wait (at most ``timeout`` s) for the write in progress, then make ``final_write``;
        later writes never start."""
        self._closed.set()
        if not self._lock.acquire(timeout=timeout):
            return False
        write, self.final_write = self.final_write, None
        if write is not None:
            try:
                write()
            except OSError:  # a full disk, say: the last periodic write stays
                pass
        return True


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a command as Ctrl-C does: SIGINT, SIGTERM, and SIGHUP (its terminal
    closed: it used to kill the process where it stood, an examples pass losing up to 19 batches)
    unless the process inherited SIGHUP ignored, as under ``nohup``: then the run outlives it."""
    hup = getattr(signal, "SIGHUP", None)
    if hup is None or signal.getsignal(hup) is signal.SIG_IGN:
        return signal.SIGINT, signal.SIGTERM
    return signal.SIGINT, signal.SIGTERM, hup


COMMANDS = {"jaxviz.grid": "jaxviz.grid: interrupted; completed layers: none",
            "jaxviz.atlas": "jaxviz.atlas: interrupted",
            "jaxviz.examples": "jaxviz.examples: interrupted",
            "jaxviz.plan": "jaxviz.plan: interrupted"}
SCRIPTS = {"jaxviz-grid": "jaxviz.grid", "jaxviz-atlas": "jaxviz.atlas", "jaxviz-examples": "jaxviz.examples"}


def launched_command(orig_argv=None, argv0=None) -> str | None:
    """The command (a key of ``COMMANDS``) this process was started as (``python -m
    jaxviz.grid ...`` or the ``jaxviz-grid`` script), else None."""
    o = list(getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv)
    for a, b in zip(o, o[1:]):
        if a == "-m":
            return b if b in COMMANDS else None
    name = os.path.basename(sys.argv[0] if argv0 is None else argv0)
    return SCRIPTS.get(name)


def install_startup_handlers() -> None:
    """Called first thing by ``jaxviz/__init__``: in a process started as one of our commands,
    SIGINT and SIGTERM exit 130 at once (with the command's one line) while Python still
    imports JAX, before any work or file exists; main() replaces the handlers when the work
    starts. Also where the process inherited SIGINT ignored (a script's background job: Python
    then installs no handler of its own, and Ctrl-C would do nothing). Elsewhere (the library
    in someone's program) nothing is installed. There, too, standard output escapes what its
    encoding cannot write (a file name's non-UTF-8 bytes) instead of raising."""
    command = launched_command()
    if command is None or threading.current_thread() is not threading.main_thread():
        return
    if getattr(sys.stdout, "errors", None) == "strict":  # a path or file name that is no UTF-8, printed
        sys.stdout.reconfigure(errors="backslashreplace")  # as \udcNN, not a UnicodeEncodeError after the work
    if sys.stderr is not None and not isinstance(sys.stderr, LogStream):
        sys.stderr = LogStream(sys.stderr)
    line = (COMMANDS[command] + "\n").encode()

    def startup_exit(*_):
        try:
            os.write(2, line)
        finally:
            os._exit(EXIT_INTERRUPTED)

    for s in stop_signals():
        signal.signal(s, startup_exit)


def silence(stream) -> None:
    """Point ``stream``'s file descriptor at os.devnull: what it still buffers, and every later
    write, goes nowhere (a stream that has no descriptor left is let be)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass


class LogStream:
    """A command's stderr (its progress bars, notices and one-line errors): where it cannot be
    written (``2>&1 | head -1`` once the reader has gone, ``2>/dev/full``) it is silenced at the
    first failed write and the run goes on. The atlas's progress bar failing there hung the
    process for good (tqdm's close waiting on its lock), and a bad input's line made exit 1, not 2."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            silence(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            silence(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def show(text: str) -> None:
    """Print ``text``, a command's product (a listing, a report), on stdout. A reader that has
    gone (``| head -1``) ends it quietly; any other failure (a full disk) is one JaxvizError."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence(sys.stdout)
    except OSError as e:
        silence(sys.stdout)
        from jaxviz.errors import JaxvizError

        raise JaxvizError(f"cannot write to standard output ({e.strerror or e}); "
                          f"check where it is redirected") from None


def printer(quiet: bool) -> Callable[..., None]:
    """A command's ``say``: its arguments printed on stdout as a line, flushed; nothing when quiet.
    Stdout is the run's log, not its product: where it cannot be written (a pipe whose reader has
    gone, as ``| head -1``; a full disk), stdout is pointed at os.devnull and the run goes on,
    where it ended in a traceback with its work half done."""
    def say(*args) -> None:
        try:
            print(*args, flush=True)
        except OSError:
            silence(sys.stdout)  # what stays in its buffer is flushed there at exit

    return (lambda *a: None) if quiet else say


def exit_command(code: int) -> None:
    """Leave the process with ``code`` once a command's work is over. Python's teardown resets
    every handler it installed to the default, and a SIGINT in those last tenths of a second
    would kill the process (status -2, after the work was done and said so); ignored signals
    stay ignored through teardown, so they are ignored from here on."""
    for s in stop_signals():
        signal.signal(s, signal.SIG_IGN)
    sys.exit(code)


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def stop_as_interrupt() -> dict:
    """From here on SIGTERM and SIGHUP (``stop_signals`` but SIGINT, which Python makes a
    KeyboardInterrupt already) raise KeyboardInterrupt, as Ctrl-C does; in the main thread only
    (elsewhere nothing changes). The handlers they had, for ``restore_handlers``."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _raise_interrupt) for s in stop_signals() if s != signal.SIGINT}


def restore_handlers(old: dict) -> None:
    """Put back the handlers ``old`` holds (None: one not installed from Python, left as it is)."""
    for s, handler in old.items():
        if handler is not None:
            signal.signal(s, handler)


def run_interruptible(work: Callable[[], T], gate: WriteGate, on_interrupt: Callable[[], None]) -> T:
    """``work()`` in a worker thread; its result or exception comes back here.

    On SIGINT, SIGTERM or SIGHUP (``stop_signals``; main thread only): close ``gate``, call ``on_interrupt()``
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

    old = {s: signal.getsignal(s) for s in stop_signals()}
    for s in old:
        signal.signal(s, _raise_interrupt)
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
        restore_handlers(old)
    if "error" in box:
        raise box["error"]
    return box["value"]
