"""jaxviz.cli_run: the worker-thread runner, the write gate, the start-up handlers' trigger."""
import signal
import subprocess
import sys
import threading
import time

import pytest

from jaxviz.cli_run import LogStream, WriteGate, launched_command, run_interruptible, stop_signals
from conftest import ROOT


def test_launched_command_only_for_our_commands():
    assert launched_command(["python", "-m", "jaxviz.grid", "--size", "16"], "-m") == "jaxviz.grid"
    assert launched_command(["python", "-X", "importtime", "-m", "jaxviz.atlas"], "-m") == "jaxviz.atlas"
    assert launched_command(["python", "-m", "pytest", "-m", "jaxviz.grid"], "-m") is None
    assert launched_command(["python", "script.py"], "script.py") is None
    assert launched_command(["/usr/bin/python", "/venv/bin/jaxviz-atlas"], "/venv/bin/jaxviz-atlas") == "jaxviz.atlas"


def test_run_interruptible_returns_the_result_or_raises_the_error():
    assert run_interruptible(lambda: 7, WriteGate(), lambda: None) == 7
    with pytest.raises(ValueError, match="boom"):
        run_interruptible(lambda: (_ for _ in ()).throw(ValueError("boom")), WriteGate(), lambda: None)
    with pytest.raises(KeyboardInterrupt):  # raised by the work itself: an ordinary exception here
        run_interruptible(lambda: (_ for _ in ()).throw(KeyboardInterrupt()), WriteGate(), lambda: None)


def test_closing_the_gate_waits_for_the_write_in_progress_and_blocks_later_ones():
    gate = WriteGate()
    events = []

    def writer():
        with gate:
            events.append("start")
            time.sleep(0.3)
            events.append("end")
        with gate:  # never runs once the gate is closed
            events.append("second")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.1)
    assert gate.close(timeout=5)
    assert events == ["start", "end"]
    time.sleep(0.1)
    assert events == ["start", "end"]


def test_closing_the_gate_makes_the_final_write_once_after_the_write_in_progress():
    gate = WriteGate()
    events = []
    gate.final_write = lambda: events.append("final")

    def writer():
        with gate:
            events.append("start")
            time.sleep(0.3)
            events.append("end")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.1)
    assert gate.close(timeout=5)
    assert events == ["start", "end", "final"]
    assert gate.final_write is None
    failing = WriteGate()
    failing.final_write = lambda: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    assert failing.close(timeout=1)  # a final write that fails does not stop the exit


LATE_SIGINT = """
import os, signal, sys
from jaxviz.cli_run import exit_command

signal.signal(signal.SIGINT, signal.default_int_handler)  # as started from a terminal (a background job ignores it)

class SignalsWhenCollected:  # a module global: collected late in teardown, after Python reset its handlers
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)

holder = type(sys)("holder")
holder.x = SignalsWhenCollected()
sys.modules["holder"] = holder
exit_command(3) if sys.argv[1] == "exit_command" else sys.exit(3)
"""


def test_a_sigint_during_teardown_keeps_the_commands_exit_status():
    """A Ctrl-C in the last tenths of a second after a command finished killed the process
    (status -2, a CI failure) instead of leaving with the command's status."""
    def status(how):
        return subprocess.run([sys.executable, "-c", LATE_SIGINT, how], cwd=ROOT, capture_output=True).returncode

    assert status("sys.exit") == -2  # the hazard is real: plain sys.exit dies of the late signal
    assert status("exit_command") == 3


def test_examples_and_plan_are_commands_too():
    assert launched_command(["python", "-m", "jaxviz.examples", "--images", "x"], "-m") == "jaxviz.examples"
    assert launched_command(["python", "-m", "jaxviz.plan", "--show"], "-m") == "jaxviz.plan"
    assert launched_command(["/usr/bin/python", "/venv/bin/jaxviz-examples"], "/venv/bin/jaxviz-examples") == \
        "jaxviz.examples"


