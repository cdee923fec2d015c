"""jaxviz.compile_cache: the commands' persistent compilation cache."""
import os
import shutil
import subprocess
import sys
import warnings

import jax
import pytest

from jaxviz import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def updates(monkeypatch, tmp_path):
    """jax.config.update recorded instead of applied (this process keeps its own settings),
    jaxviz's cache in tmp_path."""
    seen = {}
    monkeypatch.setattr(jax.config, "update", lambda k, v: seen.__setitem__(k, v))
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    return seen


def test_use_points_jax_at_a_folder_per_cpu_and_version(updates, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(compile_cache, "_reloads", lambda: calls.append(1) or True)  # a CPU that reloads
    path = compile_cache.use()
    assert path == compile_cache.folder() and path.parent == tmp_path / "xla"
    assert updates["jax_compilation_cache_dir"] == str(path)
    assert updates["jax_persistent_cache_min_compile_time_secs"] == 0.0
    assert updates["jax_compilation_cache_max_size"] == compile_cache.MAX_BYTES
    assert compile_cache.use() == path and calls == [1]  # the answer is kept: probed once
    assert (path / compile_cache.OK).exists() and not (path / compile_cache.REFUSED).exists()


@pytest.mark.parametrize("value", ["0", "off", "No", "none"])
def test_off(updates, monkeypatch, value):
    monkeypatch.setenv(compile_cache.ENV, value)
    assert compile_cache.use() is None and not updates


def test_a_cache_of_the_users_own_stays(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path))
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # nothing compiles before it is unset
    try:
        monkeypatch.setattr(jax.config, "update", lambda k, v: pytest.fail(f"{k} changed"))
        assert compile_cache.use() is None
    finally:
        monkeypatch.undo()
        jax.config.update("jax_compilation_cache_dir", None)


def test_a_refusing_cpu_is_probed_once(updates, monkeypatch):
    calls = []
    monkeypatch.setattr(compile_cache, "_reloads", lambda: calls.append(1) or False)
    assert compile_cache.use() is None and compile_cache.use() is None
    assert calls == [1] and not updates
    assert (compile_cache.folder() / compile_cache.REFUSED).exists()


def test_an_unwritable_cache_is_no_cache(updates, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "file"))
    assert compile_cache.use() is None and not updates


def test_a_read_only_cache_is_no_cache(updates, monkeypatch):
    monkeypatch.setattr(compile_cache.os, "access", lambda path, mode: mode != os.W_OK)
    monkeypatch.setattr(compile_cache, "_reloads", lambda: pytest.fail("probed a folder it cannot write"))
    assert compile_cache.use() is None and not updates


def test_a_nearly_full_disk_is_no_cache(updates, monkeypatch):
    """A cache folder on a full disk: JAX warned once per program it could not write (a dozen in a grid)."""
    usage = shutil.disk_usage(os.getcwd())
    monkeypatch.setattr(compile_cache.shutil, "disk_usage", lambda p: usage._replace(free=compile_cache.MIN_FREE - 1))
    monkeypatch.setattr(compile_cache, "_reloads", lambda: pytest.fail("probed a folder with no room"))
    assert compile_cache.use() is None and not updates


