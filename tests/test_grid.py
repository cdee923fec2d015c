"""The command line, end to end at a tiny size."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jaxviz
from jaxviz import grid

TINY = ["--size", "16", "--steps", "2", "--filters", "0-3", "--cols", "2"]


@pytest.fixture(scope="module")
def run_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxviz.grid", "--layers", "block1_conv1,block2_conv1", *TINY, "--out", str(out), "--npz"],
        capture_output=True, text=True, timeout=600,
    )
    return out, proc


def test_cli_writes_one_png_per_layer(run_tiny):
    out, proc = run_tiny
    assert proc.returncode == 0, proc.stderr
    for layer in ("block1_conv1", "block2_conv1"):
        path = out / f"{layer}.png"
        assert str(path) in proc.stdout
        img = Image.open(path)
        assert img.format == "PNG" and img.size == (2 * 16 + 5, 2 * 16 + 5)
    assert "done:" in proc.stdout


def test_cli_tiles_in_reading_order_and_black_margins(run_tiny, params):
    out, _ = run_tiny
    g = np.asarray(Image.open(out / "block2_conv1.png"))
    assert (g[16:21] == 0).all() and (g[:, 16:21] == 0).all()
    want = jaxviz.render(params, "block2_conv1", [0, 1, 2, 3], size=16, steps=2)
    for f in range(4):
        r, c = divmod(f, 2)
        np.testing.assert_array_equal(g[r * 21 : r * 21 + 16, c * 21 : c * 21 + 16], want[f])


def test_cli_npz_has_raw_results_and_settings(run_tiny):
    out, _ = run_tiny
    d = np.load(out / "block1_conv1.npz")
    assert d["images"].shape == (4, 16, 16, 3) and d["images"].dtype == np.float32
    assert int(d["steps"]) == 2 and int(d["size"]) == 16 and list(d["filters"]) == [0, 1, 2, 3]


def run_main(argv):
    try:
        return grid.main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


@pytest.mark.parametrize("args,message", [
    (["--layers", "block9_conv1"], "valid layers"),
    (["--layers", "block1_conv1", "--filters", "64"], "has 64 filters"),
    (["--layers", "block4_conv1", "--size", "4"], "minimum is 8"),
    (["--size", "0"], "--size must be 1 or more"),
    (["--steps", "-1"], "steps must be 0 or more"),
    (["--filters", "1-x"], "malformed --filters"),
    (["--filters", "5-2"], "malformed --filters"),
    (["--conv", "winograd", "--precision", "bfloat16"], "float32 only"),
    (["--recipe", "lucid", "--conv", "xla"], "--conv applies to --recipe seed only"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run_main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert grid.main(["--layers", "block1_conv1", *TINY, "--out", str(blocker / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_ctrl_c_exits_130_and_names_completed_layers(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_render(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*a, **k)

    real_render = jaxviz.render
    monkeypatch.setattr(jaxviz, "render", fake_render)
    code = grid.main(["--layers", "block1_conv1,block1_conv2", *TINY, "--out", str(tmp_path)])
    assert code == 130
    assert "completed layers: block1_conv1" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["block1_conv1.png"]


def test_failure_inside_the_writer_leaves_no_partial_png(tmp_path, capsys, monkeypatch):
    from PIL import Image as PILImage

    def broken_save(self, fp, *a, **k):
        fp.write(b"\x89PNG\r\n partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", broken_save)
    assert grid.main(["--layers", "block1_conv1", *TINY, "--out", str(tmp_path)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_missing_or_corrupt_weights_is_one_line_and_nothing_written(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    for weights, message in ((tmp_path / "nope.h5", "missing"), (bad, "not an HDF5 file")):
        out = tmp_path / "out"
        assert grid.main(["--layers", "block1_conv1", *TINY, "--weights", str(weights), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(weights) in err[0]
        assert not out.exists()
