import json
import os

import jax
import pytest

from jaxviz import ascent, ops, plan
from jaxviz.errors import JaxvizError


@pytest.fixture
def plan_file(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    monkeypatch.setenv(plan.ENV, str(path))
    return path


def _cpuinfo(model: int) -> str:
    block = (f"processor\t: {{}}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
             "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 sha_ni\n")
    return "\n".join(block.format(i) for i in range(2))


def test_cpu_model_tells_cpus_of_one_name_apart():
    model1, model17 = plan.cpu_model(_cpuinfo(1)), plan.cpu_model(_cpuinfo(17))
    assert model17 == "AMD EPYC 25 17 avx2+avx512_bf16+avx512f"
    assert model1 != model17  # one's plan is not read on the other
    assert plan.cpu_model("") == ""


def test_cache_path_env(monkeypatch, tmp_path):
    monkeypatch.setenv(plan.ENV, "off")
    assert plan.cache_path() is None
    for value in ("no", "None"):  # the words JAXVIZ_ONEDNN and JAXVIZ_COMPILE_CACHE take for off (no was a file ./no)
        monkeypatch.setenv(plan.ENV, value)
        assert plan.cache_path() is None
    assert plan.chunk_for("block3_conv1", 16) is None
    assert plan.conv_choice(8, 64, 64) is None
    monkeypatch.setenv(plan.ENV, str(tmp_path / "p.json"))
    assert plan.cache_path() == tmp_path / "p.json"
    monkeypatch.delenv(plan.ENV)
    assert plan.cache_path() is None  # opt-in: unset means off
    monkeypatch.setenv(plan.ENV, "auto")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert plan.cache_path() == tmp_path / "jaxviz" / "plan.json"


def test_shapes_below():
    assert plan.shapes_below("block2_conv1", 16) == [plan.Shape(16, 64, 64)]  # block1_conv1 (3 ch) stays XLA's
    assert plan.shapes_below("block3_conv1", 16) == [
        plan.Shape(16, 64, 64), plan.Shape(8, 64, 128), plan.Shape(8, 128, 128)]
    with pytest.raises(JaxvizError, match="valid layers"):
        plan.shapes_below("block9_conv1", 16)


def test_decisions_from_timings():
    a, b = plan.Shape(8, 64, 64), plan.Shape(4, 64, 128)
    t = {"8x64x64/8/wino4": 3.0, "8x64x64/8/xla": 2.0, "8x64x64/16/wino4": 1.5, "8x64x64/16/xla": 2.5,
         "4x64x128/8/wino4": 1.0, "4x64x128/8/xla": 0.5, "4x64x128/16/wino4": 2.0, "4x64x128/16/xla": 0.9,
         "block2_conv1@64/8/ascent": 2.0, "block2_conv1@64/16/ascent": 2.5, "block3_conv1@64/16/ascent": 1.0}
    assert plan.best_conv(t, a) == "wino4"  # 1.5 at 16 is the lowest
    assert plan.best_conv(t, b) == "xla"
    assert plan.best_conv(t, plan.Shape(2, 1, 1)) is None
    assert plan.best_chunk(t, "block2_conv1", 64) == 8  # the ascent's own timings, not the convs'
    assert plan.best_chunk(t, "block3_conv1", 64) == 16
    assert plan.best_chunk(t, "block2_conv1", 32) is None  # another size: not measured


def test_ensure_chunks_times_the_ascent_once(plan_file, monkeypatch):
    t = plan.ensure_chunks("block2_conv1", 16, reps=1, chunks=(1, 2))
    assert set(t) == {"block2_conv1@16/1/ascent", "block2_conv1@16/2/ascent"} and all(v > 0 for v in t.values())
    assert json.loads(plan_file.read_text()) == {plan.machine(): t}
    monkeypatch.setattr(plan, "measure_chunks", lambda *a, **k: pytest.fail("measured again"))
    assert plan.ensure_chunks("block2_conv1", 16) == t  # cached
    assert plan.chunk_for("block2_conv1", 16) == int(min(t, key=t.get).split("/")[1])


def test_ensure_measures_once_and_caches(plan_file, monkeypatch):
    shapes = [plan.Shape(4, 16, 8)]
    t = plan.ensure(shapes, reps=1, chunks=(1, 2), convs=("xla",))  # XLA's conv: the quickest compile
    assert set(t) == {"4x16x8/1/xla", "4x16x8/2/xla"}
    assert all(v > 0 for v in t.values())
    data = json.loads(plan_file.read_text())
    assert data == {plan.machine(): t}
    monkeypatch.setattr(plan, "measure", lambda *a, **k: pytest.fail("measured again"))
    assert plan.ensure(shapes) == t  # cached
    assert plan.conv_choice(4, 16, 8) == "xla"


def test_timings_another_process_saved_meanwhile_are_kept(plan_file, monkeypatch):
    """Two runs timing at once (two commands started on a fresh machine): each one's save kept
    the plan as it had read it before its minutes of timing, dropping what the other saved meanwhile."""
    def measure_chunks(layer, size, chunks, reps):
        plan.save({**plan.load(), "block3_conv1@16/4/ascent": 2.0})  # the other run, saving first
        return {f"{layer}@{size}/{b}/ascent": 1.0 for b in chunks}

    def measure(shapes, chunks, convs, reps):
        plan.save({**plan.load(), "8x64x64/4/xla": 3.0})
        return {f"{s.key()}/{b}/{c}": 1.0 for s in shapes for b in chunks for c in convs}

    monkeypatch.setattr(plan, "measure_chunks", measure_chunks)
    monkeypatch.setattr(plan, "measure", measure)
    t = plan.ensure_chunks("block2_conv1", 16, chunks=(1,))
    assert t == {"block2_conv1@16/1/ascent": 1.0, "block3_conv1@16/4/ascent": 2.0}
    t = plan.ensure([plan.Shape(4, 16, 8)], chunks=(2,), convs=("xla",))
    assert plan.load() == t == {"block2_conv1@16/1/ascent": 1.0, "block3_conv1@16/4/ascent": 2.0,
                                "8x64x64/4/xla": 3.0, "4x16x8/2/xla": 1.0}


def test_unwritable_plan_is_one_error_before_any_timing(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(plan.ENV, str(blocker / "plan.json"))  # its folder would be a file
    monkeypatch.setattr(plan, "measure_chunks", lambda *a, **k: pytest.fail("timed a plan it cannot keep"))
    with pytest.raises(JaxvizError, match="cannot write the plan"):
        plan.chunk_for("block2_conv1", 16)
    assert plan.main(["--layers", "block2_conv1", "--size", "16"]) == 2


def test_a_full_disk_names_the_plans_setting_not_an_out_option(plan_file, monkeypatch, capsys):
    """The plan file's write failing (a full disk): one line naming JAXVIZ_PLAN (it said
    "choose another --out", an option python -m jaxviz.plan does not have), nothing left behind."""
    import jaxviz.image

    def full(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jaxviz.image.os, "replace", full)
    with pytest.raises(JaxvizError, match=r"No space left on device.*set JAXVIZ_PLAN to another file") as e:
        plan.save({"x/1/xla": 1.0})
    assert "--out" not in str(e.value)
    assert plan.main(["--layers", "block2_conv1", "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxviz.plan: error: ") and "JAXVIZ_PLAN" in err and len(err.splitlines()) == 1
    assert os.listdir(plan_file.parent) == []


def test_a_full_disk_during_a_run_is_a_notice_and_the_timings_serve_the_run(plan_file, monkeypatch, caplog):
    """A plan that could not be saved after minutes of timing failed the whole grid or atlas. Now
    it is one notice; the timings serve the rest of the process (nothing timed again), unsaved;
    ``python -m jaxviz.plan`` itself still exits 2."""
    import errno

    import jaxviz.image

    timed, measured = [], {}

    def measure_chunks(layer, size, chunks, reps):
        timed.append(layer)
        new = {plan.ascent_key(layer, size, b): (0.1 if b == 16 else 1.0) for b in chunks}
        measured.update(new)
        return new

    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(plan, "measure_chunks", measure_chunks)
    with monkeypatch.context() as m, caplog.at_level("WARNING", logger="jaxviz"):
        m.setattr(jaxviz.image.os, "replace", full)
        assert plan.chunk_for("block2_conv1", 16) == 16
        saying = [r.getMessage() for r in caplog.records if "not saved" in r.getMessage()]
        assert len(saying) == 1 and "No space left on device); free some space" in saying[0], caplog.text
        assert "\n" not in saying[0] and os.listdir(plan_file.parent) == []
        assert plan.chunk_for("block2_conv1", 16) == 16 and timed == ["block2_conv1"]  # not timed again
        assert plan.chunk_for("block3_conv1", 16) == 16 and timed == ["block2_conv1", "block3_conv1"]
        with pytest.raises(JaxvizError, match="No space left on device"):  # python -m jaxviz.plan's
            plan.ensure_chunks("block4_conv1", 16, chunks=(8, 16), strict=True)
    plan.ensure_chunks("block5_conv1", 16, chunks=(8, 16))  # room again: saved with the ones before
    assert json.loads(plan_file.read_text())[plan.machine()] == {k: v for k, v in measured.items()
                                                               if not k.startswith("block4_conv1")}


def test_damaged_cache_is_rebuilt(plan_file):
    plan_file.write_text("{not json")
    assert plan.load() == {}
    plan.save({"x/1/xla": 1.0})
    assert plan.load() == {"x/1/xla": 1.0}


def test_plan_drives_chunk_and_conv(plan_file):
    shapes = plan.shapes_below("block2_conv1", 16)
    fake = {f"{s.key()}/{b}/{c}": (0.1 if c == "xla" else 1.0) for s in shapes for b in plan.CHUNKS for c in plan.ALL_CONVS}
    fake.update({plan.ascent_key("block2_conv1", 16, b): (0.1 if b == 32 else 1.0) for b in plan.CHUNKS})
    plan.save(fake)
    assert plan.chunk_for("block2_conv1", 16) == 32
    assert ascent.chunk_size("block2_conv1", 16, 64, platform="cpu") == 32
    assert ascent.chunk_size("block2_conv1", 16, 64, platform="gpu") == 64
    assert plan.conv_choice(16, 64, 64) == "xla"
    assert ops.choice("float32", "auto", "cpu")[1] == "planned"
    assert ops.choice("float32", "winograd", "cpu")[1] == "wino4"  # explicit choice wins
    # the planned conv computes the same convolution as the default one
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 64))
    k = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) * 0.05
    y = ops.VARIANTS["planned"](x, k)
    assert jax.numpy.allclose(y, ops.VARIANTS["wino4"](x, k), atol=1e-3, rtol=1e-3)