def _catches(pid: int, sig=signal.SIGINT) -> bool:
    """Whether process ``pid`` has a handler of its own for ``sig`` (its SigCgt mask, /proc)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(l for l in f if l.startswith("SigCgt:")).split()[1]
    return bool(int(mask, 16) & (1 << (sig - 1)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
@pytest.mark.parametrize("command", ["jaxviz.examples", "jaxviz.plan"])
def test_a_background_job_with_sigint_ignored_still_stops_on_sigint(tmp_path, command):
    """Started with SIGINT ignored (a script's `cmd &`), Python installs no handler of its own and
    Ctrl-C did nothing; the start-up handlers take SIGINT over while JAX still imports."""
    import os

    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    argv = {"jaxviz.examples": ["--images", str(tmp_path), "--layers", "block1_conv1", "--size", "32",
                                "--out", str(tmp_path / "out")],
            "jaxviz.plan": ["--layers", "block2_conv1", "--size", "16", "--reps", "1"]}[command]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXVIZ_PLAN=str(tmp_path / "plan.json"))
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through exec, as a shell's `cmd &` does
    try:
        p = subprocess.Popen([sys.executable, "-m", command, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        t0 = time.monotonic()
        while p.poll() is None and not _catches(p.pid) and time.monotonic() - t0 < 30:
            time.sleep(0.005)
        assert p.poll() is None, f"{command} ended without ever taking SIGINT: {p.communicate()}"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and err.strip().splitlines()[-1] == f"{command}: interrupted", err


def test_a_path_that_is_no_utf8_is_printed_escaped_in_a_strict_locale(tmp_path):
    """With a strict UTF-8 standard output (en_US.UTF-8; C.UTF-8 escapes on its own), printing
    an --out folder whose bytes are no UTF-8 raised UnicodeEncodeError after the work was done."""
    import os

    out = os.path.join(os.fsencode(tmp_path), b"caf\xe9")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONIOENCODING="utf-8:strict")
    p = subprocess.run([sys.executable, "-m", "jaxviz.grid", "--layers", "block1_conv1", "--filters", "0", "--size",
                        "16", "--steps", "1", "--out", out], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert "caf\\udce9/block1_conv1.png" in p.stdout and os.path.exists(os.path.join(out, b"block1_conv1.png"))


def _broken(stream: str, kind: str, argv: list):
    """Run ``argv`` with ``stream`` (stdout or stderr) unwritable: a pipe whose reader has gone
    before anything is written, or /dev/full; returns (exit status, the other stream's text)."""
    import os

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if kind == "full disk":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        with open("/dev/full", "w") as full:
            p = subprocess.run(argv, cwd=ROOT, env=env, text=True, timeout=300,
                               **{stream: full, ("stderr" if stream == "stdout" else "stdout"): subprocess.PIPE})
        return p.returncode, p.stderr if stream == "stdout" else p.stdout
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    getattr(p, stream).close()
    other = (p.stderr if stream == "stdout" else p.stdout).read()
    return p.wait(timeout=300), other


@pytest.mark.parametrize("kind", ["closed pipe", "full disk"])
def test_a_stdout_that_cannot_be_written_does_not_end_the_run(tmp_path, kind):
    """``python -m jaxviz.grid ... | head -1`` (the reader gone) or ``> /dev/full``: the paths
    printed as each PNG is written failed with a traceback (exit 1) after the first grid; now the
    run goes on without its log, writes every grid, and exits 0 with nothing on stderr."""
    import os

    code, err = _broken("stdout", kind, [sys.executable, "-m", "jaxviz.grid", "--layers", "block1_conv1,block1_conv2",
                                         "--filters", "0", "--size", "16", "--steps", "1", "--out", str(tmp_path)])
    assert code == 0 and err == "", err
    assert sorted(os.listdir(tmp_path)) == ["block1_conv1.png", "block1_conv2.png"]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_sighup_stops_a_command_unless_it_was_inherited_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert stop_signals() == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        assert stop_signals() == (signal.SIGINT, signal.SIGTERM)
    finally:
        signal.signal(signal.SIGHUP, old)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
@pytest.mark.parametrize("nohup", [False, True])
def test_a_closed_terminal_stops_a_run_as_ctrl_c_does_but_not_under_nohup(tmp_path, nohup):
    """SIGHUP (the terminal closed) killed a command where it stood, with no line and no state
    saved; now it stops as Ctrl-C does (exit 130, the line, whole files only). Under ``nohup``
    (SIGHUP inherited ignored) the run goes on to the end."""
    import os

    argv = [sys.executable, "-m", "jaxviz.grid", "--layers", "block1_conv1,block2_conv1", "--filters", "0-3",
            "--size", "16", "--steps", "300", "--out", str(tmp_path / "out")]
    hup = signal.SIG_IGN if nohup else signal.SIG_DFL
    p = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, hup))
    try:
        t0 = time.monotonic()
        while p.poll() is None and not _catches(p.pid, signal.SIGINT) and time.monotonic() - t0 < 30:
            time.sleep(0.005)  # the start-up handlers are in
        time.sleep(1.0)
        assert p.poll() is None, p.communicate()
        assert _catches(p.pid, signal.SIGHUP) != nohup
        p.send_signal(signal.SIGHUP)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    files = sorted(os.listdir(tmp_path / "out")) if (tmp_path / "out").exists() else []
    if nohup:
        assert p.returncode == 0 and files == ["block1_conv1.png", "block2_conv1.png"], err
    else:
        assert p.returncode == 130 and "jaxviz.grid: interrupted; completed layers:" in err.strip().splitlines()[-1], err
        assert not [f for f in files if not f.endswith(".png")]


