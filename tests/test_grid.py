"""The command line, end to end at a tiny size."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import interrupt

import jaxviz
from jaxviz import grid, onednn

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
    want = jaxviz.render(params, "block2_conv1:0-3", jaxviz.SEED._replace(size=16, steps=2)).tiles
    for f in range(4):
        r, c = divmod(f, 2)
        np.testing.assert_array_equal(g[r * 21 : r * 21 + 16, c * 21 : c * 21 + 16], want[f])


def test_cli_npz_has_raw_results_and_settings(run_tiny):
    out, _ = run_tiny
    d = np.load(out / "block1_conv1.npz")
    assert d["images"].shape == (4, 16, 16, 3) and d["images"].dtype == np.float32
    assert int(d["steps"]) == 2 and int(d["size"]) == 16 and list(d["filters"]) == [0, 1, 2, 3]
    # what ran, not what was asked: the conv "auto" resolved to (jaxviz.ops.choice)
    from jaxviz import ops

    small, large, m = ops.choice("float32", "auto")
    conv = str(d["conv"])
    assert str(d["conv_option"]) == "auto" and conv != "auto"
    assert conv == large if small == large or not m else conv == f"{small} below {m} input channels, {large} from {m}"
    assert float(d["step_size"]) == 1.0


def test_npz_of_the_quality_recipe_records_only_its_settings(tmp_path):
    """No step_size (the quality recipe has none) and no conv (a model without jaxviz's convs)."""
    out = tmp_path / "out"
    assert run_main(["--model", "tests.tiny_model:build", "--layers", "conv", "--filters", "0", "--recipe", "lucid",
                     "--size", "16", "--steps", "1", "--npz", "--out", str(out), "--quiet"]) == 0
    d = np.load(out / "conv.npz")
    assert "step_size" not in d.files and "conv" not in d.files and "conv_option" not in d.files
    assert float(d["lucid_lr"]) == 0.05 and str(d["recipe"]) == "lucid" and int(d["steps"]) == 1


@pytest.mark.parametrize("recipe", ["seed", "lucid"])
def test_a_model_of_one_input_size_renders_at_it_when_no_size_is_given(tmp_path, capsys, recipe):
    """A flatten before a dense head: the default size (64, or 128 and a 12 px padding) would fail."""
    out = tmp_path / "out"
    fixed = ["--model", "tests.tiny_model:build_fixed", "--steps", "2", "--recipe", recipe, "--out", str(out)]
    assert run_main([*fixed, "--layers", "conv", "--filters", "0-1", "--cols", "2", "--npz"]) == 0
    said = capsys.readouterr().out
    default = 128 if recipe == "lucid" else 64
    assert f"cannot take {default} px images: rendering at its input size, --size 16" + \
        (" --pad 0" if recipe == "lucid" else "") in said
    assert Image.open(out / "conv.png").size == (2 * 16 + 5, 16)
    d = np.load(out / "conv.npz")
    assert int(d["size"]) == 16 and np.isfinite(d["images"]).all() and d["images"].std() > 0
    if recipe == "lucid":
        assert int(d["lucid_pad"]) == 0
    assert run_main([*fixed, "--objective", "logit:3", "--quiet"]) == 0  # the head's units too
    assert Image.open(out / "logit-3.png").size == (16, 16)
    assert run_main([*fixed, "--layers", "conv", "--size", "20"]) == 2  # a size given is kept: one line
    err = capsys.readouterr().err
    assert f"failed on a {20 + 24 * (recipe == 'lucid')}x" in err and "taken at 16 px" in err


def test_vgg_with_its_top_renders_a_logit_at_its_input_size_when_no_size_is_given(tmp_path, capsys, monkeypatch):
    """A VGG16 file with the classifier top: --objective logit:N failed at the default 64 px ("the minimum
    is 224 px"), where other models with a dense head render at their input size."""
    from jaxviz.models import vgg
    from test_convert import SMALL16, random_params  # VGG16's layout, a few channels, its top at 32 px

    params = {k: {"kernel": w, "bias": b} for k, (w, b) in random_params(SMALL16, top=True).items()}
    monkeypatch.setattr(grid, "_load_model", lambda args: vgg(params, SMALL16))
    out = tmp_path / "out"
    assert run_main(["--objective", "logit:3", "--steps", "2", "--out", str(out)]) == 0
    assert "cannot take 64 px images: rendering at its input size, --size 32" in capsys.readouterr().out
    assert Image.open(out / "logit-3.png").size == (32, 32)


def run_main(argv):
    try:
        return grid.main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


TINY_LUCID = ["--model", "tests.tiny_model:build", "--layers", "conv", "--filters", "0", "--steps", "1", "--recipe", "lucid"]


@pytest.mark.parametrize("args,message", [
    (["--layers", "block9_conv1"], "valid layers"),
    (["--layers", "block1_conv1", "--filters", "64"], "has 64 filters"),
    (["--layers", "block4_conv1", "--size", "4"], "minimum is 8"),
    (["--size", "0"], "--size must be 1 or more"),
    (["--steps", "-1"], "steps must be 0 or more"),
    (["--filters", "1-x"], "malformed --filters"),
    (["--filters", "5-2"], "malformed --filters"),
    (["--recipe", "lucid", "--conv", "xla"], "--conv applies to --recipe seed only"),
    (["--recipe", "lucid", "--step-size", "50"], "--step-size applies to --recipe seed only"),  # ignored, silently
    (["--recipe", "lucid", "--pad", "3", "--no-transforms"], "give one or the other"),
    (["--pad", "3"], "--pad applies to --recipe lucid only"),
    # issue 11: any model, objectives
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--model", "tests.tiny_model:build", "--precision", "bfloat16"], "apply to the VGG models only"),
    (["--model", "tests.tiny_model:build", "--layers", "dense"], "not spatial"),
    (["--objective", "block1_conv1:0", "--layers", "block1_conv1"], "--objective replaces --layers"),
    (["--objective", "neuron:block1_conv1:64"], "out of range for block1_conv1"),
    (["--objective", ":3"], "malformed objective"),
    # issue 12: limits checked before any work, huge numbers and NaN refused
    (["--size", "100000"], "needs about"),
    (["--layers", "block5_conv3", "--size", "8192"], "GiB available"),
    (["--steps", "10000000000"], "--steps must be 1000000 or less"),
    (["--seed", "1180591620717411303424"], "--seed must be 4294967295 or less"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--filters", "0-9999999999"], "filter 64 is out of range for block1_conv1"),
    (["--filters", "99999999999999999999"], "out of range"),
    (["--step-size", "nan"], "--step-size must be a finite number"),
    (["--step-size", "inf"], "--step-size must be a finite number"),
    (["--step-size=-inf"], "--step-size must be a finite number"),
    (["--step-size", "1e39"], "--step-size must be more than 0 and at most"),
    (["--step-size", "-1"], "--step-size must be more than 0"),  # it descended, silently
    (["--step-size", "0"], "--step-size must be more than 0"),
    (["--recipe", "lucid", "--lr", "inf"], "--lr must be a finite number"),
    (["--recipe", "lucid", "--lr", "nan"], "--lr must be a finite number"),
    (["--recipe", "lucid", "--lr", "1e300"], "--lr must be more than 0 and at most 3.4028235e+38 (the largest float32)"),
    (["--recipe", "lucid", "--lr", "-1"], "--lr must be more than 0 and at most"),
    # 0 in float32: grey tiles, silently
    ([*TINY_LUCID, "--size", "16", "--lr", "1e-46"], "--lr must be at least 1.1754944e-38"),
    ([*TINY_LUCID[:-2], "--size", "16", "--step-size", "1e-46"], "--step-size must be at least 1.1754944e-38 (float32's"),
    # the engine's line named the transforms' jitter, which no option sets
    ([*TINY_LUCID, "--size", "4", "--pad", "2"], "--size 4 with --pad 2 is too small for the quality recipe's "
     "transforms, whose 8 px jitter would shift the image out of view; give --size plus --pad of at least 8 (--pad 4)"),
    # found by probing the command line with absurd input
    (["--model", "tests.tiny_model:broken"], "failed (RuntimeError: no weights here)"),
    (["--model", "sys:exit"], "failed (it called exit(None))"),  # exit 0, nothing said, nothing written
    (["--model", ""], "--model is empty"),
    (["--weights", ""], "--weights is empty"),  # meant the default weights: an unset variable, unnoticed
    (["--layers", ""], "--layers is empty"),
    (["--filters", ""], "malformed --filters ''"),
    (["--layers", "block1_conv1", "--filters", "0-1", "--margin", "1000000000"], "use a smaller --size, --margin or --cols"),
    (["--objective", "dream:block1_conv1"], "malformed channel list 'block1_conv1'"),
    (["--weights", "/no\nsuch.h5"], "weights file /no\\nsuch.h5 given with --weights is missing"),  # was two lines
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run_main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_vgg19_layers_are_checked_against_vgg19(tmp_path, capsys):
    """--model vgg19 --layers block5_conv4 was refused as unknown (VGG16's table), and --layers all
    rendered VGG16's 13 conv layers, leaving out block3/4/5_conv4."""
    def planned(*args):
        argv = ["--model", "vgg19", "--weights", str(tmp_path / "w.h5"), *args, "--out", str(tmp_path / "out")]
        return [name for name, _ in grid._validate(grid.build_parser().parse_args(argv))]

    assert planned("--layers", "block5_conv4,block3_conv4", "--filters", "0-1") == ["block5_conv4", "block3_conv4"]
    all19 = planned("--layers", "all", "--filters", "0", "--size", "32")
    assert len(all19) == 16 and {"block3_conv4", "block4_conv4", "block5_conv4"} <= set(all19)
    with pytest.raises(jaxviz.JaxvizError, match="block5_conv4; the minimum is 16 px"):
        planned("--layers", "block5_conv4", "--size", "8")
    with pytest.raises(jaxviz.JaxvizError, match="unknown layer 'block5_conv4'"):  # VGG16 has none
        grid._validate(grid.build_parser().parse_args(["--layers", "block5_conv4", "--out", str(tmp_path / "out")]))
    assert run_main(["--model", "vgg19", "--weights", str(tmp_path / "w.h5"), "--layers", "block5_conv4",
                     "--out", str(tmp_path / "out")]) == 2
    assert "w.h5 given with --weights is missing" in capsys.readouterr().err  # past the layer check


@pytest.mark.skipif(not onednn.available() or not onednn.why_not("bfloat16"), reason="oneDNN's bf16 conv runs here")
def test_onednn_bfloat16_without_its_kernels_is_one_line_exit_2(tmp_path, capsys):
    """An AVX2-only CPU: oneDNN cannot make a bf16 conv; say so before any work."""
    out = tmp_path / "out"
    assert run_main(["--conv", "onednn", "--precision", "bfloat16", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no bfloat16 conv on this CPU" in err[0]
    assert not out.exists()


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert grid.main(["--layers", "block1_conv1", *TINY, "--out", str(blocker / "sub")]) == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_an_empty_out_is_named(tmp_path, capsys, monkeypatch):
    """--out '' said "cannot create output folder  (No such file or directory)", naming no folder."""
    monkeypatch.chdir(tmp_path)
    assert grid.main(["--layers", "block1_conv1", *TINY, "--out", ""]) == 2
    assert capsys.readouterr().err.strip() == "jaxviz.grid: error: --out is empty; give a folder such as jaxviz-out"
    assert os.listdir(tmp_path) == []


def test_a_tilde_in_out_is_the_home_folder(tmp_path, capsys, monkeypatch):
    """--out=~/viz (the shell expands no ~ after '=') made a folder named "~" in the current one."""
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    assert grid.main(["--layers", "block1_conv1", *TINY, "--out=~/viz", "--quiet"]) == 0
    assert (tmp_path / "home" / "viz" / "block1_conv1.png").is_file() and os.listdir(tmp_path / "cwd") == []
    assert run_main(["--layers", "block1_conv1", *TINY, "--out", "~no-such-user-xyz/viz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out ~no-such-user-xyz/viz: no such user's home folder" in err[0]
    assert os.listdir(tmp_path / "cwd") == []


def test_an_out_path_too_long_leaves_no_folders_behind(tmp_path, capsys):
    """makedirs made some 40 of its 45 folders before the system's path limit stopped it."""
    out = tmp_path.joinpath(*["d" * 100] * 45)
    assert grid.main(["--layers", "block1_conv1", *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create output folder" in err[0]
    assert os.listdir(tmp_path) == []


def test_an_out_that_is_a_dangling_link_names_the_link(tmp_path, capsys):
    """A symbolic link to nothing (or a loop) as --out, or above it: "(File exists)" from makedirs."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for out in (tmp_path / "dangling", tmp_path / "dangling" / "sub", tmp_path / "loop"):
        assert grid.main(["--layers", "block1_conv1", *TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a symbolic link to nothing (or a loop), not a folder; move or remove it" in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["dangling", "loop"]


def test_a_file_where_the_tiles_folder_goes_is_one_line(tmp_path, capsys):
    """--tiles with a file named like the layer in --out was a FileExistsError traceback, exit 1."""
    (tmp_path / "block1_conv1").write_text("x")
    assert grid.main(["--layers", "block1_conv1", *TINY, "--tiles", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create folder" in err[0] and "a file is in the way" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["block1_conv1"]


def test_a_folder_where_a_grid_goes_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """It failed at writing, after the render, with the grids before it written."""
    (tmp_path / "block1_conv2.png").mkdir()
    monkeypatch.setattr(jaxviz.api, "render_quiet", lambda *a, **k: pytest.fail("rendered"))
    assert grid.main(["--layers", "block1_conv1,block1_conv2", *TINY, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "block1_conv2.png: a folder is in the way" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["block1_conv2.png"]


def test_a_folder_where_a_tile_goes_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """--tiles: found at writing, after the first grid's files (and with a wrong fix: "give a file name")."""
    (tmp_path / "block1_conv2" / "block1_conv2_f001.png").mkdir(parents=True)
    monkeypatch.setattr(jaxviz.api, "render_quiet", lambda *a, **k: pytest.fail("rendered"))
    assert grid.main(["--layers", "block1_conv1,block1_conv2", *TINY, "--tiles", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "block1_conv2_f001.png: a folder is in the way; move it" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["block1_conv2"]


@pytest.mark.parametrize("args,message", [
    (["--objective", "block1_conv1:0-1", "--objective", "block5_conv3:0-1", "--size", "8"],
     "block5_conv3-0-1: size 8 is too small for block5_conv3"),
    (["--model", "jaxviz.models:vgg16", "--layers", "block1_conv1,block5_pool", "--filters", "0-1", "--size", "16"],
     "block5_pool: size 16 is too small for block5_pool"),
])
def test_every_grid_is_checked_before_the_first_is_rendered(tmp_path, capsys, monkeypatch, args, message):
    """Objectives and models of package.module:function: a later grid's size or memory was checked only
    when its turn came, after the grids before it were written."""
    monkeypatch.setattr(jaxviz.api, "render_quiet", lambda *a, **k: pytest.fail("rendered"))
    out = tmp_path / "out"
    assert grid.main([*args, "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].endswith("nothing was written")
    assert not out.exists()
    monkeypatch.setenv("JAXVIZ_MAX_MEMORY", "10M")  # the memory bound likewise
    assert grid.main(["--objective", "block1_conv1:0-1", "--objective", "block5_conv3:0-1", "--size", "32",
                      "--steps", "1", "--out", str(out)]) == 2
    assert "block5_conv3-0-1: 2 item(s) of 32 px" in capsys.readouterr().err and not out.exists()


def test_ctrl_c_exits_130_and_names_completed_layers(tmp_path, capsys, monkeypatch):
    calls = []

    def fake_render(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_render(*a, **k)

    real_render = jaxviz.api.render_quiet
    monkeypatch.setattr(jaxviz.api, "render_quiet", fake_render)
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


def test_non_finite_results_write_nothing_and_leave_no_empty_folder(tmp_path, capsys):
    """A finite but huge step size overflows float32: one line, exit 2, no black image, no empty --out."""
    out = tmp_path / "out"
    code = grid.main(["--layers", "block1_conv1", *TINY, "--steps", "5", "--step-size", "1e38", "--tiles",
                      "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not finite" in err[0] and "nothing was written" in err[0]
    assert not out.exists()


def test_stale_temporaries_of_ours_are_removed_at_start(tmp_path):
    out = tmp_path / "out"
    (out / "block1_conv1").mkdir(parents=True)
    stale = [out / ".block1_conv1.png.ab12cd_e.tmp", out / "block1_conv1" / ".block1_conv1_f000.png.zz99zz99.tmp"]
    others = [out / ".notes.txt.tmp", out / "keep.tmp", out / ".block1_conv1.png.x.tmp"]
    for p in stale + others:
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 60, time.time() - 60))
    writing = out / ".block1_conv1.npz.a1b2c3d4.tmp"  # another grid's write into this --out, going on
    writing.write_bytes(b"partial")
    assert grid.main(["--layers", "block1_conv1", *TINY, "--tiles", "--out", str(out), "--quiet"]) == 0
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others) and writing.exists()  # it was removed under the other run's feet


def test_real_interrupts_at_random_moments_exit_130_fast_with_nothing_partial(tmp_path):
    """Real SIGINTs (and a SIGTERM) at random moments of `python -m jaxviz.grid`: imports, compile,
    compiled steps, writes. Each must end with exit 130 within 3 s, the one-line message, no crash
    (-11), no traceback, no temporary file and only whole files (issue 12, item 1)."""
    rng = random.Random()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    delays = [rng.uniform(0.1, 1.0), rng.uniform(1.0, 3.0), rng.uniform(3.0, 6.0), rng.uniform(6.0, 10.0)]
    sigs = [signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGINT]
    for i, (delay, sig) in enumerate(zip(delays, sigs)):
        out = tmp_path / f"run{i}"
        # 3000 steps: the job must outlast the last signal (10 s); 300 steps ended sooner on an AMX Xeon
        code, err, seconds = interrupt([sys.executable, "-m", "jaxviz.grid", "--size", "16", "--steps", "3000",
                                        "--filters", "0-7", "--layers", "block1_conv1,block2_conv1,block3_conv1",
                                        "--tiles", "--npz", "--out", str(out)], delay, sig, env=env)
        where = f"run {i}, signal {sig!r} {delay:.2f} s after the start"
        assert code == 130, f"{where}: exit {code}: {err}"
        assert seconds < 3.0, f"{where}: took {seconds:.1f} s to exit"
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
            "jaxviz.grid: interrupted; completed layers:"), f"{where}: {err}"
        files = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs] if out.exists() else []
        assert not [f for f in files if f.endswith(".tmp")], f"{where}: {files}"
        for f in files:
            if f.endswith(".png"):
                with Image.open(f) as im:
                    im.verify()
            else:
                assert f.endswith(".npz") and np.load(f)["images"].shape[1:] == (16, 16, 3)
        done = err.strip().splitlines()[-1].split("completed layers: ")[1]
        for layer in ([] if done == "none" else done.split(", ")):
            assert (out / f"{layer}.png").exists()


def test_objectives_and_animations_from_the_command_line(tmp_path):
    """--objective renders one grid per objective; --animate writes the ascent, ending on the final grid."""
    from jaxviz.image import webp_supported

    out = tmp_path / "o"
    argv = ["--objective", "neuron:block2_conv1:0-3", "--objective", "deepdream:block1_conv2", "--size", "16",
            "--steps", "3", "--animate", "--cols", "2", "--out", str(out), "--quiet"]
    assert grid.main(argv) == 0
    grid_png = np.asarray(Image.open(out / "neuron-block2_conv1-0-3.png"))
    assert grid_png.shape == (37, 37, 3) and (out / "deepdream-block1_conv2.png").exists()
    gif = Image.open(out / "neuron-block2_conv1-0-3.gif")
    assert gif.n_frames == 4  # the start, then every step (3 steps / 40 frames: k = 1)
    if webp_supported():  # lossless: the last frame is the final grid exactly
        webp = Image.open(out / "neuron-block2_conv1-0-3.webp")
        webp.seek(webp.n_frames - 1)
        np.testing.assert_array_equal(np.asarray(webp.convert("RGB")), grid_png)


def test_list_layers_of_a_plain_function_model(capsys):
    assert grid.main(["--model", "tests.tiny_model:build", "--list-layers"]) == 0
    out = capsys.readouterr().out
    assert "conv" in out and "16x16x4" in out and "dense" in out and "vector" in out


def test_objectives_spelling_the_same_file_name_get_distinct_files(tmp_path):
    out = tmp_path / "out"
    assert run_main(["--objective", "block1_conv1:0-2", "--objective", "block1_conv1:0,2", "--objective",
                     "block1_conv1:0-2", "--size", "16", "--steps", "1", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["block1_conv1-0-2-2.png", "block1_conv1-0-2.png"]
    assert Image.open(out / "block1_conv1-0-2.png").size != Image.open(out / "block1_conv1-0-2-2.png").size


def test_layer_names_become_file_names_inside_out(tmp_path):
    out = tmp_path / "out"
    assert run_main(["--model", "tests.tiny_model:build_paths", "--layers", "stem/conv,../evil", "--filters", "0-1",
                     "--size", "16", "--steps", "1", "--tiles", "--npz", "--out", str(out), "--quiet"]) == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "out/evil.npz", "out/evil.png", "out/evil/evil_f000.png", "out/evil/evil_f001.png",
        "out/stem-conv.npz", "out/stem-conv.png", "out/stem-conv/stem-conv_f000.png", "out/stem-conv/stem-conv_f001.png"]


def test_a_model_layer_whose_name_holds_a_comma_is_named_whole_in_layers(tmp_path, capsys):
    """--layers split "conv,3x3" into the layers conv and 3x3: "unknown layer '3x3'", listing conv,3x3 as valid."""
    out = tmp_path / "out"
    assert run_main(["--model", "tests.tiny_model:build_comma", "--layers", "conv,3x3,conv", "--filters", "0-1",
                     "--size", "16", "--steps", "1", "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["conv-3x3.png", "conv.png"]


def test_a_non_finite_later_grid_names_the_files_already_written(tmp_path, capsys):
    """Grid conv is written, then grid bad comes out NaN: the one line must not say "nothing was written"."""
    out = tmp_path / "out"
    assert run_main(["--model", "tests.tiny_model:build_nan", "--layers", "conv,bad", "--filters", "0-1",
                     "--size", "16", "--steps", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad: " in err[0] and "not finite" in err[0], err
    assert "nothing was written;" not in err[0] and err[0].endswith(
        "the files of conv were written; nothing of bad was written"), err
    assert sorted(os.listdir(out)) == ["conv.png"]


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_onednn_with_an_unwritable_cache_folder_names_the_folder(tmp_path):
    """--conv onednn with XDG_CACHE_HOME a file: one line naming the cache folder, not "pip install oneDNN"."""
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(blocker), CXX=sys.executable)
    env.pop("JAXVIZ_CACHE", None)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jaxviz.grid", "--conv", "onednn", *TINY, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert str(blocker / "jaxviz" / "onednn") in err[0] and "XDG_CACHE_HOME" in err[0] and "pip install" not in err[0]
    assert not out.exists()


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_the_fallback_notice(tmp_path, quiet):
    """oneDNN's handlers fail to build (no compiler): the notice is one line, and none under --quiet."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path / "cache"), CXX="/bin/false")
    env.pop("JAXVIZ_CACHE", None)
    argv = [sys.executable, "-m", "jaxviz.grid", "--layers", "block1_conv1", *TINY, "--out", str(tmp_path / "out")]
    proc = subprocess.run(argv + ["--quiet"] * quiet, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "block1_conv1.png").exists()
    notices = [l for l in proc.stderr.splitlines() if "oneDNN conv unavailable" in l]
    if quiet:
        assert proc.stderr == proc.stdout == ""
    else:
        assert len(notices) == 1, proc.stderr


def test_filters_that_never_fire_are_named_with_what_wakes_them(tmp_path, capsys):
    """A unit whose objective is 0 at every step gets no gradient, so its tile is the start image:
    6 of block1_conv1's first 64 in the book's grid, with nothing said about them."""
    small = ["--layers", "block1_conv1", "--size", "16", "--steps", "2"]
    assert run_main([*small, "--filters", "5,6", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "block1_conv1: filter 5 never fired" in out and "; --recipe lucid --dead-filter redirect wakes" in out
    assert run_main([*small, "--filters", "6", "--out", str(tmp_path / "b")]) == 0
    assert "never fired" not in capsys.readouterr().out
    assert run_main([*small, "--filters", "19", "--recipe", "lucid", "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "filter 19 never fired" in out and "; --dead-filter redirect wakes" in out and "--recipe lucid" not in out
    assert run_main([*small, "--filters", "5", "--quiet", "--out", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().out == ""


def test_a_layer_that_does_not_depend_on_the_input_is_named(tmp_path, capsys, caplog):
    """Its objective is the same nonzero value at every step: start-image tiles, and nothing said.
    Once: the grid's line, not the library's notice too."""
    args = ["--model", "tests.tiny_model:build_constant", "--filters", "0-1", "--size", "16"]
    assert run_main([*args, "--steps", "3", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "conv: filters 0, 1 kept the same objective at every step, so their tiles show the start image: no " \
           "gradient reached the image (a layer that ignores the input, a saturated unit such as relu6 at 6, a " \
           "stop_gradient), or the step size or learning rate is too small to change its pixels\n" in out, out
    assert "kept the same objective" not in caplog.text
    assert run_main(["--model", "tests.tiny_model:build", "--layers", "conv", "--filters", "0-1", "--size", "16",
                     "--steps", "3", "--out", str(tmp_path / "b")]) == 0
    assert "kept the same objective" not in capsys.readouterr().out


def test_an_animation_larger_than_webp_allows_is_refused_before_any_work(tmp_path, capsys):
    """--animate of a grid over 16,383 px (512 filters at 256 px in 8 columns are 16,699 px tall) was
    WebP's RuntimeError traceback, exit 1, after the render, the GIF written but not the grid."""
    from jaxviz.image import webp_supported

    out = tmp_path / "o"
    margin = "20000" if webp_supported() else "70000"  # past WebP's 16,383 px, or past GIF's 65,535
    argv = ["--model", "tests.tiny_model:build", "--layers", "conv", "--filters", "0-1", "--cols", "1", "--size",
            "16", "--steps", "1", "--margin", margin, "--animate", "--out", str(out), "--quiet"]
    assert grid.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "allows" in err[0] and "nothing was written" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("model", [["--model", "tests.tiny_model:build", "--layers", "conv", "--size", "64"],
                                   ["--layers", "block1_conv1", "--filters", "0-63", "--size", "128"]])
def test_the_frames_of_animate_count_in_the_memory_budget(tmp_path, capsys, monkeypatch, model):
    """--animate keeps 41 frames of every image to the end (64 filters at 128 px: 0.4 GiB estimated, 1.8 GB
    used); the estimate left them out, so a run past JAXVIZ_MAX_MEMORY started and took the memory."""
    monkeypatch.setattr(jaxviz.api, "render_quiet", lambda *a, **k: pytest.fail("rendered"))
    monkeypatch.setenv("JAXVIZ_MAX_MEMORY", "10M" if "conv" in model else "1G")
    out = tmp_path / "o"
    assert grid.main([*model, "--steps", "40", "--animate", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "with 41 animation frames each needs about" in err[0] and "or no animation" in err[0], err
    assert not out.exists()


def test_a_layer_name_too_long_for_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """A 300-byte layer name failed after the rendering ("File name too long"), with a wrong fix."""
    monkeypatch.setattr(jaxviz.api, "render_quiet", lambda *a, **k: pytest.fail("rendered"))
    out = tmp_path / "out"
    assert run_main(["--model", "tests.tiny_model:build_clash", "--layers", "y" * 300, "--filters", "0",
                     "--size", "16", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bytes in one name, over the 241 a file system takes; rename the layer" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("extra", [[], ["--tiles"], ["--npz"], ["--animate"]])
def test_layers_differing_only_in_case_are_refused_where_the_file_system_ignores_case(tmp_path, capsys, monkeypatch,
                                                                                       extra):
    """Layers Conv and conv wrote Conv.png and conv.png (their tiles, npz, gifs), one file on macOS
    and Windows: the second grid overwrote the first. Refused before any work, as the atlas does."""
    import jaxviz.cli_args

    monkeypatch.setattr(jaxviz.cli_args, "folds_case", lambda out: True, raising=False)  # (before: no check)
    monkeypatch.setattr(jaxviz.api, "render_quiet", lambda *a, **k: pytest.fail("rendered"))
    out = tmp_path / "out"
    assert run_main(["--model", "tests.tiny_model:build_clash", "--layers", "Conv,conv", "--filters", "0",
                     "--size", "16", "--steps", "1", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxviz.grid: error: grid 'Conv' and grid 'conv' clash: {out / 'Conv'}"
                   f"{'' if extra == ['--tiles'] else '.png'} is one path for both on this file system, which ignores "
                   "case; rename one in the model, or leave it out of --layers"], err
    assert not out.exists()
    assert run_main(["--model", "tests.tiny_model:build_clash", "--objective", "Conv:0", "--objective", "conv:0",
                     "--size", "16", "--steps", "1", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid 'Conv-0' and grid 'conv-0' clash" in err[0] and "of --objective" in err[0], err
    assert not out.exists()


def test_layers_differing_only_in_case_get_their_own_files_where_the_file_system_tells_them_apart(tmp_path,
                                                                                                  monkeypatch):
    import jaxviz.cli_args

    monkeypatch.setattr(jaxviz.cli_args, "folds_case", lambda out: False)
    out = tmp_path / "out"
    assert run_main(["--model", "tests.tiny_model:build_clash", "--layers", "Conv,conv", "--filters", "0",
                     "--size", "16", "--steps", "1", "--tiles", "--quiet", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["Conv", "Conv.png", "conv", "conv.png"]


def test_a_failed_run_removes_every_empty_folder_it_made_for_a_nested_out(tmp_path, capsys):
    """--out a/b/c with a/ there: a failure removed c but left the empty b it had made too."""
    (tmp_path / "a" / "mine").mkdir(parents=True)  # there before: kept, though empty
    out = tmp_path / "a" / "b" / "c"
    assert grid.main(["--layers", "block1_conv1", *TINY, "--steps", "5", "--step-size", "1e38",
                      "--out", str(out)]) == 2
    assert "not finite" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a"] and os.listdir(tmp_path / "a") == ["mine"]
    # a/b/.. is a, there before: its empty folders were taken for the run's own and removed
    assert grid.main(["--layers", "block1_conv1", *TINY, "--steps", "5", "--step-size", "1e38",
                      "--out", str(tmp_path / "a" / "b" / "..")]) == 2
    assert "not finite" in capsys.readouterr().err and (tmp_path / "a" / "mine").is_dir()