def test_cli(plan_file, capsys, monkeypatch):
    plan.save({"16x64x64/16/xla": 1.0, "16x64x64/16/wino4": 2.0,
               "block2_conv1@16/8/ascent": 0.003, "block2_conv1@16/16/ascent": 0.002})
    assert plan.main(["--layers", "block2_conv1", "--size", "16", "--show"]) == 0
    out = capsys.readouterr().out
    assert "block2_conv1 @ 16px: chunk 16 (ms per image: 8: 3.0, 16: 2.0); convs 16x64x64:xla" in out
    assert plan.main(["--layers", "block3_conv1", "--size", "16", "--show"]) == 0
    assert "block3_conv1 @ 16px: chunk not measured;" in capsys.readouterr().out  # said "chunk None"
    plan_file.write_text("{damaged")
    assert plan.main(["--layers", "block2_conv1", "--size", "16", "--show"]) == 0
    assert "no timings for this machine (unreadable" in capsys.readouterr().out and plan_file.read_text() == "{damaged"
    assert plan.main(["--layers", "nope", "--show"]) == 2
    assert "valid layers" in capsys.readouterr().err
    plan_file.unlink()
    assert plan.main(["--layers", "block1_conv1,block1_conv2", "--size", "16"]) == 0  # said "chunk not measured;
    out = capsys.readouterr().out  # convs " and "no timings ... (unreadable": nothing there to measure
    assert "block1_conv1 @ 16px: nothing to plan" in out and "block1_conv2 @ 16px: nothing to plan" in out
    assert "no timings" not in out and not plan_file.exists()
    assert plan.main(["--convs", "fft", "--show"]) == 2
    assert "--convs" in capsys.readouterr().err
    monkeypatch.setenv(plan.ENV, "off")
    assert plan.main(["--show"]) == 2
    assert "JAXVIZ_PLAN=auto" in capsys.readouterr().err


