"""The atlas: chunks, resume after SIGKILL, sharding over devices and processes, the closing lines.

Every run is tiny (16 px, 2 steps, 6 filters of block1_conv1 and block1_conv2 in
chunks of 3), so the multi-device and multi-process runs take seconds. Images are
compared byte for byte: the same filter must give the same PNG whatever the device
or process count, and whether or not the run was interrupted.
"""
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import interrupt

from jaxviz import atlas as atlas_mod, cli_args
from jaxviz.atlas import Chunk, plan, share

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--layers", "block1_conv1,block1_conv2", "--filters", "0-5", "--size", "16", "--steps", "2",
        "--chunk", "3", "--batch", "1"]
N_CHUNKS = 4


def run_cli(args, env_extra=None, timeout=300, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "jaxviz.atlas", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def pngs(out):
    """Every image of an atlas: relative path -> bytes."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("block*/f*.png"))}


def records(out):
    out = Path(out)
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.glob("chunks/*/c*.json"))}


def rendered_chunks(out, run=None):
    """(layer, chunk) pairs in atlas.log, optionally of one run id."""
    lines = (Path(out) / "atlas.log").read_text().splitlines()
    pairs = []
    for line in lines:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if run is None or fields["run"] == run:
            layer = line.split(" rendered ")[1].split()[0]
            pairs.append((layer, int(fields["chunk"])))
    return pairs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process, single-device run, in this process."""
    out = tmp_path_factory.mktemp("reference")
    assert atlas_mod.main([*TINY, "--out", str(out), "--quiet"]) == 0
    return out


def test_a_non_finite_chunk_says_what_the_folder_keeps(tmp_path, capsys):
    """Layer conv's chunk is written, then layer bad comes out NaN: the one line says the folder
    keeps the chunk done, and that a lower step size (other settings) needs another --out or --force."""
    out = tmp_path / "out"
    argv = ["--model", "tests.tiny_model:build_nan", "--filters", "0-1", "--size", "16", "--steps", "2",
            "--chunk", "2", "--quiet"]
    assert atlas_mod.main([*argv, "--layers", "conv,bad", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad (filters 0-1) came out not finite" in err[0], err
    assert err[0].endswith(f"{out} keeps the 1 of 2 chunks done (other settings need another --out, or --force "
                           "to replace the atlas)"), err
    assert sorted(os.listdir(out / "conv")) == ["f000.png", "f001.png"]
    assert atlas_mod.main([*argv, "--layers", "bad", "--out", str(tmp_path / "none")]) == 2
    assert "no chunk was written to" in capsys.readouterr().err


def test_a_float16_model_that_overflows_is_named_with_the_fix(tmp_path, capsys):
    """The line said to lower the step size, which cannot help a model computing in float16."""
    argv = ["--model", "tests.tiny_model:build_half", "--layers", "conv", "--filters", "0-1", "--size", "8",
            "--steps", "1", "--quiet", "--out", str(tmp_path / "out")]
    assert atlas_mod.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "came out not finite (NaN or infinity); layer conv of model function computes in float16" in err, err
    assert "float32 params and compute" in err and "\n" not in err


def test_plan_and_share_cover_every_chunk_once():
    chunks = plan({"block1_conv1": list(range(7)), "block2_conv1": [0, 5, 9]}, 3)
    assert [(c.layer, c.k, c.filters) for c in chunks] == [
        ("block1_conv1", 0, (0, 1, 2)), ("block1_conv1", 1, (3, 4, 5)), ("block1_conv1", 2, (6,)),
        ("block2_conv1", 0, (0, 5, 9))]
    for count in (1, 2, 3, 5):
        shares = [share(chunks, p, count) for p in range(count)]
        assert sorted(c.index for s in shares for c in s) == list(range(len(chunks)))


def test_reference_atlas_files_and_site(reference):
    images = pngs(reference)
    assert len(images) == 12
    for name in images:
        with Image.open(reference / name) as im:
            assert im.size == (16, 16) and im.mode == "RGB"
    recs = records(reference)
    assert len(recs) == N_CHUNKS
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["settings"]["size"] == 16 and manifest["settings"]["steps"] == 2
    assert manifest["layers"] == {"block1_conv1": list(range(6)), "block1_conv2": list(range(6))}
    for layer in ("block1_conv1", "block1_conv2"):
        assert (reference / layer / "index.html").exists()
        for f in range(6):
            page = (reference / layer / f"f{f:03d}.html").read_text()
            assert f'src="f{f:03d}.png"' in page and "final activation" in page
    index = (reference / "index.html").read_text()
    assert 'href="block1_conv2/index.html"' in index and "http" not in index.replace("http-equiv", "")
    assert not list(reference.rglob("*.tmp"))


def test_images_match_the_render_api(reference, params):
    import jaxviz

    want = jaxviz.render(params, "block1_conv2:0-5", jaxviz.SEED._replace(size=16, steps=2)).tiles
    for f in range(6):
        got = np.asarray(Image.open(reference / "block1_conv2" / f"f{f:03d}.png"))
        assert np.abs(got.astype(int) - want[f].astype(int)).max() <= 1


def test_rerun_skips_everything_and_other_settings_are_refused(reference, tmp_path, capsys):
    out = tmp_path / "a"
    assert atlas_mod.main([*TINY, "--out", str(out), "--quiet"]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    capsys.readouterr()
    assert atlas_mod.main([*TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 of 4 chunks already done" in text and "rendered 0 filters" in text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    assert len(rendered_chunks(out)) == N_CHUNKS
    assert pngs(out) == pngs(reference)

    other = [a if a != "2" else "3" for a in TINY]  # --steps 3
    assert atlas_mod.main([*other, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steps 2 -> 3" in err and "--force" in err
    assert atlas_mod.main([*other, "--out", str(out), "--force", "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["steps"] == 3
    assert len(rendered_chunks(out)) == N_CHUNKS  # the log was replaced with the atlas


def test_batch_auto_is_the_default_and_an_atlas_resumes_with_its_own(reference, tmp_path, capsys):
    """A new atlas without --batch records 'auto' and gives the same PNGs as --batch 1; an atlas
    made with a number resumes with it when --batch is not given; an explicit other batch is refused."""
    no_batch = TINY[: TINY.index("--batch")]
    auto = tmp_path / "auto"
    assert atlas_mod.main([*no_batch, "--out", str(auto), "--quiet"]) == 0
    assert json.loads((auto / "manifest.json").read_text())["settings"]["batch"] == "auto"
    assert pngs(auto) == pngs(reference)

    old = tmp_path / "old"
    assert atlas_mod.main([*TINY, "--out", str(old), "--quiet"]) == 0
    capsys.readouterr()
    assert atlas_mod.main([*no_batch, "--out", str(old)]) == 0
    assert "4 of 4 chunks already done" in capsys.readouterr().out
    assert json.loads((old / "manifest.json").read_text())["settings"]["batch"] == 1
    assert atlas_mod.main([*no_batch, "--batch", "auto", "--out", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch 1 -> 'auto'" in err and "--force" in err


def test_layer_batch_is_the_engines_choice_per_device(params):
    """'auto' on CPU: chunks of 16 where a layer has tiles enough (block1..4 at 64 px), 64 at block5
    (one Winograd tile an image), split over the devices; rounds evened out; a number is kept."""
    from jaxviz import ascent, models
    from jaxviz.atlas import layer_batch
    from jaxviz.engine import SEED as recipe

    model = models.vgg(params)
    assert recipe.size == 64
    assert layer_batch(model, recipe, "block3_conv1", 64, 1, "auto") == ascent.CPU_BATCH == 16
    assert layer_batch(model, recipe, "block5_conv1", 64, 1, "auto") == 64
    assert layer_batch(model, recipe, "block5_conv1", 64, 4, "auto") == 16
    assert layer_batch(model, recipe, "block3_conv1", 20, 1, "auto") == 10  # 2 rounds of 10, not 16 + 4
    assert layer_batch(model, recipe, "block3_conv1", 3, 1, "auto") == 3
    assert layer_batch(model, recipe, "block5_conv1", 64, 1, 7) == 7


def test_closing_line_and_estimate(tmp_path, capsys):
    out = tmp_path / "e"
    args = ["--layers", "block1_conv1", "--filters", "0-3", "--size", "16", "--steps", "2", "--chunk", "2",
            "--estimate", "--out", str(out)]
    assert atlas_mod.main(args) == 0
    text = capsys.readouterr().out
    assert "rendered 4 filters (2 chunks, 0 already done) on 1 cpu device(s) in" in text
    assert "filters/s" in text
    line = [l for l in text.splitlines() if l.startswith("estimate:")][0]
    assert "4224 filters" in line and "timed layers: block1_conv1" in line and "modelled by cost" in line
    assert "batch auto x 1 device(s)" in line


def test_an_estimate_from_first_rounds_only_says_it_is_an_upper_bound():
    """One round of block1_conv1 (its compile in it) scaled by deep layers' cost said "about 457246 s"
    for a 16 px, 1-step atlas; layers timed in steady rounds are the base where there are any."""
    t = atlas_mod.Timings()
    t.add("block1_conv1", 0.8, 2)
    assert t.steady() == set()
    settings, sizes = {"size": 16, "chunk": 64}, {l: 64 for l in atlas_mod.conv_layers(atlas_mod.VGG16)}
    first_only, *_ = atlas_mod.estimate_full(t, settings, sizes)
    t.add("block3_conv1", 0.5, 2)
    t.add("block3_conv1", 0.01, 2)  # steady: compile 0.49 s
    assert t.steady() == {"block3_conv1"}
    total, measured, modelled = atlas_mod.estimate_full(t, settings, sizes)
    assert measured == ["block1_conv1", "block3_conv1"] and "block5_conv1" in modelled
    assert total < first_only / 10


@pytest.mark.parametrize("argv, message", [
    (["--layers", "block1_pool"], "block1_pool"),
    (["--filters", "64", "--layers", "block1_conv1"], "out of range"),
    (["--size", "8", "--layers", "block5_conv1"], "too small"),
    (["--recipe", "nope"], "recipe"),
    (["--process-id", "1"], "--num-processes"),
    (["--num-processes", "1", "--process-id", "1"], "--process-id 1 must be in 0-0"),  # was: needs --num-processes
    (["--coordinator", "localhost", "--num-processes", "1", "--process-id", "0"], "is not HOST:PORT"),  # IndexError
    (["--coordinator", "localhost:http", "--num-processes", "2", "--process-id", "0"], "is not HOST:PORT"),
    # issue 12: limits before any work, huge numbers and NaN refused
    (["--size", "100000"], "needs about"),
    (["--steps", "10000000000"], "--steps must be 1000000 or less"),
    (["--seed", "1180591620717411303424"], "--seed must be 4294967295 or less"),
    (["--filters", "0-9999999999"], "out of range"),
    (["--step-size", "nan"], "--step-size must be a finite number"),
    (["--step-size", "inf"], "--step-size must be a finite number"),
    (["--step-size=-inf"], "--step-size must be a finite number"),
    (["--step-size", "1e39"], "--step-size must be more than 0 and at most"),
    (["--step-size", "-1"], "--step-size must be more than 0"),  # it descended, silently
    (["--chunk", "99999999999"], "--chunk must be 4096 or less"),
    (["--batch", "0"], "--batch must be 1 or more"),
    (["--batch", "many"], "--batch must be an integer or 'auto'"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    try:
        code = atlas_mod.main([*argv, "--out", str(tmp_path / "x")])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES must be 1 to 65536, not 0"),  # "0--1"
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"}, "JAX_PROCESS_ID must be 0 to 65536, not -1"),
])
def test_bad_distributed_environment_is_one_line(env, message, tmp_path, capsys, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = atlas_mod.main(["--coordinator", "localhost:1234", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("layer", ["../evil", "chunks"])
def test_a_layer_name_that_is_no_folder_of_out_is_refused(layer, tmp_path, capsys):
    """A model's layer "../evil" had the atlas write its PNGs and pages (index.html too) into OUT's
    parent; "chunks" mixed its images with the atlas's chunk records."""
    out = tmp_path / "out"
    code = atlas_mod.main(["--model", "tests.tiny_model:build_paths", "--layers", layer, "--filters", "0",
                           "--size", "16", "--steps", "1", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"layer {layer!r} cannot be a folder of --out" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layers, folds, message", [
    ("a,a/index.html", False, "layer 'a/index.html' and layer 'a' clash: {out}/a/index.html is a file of one and a "
     "folder of the other"),  # the site failed after the rendering, advising to move the folder of images
    ("a,a/f000.png", False, "layer 'a/f000.png' and layer 'a' clash: {out}/a/f000.png is a file of one"),
    ("a,a/c0000.json", False, "layer 'a/c0000.json' and layer 'a' clash: {out}/chunks/a/c0000.json is a file of one"),
    ("Conv,conv", True, "layer 'Conv' and layer 'conv' clash: {out}/Conv is one path for both on this file system, "
     "which ignores case"),  # each wrote its images and records over the other's
    ("y" * 300, False, "is too long for a folder of --out (300 bytes in one name; at most 255)"),
])
def test_layers_whose_paths_clash_are_refused_before_any_work(layers, folds, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_args, "folds_case", lambda out: folds)
    out = tmp_path / "out"
    code = atlas_mod.main(["--model", "tests.tiny_model:build_clash", "--layers", layers, "--filters", "0",
                           "--size", "16", "--steps", "1", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message.format(out=out) in err, err
    assert "rename" in err and list(tmp_path.iterdir()) == []


def test_layers_differing_in_case_have_their_own_folders_where_the_file_system_tells_them_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_args, "folds_case", lambda out: False)
    out = tmp_path / "out"
    assert atlas_mod.main(["--model", "tests.tiny_model:build_clash", "--layers", "Conv,conv", "--filters", "0",
                           "--size", "16", "--steps", "1", "--quiet", "--out", str(out)]) == 0
    assert (out / "Conv" / "f000.png").read_bytes() != (out / "conv" / "f000.png").read_bytes()


def test_folds_case_tells_a_case_sensitive_file_system(tmp_path):
    (tmp_path / "probe").write_text("x")
    assert cli_args.folds_case(str(tmp_path / "new")) == (tmp_path / "PROBE").exists()


def test_a_nested_layer_name_gets_nested_pages_that_link_back(tmp_path):
    """A linen path "stem/conv" is the folder OUT/stem/conv: its pages climb two levels to the index."""
    out = tmp_path / "out"
    code = atlas_mod.main(["--model", "tests.tiny_model:build_paths", "--layers", "stem/conv", "--filters", "0-1",
                           "--size", "16", "--steps", "1", "--quiet", "--out", str(out)])
    assert code == 0
    page = (out / "stem" / "conv" / "f000.html").read_text()
    assert 'href="../../index.html"' in page and 'href="f001.html"' in page and (out / "stem" / "conv" / "f000.png").is_file()
    assert 'href="stem/conv/index.html"' in (out / "index.html").read_text()


@pytest.mark.parametrize("recipe", ["seed", "lucid"])
def test_a_model_of_one_input_size_gets_its_atlas_at_it_when_no_size_is_given(tmp_path, capsys, recipe):
    """A flatten before a dense head (16 px only): the default 64 px would fail; rerun, it resumes."""
    out = tmp_path / "out"
    argv = ["--model", "tests.tiny_model:build_fixed", "--layers", "conv", "--filters", "0-1", "--steps", "2",
            "--recipe", recipe, "--out", str(out)]
    assert atlas_mod.main(argv) == 0
    assert "cannot take 64 px images: rendering at its input size, --size 16" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["settings"]["size"] == 16
    assert Image.open(out / "conv" / "f001.png").size == (16, 16)
    assert atlas_mod.main(argv) == 0 and "already done" in capsys.readouterr().out


def test_sharded_over_four_devices_equals_one_device(reference, tmp_path):
    out = tmp_path / "four"
    r = run_cli([*TINY, "--out", str(out)], {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert r.returncode == 0, r.stderr
    assert "on 4 cpu device(s)" in r.stdout
    assert {rec["devices"] for rec in records(out).values()} == {4}
    assert pngs(out) == pngs(reference)
    for name, rec in records(out).items():
        assert rec["losses"] == records(reference)[name]["losses"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(reference, tmp_path):
    out = tmp_path / "two"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-m", "jaxviz.atlas", *TINY, "--out", str(out),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                               "--wait", "120"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e
    assert "process 0/2: rendered 6 filters (2 chunks" in outs[0][0]
    assert "process 1/2: rendered 6 filters (2 chunks" in outs[1][0]
    assert "site:" in outs[0][0] and "site:" not in outs[1][0]
    by_process = {rec["index"]: rec["process"] for rec in records(out).values()}
    assert by_process == {0: 0, 1: 1, 2: 0, 3: 1}
    assert pngs(out) == pngs(reference)
    assert (out / "index.html").exists()


def test_resume_after_sigkill(reference, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **{atlas_mod.TEST_DELAY_ENV: "0.4"})
    env.pop("XLA_FLAGS", None)
    p = subprocess.Popen([sys.executable, "-m", "jaxviz.atlas", *TINY, "--out", str(out), "--quiet"],
                         env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("chunks/*/c*.json"))) < 2:
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # into the next chunk's PNGs (0.4 s each)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.stderr.close()
    done = {name: (out / name).stat().st_mtime_ns for name in records(out)}
    assert 2 <= len(done) < N_CHUNKS, "the run finished before it was killed"
    done_pngs = {}
    for name, rec in records(out).items():
        for f in rec["files"]:
            path = out / rec["layer"] / f
            done_pngs[path] = (path.stat().st_mtime_ns, path.read_bytes())
    first_run = rendered_chunks(out)

    r = run_cli([*TINY, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert f"{len(done)} of {N_CHUNKS} chunks already done" in r.stdout

    # every image is a valid PNG, identical to the uninterrupted run's
    images = pngs(out)
    assert images == pngs(reference)
    for name in images:
        with Image.open(out / name) as im:
            im.verify()
    assert not list(out.rglob("*.tmp"))
    # done chunks were not rendered again: records and PNGs untouched, the log lists each chunk once
    assert {name: (out / name).stat().st_mtime_ns for name in done} == done
    for path, (mtime, data) in done_pngs.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    all_chunks = sorted(rendered_chunks(out))
    assert all_chunks == sorted(set(all_chunks)) and len(all_chunks) == N_CHUNKS
    assert set(first_run).isdisjoint(set(all_chunks) - set(first_run)) and len(set(first_run)) == len(done)
    assert (out / "index.html").exists()


def test_the_quality_recipe_goes_through_the_sharded_engine(tmp_path, params):
    import jaxviz

    out = tmp_path / "lucid"
    argv = ["--recipe", "lucid", "--layers", "block1_conv1", "--filters", "0-2", "--size", "16", "--steps", "2",
            "--chunk", "2", "--batch", "2", "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["recipe"] == "lucid"
    want = jaxviz.render(params, "block1_conv1:0-2", jaxviz.LUCID._replace(size=16, steps=2)).tiles
    for f in range(3):
        got = np.asarray(Image.open(out / "block1_conv1" / f"f{f:03d}.png"))
        assert np.abs(got.astype(int) - want[f].astype(int)).max() <= 1
    assert "final activation" in (out / "block1_conv1" / "f002.html").read_text()
    assert atlas_mod.main([*argv[:-3], "--step-size", "2", "--out", str(tmp_path / "x")]) == 2


def test_any_model_with_animations_and_examples(tmp_path):
    """A plain-function model's atlas: every spatial layer, an animation per filter shown on its page,
    and the dataset examples of python -m jaxviz.examples beside each filter."""
    from jaxviz import examples

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    ex = tmp_path / "ex"
    assert examples.main(["--model", "tests.tiny_model:build", "--images", str(photos), "--layers", "conv",
                          "--size", "16", "--k", "2", "--out", str(ex), "--quiet"]) == 0
    out = tmp_path / "fn"
    argv = ["--model", "tests.tiny_model:build", "--size", "16", "--steps", "4", "--chunk", "4", "--batch", "4",
            "--animate", "--examples", str(ex), "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 0
    assert "Dataset examples" in (out / "conv" / "f001.html").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["model"] == "tests.tiny_model:build"
    gif = Image.open(out / "conv" / "f003.gif")
    assert gif.n_frames == 5  # start + 4 steps (k = 1)
    assert 'id="animation"' in (out / "conv" / "f003.html").read_text()
    assert (out / "conv" / "examples" / "f001_1.png").exists()
    # resumed without --examples (every chunk done: the site alone is rebuilt): no stale patches stay
    assert atlas_mod.main([a for a in argv if a not in ("--examples", str(ex))]) == 0
    assert not (out / "conv" / "examples").exists()
    assert "Dataset examples" not in (out / "conv" / "f001.html").read_text()
    assert atlas_mod.main([*argv[:-3], "--layers", "dense", "--out", str(tmp_path / "y")]) == 2


def test_an_older_atlas_with_duplicate_filters_resumes(tmp_path, capsys):
    """Older versions stored --filters 3,0,3 as such (the manifest's list and its chunks held 3 twice);
    the same command now plans 3,0 and resumed such an atlas as 'other settings'. It resumes (the
    manifest becomes this version's), with the same images."""
    out = tmp_path / "old"
    argv = ["--model", "tests.tiny_model:build", "--filters", "3,0,3", "--size", "16", "--steps", "2", "--chunk", "4",
            "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 0
    pngs = {f: (out / "conv" / f).read_bytes() for f in ("f000.png", "f003.png")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == {"conv": [3, 0]}
    manifest["layers"] = {"conv": [3, 0, 3]}  # as the older version wrote it, with its chunk record
    (out / "manifest.json").write_text(json.dumps(manifest))
    record = out / "chunks" / "conv" / "c0000.json"
    rec = json.loads(record.read_text())
    rec.update({k: v + v[:1] for k, v in rec.items() if isinstance(v, list) and len(v) == 2})
    record.write_text(json.dumps(rec))
    assert atlas_mod.main(argv) == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["layers"] == {"conv": [3, 0]}
    assert {f: (out / "conv" / f).read_bytes() for f in pngs} == pngs
    assert json.loads(record.read_text())["filters"] == [3, 0]
    manifest["layers"] = {"conv": [3, 0, 4]}  # a real difference is still refused
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert atlas_mod.main(argv) == 2 and "other settings" in capsys.readouterr().err


# --- issue 12: manifest after the weights, malformed files, one job per folder, interrupts ----------


def test_bad_weights_leave_no_manifest_and_no_folder(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    out = tmp_path / "a"
    assert atlas_mod.main([*TINY, "--weights", str(bad), "--out", str(out), "--quiet"]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # an existing folder stays as it was, without a manifest
    assert atlas_mod.main([*TINY, "--weights", str(bad), "--out", str(out), "--quiet"]) == 2
    assert os.listdir(out) == []


def test_a_file_where_a_layer_folder_goes_is_one_line(tmp_path, capsys):
    """A file named like a layer (or chunks/) in --out was a FileExistsError traceback, exit 1."""
    out = tmp_path / "a"
    out.mkdir()
    (out / "block1_conv1").write_text("x")
    assert atlas_mod.main([*TINY, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create folder" in err[0] and "a file is in the way" in err[0]


@pytest.mark.parametrize("model, layer, where, kind", [
    ("build", "conv", "conv/f001.html", "folder"),  # a filter's page: a traceback after rendering
    ("build", "conv", "conv/index.html", "folder"),  # the layer's page: the same
    ("build", "conv", "conv/f001.png", "folder"),  # a tile: one line after rendering, advising a file name in it
    ("build", "conv", "conv/f001.gif", "folder"),  # an animation (--animate): the same
    ("build", "conv", "chunks/conv/c0000.json", "folder"),  # a chunk's record: the same
    ("build", "conv", "chunks/conv", "file"),  # the layer's folder of records: one line after rendering
    ("build_paths", "stem/conv", "stem", "file"),  # a nested layer's parent folder: the same
])
def test_anything_in_the_way_of_an_output_is_one_line_before_rendering(model, layer, where, kind, tmp_path, capsys):
    """Every path the atlas writes for the chosen layers and filters is checked before any work:
    one line naming the first one in the way, exit 2, no manifest, nothing rendered."""
    out = tmp_path / "a"
    if kind == "folder":
        (out / where).mkdir(parents=True)
    else:
        (out / where).parent.mkdir(parents=True, exist_ok=True)
        (out / where).write_text("x")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    argv = ["--model", f"tests.tiny_model:{model}", "--layers", layer, "--filters", "0-1", "--size", "16",
            "--steps", "1", "--animate", "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    what = f"cannot write {out / where}: a folder is in the way" if kind == "folder" else \
        f"cannot create folder {out / where}: a file is in the way"
    assert err == [f"jaxviz.atlas: error: {what}; move it, or choose another --out"], err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # no manifest, no tile, no log


def test_a_folder_where_the_manifest_goes_is_one_line(tmp_path, capsys):
    """manifest.json as a folder: 'unreadable, pass --force', then --force crashed unlinking it."""
    out = tmp_path / "a"
    (out / "manifest.json").mkdir(parents=True)
    for force in ([], ["--force"]):
        assert atlas_mod.main([*TINY, "--out", str(out), "--quiet", *force]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "manifest.json: a folder is in the way" in err[0]
        assert os.listdir(out) == ["manifest.json"]


def test_malformed_records_are_rendered_again(reference, tmp_path):
    import shutil

    out = tmp_path / "m"
    shutil.copytree(reference, out)
    recs = sorted(out.glob("chunks/*/c*.json"))
    bad = {recs[0]: [], recs[1]: dict(json.loads(recs[1].read_text()), sha256=None),
           recs[2]: dict(json.loads(recs[2].read_text()), losses=["x", 1, 2])}
    for path, value in bad.items():
        path.write_text(json.dumps(value))
    r = run_cli([*TINY, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert "1 of 4 chunks already done" in r.stdout
    assert pngs(out) == pngs(reference)
    assert len(rendered_chunks(out)) == N_CHUNKS + 3


@pytest.mark.parametrize("manifest", ["[]", '{"format": "jaxviz-atlas/1", "settings": null}', "{not json"])
def test_malformed_manifest_is_one_clear_error(tmp_path, capsys, manifest):
    out = tmp_path / "m"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    assert atlas_mod.main([*TINY, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json" in err and "--force" in err, err
    assert not (out / ".jaxviz.lock").exists()


def test_a_second_job_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "busy"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **{atlas_mod.TEST_DELAY_ENV: "0.3"})
    env.pop("XLA_FLAGS", None)
    first = subprocess.Popen([sys.executable, "-m", "jaxviz.atlas", *TINY, "--out", str(out), "--quiet"],
                             env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        t0 = time.monotonic()
        second = run_cli([*TINY, "--out", str(out), "--quiet"])
        assert second.returncode == 2 and first.poll() is None, second.stderr
        err = second.stderr.strip()
        assert "\n" not in err and f"in use by another jaxviz.atlas job (PID {first.pid}" in err, err
        assert time.monotonic() - t0 < 60
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert len(rendered_chunks(out)) == N_CHUNKS  # nothing was done twice
    assert not (out / ".jaxviz.lock").exists()  # released on exit


def test_a_stale_lock_of_a_dead_process_is_taken_over(reference, tmp_path):
    out = tmp_path / "stale"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    (out / ".jaxviz.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert atlas_mod.main([*TINY, "--out", str(out), "--quiet"]) == 0
    assert pngs(out) == pngs(reference) and not (out / ".jaxviz.lock").exists()


def test_lock_is_held_while_running_and_refuses_in_process(tmp_path):
    from jaxviz.folder_lock import FolderLock
    from jaxviz.errors import JaxvizError

    held = FolderLock(str(tmp_path), "jaxviz.atlas").acquire()
    try:
        with pytest.raises(JaxvizError, match=f"PID {os.getpid()}"):
            FolderLock(str(tmp_path), "jaxviz.atlas").acquire()
    finally:
        held.release()
    FolderLock(str(tmp_path)).acquire().release()


def test_a_full_disk_at_the_lock_or_the_log_is_one_line_and_the_atlas_resumes(reference, tmp_path, monkeypatch,
                                                                                 capsys):
    """No space left where the lock file names its holder and where atlas.log takes a chunk's line (both
    os.write): each was a traceback, exit 1 (the lock's before any work). Now the lock holds all the same
    and the log's failure is one line, exit 2; the chunk before it is kept, and a rerun completes."""
    import errno

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "full"
    with monkeypatch.context() as m:
        m.setattr(os, "write", full)
        assert atlas_mod.main([*TINY, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"jaxviz.atlas: error: cannot write {out / 'atlas.log'} (No space left on device); free some "
                   "space, or choose another folder\n")
    assert len(list(out.glob("chunks/*/*.json"))) == 1 and not list(out.rglob("*.tmp"))
    assert not (out / ".jaxviz.lock").exists()
    assert atlas_mod.main([*TINY, "--out", str(out), "--quiet"]) == 0
    assert pngs(out) == pngs(reference)


def test_progress_bar_has_no_clamping_warning_or_negative_eta(tmp_path):
    """7 rounds per layer: float updates of 100 x cost / total summed past 100 (issue 12, item 8)."""
    r = run_cli(["--layers", "block1_conv1,block1_conv2", "--filters", "0-6", "--size", "16", "--steps", "1",
                 "--chunk", "7", "--batch", "1", "--out", str(tmp_path / "p")])
    assert r.returncode == 0, r.stderr
    assert "clamping" not in r.stderr and "<-" not in r.stderr and "100%" in r.stderr, r.stderr
    assert [atlas_mod.progress_mark(d, 3.0) for d in (0, 1.0, 2.0, 3.0000000001)] == [0, 333, 667, 1000]


def test_real_interrupts_exit_130_fast_and_the_rerun_finishes(reference, tmp_path):
    """Real SIGINTs / SIGTERM at random moments of `python -m jaxviz.atlas`: exit 130 within
    3 s, no crash, no temporary file, the lock released; the rerun then finishes every image
    byte for byte (issue 12, items 1 and 7)."""
    rng = random.Random()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **{atlas_mod.TEST_DELAY_ENV: "0.1"})
    env.pop("XLA_FLAGS", None)
    out = tmp_path / "int"
    for i, (delay, sig) in enumerate([(rng.uniform(0.1, 1.5), signal.SIGINT), (rng.uniform(1.5, 4.0), signal.SIGTERM),
                                      (rng.uniform(3.0, 7.0), signal.SIGINT)]):
        code, err, seconds = interrupt([sys.executable, "-m", "jaxviz.atlas", *TINY, "--out", str(out), "--quiet"],
                                       delay, sig, env=env, cwd=ROOT)
        where = f"run {i}, {sig!r} {delay:.2f} s after the start"
        assert code in (130, 0), f"{where}: exit {code}: {err}"
        if code == 130:
            assert seconds < 3.0, f"{where}: {seconds:.1f} s"
            assert "Traceback" not in err and "jaxviz.atlas: interrupted" in err.strip().splitlines()[-1], err
        assert not list(out.rglob("*.tmp")) and not (out / ".jaxviz.lock").exists(), where
    r = run_cli([*TINY, "--out", str(out)])
    assert r.returncode == 0, r.stderr
    assert pngs(out) == pngs(reference)


# --- found by probing the atlas: --force with any model, duplicate filters, examples of another model -----


def test_force_removes_the_old_manifests_layers_and_nothing_outside(tmp_path):
    out = tmp_path / "atlas"
    (out / "blocks" / "0" / "conv").mkdir(parents=True)
    (out / "blocks" / "0" / "conv" / "f000.png").write_bytes(b"x")
    (out / "mine.txt").write_text("not the atlas's")
    keep = tmp_path / "keep"
    keep.mkdir()
    layers = {"blocks/0/conv": [0], "../keep": [0], "..": [0]}
    (out / "manifest.json").write_text(json.dumps({"format": atlas_mod.FORMAT, "settings": {}, "layers": layers}))
    atlas_mod.Atlas(str(out), {"chunk": 4}, {"other": [0]}).remove()
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and keep.is_dir()


def test_duplicate_filters_render_once_and_gif_temporaries_are_ours():
    from jaxviz.cli_args import _OUR_TEMPORARY, filters_for

    assert filters_for("block1_conv1", [(9, 9), (0, 0), (5, 5), (5, 5), (4, 6)]) == [9, 0, 5, 4, 6]
    assert _OUR_TEMPORARY.match(".f000.gif.6twji96v.tmp") and _OUR_TEMPORARY.match(".f000.webp.6twji96v.tmp")


def test_examples_of_another_model_are_refused(tmp_path, capsys):
    from jaxviz import examples

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(photos / "p.png")
    ex = tmp_path / "ex"
    assert examples.main(["--model", "tests.tiny_model:build", "--images", str(photos), "--layers", "conv",
                          "--size", "16", "--k", "1", "--out", str(ex), "--quiet"]) == 0
    out = tmp_path / "out"
    assert atlas_mod.main([*TINY, "--examples", str(ex), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "made with model function, not vgg16" in err and len(err.splitlines()) == 1
    assert not (out / "manifest.json").exists()
    # another plain-function model (its weights differ; every such model is named "function") was taken
    other = ["--model", "tests.tiny_model:build_paths", "--layers", "stem/conv", "--filters", "0", "--size", "16",
             "--steps", "1"]
    assert atlas_mod.main([*other, "--examples", str(ex), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "made with other weights than this function model's" in err and len(err.splitlines()) == 1
    assert not (out / "manifest.json").exists()
    assert atlas_mod.main(["--model", "tests.tiny_model:build", "--layers", "conv", "--filters", "0", "--size", "16",
                           "--steps", "1", "--examples", str(ex), "--out", str(out), "--quiet"]) == 0


def test_a_deleted_animation_makes_its_chunk_render_again(tmp_path):
    out = tmp_path / "an"
    argv = [*TINY[:2], "--filters", "0-1", "--size", "16", "--steps", "2", "--chunk", "2", "--batch", "2",
            "--animate", "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 0
    gif = out / "block1_conv1" / "f001.gif"
    first = gif.read_bytes()
    gif.unlink()
    assert atlas_mod.main(argv) == 0
    assert gif.read_bytes() == first


def test_a_damaged_animation_makes_its_chunk_render_again(tmp_path):
    """A GIF cut short or emptied was kept (only its existence was checked): its page showed a broken image."""
    out = tmp_path / "an"
    argv = [*TINY[:2], "--filters", "0-1", "--size", "16", "--steps", "2", "--chunk", "2", "--batch", "2",
            "--animate", "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 0
    gifs = [out / "block1_conv1" / f"f00{f}.gif" for f in (0, 1)]
    first = [g.read_bytes() for g in gifs]
    gifs[0].write_bytes(first[0][:100])
    gifs[1].write_bytes(b"")
    assert atlas_mod.main(argv) == 0
    assert [g.read_bytes() for g in gifs] == first


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX's")
@pytest.mark.parametrize("where", ["index.html", "conv/f001.html", "conv/f001.png", "conv/f001.gif",
                                   "chunks/conv/c0000.json"])
def test_a_pipe_where_an_output_goes_is_one_line_before_rendering(where, tmp_path, capsys):
    """A named pipe at a page, tile or record: the rerun hung reading it (the site's compare, the
    tile's sha256), or failed after rendering."""
    out = tmp_path / "a"
    (out / where).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(out / where)

    def hung(*_):
        raise TimeoutError(f"the atlas waited on the pipe at {where}")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)  # a regression fails the test instead of hanging it
    try:
        argv = ["--model", "tests.tiny_model:build", "--layers", "conv", "--filters", "0-1", "--size", "16",
                "--steps", "1", "--animate", "--out", str(out), "--quiet"]
        assert atlas_mod.main(argv) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxviz.atlas: error: cannot write {out / where}: it is not a regular file (a device, pipe or "
                   "socket); move it, or choose another --out"], err
    assert not (out / "manifest.json").exists()


def test_empty_examples_is_named(tmp_path, capsys):
    """--examples '' said "--examples : no such file or folder", naming nothing."""
    assert atlas_mod.main([*TINY, "--examples", "", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip().startswith("jaxviz.atlas: error: --examples is empty; give the --out folder")
    assert not (tmp_path / "a").exists()


def test_dead_filter_of_the_quality_recipe_is_a_setting_of_the_atlas(tmp_path, capsys, params):
    """python -m jaxviz.grid had --dead-filter, the atlas none: a quality atlas's filters that never
    fire stayed their start images."""
    import jaxviz
    from jaxviz.objectives import channel

    out = tmp_path / "wake"
    argv = ["--recipe", "lucid", "--layers", "block1_conv1", "--filters", "19", "--size", "16", "--steps", "8",
            "--chunk", "1", "--out", str(out), "--quiet"]
    recipe = jaxviz.LUCID._replace(size=16, steps=8)
    assert jaxviz.render(params, channel("block1_conv1", [19]), recipe).values[0] == 0  # never fires without it
    assert atlas_mod.main([*argv, "--dead-filter", "redirect"]) == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["dead_filter"] == "redirect"
    want = jaxviz.render(params, channel("block1_conv1", [19], "redirect"), recipe)
    got = np.asarray(Image.open(out / "block1_conv1" / "f019.png"))
    assert want.values[0] > 0 and np.abs(got.astype(int) - want.tiles[0].astype(int)).max() <= 1
    page = (out / "block1_conv1" / "f019.html").read_text()
    assert "redirect" in page and "never fired" not in page
    assert atlas_mod.main(argv) == 2  # resumed without it: other settings
    assert "dead_filter 'redirect' -> 'none'" in capsys.readouterr().err
    assert atlas_mod.main([*argv[2:-3], "--dead-filter", "preact", "--out", str(tmp_path / "seed")]) == 2
    assert "quality recipe only" in capsys.readouterr().err and not (tmp_path / "seed").exists()
    assert atlas_mod.main(["--model", "tests.tiny_model:build", "--recipe", "lucid", "--dead-filter", "preact",
                           "--size", "16", "--out", str(tmp_path / "fn")]) == 2  # a plain function: no pre-activation
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pre-activation" in err and not (tmp_path / "fn").exists()


def test_cluster_with_no_cluster_to_detect_is_one_line(tmp_path):
    """--cluster where JAX detects no cluster said "cannot join the distributed job at None"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS",
                                                                      "SLURM_", "OMPI_"))}
    proc = subprocess.run([sys.executable, "-m", "jaxviz.atlas", "--cluster", "--layers", "block1_conv1", "--filters",
                           "0", "--size", "16", "--steps", "1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--cluster: JAX found no cluster to join here" in proc.stderr and "None" not in proc.stderr
    assert not (tmp_path / "o").exists()


# --- robustness sweep: damaged manifests and records, memory of other models, processes' options ------

FN = ["--model", "tests.tiny_model:build", "--filters", "0-1", "--size", "16", "--steps", "2", "--quiet"]


def test_a_manifest_batch_past_what_batch_takes_is_refused(tmp_path, capsys):
    """A damaged manifest's batch of 10**9 was adopted on resuming: every round padded to 10**9 images
    (the OS killed the run)."""
    out = tmp_path / "b"
    assert atlas_mod.main([*FN, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["settings"]["batch"] = 5000
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "chunks" / "conv" / "c0000.json").unlink()
    assert atlas_mod.main([*FN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch 5000" in err and "--force" in err, err
    assert not (out / "chunks" / "conv" / "c0000.json").exists()


def test_json_nested_too_deep_in_a_manifest_or_record(tmp_path, capsys):
    """json's RecursionError was a traceback: in the manifest one line (and --force replaces it), in
    a chunk record a chunk not done."""
    out = tmp_path / "deep"
    out.mkdir()
    deep = "[" * 100_000 + "]" * 100_000
    (out / "manifest.json").write_text(deep)
    assert atlas_mod.main([*FN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json is unreadable" in err and "--force" in err, err
    assert atlas_mod.main([*FN, "--out", str(out), "--force"]) == 0
    (out / "chunks" / "conv" / "c0000.json").write_text(deep)
    assert atlas_mod.main([*FN, "--out", str(out)]) == 0
    assert json.loads((out / "chunks" / "conv" / "c0000.json").read_text())["filters"] == [0, 1]
    assert len((out / "atlas.log").read_text().splitlines()) == 2  # rendered again


def test_chunk_records_without_a_manifest_are_refused(tmp_path, capsys):
    """Records left without their manifest (deleted, or a --force replacing the atlas interrupted) counted
    as done for a job of other settings: --steps 3 'rendered 0 filters', its pages showing the 2-step images."""
    out = tmp_path / "lost"
    assert atlas_mod.main([*FN, "--out", str(out)]) == 0
    (out / "manifest.json").unlink()
    assert atlas_mod.main([*FN, "--steps", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no manifest.json" in err and "--force" in err, err
    assert not (out / "manifest.json").exists()
    assert atlas_mod.main([*FN, "--steps", "3", "--out", str(out), "--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["steps"] == 3
    assert len((out / "atlas.log").read_text().splitlines()) == 1  # the log went with the old atlas: rendered anew


def test_other_models_are_checked_against_the_memory_limit(tmp_path, capsys, monkeypatch):
    """VGG16's layers were checked, other models' not: a --size or --batch past memory ran until the OS
    killed it."""
    monkeypatch.setenv("JAXVIZ_MAX_MEMORY", "1M")
    out = tmp_path / "m"
    assert atlas_mod.main([*FN, "--size", "64", "--batch", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs about" in err and "JAXVIZ_MAX_MEMORY" in err, err
    assert not out.exists()


def test_the_frames_of_animate_count_in_the_memory_limit(tmp_path, capsys, monkeypatch):
    """A chunk's 41 frames an image, kept until its GIFs are written, were not in the estimate."""
    monkeypatch.setenv("JAXVIZ_MAX_MEMORY", "10M")
    out = tmp_path / "m"
    assert atlas_mod.main([*FN, "--size", "64", "--steps", "40", "--animate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "with 41 animation frames each needs about" in err, err
    assert not out.exists()


def test_a_process_with_other_options_than_process_0s_is_refused(tmp_path):
    """Process 1 given --steps 3 and process 0 --steps 2 rendered its chunks at 3 steps into process 0's
    atlas of 2 (both exit 0: a mixed atlas, silently)."""
    out = tmp_path / "mixed"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "jaxviz.atlas", *FN[:-3], "--filters", "0-3", "--chunk", "1", "--out", str(out),
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--wait", "2", "--quiet"]
    procs = [subprocess.Popen([*argv, "--process-id", str(i), "--steps", str(2 + i)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    err = outs[1][1]
    assert procs[1].returncode == 2 and "has other settings than this process's (steps 2 -> 3)" in err, err
    assert {rec["process"] for rec in records(out).values()} == {0}


def test_a_process_that_does_not_see_process_0s_manifest_is_refused(tmp_path, capsys, monkeypatch):
    """Process 1 on a host that does not share --out with process 0 (process 0 said "ok"): it rendered
    its chunks into a folder of its own, and process 0 waited for them."""
    from jaxviz import shard

    monkeypatch.setattr(shard, "init_distributed", lambda *a, **k: shard.Process(1, 2))
    monkeypatch.setattr(shard, "receive", lambda key, timeout: "ok")
    monkeypatch.setattr(shard, "shutdown", lambda: None)
    out = tmp_path / "here"
    assert atlas_mod.main([*FN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json is not in" in err and "file system" in err, err
    assert not out.exists()


def test_an_unknown_layer_of_a_model_names_no_option_the_atlas_lacks(tmp_path, capsys):
    """The atlas said "(see --list-layers)", an option only the grid command has."""
    assert atlas_mod.main(["--model", "tests.tiny_model:build", "--layers", "nope", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown layer 'nope' for model function; valid layers: conv" in err and "--list-layers" not in err, err


# --- robustness sweep: joining a multi-process job ------------------------------------------------


@pytest.mark.parametrize("address, message", [
    ("::1:1234", "an IPv6 address goes in brackets, e.g. [::1]:1234"),  # JAX waited, then aborted
    ("http://localhost:1234", "no such host 'http://localhost'"),
    ("host name:1234", "no such host 'host name'"),
])
def test_a_coordinator_that_is_no_host_is_refused_up_front(address, message):
    from jaxviz import shard
    from jaxviz.errors import JaxvizError

    with pytest.raises(JaxvizError, match=message.replace("[", r"\[").replace("]", r"\]")):
        shard.init_distributed(address, 2, 1)


def test_a_coordinator_port_in_use_is_one_line():
    """Process 0 on a port another job's coordinator holds: JAX's "Failed to start RPC server", after a
    C++ log line."""
    from jaxviz import shard
    from jaxviz.errors import JaxvizError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(JaxvizError, match=f"port {s.getsockname()[1]} is in use"):
            shard.init_distributed(f"127.0.0.1:{s.getsockname()[1]}", 2, 0)


def test_processes_that_never_join_end_in_one_line(tmp_path):
    """Process 1 of a job whose process 0 never starts waited JAX's 300 s, then aborted with a C++ stack
    trace (exit status 134)."""
    code = f"from jaxviz import shard; shard.init_distributed('127.0.0.1:{free_port()}', 2, 1, timeout=2)"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and time.monotonic() - t0 < 60, proc.stderr
    assert lines[-1].startswith("jaxviz: error: the 2 processes did not all join the job at 127.0.0.1:")
    assert len(lines) == 2 and "joining the job" in lines[0], proc.stderr  # the notice, then the error


def test_the_job_tolerates_a_process_that_dies(monkeypatch):
    """A process killed mid-run had JAX abort process 0 about 100 s later (a C++ stack trace, status 134)
    rather than it waiting --wait for the chunks and saying which are missing."""
    import jax

    from jaxviz import shard
    from jaxviz.errors import JaxvizError

    seen = []

    def initialize(**kw):
        seen.append(jax.config.jax_enable_recoverability)
        raise RuntimeError("stop here")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    try:
        with pytest.raises(JaxvizError, match="stop here"):
            shard.init_distributed(f"127.0.0.1:{free_port()}", 2, 1)
    finally:
        jax.config.update("jax_enable_recoverability", False)
    assert seen == [True]


def test_a_batch_past_the_chunk_is_cut_to_it():
    """--batch 64 with 4 filters padded every round to 64 images: 16 times the work for the same images."""
    from jaxviz.atlas import layer_batch

    assert layer_batch(None, None, "conv", 4, 1, 64) == 4
    assert layer_batch(None, None, "conv", 5, 2, 64) == 3
    assert layer_batch(None, None, "conv", 64, 1, 7) == 7


def test_a_quiet_job_prints_nothing(tmp_path):
    """Process 0 of a recoverable job had XLA log a warning ("Using experimental recoverable task
    feature") past --quiet on every start."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.run([sys.executable, "-m", "jaxviz.atlas", *FN, "--out", str(tmp_path / "q"), "--coordinator",
                           f"127.0.0.1:{free_port()}", "--num-processes", "1", "--process-id", "0"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert (tmp_path / "q" / "index.html").exists()


def test_a_process_outlives_process_0s_interrupt(tmp_path):
    """Process 0 stopped by Ctrl-C had JAX abort process 1 mid-chunk (a C++ stack trace, status 134): past
    the manifest the processes share only the folder, so process 1 finishes its chunks."""
    out = tmp_path / "p0"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **{atlas_mod.TEST_DELAY_ENV: "0.5"})
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "jaxviz.atlas", *FN[:-3], "--filters", "0-3", "--chunk", "1", "--out", str(out),
            "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2", "--wait", "5", "--quiet"]
    procs = [subprocess.Popen([*argv, "--process-id", str(i)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("chunks/*/c*.json")):
            assert procs[0].poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGINT)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 130 and procs[1].returncode == 0, outs[1][1]
    assert {rec["index"] for rec in records(out).values() if rec["process"] == 1} == {1, 3}


def test_a_refused_run_removes_every_empty_folder_it_made_for_a_nested_out(tmp_path, capsys, monkeypatch):
    """--out a/b/c with a/ there: a refusal (the folder's lock, here) removed c but left the empty b
    it had made too."""
    from jaxviz.errors import JaxvizError

    def busy(self):
        raise JaxvizError(f"{self.folder} is in use by another jaxviz.atlas job")

    monkeypatch.setattr(atlas_mod.FolderLock, "acquire", busy)
    (tmp_path / "a" / "mine").mkdir(parents=True)  # there before: kept, though empty
    assert atlas_mod.main([*TINY, "--out", str(tmp_path / "a" / "b" / "c"), "--quiet"]) == 2
    assert "is in use" in capsys.readouterr().err
    assert os.listdir(tmp_path / "a") == ["mine"]