def test_entries_it_cannot_write_are_skipped_without_a_warning_each(updates, monkeypatch):
    """A disk filling during the run: JAX's warning per entry is not shown; other warnings are."""
    monkeypatch.setattr(compile_cache, "_reloads", lambda: True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert compile_cache.use() is not None
        warnings.warn("Error writing persistent compilation cache entry for 'jit__run': OSError: [Errno 28] "
                      "No space left on device", UserWarning)
        warnings.warn("Error reading persistent compilation cache entry for 'jit__run': EOFError", UserWarning)
        warnings.warn("another warning", UserWarning)
    assert [str(w.message) for w in seen] == ["another warning"]


def test_anything_logged_while_loading_back_counts_as_refused(monkeypatch, capfd):
    def logs():
        os.write(2, b"Target machine feature +prefer-no-gather is not supported on the host machine\n")
        return True

    monkeypatch.setattr(compile_cache, "_roundtrip", logs)
    assert compile_cache._reloads() is False
    monkeypatch.setattr(compile_cache, "_roundtrip", lambda: True)
    assert compile_cache._reloads() is True
    os.write(2, b"after\n")  # stderr is the terminal's again, and the probe's log never reached it
    assert capfd.readouterr().err == "after\n"


def test_the_probe_calls_exist():
    """JAX's calls the probe makes are there (a CPU may still refuse what they load back)."""
    from jax._src import compiler, xla_bridge
    from jax._src.lib import xla_client

    backend = xla_bridge.get_backend()
    assert callable(backend.serialize_executable) and callable(backend.deserialize_executable)
    assert callable(compiler.get_compile_options) and callable(xla_client.DeviceList)
    assert isinstance(compile_cache._roundtrip(), bool)


def test_the_command_writes_then_reads_it(tmp_path):
    """Two runs of the command: where this CPU loads executables back (the probe's answer), the
    first writes the cache and the second reads it; where it does not, no cache. Either way
    nothing on stderr and the same PNG."""
    env = {**os.environ, "JAXVIZ_CACHE": str(tmp_path / "cache"), "JAXVIZ_ONEDNN": "0"}
    env.pop(compile_cache.ENV)
    cmd = [sys.executable, "-m", "jaxviz.grid", "--layers", "block1_conv1", "--filters", "0-1", "--steps", "2",
           "--size", "32"]
    pngs = []
    for i in range(2):
        r = subprocess.run(cmd + ["--out", str(tmp_path / f"out{i}")], env=env, cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        pngs.append((tmp_path / f"out{i}" / "block1_conv1.png").read_bytes())
        (folder,) = (tmp_path / "cache" / "xla").iterdir()
        reloads = (folder / compile_cache.OK).exists()
        assert reloads != (folder / compile_cache.REFUSED).exists()
        # written by the first run, read (not written again) by the second
        assert len(list(folder.glob("jit__run-*-cache"))) == (1 if reloads else 0)
    assert pngs[0] == pngs[1]
    off = {**env, compile_cache.ENV: "0", "JAXVIZ_CACHE": str(tmp_path / "off")}
    r = subprocess.run(cmd + ["--out", str(tmp_path / "out_off")], env=off, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and not (tmp_path / "off" / "xla").exists()
    assert (tmp_path / "out_off" / "block1_conv1.png").read_bytes() == pngs[0]


def test_library_use_never_sets_it(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-c", "pass"], raising=False)
    monkeypatch.setattr(compile_cache, "use", lambda: pytest.fail("use() outside a command"))
    assert compile_cache.for_command() is None


def test_an_interrupt_during_the_probe_waits_for_stderr(tmp_path):
    """Ctrl-C while the probe holds stderr back: the command's line still reaches the terminal,
    once the probe is over, and nothing the probe caught does."""
    import signal
    import time

    script = tmp_path / "probe.py"
    script.write_text(
        "import os, signal, time\n"
        "from jaxviz import compile_cache\n"
        "def slow():\n"
        "    os.write(1, b'probing\\n')\n"
        "    os.write(2, b'logged by XLA\\n')\n"
        "    time.sleep(1.5)\n"
        "    return True\n"
        "compile_cache._roundtrip = slow\n"
        "signal.signal(signal.SIGINT, lambda *_: (os.write(2, b'interrupted\\n'), os._exit(130)))\n"
        "compile_cache._reloads()\n"
        "os._exit(0)\n"
    )
    p = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"probing\n"
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and err == b"interrupted\n", (p.returncode, err)
    assert time.monotonic() - t0 > 1.0  # held until the probe was over


@pytest.mark.parametrize("value", ["{tmp}/mine", "~/mine", "./mine"])
def test_a_path_is_the_cache_folder(updates, monkeypatch, tmp_path, value):
    """JAXVIZ_COMPILE_CACHE=/some/path meant "on", at the default folder."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "home")
    monkeypatch.setenv(compile_cache.ENV, value.format(tmp=tmp_path / "home"))
    monkeypatch.setattr(compile_cache, "_reloads", lambda: True)
    path = compile_cache.use()
    assert path == compile_cache.folder(tmp_path / "home" / "mine") and path.parent == tmp_path / "home" / "mine"
    assert updates["jax_compilation_cache_dir"] == str(path)


@pytest.mark.parametrize("value", ["1", "on", "Yes", "true", ""])
def test_a_switch_is_the_default_folder(updates, monkeypatch, tmp_path, value):
    monkeypatch.setenv(compile_cache.ENV, value)
    monkeypatch.setattr(compile_cache, "_reloads", lambda: True)
    assert compile_cache.use() == compile_cache.folder() and compile_cache.folder().parent == tmp_path / "xla"


@pytest.mark.parametrize("where, why", [
    ("file", "{tmp}/file is a file, not a folder"),
    ("file/sub", "{tmp}/file is a file, not a folder"),
    ("~no-such-user-xyz/c", "no such user's home folder"),
    ("read-only", "cannot write to {path}"),
])
def test_a_folder_it_cannot_use_is_one_notice_and_no_cache(updates, monkeypatch, tmp_path, caplog, where, why):
    (tmp_path / "file").write_text("x")
    value = where if where.startswith("~") else str(tmp_path / where)
    if where == "read-only":  # (root writes anywhere: the check itself is what is shown)
        monkeypatch.setattr(compile_cache.os, "access", lambda path, mode: mode != os.W_OK)
    monkeypatch.setenv(compile_cache.ENV, value)
    monkeypatch.setattr(compile_cache, "_reloads", lambda: pytest.fail("probed a folder it cannot use"))
    assert compile_cache.use() is None and not updates
    why = why.format(tmp=tmp_path, path=value and compile_cache.folder(value))
    assert [r.getMessage() for r in caplog.records] == [
        f"JAXVIZ_COMPILE_CACHE={value}: {why}; no compile cache this run (give another folder, or 0 for none)"]
    assert (tmp_path / "file").read_text() == "x"