def test_cli_errors_are_one_line_with_the_command_prefix(plan_file, capsys, monkeypatch):
    """Like grid's, atlas's and examples' errors: ``jaxviz.plan: error: ...``, one line, status 2."""
    for argv in (["--layers", "nope", "--show"], ["--convs", "fft", "--show"],
                 ["--layers", "block5_conv1", "--size", "8", "--show"]):
        assert plan.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxviz.plan: error: ") and err.count("\n") == 1, err
    assert plan.main(["--layers", "", "--show"]) == 2  # said "unknown layer ''"
    assert "--layers is empty" in capsys.readouterr().err
    monkeypatch.setenv(plan.ENV, "off")
    assert plan.main(["--show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxviz.plan: error: the plan is off") and err.count("\n") == 1, err


def test_cli_numbers_a_folder_and_malformed_entries(plan_file, tmp_path, monkeypatch, capsys):
    for argv in (["--size", "0"], ["--reps", "0"]):
        with pytest.raises(SystemExit) as e:
            plan.main(argv)
        assert e.value.code == 2
    monkeypatch.setenv(plan.ENV, str(tmp_path))  # a folder
    assert plan.main(["--layers", "block2_conv1", "--size", "16"]) == 2
    assert "(a folder)" in capsys.readouterr().err
    if hasattr(os, "mkfifo"):  # a named pipe: reading it waited for good
        os.mkfifo(tmp_path / "pipe.json")
        monkeypatch.setenv(plan.ENV, str(tmp_path / "pipe.json"))
        assert plan.load() == {}
        assert plan.main(["--layers", "block2_conv1", "--size", "16"]) == 2
        assert "(not a regular file)" in capsys.readouterr().err
    monkeypatch.setenv(plan.ENV, str(plan_file))
    plan_file.write_text(json.dumps({plan.machine(): {"block2_conv1@16/x/ascent": 0.1, "block2_conv1@16/8/ascent": "s",
                                                      "block2_conv1@16/16/ascent": 0.2}}))
    assert plan.load() == {"block2_conv1@16/16/ascent": 0.2}
    plan_file.write_text(json.dumps({plan.machine(): [1, 2]}))
    assert plan.load() == {}


def test_show_with_a_name_too_long_says_no_such_file(tmp_path, monkeypatch, capsys):
    """pathlib's exists() raised on a name the OS refuses (ENAMETOOLONG): --show ended in a traceback."""
    monkeypatch.setenv(plan.ENV, str(tmp_path / ("x" * 300 + ".json")))
    assert plan.main(["--layers", "block2_conv1", "--size", "16", "--show"]) == 0
    assert "no timings for this machine (no such file)" in capsys.readouterr().out


def test_plan_path_of_no_such_users_home_is_one_error(monkeypatch, capsys):
    """``~nosuchuser/p.json``: pathlib raised a bare RuntimeError from every command."""
    monkeypatch.setenv(plan.ENV, "~nosuchuser-jaxviz/p.json")
    with pytest.raises(JaxvizError, match="no such user's home folder"):
        plan.cache_path()
    assert plan.main(["--show"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxviz.plan: error: JAXVIZ_PLAN=") and len(err.splitlines()) == 1


def test_auto_plan_ignores_a_relative_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv(plan.ENV, "auto")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG spec: ignored, as weights and onednn do
    assert plan.cache_path() == tmp_path / ".cache" / "jaxviz" / "plan.json"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert plan.cache_path() == tmp_path / "xdg" / "jaxviz" / "plan.json"


def test_auto_plan_follows_jaxviz_cache(monkeypatch, tmp_path):
    """JAXVIZ_CACHE moved the oneDNN and XLA caches but not the plan (XDG or ~/.cache still)."""
    monkeypatch.setenv(plan.ENV, "auto")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "c"))
    assert plan.cache_path() == tmp_path / "c" / "plan.json"
    (tmp_path / "c").write_text("a file where the folder goes")
    with pytest.raises(JaxvizError, match=r"JAXVIZ_PLAN=auto with JAXVIZ_CACHE=.*; set JAXVIZ_CACHE to a writable folder"):
        plan.writable(plan.cache_path())


def test_a_file_that_is_not_a_plan_is_never_replaced(plan_file, monkeypatch):
    """A mistyped JAXVIZ_PLAN naming an image: it was silently overwritten with the plan's JSON."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    plan_file.write_bytes(png)
    monkeypatch.setattr(plan, "measure_chunks", lambda *a, **k: pytest.fail("timed a plan it cannot keep"))
    with pytest.raises(JaxvizError, match="is not a plan file"):
        plan.chunk_for("block2_conv1", 16)
    with pytest.raises(JaxvizError, match="is not a plan file"):
        plan.save({"x/1/xla": 1.0})
    assert plan.main(["--layers", "block2_conv1", "--size", "16"]) == 2
    assert plan_file.read_bytes() == png
    plan_file.write_text("")  # empty, or a damaged plan ("{..."): rebuilt
    plan.save({"x/1/xla": 1.0})
    assert plan.load() == {"x/1/xla": 1.0}


def test_a_size_too_large_for_memory_is_refused_before_timing(plan_file, monkeypatch, capsys):
    """``--size 4096`` timed convs until XLA's out-of-memory traceback."""
    monkeypatch.setenv("JAXVIZ_MAX_MEMORY", "1M")
    monkeypatch.setattr(plan, "measure_chunks", lambda *a, **k: pytest.fail("timed what cannot fit"))
    monkeypatch.setattr(plan, "measure", lambda *a, **k: pytest.fail("timed what cannot fit"))
    assert plan.main(["--layers", "block2_conv1", "--size", "64", "--convs", "xla"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "memory" in err and len(err.splitlines()) == 1
    assert not plan_file.exists()


def test_a_file_in_the_plans_path_is_named(tmp_path, monkeypatch):
    """A JAXVIZ_PLAN under a file said only "(File exists)"; an XDG_CACHE_HOME that is a file was
    blamed on JAXVIZ_PLAN alone."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(plan.ENV, str(blocker / "sub" / "plan.json"))
    with pytest.raises(JaxvizError, match=rf"\({blocker} is a file, not a folder\); set JAXVIZ_PLAN to a writable"):
        plan.writable(plan.cache_path())
    monkeypatch.setenv(plan.ENV, "auto")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(JaxvizError, match=rf"^JAXVIZ_PLAN=auto with XDG_CACHE_HOME={blocker}: .*"
                                          rf"\({blocker} is a file, not a folder\); set XDG_CACHE_HOME to a writable folder"):
        plan.writable(plan.cache_path())
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    monkeypatch.setenv(plan.ENV, str(tmp_path / "dangling" / "plan.json"))
    with pytest.raises(JaxvizError, match=r"dangling is a symbolic link to nothing \(or a loop\), not a folder"):
        plan.writable(plan.cache_path())


def test_entries_no_plan_writes_are_dropped_not_adopted(plan_file, monkeypatch, capsys):
    """A plan edited by hand or damaged: a conv name ops has not ("fft") or "planned" itself failed
    the render as the model's error (KeyError, RecursionError), "onednn_bf16" ran float32 in bfloat16;
    a chunk of 0 hid the measured one (the built-in chunk ran), 10**9 ran the memory bound; a chunk
    "³" (isdigit, not int) and brackets nested deep were tracebacks."""
    good = {"16x64x64/16/wino4": 1.0, "block2_conv1@16/16/ascent": 1.0}
    bad = {"16x64x64/8/fft": 1e-6, "16x64x64/8/planned": 1e-6, "16x64x64/8/onednn_bf16": 1e-6,
           "16x64x64/8/ascent": 1e-6, "block2_conv1@16/8/xla": 1e-6, "block2_conv1@16/0/ascent": 1e-6,
           "block2_conv1@16/-1/ascent": 1e-6, f"block2_conv1@16/{10**9}/ascent": 1e-6,
           "block2_conv1@16/³/ascent": 1e-6, "block2_conv1@16/" + "9" * 5000 + "/ascent": 1e-6}
    plan_file.write_text(json.dumps({plan.machine(): {**good, **bad}}))
    assert plan.load() == good
    assert plan.conv_choice(16, 64, 64) == "wino4" and plan.chunk_for("block2_conv1", 16) == 16
    assert plan.main(["--layers", "block2_conv1", "--size", "16", "--show"]) == 0
    assert "chunk 16 (ms per image: 16: 1000.0); convs 16x64x64:wino4" in capsys.readouterr().out
    plan_file.write_text('{"a": ' + "[" * 100000)
    assert plan.load() == {}
    assert plan.main(["--layers", "block2_conv1", "--size", "16", "--show"]) == 0
    assert "no timings for this machine (unreadable" in capsys.readouterr().out


def test_a_plan_timed_on_fewer_cpus_is_not_read_on_all(monkeypatch):
    """Timed under ``taskset -c 0`` (XLA's and oneDNN's threads on one CPU), a plan was keyed by
    os.cpu_count(), all of them, and its chunks adopted by runs on every CPU."""
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity here")
    everywhere = plan.machine()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert plan.machine() != everywhere and " | 1 cpus | " in plan.machine()


def test_a_link_to_a_missing_folder_is_refused_before_any_timing(tmp_path, monkeypatch):
    """JAXVIZ_PLAN a symbolic link whose target's folder is missing: writable() passed (the link's
    folder exists), the ascent was timed for minutes, then the save failed (it writes the target)."""
    link = tmp_path / "plan.json"
    os.symlink(tmp_path / "nowhere" / "plan.json", link)
    monkeypatch.setenv(plan.ENV, str(link))
    monkeypatch.setattr(plan, "measure_chunks", lambda *a, **k: pytest.fail("timed a plan it cannot keep"))
    with pytest.raises(JaxvizError, match=r"cannot write the plan to .*plan.json \(a link to .*nowhere/plan.json, "
                                          r"whose folder is missing\); set JAXVIZ_PLAN"):
        plan.chunk_for("block2_conv1", 16)
    assert plan.main(["--layers", "block2_conv1", "--size", "16"]) == 2
    (tmp_path / "nowhere").mkdir()  # a link to a plan elsewhere is written through, the link kept
    plan.save({"x/1/xla": 1.0})
    assert link.is_symlink() and plan.load() == {"x/1/xla": 1.0}
