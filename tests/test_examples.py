import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxviz import examples, site_examples, topk
from jaxviz.errors import JaxvizError
from jaxviz.models.vgg import IMAGENET_BGR_MEANS

SIZE = 32


@pytest.fixture(scope="module")
def model():
    from jaxviz.models import vgg16

    return vgg16(conv="xla")  # XLA's conv compiles fastest; the Winograd default is tested in test_topk


def _noise_folder(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for i in range(n):
        h, w = rng.integers(SIZE, 2 * SIZE, 2)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def test_collect_equals_brute_force(tmp_path, model):
    folder = _noise_folder(tmp_path / "imgs", 11)
    layers = ("block1_conv1", "block1_pool")
    s = examples.collect(model, str(folder), layers, examples.Config(k=4, size=SIZE, batch=3, thumb=8))
    from jaxviz import imagefolder

    x = np.stack([imagefolder.load(str(folder), n, SIZE) for n in s.names]).astype(np.float32) / 255
    acts = jax.vmap(lambda im: model.activations(model.params, model.preprocess(im), layers))(x)
    for l in layers:
        a = np.asarray(acts[l])  # (N, h, w, C)
        n, h, w, c = a.shape
        flat = a.reshape(n, h * w, c)
        arg = flat.argmax(1)
        want = topk.brute_force(flat.max(1), arg // w, arg % w, 4)
        np.testing.assert_array_equal(s.layers[l].index, want.index)
        np.testing.assert_allclose(s.layers[l].values, want.values, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(s.layers[l].y, want.y)
        np.testing.assert_array_equal(s.layers[l].x, want.x)
        assert s.thumbs[l].shape == (c, 4, 8, 8, 3)
    assert s.images_used == 11 and s.skipped.total == 0


def _kernel_image(kernel, size):
    """A model-input image of the unit-norm kernel tiled with one mean-pixel gap, as RGB uint8."""
    k = kernel / np.linalg.norm(kernel)
    x = np.zeros((size, size, 3), np.float32)
    for y0 in range(0, size - 2, 4):
        for x0 in range(0, size - 2, 4):
            x[y0:y0 + 3, x0:x0 + 3] = k
    return x


def test_kernel_tiled_images_rank_first_for_their_filter(tmp_path, model):
    """Every 3x3 window of a gapped tiling holds distinct kernel entries, so its norm is at most the
    kernel's: by Cauchy-Schwarz a filter responds most to its own kernel's image (same scale for all)."""
    kernels = np.asarray(model.params["block1_conv1"]["kernel"])  # (3, 3, 3 BGR, 64)
    bias = np.asarray(model.params["block1_conv1"]["bias"])
    flat = kernels.reshape(27, -1) / np.linalg.norm(kernels.reshape(27, -1), axis=0)
    cos = flat.T @ flat
    np.fill_diagonal(cos, 0)
    chosen = [f for f in range(64) if cos[f].max() < 0.9][:8]
    assert len(chosen) >= 3
    scale = 100 / max(np.abs(_kernel_image(kernels[..., f], SIZE)).max() for f in chosen)
    folder = tmp_path / "imgs"
    folder.mkdir()
    means = np.asarray(IMAGENET_BGR_MEANS)
    for f in chosen:
        bgr = _kernel_image(kernels[..., f], SIZE) * scale + means
        Image.fromarray(np.round(bgr[..., ::-1]).astype(np.uint8)).save(folder / f"filter{f:02d}.png")
    grey = np.broadcast_to(np.round(means[::-1]).astype(np.uint8), (SIZE, SIZE, 3))  # all zero for the model
    Image.fromarray(np.ascontiguousarray(grey)).save(folder / "grey.png")
    s = examples.collect(model, str(folder), ["block1_conv1"], examples.Config(k=3, size=SIZE, batch=4, thumb=6))
    top = s.layers["block1_conv1"]
    for f in chosen:
        assert s.names[top.index[f, 0]] == f"filter{f:02d}.png", (f, [s.names[i] for i in top.index[f]])
        assert top.values[f, 0] > 0
        # the maximum sits on a tile: its window is one whole kernel copy
        assert top.y[f, 0] % 4 == 1 and top.x[f, 0] % 4 == 1


def test_resume_continues_from_the_state_file(tmp_path, model):
    folder = _noise_folder(tmp_path / "imgs", 10, seed=1)
    cfg = examples.Config(k=3, size=SIZE, batch=2, thumb=4, save_every=1)
    full = examples.collect(model, str(folder), ["block1_conv1"], cfg)
    out = tmp_path / "out"
    out.mkdir()
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        examples.collect(model, str(folder), ["block1_conv1"], cfg, out=str(out), progress=stop_after_two)
    assert (out / examples.STATE).exists() and not (out / examples.SUMMARY_NPZ).exists()
    seen = []
    s = examples.collect(model, str(folder), ["block1_conv1"], cfg, out=str(out), progress=lambda d, t: seen.append(d))
    assert seen[0] == 4  # started where it stopped
    for f in topk.TopK._fields:
        np.testing.assert_array_equal(getattr(s.layers["block1_conv1"], f), getattr(full.layers["block1_conv1"], f))
    # a rerun after the end reads no image again and gives the same summary
    seen.clear()
    again = examples.collect(model, str(folder), ["block1_conv1"], cfg, out=str(out), progress=lambda d, t: seen.append(d))
    assert seen == [10]
    np.testing.assert_array_equal(again.layers["block1_conv1"].index, full.layers["block1_conv1"].index)
    assert again.fields == full.fields
    np.testing.assert_array_equal(again.thumbs["block1_conv1"], full.thumbs["block1_conv1"])
    # other settings do not reuse the state
    seen.clear()
    examples.collect(model, str(folder), ["block1_conv1"], cfg._replace(k=2), out=str(out),
                     progress=lambda d, t: seen.append(d))
    assert seen[0] == 0


def test_summary_files_and_site(tmp_path, model):
    folder = _noise_folder(tmp_path / "imgs", 5, seed=2)
    (folder / "broken.png").write_text("nope")
    out = tmp_path / "out"
    out.mkdir()
    s = examples.collect(model, str(folder), ["block1_conv2"], examples.Config(k=2, size=SIZE, batch=2, thumb=12),
                         out=str(out))
    meta = json.loads((out / examples.SUMMARY_JSON).read_text())
    assert meta["skipped"]["counts"]["not an image"] == 1 and meta["skipped"]["first"]["not an image"] == ["broken.png"]
    assert meta["layers"]["block1_conv2"]["field"]["height"] == 5
    ch = meta["layers"]["block1_conv2"]["channels"]
    assert len(ch) == 64 and len(ch[0]) == 2
    e = ch[7][0]
    assert e["image"] == s.names[s.layers["block1_conv2"].index[7, 0]]
    t, l, h, w = e["box"]
    assert (max(0, e["y"] - 2), max(0, e["x"] - 2)) == (t, l) and h <= 5 and w <= 5
    with np.load(out / examples.SUMMARY_NPZ) as z:
        assert z["block1_conv2/thumbs"].shape == (64, 2, 12, 12, 3)
        assert list(z["images"][z["block1_conv2/image"][7]]) == [c["image"] for c in ch[7]]

    from jaxviz.site import FilterEntry, build_site, image_name

    ex = site_examples.load(str(out / examples.SUMMARY_NPZ))
    site = tmp_path / "site"
    (site / "block1_conv2").mkdir(parents=True)
    for f in (0, 7):
        Image.new("RGB", (4, 4)).save(site / "block1_conv2" / image_name(f))
    build_site(str(site), [("block1_conv2", [FilterEntry(0, 1.0, image_name(0)), FilterEntry(7, 2.0, image_name(7))])],
               {}, examples=ex)
    page = (site / "block1_conv2" / "f007.html").read_text()
    assert "Dataset examples" in page and "examples/f007_1.png" in page
    link = page.split('<h2>Dataset examples')[1].split('href="')[1].split('"')[0]
    assert os.path.samefile(site / "block1_conv2" / link, folder / e["image"])
    assert (site / "block1_conv2" / "examples" / "f007_0.png").exists()
    assert "example-strip" in (site / "block1_conv2" / "index.html").read_text()
    with pytest.raises(JaxvizError, match="no dataset examples summary"):
        site_examples.load(str(tmp_path))


def test_image_names_that_are_no_utf8_are_summarized_and_linked(tmp_path, model):
    """A file name's bytes that are no UTF-8 (an old archive's latin-1 names) came to Python
    as surrogates: the pass ended in a UnicodeEncodeError, and so would the site's pages."""
    from urllib.parse import unquote

    from jaxviz.site import FilterEntry, build_site, image_name

    folder = _noise_folder(tmp_path / "imgs", 2, seed=3)
    try:
        os.rename(folder / "img01.png", os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    except OSError:
        pytest.skip("this file system takes UTF-8 names only")
    name = os.fsdecode(b"caf\xe9.png")
    out = tmp_path / "out"
    out.mkdir()
    s = examples.collect(model, str(folder), ["block1_conv1"], examples.Config(k=2, size=SIZE, batch=2, thumb=12),
                         out=str(out))
    assert name in s.names
    ex = site_examples.load(str(out))
    site = tmp_path / "site"
    (site / "block1_conv1").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(site / "block1_conv1" / image_name(0))
    build_site(str(site), [("block1_conv1", [FilterEntry(0, 1.0, image_name(0))])], {}, examples=ex)
    page = (site / "block1_conv1" / "f000.html").read_text(encoding="utf-8")
    assert "caf\\udce9.png" in page  # shown escaped
    link = next(h for h in page.split('href="')[1:] if h.split('"')[0].endswith("caf%E9.png")).split('"')[0]
    assert os.path.samefile(os.path.join(site / "block1_conv1", unquote(link, errors="surrogateescape")),
                            os.path.join(folder, name))


def test_no_usable_image_is_one_error(tmp_path, model):
    (tmp_path / "a.png").write_text("nope")
    Image.new("RGB", (1, 1)).save(tmp_path / "b.png")
    with pytest.raises(JaxvizError, match="no usable image.*1 not an image.*1 too small"):
        examples.collect(model, str(tmp_path), ["block1_pool"], examples.Config(size=SIZE))


def _callback_model(differentiable: bool):
    """A model whose layer is a host callback: without a custom_jvp it has no gradient; with
    one but no vmap_method it cannot be batched."""
    import jax.numpy as jnp

    from jaxviz.models import from_function

    host = lambda a: np.maximum(np.asarray(a), 0)
    call = lambda y: jax.pure_callback(host, jax.ShapeDtypeStruct(y.shape, jnp.float32), y)
    if differentiable:
        call = jax.custom_jvp(call)
        call.defjvp(lambda primals, tangents: (call(primals[0]), tangents[0]))
    return from_function(lambda p, x: {"c": call(x * p)}, jnp.float32(2.0), input_size=SIZE)


@pytest.mark.parametrize("differentiable, message", [
    (False, r"model function, up to c, cannot be differentiated with respect to its input image \(ValueError"),
    (True, r"model function, up to c, cannot be batched with jax.vmap \(NotImplementedError"),
])
def test_a_model_that_cannot_be_differentiated_or_batched_is_refused_before_the_pass(tmp_path, differentiable,
                                                                                      message):
    """Either failed with a traceback from inside JAX: at the first batch (vmap), or after the whole
    pass over the folder, in the receptive fields (the gradient). Now one line, nothing written."""
    folder = _noise_folder(tmp_path / "images", 2)
    with pytest.raises(JaxvizError, match=message) as e:
        examples.collect(_callback_model(differentiable), str(folder), ["c"], examples.Config(size=SIZE),
                         out=str(tmp_path / "out"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_layer_that_does_not_depend_on_the_input_fails_before_the_pass(tmp_path, monkeypatch):
    """Its receptive field (a gradient) was taken after the pass over every image: an hour's pass,
    then the error. The fields now come first; nothing is read or written before the error."""
    import jax.numpy as jnp

    from jaxviz import imagefolder
    from jaxviz.models import from_function

    folder = _noise_folder(tmp_path / "images", 2)
    model = from_function(lambda p, x: {"c": jnp.zeros((4, 4, 2)) + p}, jnp.float32(1.0), input_size=SIZE)
    monkeypatch.setattr(imagefolder, "stream", lambda *a, **k: pytest.fail("the pass started"))
    with pytest.raises(JaxvizError, match="the units of c do not depend on the input"):
        examples.collect(model, str(folder), ["c"], examples.Config(size=SIZE), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_model_giving_nan_on_an_image_is_one_line_naming_the_image(tmp_path):
    """NaN activations were ranked into the top k silently, and the pass failed only at its end,
    in the receptive fields, saying the units "do not depend on the input"."""
    import jax.numpy as jnp

    from jaxviz.models import from_function

    folder = _noise_folder(tmp_path / "images", 3)
    Image.new("RGB", (SIZE, SIZE), (255, 255, 255)).save(folder / "white.png")
    fn = lambda p, x: {"c": x * p * jnp.where(x.mean() > 0.99, jnp.nan, 1.0)}
    model = from_function(fn, jnp.float32(2.0), input_size=SIZE)
    with pytest.raises(JaxvizError, match=r"layer c of model function gives NaN or infinite activations on "
                                          r".*images/white.png; check the model"):
        examples.collect(model, str(folder), ["c"], examples.Config(size=SIZE, batch=2))


def _cli(capsys, *argv):
    try:
        rc = examples.main(list(argv))
    except SystemExit as e:  # argparse's errors
        rc = e.code
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "no JPEG or PNG images"),
    ("layer", "unknown layer 'block9_conv1'"),
    ("size", "--size 4 is too small for block4_conv1"),
    ("out", "is a file, not a folder"),
    ("weights", "weights file"),
    ("weights_folder", "imgs is not a file; give a Keras h5 file"),  # said the folder "does not exist"
    ("k", "--k must be 1 or more"),
    ("huge", "need about"),
    ("blank_weights", "--weights is empty"),
    ("in_the_way", "examples.json: a folder is in the way"),  # was found after the work, examples.npz written
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case, message):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    if case != "empty":
        Image.new("RGB", (8, 8)).save(imgs / "a.png")
    (tmp_path / "file").write_text("x")
    args = dict(images=str(imgs), layers="block1_conv1", out=str(tmp_path / "out"), size="32", k="3")
    extra = []
    if case == "missing":
        args["images"] = str(tmp_path / "nope")
    elif case == "layer":
        args["layers"] = "block1_conv1,block9_conv1"
    elif case == "size":
        args.update(layers="block4_conv1", size="4")
    elif case == "out":
        args["out"] = str(tmp_path / "file" / "sub")
    elif case == "weights":
        extra = ["--weights", str(tmp_path / "none.h5")]
    elif case == "weights_folder":
        extra = ["--weights", str(imgs)]
    elif case == "k":
        args["k"] = "0"
    elif case == "huge":  # refused from an estimate before any work (it ran out of memory after 22 s)
        args["k"] = "1000000"
    elif case == "blank_weights":
        extra = ["--weights", ""]
    elif case == "in_the_way":
        (tmp_path / "busy" / "examples.json").mkdir(parents=True)
        args["out"] = str(tmp_path / "busy")
    argv = [x for k, v in args.items() for x in (f"--{k}", v)] + extra
    rc, err = _cli(capsys, *argv)
    assert rc == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
    if case == "in_the_way":
        assert os.listdir(tmp_path / "busy") == ["examples.json"]


def test_cli_no_usable_image_leaves_nothing(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpg").write_text("nope")
    rc, err = _cli(capsys, "--images", str(imgs), "--layers", "block1_conv1", "--size", "16", "--out",
                   str(tmp_path / "out"), "--quiet")
    assert rc == 2 and len(err.splitlines()) == 1 and "no usable image" in err and "a.jpg" in err
    assert not (tmp_path / "out").exists()


def test_a_model_of_one_input_size_reads_at_it_when_no_size_is_given(tmp_path, capsys):
    """A flatten before a dense head (16 px only): at the default 224 px it failed, blamed on its
    gradient ("cannot be differentiated"); a --size given is kept, the line naming the size."""
    folder = _noise_folder(tmp_path / "imgs", 3, seed=3)
    argv = ["--model", "tests.tiny_model:build_fixed", "--images", str(folder), "--layers", "conv", "--k", "2"]
    assert examples.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert "cannot take 224 px images: reading them at its input size, --size 16" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / examples.SUMMARY_JSON).read_text())["settings"]["size"] == 16
    rc, err = _cli(capsys, *argv, "--size", "20", "--out", str(tmp_path / "out20"))
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "failed on a 20x20x3 input" in err and "taken at 16 px" in err and "differentiated" not in err
    assert not (tmp_path / "out20").exists()


def test_cli_writes_the_summary(tmp_path, capsys):
    folder = _noise_folder(tmp_path / "imgs", 3, seed=3)
    rc = examples.main(["--images", str(folder), "--layers", "block1_conv1", "--size", "16", "--k", "2",
                        "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0 and "done: 3 images" in out
    assert (tmp_path / "out" / examples.SUMMARY_NPZ).exists() and (tmp_path / "out" / examples.SUMMARY_JSON).exists()


def test_a_model_layer_whose_name_holds_a_comma_is_named_whole_in_layers(tmp_path, capsys):
    """--layers split "conv,3x3" into the layers conv and 3x3 ("unknown layer '3x3'", listing conv,3x3
    as valid); the grid and the atlas take it whole (cli_args.split_layers), and so does this command."""
    folder = _noise_folder(tmp_path / "imgs", 2, seed=3)
    rc, err = _cli(capsys, "--model", "tests.tiny_model:build_comma", "--images", str(folder), "--layers",
                   "conv,3x3,conv", "--size", "16", "--k", "2", "--out", str(tmp_path / "out"), "--quiet")
    assert rc == 0, err
    assert list(json.loads((tmp_path / "out" / examples.SUMMARY_JSON).read_text())["layers"]) == ["conv,3x3", "conv"]


def test_a_killed_runs_temporary_files_are_removed_at_start(tmp_path, capsys):
    """kill -9 while the state or the summary was written left its hidden temporary file for good
    (the grid and the atlas remove theirs); one being written now, or a file of the user's, stays."""
    import time

    folder = _noise_folder(tmp_path / "imgs", 2, seed=3)
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".examples-state.npz.ab12cd_e.tmp", out / ".examples.npz.zz99zz99.tmp"]
    others = [out / ".notes.txt.tmp", out / "keep.tmp"]
    for p in stale + others:
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 60, time.time() - 60))
    writing = out / ".examples.json.a1b2c3d4.tmp"
    writing.write_bytes(b"partial")
    rc, err = _cli(capsys, "--images", str(folder), "--layers", "block1_conv1", "--size", "16", "--k", "2",
                   "--out", str(out), "--quiet")
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others) and writing.exists()


def test_a_cut_short_state_or_summary_is_handled(tmp_path, capsys):
    """An empty state file (a run killed while writing it) starts afresh; a summary cut short is one line."""
    folder = _noise_folder(tmp_path / "imgs", 2, seed=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / examples.STATE).write_bytes(b"")
    argv = ["--images", str(folder), "--layers", "block1_conv1", "--size", "16", "--k", "2", "--out", str(out), "--quiet"]
    assert examples.main(argv) == 0
    npz = out / examples.SUMMARY_NPZ
    npz.write_bytes(npz.read_bytes()[:300])
    with pytest.raises(JaxvizError, match="unreadable"):
        site_examples.load(out)


BLOCKING_RUN = """
import sys
import jax, jax.numpy as jnp
from jaxviz import examples

real_scores, calls = examples._scores, []

@jax.jit
def long_call(x):  # compiled work that never looks at signals, like a long XLA batch (about 30 s)
    return jax.lax.fori_loop(0, 2_000_000_000, lambda i, v: jnp.sin(v) + 1, x)

def scores(*a):
    calls.append(1)
    if len(calls) == 3:  # the third batch: two are done and saved
        print("blocking", file=sys.stderr, flush=True)
        long_call(jnp.float32(0)).block_until_ready()
    return real_scores(*a)

examples._scores = scores  # the state is saved every 20 batches: these two only by the interrupt's final write
sys.exit(examples.main(sys.argv[1:]))
"""


def test_a_second_job_on_the_same_folder_is_refused(tmp_path, capsys):
    """Two passes into one --out (say, other --layers) both ran and both said they wrote the
    summary: the later one's replaced the other's, and their states were mixed. Now the folder
    holds the atlas's lock (jaxviz.folder_lock) while a pass runs: a second one is one line, exit
    2, nothing written; the lock file goes with the run."""
    from jaxviz.folder_lock import LOCK_NAME, FolderLock

    folder = _noise_folder(tmp_path / "imgs", 3, seed=3)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--images", str(folder), "--layers", "block1_conv1", "--size", "16", "--k", "2", "--out", str(out)]
    lock = FolderLock(str(out), "jaxviz.examples").acquire()  # a pass running there
    try:
        rc, err = _cli(capsys, *argv)
    finally:
        lock.release()
    assert rc == 2 and f"{out} is in use by another jaxviz.examples job (PID {os.getpid()}" in err, err
    assert len(err.splitlines()) == 1 and os.listdir(out) == []
    rc, _ = _cli(capsys, *argv)
    assert rc == 0 and LOCK_NAME not in os.listdir(out) and examples.SUMMARY_JSON in os.listdir(out)


@pytest.mark.parametrize("kind, what", [("link", "a symbolic link"), ("fifo", "not a regular file"),
                                        ("folder", "a folder")])
def test_a_lock_file_that_is_no_plain_file_is_one_line(tmp_path, capsys, kind, what):
    """A link named .jaxviz.lock in --out had the lock's JSON written over the file it named (a user's
    file, or /etc/passwd in a shared folder for a root run); a pipe there was OSError from ftruncate."""
    from jaxviz.folder_lock import LOCK_NAME

    folder = _noise_folder(tmp_path / "imgs", 2, seed=3)
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    {"link": lambda p: os.symlink(precious, p), "fifo": os.mkfifo, "folder": os.mkdir}[kind](out / LOCK_NAME)
    rc, err = _cli(capsys, "--images", str(folder), "--layers", "block1_conv1", "--size", "16", "--k", "2",
                   "--out", str(out), "--quiet")
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"cannot use the lock file {out / LOCK_NAME}: it is {what}" in err and err.endswith(
        "move it, or choose another --out"), err
    assert precious.read_text() == "keep me" and os.listdir(out) == [LOCK_NAME]


def test_sigint_inside_a_long_compiled_batch_exits_130_at_once_keeping_completed_batches(tmp_path, capsys):
    """Like grid's and atlas's: the work runs in a worker thread (cli_run.run_interruptible), so a Ctrl-C
    inside a compiled batch exits 130 at once (it used to wait for the batch), the state ends at the
    last completed batch (written as the interrupt closes the gate: no periodic save was due), and
    the rerun finishes with the uninterrupted run's result. Started with SIGINT ignored (a script's
    background job), the run still takes it over."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    folder = _noise_folder(tmp_path / "imgs", 5, seed=5)
    argv = ["--model", "tests.tiny_model:build", "--images", str(folder), "--layers", "conv", "--size", "16",
            "--batch", "1", "--k", "2", "--quiet"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through exec, as a shell's `cmd &` does
    try:
        p = subprocess.Popen([sys.executable, "-c", BLOCKING_RUN, *argv, "--out", str(tmp_path / "out")], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, old)
    try:
        assert p.stderr.readline().strip() == "blocking", p.communicate()
        time.sleep(0.3)  # inside the compiled call
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
        seconds = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130 and seconds < 5, (p.returncode, seconds, err)
    assert err.strip().splitlines() == [f"jaxviz.examples: interrupted; rerun the same command to continue from "
                                        f"{tmp_path / 'out' / examples.STATE}"], err
    with np.load(tmp_path / "out" / examples.STATE) as z:
        assert json.loads(str(z["meta"]))["position"] == 2  # the two completed batches, not the third
    assert sorted(os.listdir(tmp_path / "out")) == [examples.STATE]
    assert examples.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert examples.main([*argv, "--out", str(tmp_path / "fresh")]) == 0
    resumed, fresh = (json.loads((tmp_path / d / examples.SUMMARY_JSON).read_text()) for d in ("out", "fresh"))
    assert resumed["layers"] == fresh["layers"] and resumed["images_used"] == fresh["images_used"] == 5


def test_main_gives_an_ignored_sigint_back(tmp_path, capsys):
    """main() takes SIGINT over for its run only: the process's old handler (ignored) comes back."""
    import signal

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = examples.main(["--model", "tests.tiny_model:build", "--images", str(tmp_path), "--layers", "conv",
                            "--size", "16", "--out", str(tmp_path / "out"), "--quiet"])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
    assert rc == 0, capsys.readouterr().err


def test_large_images_print_no_raw_pillow_warning(tmp_path, capsys, monkeypatch):
    """An image over Pillow's pixel limit (DecompressionBombWarning) is used without the raw warning;
    one over twice the limit is skipped as too large, named in the closing line."""
    import warnings

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, side in (("ok.png", 40), ("big.png", 50), ("huge.png", 70)):
        Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(folder / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 50 x 50 warns, 70 x 70 is refused
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = examples.main(["--model", "tests.tiny_model:build", "--images", str(folder), "--layers", "conv",
                            "--size", "16", "--k", "2", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "", err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "done: 2 images" in out and "skipped 1 file: 1 too large (huge.png)" in out, out


def test_a_damaged_exif_block_prints_no_raw_pillow_warning(tmp_path, capsys):
    """A JPEG whose EXIF block is cut short is used, but Pillow's "UserWarning: Corrupt EXIF data"
    was printed raw, with its source line (even with --quiet)."""
    import warnings

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(folder / "a.jpg", exif=b"Exif\0\0II*\0\x08\0\0\0\x05\0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = examples.main(["--model", "tests.tiny_model:build", "--images", str(folder), "--layers", "conv",
                            "--size", "16", "--k", "2", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 0 and err == "" and "done: 1 image" in out, err
    assert not [str(w.message) for w in caught if w.category is UserWarning]


def test_cli_counts_the_channels_that_never_fired(tmp_path, capsys):
    """Their top examples are images they did not respond to (activation 0, at an arbitrary place):
    the summary keeps them, the command says how many there are."""
    import json

    from PIL import Image

    folder = tmp_path / "flat"
    folder.mkdir()
    for i, colour in enumerate([(200, 10, 10), (90, 90, 90)]):  # flat images: edge filters stay at 0
        Image.new("RGB", (20, 20), colour).save(folder / f"{i}.png")
    assert examples.main(["--images", str(folder), "--layers", "block1_conv1", "--size", "16", "--k", "2",
                          "--out", str(tmp_path / "out")]) == 0
    channels = json.loads((tmp_path / "out" / examples.SUMMARY_JSON).read_text())["layers"]["block1_conv1"]["channels"]
    silent = sum(all(e["activation"] == 0 for e in c) for c in channels)
    assert silent > 0
    assert f"block1_conv1: {silent} of 64 channels never fired on these images" in capsys.readouterr().out
    folder = _noise_folder(tmp_path / "imgs", 3, seed=3)
    assert examples.main(["--images", str(folder), "--layers", "block1_conv1", "--size", "16", "--k", "2",
                          "--out", str(tmp_path / "noise")]) == 0
    channels = json.loads((tmp_path / "noise" / examples.SUMMARY_JSON).read_text())["layers"]["block1_conv1"]["channels"]
    silent = sum(all(e["activation"] == 0 for e in c) for c in channels)
    assert (f"{silent} of 64 channels never fired" in capsys.readouterr().out) == (silent > 0)


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    """A finished tiny-model run's image folder, arguments and state file bytes."""
    tmp = tmp_path_factory.mktemp("state")
    folder = _noise_folder(tmp / "imgs", 3, seed=6)
    argv = ["--model", "tests.tiny_model:build", "--images", str(folder), "--layers", "conv", "--size", "16",
            "--k", "2", "--batch", "2", "--quiet"]
    assert examples.main([*argv, "--out", str(tmp / "out")]) == 0
    return argv, (tmp / "out" / examples.STATE).read_bytes()


def _rewrite_state(data: bytes, change) -> bytes:
    """The state ``data`` after ``change(meta, arrays)`` (which edits them, or returns a new meta),
    saved as _save_state does."""
    import io

    with np.load(io.BytesIO(data)) as z:
        arrays = {n: z[n] for n in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    new = change(meta, arrays)
    meta = meta if new is None else new
    buf = io.BytesIO()
    np.savez(buf, meta=np.asarray(json.dumps(meta)), **arrays)
    return buf.getvalue()


def _set(d, key, value):
    d[key] = value


def _drop(d, key):
    del d[key]


@pytest.mark.parametrize("case, change, message", [
    ("meta_not_an_object", lambda m, a: [1, 2], "its meta is not a JSON object"),
    ("negative_position", lambda m, a: _set(m, "position", -5), "position -5 is not a whole number in 0..3"),
    ("wrong_array_shape", lambda m, a: _set(a, "conv/values", np.zeros((3, 3), np.float32)),
     "conv/values is float32 (3, 3), not float32 (4, 2)"),
    ("wrong_array_dtype", lambda m, a: _set(a, "conv/index", a["conv/index"].astype(np.float64)), "conv/index is float64"),
    ("index_out_of_range", lambda m, a: _set(a, "conv/index", a["conv/index"] + 5), "conv holds image indices"),
    ("missing_array", lambda m, a: _drop(a, "conv/y"), "it has no conv/y array"),
    ("missing_key", lambda m, a: _drop(m, "used"), "its meta has no 'used'"),
    ("bad_fields", lambda m, a: _set(m, "fields", {"conv": {"height": 3}}), "fields are not receptive fields"),
    ("bad_skipped", lambda m, a: _set(m["skipped"], "counts", [1]), "skipped is not counts and names"),
    ("truncated", None, "unreadable (BadZipFile"),
])
def test_a_damaged_state_is_one_line_and_exit_2(tmp_path, capsys, saved_state, case, change, message):
    """A state file damaged outside a run was a traceback from wherever its content was first used
    (TypeError, IndexError, ValueError); now it is refused as loaded: one line naming the file and the
    fix, exit 2, the state kept as it was and nothing else written."""
    argv, good = saved_state
    out = tmp_path / "out"
    out.mkdir()
    state = out / examples.STATE
    state.write_bytes(good[:300] if change is None else _rewrite_state(good, change))
    before = state.read_bytes()
    rc, err = _cli(capsys, *argv, "--out", str(out))
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"state file {state} cannot be resumed: {message}" in err and err.endswith(
        "; delete it to start the pass over"), err
    assert os.listdir(out) == [examples.STATE] and state.read_bytes() == before
    state.unlink()  # the fix the line gives
    assert _cli(capsys, *argv, "--out", str(out))[0] == 0



def _npy_member(data: bytes, name: str, header: str) -> bytes:
    """The .npz ``data`` with its member ``name`` a .npy of ``header`` (its dict's text) and 32 bytes."""
    import io
    import zipfile

    h = header.encode("latin1")
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    raw = b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + bytes(32)
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, raw if info.filename == name else src.read(info))
    return buf.getvalue()


@pytest.mark.parametrize("damage, message", [
    (lambda d: _npy_member(d, "conv/values.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000)}"),
     "unreadable ("),  # MemoryError; where memory is overcommitted without limit, ValueError (the data runs out)
    (lambda d: _npy_member(d, "conv/values.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2"),
     "unreadable (TokenError"),
])
def test_a_state_damaged_past_its_checks_is_one_line(tmp_path, capsys, saved_state, damage, message):
    """An array header whose shape cannot be allocated, or one NumPy's header parser cannot read: each
    was a traceback (NumPy's MemoryError, tokenize.TokenError)."""
    argv, good = saved_state
    out = tmp_path / "out"
    out.mkdir()
    state = out / examples.STATE
    state.write_bytes(damage(good))
    rc, err = _cli(capsys, *argv, "--out", str(out))
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"state file {state} cannot be resumed: {message}" in err and err.endswith(
        "; delete it to start the pass over"), err


def test_an_intact_state_of_other_settings_still_starts_afresh(tmp_path, capsys, caplog, saved_state):
    """Starting over is said (a folder that gained one image started over silently), naming what changed."""
    argv, good = saved_state
    out = tmp_path / "out"
    out.mkdir()
    state = out / examples.STATE
    for key, said in (("k", "k"), ("files_sha", "images")):
        state.write_bytes(_rewrite_state(good, lambda m, a: _set(m["settings"], key, "x")))
        caplog.clear()
        assert _cli(capsys, *[a for a in argv if a != "--quiet"], "--out", str(out))[0] == 0
        assert caplog.messages == [f"jaxviz: the saved pass in {state} was of other {said}; starting over"]
    state.write_bytes(_rewrite_state(good, lambda m, a: _set(m["settings"], "k", "x")))
    caplog.clear()
    assert _cli(capsys, *argv, "--out", str(out)) == (0, "") and caplog.messages == []  # --quiet


@pytest.fixture(scope="module")
def tiny():
    from tiny_model import build

    return build()


@pytest.mark.parametrize("config, message", [
    (None, "config must be a jaxviz.examples.Config"),  # AttributeError
    (examples.Config(k=1.5), "k must be an integer, not 1.5"),  # TypeError from np.full
    (examples.Config(size=None), "size must be an integer, not None"),
    (examples.Config(batch=0), "batch must be 1 or more, not 0"),
    (examples.Config(thumb=2.5), "thumb must be an integer"),
    (examples.Config(min_side="3"), "min_side must be an integer"),  # TypeError in a decoding thread
    (examples.Config(save_every=0), "save_every must be 1 or more, not 0"),  # ZeroDivisionError at the first batch
    (examples.Config(k=10**9, size=16), r"--k 1000000000, --thumb 48, --batch 16 and --size 16 need about"),  # MemoryError
])
def test_collect_checks_its_config_before_any_work(tmp_path, tiny, monkeypatch, config, message):
    from jaxviz import imagefolder

    folder = _noise_folder(tmp_path / "imgs", 1)
    monkeypatch.setattr(imagefolder, "stream", lambda *a, **k: pytest.fail("the pass started"))
    with pytest.raises(JaxvizError, match=message):
        examples.collect(tiny, str(folder), ["conv"], config, out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_numpy_integers_in_the_config_are_written(tmp_path, tiny):
    """np.int64 settings reached the state's and the summary's JSON: a TypeError after the whole pass."""
    folder = _noise_folder(tmp_path / "imgs", 2)
    cfg = examples.Config(*(np.int64(v) for v in (2, 16, 2, 8, 3, 1)))
    s = examples.collect(tiny, str(folder), ["conv"], cfg, out=str(tmp_path / "out"))
    assert s.images_used == 2 and json.loads((tmp_path / "out" / examples.SUMMARY_JSON).read_text())["settings"]["k"] == 2


@pytest.mark.parametrize("case, message", [
    ("file", "afile is a file, not a folder"),  # FileExistsError after the pass
    ("below_a_file", "afile is a file, not a folder"),  # NotADirectoryError after the pass
    ("json_folder", "examples.json: a folder is in the way"),  # after the pass, examples.npz written alone
    ("empty", "out is empty; give a folder"),  # taken as None: nothing written, silently
    ("number", "out must be a folder path, or None"),
])
def test_collect_checks_out_before_the_pass(tmp_path, tiny, monkeypatch, case, message):
    from jaxviz import imagefolder

    folder = _noise_folder(tmp_path / "imgs", 1)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "busy" / examples.SUMMARY_JSON).mkdir(parents=True)
    out = {"file": tmp_path / "afile", "below_a_file": tmp_path / "afile" / "sub", "json_folder": tmp_path / "busy",
           "empty": "", "number": 5}[case]
    monkeypatch.setattr(imagefolder, "stream", lambda *a, **k: pytest.fail("the pass started"))
    with pytest.raises(JaxvizError, match=message):
        examples.collect(tiny, str(folder), ["conv"], examples.Config(size=16), out=out)
    assert os.listdir(tmp_path / "busy") == [examples.SUMMARY_JSON]


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers="conv"), r"layers must be a list of layer names such as \['conv'\], not the string"),  # layer 'c'
    (dict(layers=5), "layers must be a list of layer names"),  # TypeError
    (dict(model=None), "model must be a jaxviz Model"),  # AttributeError
    (dict(folder=None), "the image folder must be a path, not None"),  # TypeError
    (dict(progress=5), r"progress is called as progress\(done, total\)"),  # TypeError after the fields
    (dict(progress=lambda done: None), r"progress is called as progress\(done, total\)"),
])
def test_collect_refuses_arguments_of_the_wrong_kind(tmp_path, tiny, kwargs, message):
    folder = _noise_folder(tmp_path / "imgs", 1)
    args = dict(model=tiny, folder=str(folder), layers=["conv"], config=examples.Config(size=16)) | kwargs
    with pytest.raises(JaxvizError, match=message):
        examples.collect(**args)


def test_a_batch_larger_than_the_folder_is_not_padded_to_its_size(tmp_path, tiny, monkeypatch):
    """--batch 512 over 3 images ran every forward pass on 512 images, 509 of them padding."""
    shapes, real = [], examples._scores
    monkeypatch.setattr(examples, "_scores", lambda *a: shapes.append(a[-1].shape[0]) or real(*a))
    folder = _noise_folder(tmp_path / "imgs", 3, seed=3)
    s = examples.collect(tiny, str(folder), ["conv"], examples.Config(k=2, size=16, batch=512))
    assert shapes == [3] and s.images_used == 3


def test_collect_takes_layers_from_a_generator_and_a_bytes_folder(tmp_path, tiny):
    """A generator was used up by the first look at it (ValueError: max() arg is an empty sequence);
    a bytes folder was joined with str names (TypeError)."""
    folder = _noise_folder(tmp_path / "imgs", 2)
    s = examples.collect(tiny, os.fsencode(folder), (l for l in ["conv"]), examples.Config(k=2, size=16))
    assert list(s.layers) == ["conv"] and s.images_used == 2


def test_write_summary_writes_both_files_or_neither(tmp_path, tiny):
    folder = _noise_folder(tmp_path / "imgs", 2)
    s = examples.collect(tiny, str(folder), ["conv"], examples.Config(k=2, size=16))
    (tmp_path / "out" / examples.SUMMARY_JSON).mkdir(parents=True)
    with pytest.raises(JaxvizError, match="examples.json: a folder is in the way"):
        examples.write_summary(s, str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == [examples.SUMMARY_JSON]  # examples.npz was written alone


def test_a_tilde_in_images_and_out_is_the_home_folder(tmp_path, capsys, monkeypatch):
    """--images=~/photos (the shell expands no ~ after '=') was "does not exist"; --out=~/x a folder "~"."""
    home = tmp_path / "home"
    home.mkdir()
    _noise_folder(home / "photos", 2, seed=3)
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path / "cwd")
    argv = ["--model", "tests.tiny_model:build", "--layers", "conv", "--size", "16", "--k", "1", "--quiet"]
    assert _cli(capsys, *argv, "--images=~/photos", "--out=~/ex") == (0, "")
    assert (home / "ex" / examples.SUMMARY_NPZ).is_file() and os.listdir(tmp_path / "cwd") == []
    rc, err = _cli(capsys, *argv, "--images=~no-such-user-xyz/photos", "--out=~/ex")
    assert rc == 2 and "--images ~no-such-user-xyz/photos: no such user's home folder" in err


def test_a_failed_run_removes_every_empty_folder_it_made_for_a_nested_out(tmp_path, capsys):
    """--out a/b/c with a/ there: a failure removed c but left the empty b it had made too."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpg").write_text("nope")
    (tmp_path / "a" / "mine").mkdir(parents=True)  # there before: kept, though empty
    rc, err = _cli(capsys, "--images", str(imgs), "--layers", "block1_conv1", "--size", "16", "--out",
                   str(tmp_path / "a" / "b" / "c"), "--quiet")
    assert rc == 2 and "no usable image" in err
    assert os.listdir(tmp_path / "a") == ["mine"]