def test_a_log_stream_that_cannot_be_written_is_silenced_not_raised():
    """LogStream (a command's stderr): the first failed write points its descriptor at
    os.devnull; that write and every later one (and the flush) return as if written."""
    import io
    import os

    r, w = os.pipe()
    os.close(r)  # the reader gone: EPIPE
    stream = io.TextIOWrapper(io.FileIO(w, "w"), encoding="utf-8", line_buffering=True)
    log = LogStream(stream)
    for text in ("a bar's line\n", "jaxviz.grid: error: ...\n"):
        assert log.write(text) == len(text)
    log.flush()
    if sys.platform.startswith("linux"):
        assert os.path.samefile(f"/proc/self/fd/{w}", os.devnull)
    assert log.fileno() == w and log.encoding == "utf-8"  # the rest is the stream's own
    stream.close()


@pytest.mark.parametrize("kind", ["closed pipe", "full disk"])
def test_a_stderr_that_cannot_be_written_keeps_the_exit_status_and_the_work(tmp_path, kind):
    """``2>&1 | head -3`` (the reader gone) or ``2>/dev/full``: the atlas's progress bar (shown
    where stderr is no terminal too) failed to write, and the process hung for good (in tqdm's
    close, waiting on its lock); a bad input's one line, unwritable, made the exit 1, not 2. Now
    the run is silent there: the atlas is made (exit 0) and a bad input is still exit 2."""
    import os

    out = tmp_path / "atlas"
    code, _ = _broken("stderr", kind, [sys.executable, "-m", "jaxviz.atlas", "--layers", "block1_conv1",
                                       "--filters", "0-1", "--size", "16", "--steps", "1", "--out", str(out)])
    assert code == 0 and os.path.exists(out / "index.html") and len(os.listdir(out / "block1_conv1")) >= 2
    code, _ = _broken("stderr", kind, [sys.executable, "-m", "jaxviz.grid", "--out", ""])
    assert code == 2


@pytest.mark.parametrize("argv", [["jaxviz.grid", "--list-layers"], ["jaxviz.plan", "--show"]])
def test_a_listing_to_a_full_disk_is_one_line_and_to_a_gone_reader_quiet(tmp_path, monkeypatch, argv):
    """``--list-layers`` and ``plan --show`` print their product: ``> /dev/full`` ended in an
    OSError traceback; now one line, exit 2. ``| head -1`` (the reader gone) stays exit 0, silent."""
    monkeypatch.setenv("JAXVIZ_PLAN", str(tmp_path / "plan.json"))
    argv = [sys.executable, "-m", *argv]
    code, err = _broken("stdout", "full disk", argv)
    assert code == 2 and err.strip().endswith("error: cannot write to standard output (No space left on "
                                              "device); check where it is redirected"), err
    assert len(err.strip().splitlines()) == 1
    code, err = _broken("stdout", "closed pipe", argv)
    assert code == 0 and err == "", err


@pytest.mark.parametrize("command", ["jaxviz.grid", "jaxviz.atlas", "jaxviz.examples", "jaxviz.plan"])
def test_a_backend_jax_cannot_start_is_one_line_and_exit_2(tmp_path, command):
    """JAX_PLATFORMS naming a backend this machine lacks ended every command in JAX's traceback,
    exit 1; now one line naming JAX_PLATFORMS and the fix, exit 2, no folder made."""
    import os

    images = tmp_path / "imgs"
    images.mkdir()
    args = {"jaxviz.grid": ["--out", str(tmp_path / "out")], "jaxviz.atlas": ["--out", str(tmp_path / "out")],
            "jaxviz.examples": ["--images", str(images), "--out", str(tmp_path / "out")],
            "jaxviz.plan": ["--show"]}[command]
    env = dict(os.environ, JAX_PLATFORMS="nosuchbackend", JAXVIZ_PLAN=str(tmp_path / "plan.json"))
    p = subprocess.run([sys.executable, "-m", command, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"{command}: error: JAX cannot start the backend JAX_PLATFORMS='nosuchbackend'")
    assert "unset JAX_PLATFORMS" in lines[0] and not (tmp_path / "out").exists()
