"""The atlas: chunks, resume after SIGKILL, sharding over devices and processes, the closing lines.

Every run is tiny (16 px, 2 steps, 6 filters of block1_conv1 and block1_conv2 in
chunks of 3), so the multi-device and multi-process runs take seconds. Images are
compared byte for byte: the same filter must give the same PNG whatever the device
or process count, and whether or not the run was interrupted.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxviz import atlas as atlas_mod
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

    want = jaxviz.render(params, "block1_conv2", range(6), size=16, steps=2)
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


def test_closing_line_and_estimate(tmp_path, capsys):
    out = tmp_path / "e"
    args = ["--layers", "block1_conv1", "--filters", "0-3", "--size", "16", "--steps", "2", "--chunk", "2",
            "--batch", "1", "--estimate", "--out", str(out)]
    assert atlas_mod.main(args) == 0
    text = capsys.readouterr().out
    assert "rendered 4 filters (2 chunks, 0 already done) on 1 cpu device(s) in" in text
    assert "filters/s" in text
    line = [l for l in text.splitlines() if l.startswith("estimate:")][0]
    assert "4224 filters" in line and "timed layers: block1_conv1" in line and "modelled by cost" in line


@pytest.mark.parametrize("argv, message", [
    (["--layers", "block1_pool"], "block1_pool"),
    (["--filters", "64", "--layers", "block1_conv1"], "out of range"),
    (["--size", "8", "--layers", "block5_conv1"], "too small"),
    (["--recipe", "nope"], "recipe"),
    (["--process-id", "1"], "--num-processes"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    code = atlas_mod.main([*argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


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


def test_other_recipes_pass_through_to_render(tmp_path, monkeypatch):
    """--recipe NAME calls jaxviz.api.render(..., recipe=NAME) with only the options given."""
    from jaxviz import api

    calls = []

    def fake_render(params, layer, filters, *, size=64, seed=0, precision="float32", return_raw=False,
                    recipe="seed", **kw):
        calls.append(dict(layer=layer, filters=list(filters), size=size, recipe=recipe, **kw))
        u8 = np.full((len(filters), size, size, 3), 7, np.uint8)
        return u8, u8.astype(np.float32), np.arange(len(filters), dtype=np.float32)

    monkeypatch.setattr(api, "render", fake_render)
    out = tmp_path / "lucid"
    argv = ["--recipe", "lucid", "--layers", "block1_conv1", "--filters", "0-2", "--size", "16", "--chunk", "2",
            "--batch", "2", "--out", str(out), "--quiet"]
    assert atlas_mod.main(argv) == 0
    assert [c["filters"] for c in calls] == [[0, 1], [2, 2]]  # the last round padded to its shape
    assert all(c["recipe"] == "lucid" and "steps" not in c and "step_size" not in c for c in calls)
    assert json.loads((out / "manifest.json").read_text())["settings"]["recipe"] == "lucid"
    assert np.asarray(Image.open(out / "block1_conv1" / "f002.png")).max() == 7
    assert "final activation" in (out / "block1_conv1" / "f002.html").read_text()
