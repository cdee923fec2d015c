import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxviz.errors import JaxvizError
from jaxviz.image import atomic_write, deprocess, deprocess_batch, make_folder, make_grid, rgb_to_uint8, save_png


def book_deprocess(x):
    """The book's numpy deprocess, as written in section 5.4."""
    x = x.copy()
    x -= x.mean()
    x /= x.std() + 1e-5
    x *= 0.1
    x += 0.5
    x = np.clip(x, 0, 1)
    x *= 255
    return np.clip(x, 0, 255).astype("uint8")


def test_deprocess_matches_the_book():
    x = np.random.default_rng(0).normal(130, 40, (2, 9, 9, 3)).astype(np.float32)
    for i in range(2):
        got = np.asarray(deprocess(jnp.asarray(x[i]))).astype(int)
        assert np.abs(got - book_deprocess(x[i])).max() <= 1
    assert deprocess_batch(jnp.asarray(x)).dtype == jnp.uint8
    x[1, 4, 4, 0] = np.nan  # would come out all black
    with pytest.raises(JaxvizError, match="deprocess takes a finite raw image"):
        deprocess(x[1])
    assert np.asarray(deprocess_batch(jnp.asarray(x)))[1].max() == 0  # under vmap and jit values are not known


def test_deprocess_takes_a_batch_image_by_image_and_refuses_what_is_not_an_image():
    x = np.random.default_rng(1).normal(130, 40, (2, 9, 9, 3)).astype(np.float32)
    x[1] *= 1000  # jointly, image 0 came out one flat grey beside it
    batch = np.asarray(deprocess(x))
    assert batch.shape == x.shape and batch.dtype == np.uint8
    for i in range(2):
        assert np.abs(batch[i].astype(int) - book_deprocess(x[i])).max() <= 1
    for bad in (None, 3.0, "abc", x[0].astype(np.complex64), x[0] > 130):  # AttributeError, TypeError, ValueError
        with pytest.raises(JaxvizError, match="deprocess takes a raw image"):
            deprocess(bad)
    with pytest.raises(JaxvizError, match="too large to show"):  # float32's std overflowed: every pixel 127
        deprocess(x[0] * np.float32(1e30))
    assert np.asarray(deprocess(x[0].tolist())).shape == (9, 9, 3)  # a nested list: as its array


def test_grid_layout_reading_order_and_black_margins():
    tiles = np.stack([np.full((4, 6, 3), i + 1, np.uint8) for i in range(5)])
    g = make_grid(tiles, cols=2, margin=3)
    assert g.shape == (3 * 4 + 2 * 3, 2 * 6 + 3, 3)
    for i in range(5):
        r, c = divmod(i, 2)
        assert (g[r * 7 : r * 7 + 4, c * 9 : c * 9 + 6] == i + 1).all()
    assert (g[4:7] == 0).all() and (g[:, 6:9] == 0).all()
    assert (g[14:, 9:] == 0).all()  # the empty sixth cell stays black


def test_seed_grid_size():
    assert make_grid(np.zeros((64, 64, 64, 3), np.uint8)).shape == (8 * 64 + 7 * 5, 8 * 64 + 7 * 5, 3)


def test_save_png_roundtrip(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    p = save_png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), img)
    assert oct(os.stat(p).st_mode & 0o777) == oct(0o644)


def test_interrupted_write_leaves_no_partial_file(tmp_path):
    def failing(f):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.png", failing)
    assert os.listdir(tmp_path) == []


def test_existing_file_replaced_only_when_complete(tmp_path):
    p = tmp_path / "x.png"
    save_png(p, np.zeros((2, 2, 3), np.uint8))
    before = p.read_bytes()
    with pytest.raises(RuntimeError):
        atomic_write(p, lambda f: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert p.read_bytes() == before and os.listdir(tmp_path) == ["x.png"]


def test_unwritable_folder_is_one_error(tmp_path):
    with pytest.raises(JaxvizError, match="cannot write"):
        save_png(tmp_path / "missing" / "x.png", np.zeros((2, 2, 3), np.uint8))
    for folder in (str(tmp_path), str(tmp_path / "new") + "/"):  # the temporary file went into the parent
        with pytest.raises(JaxvizError, match="it names a folder; give a file name such as"):
            save_png(folder, np.zeros((2, 2, 3), np.uint8))
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_grid_and_png_refuse_other_shapes_and_grids_too_large_for_memory(tmp_path):
    for bad in (np.zeros((0, 8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 5), np.uint8),
                np.zeros((2, 8, 8, 1), np.uint8)):  # 1 or 5 channels made grids that save_png refused
        with pytest.raises(JaxvizError, match="make_grid takes tiles"):
            make_grid(bad)
    with pytest.raises(JaxvizError, match="use a smaller --size, --margin or --cols"):
        make_grid(np.zeros((2, 8, 8, 3), np.uint8), margin=10**9)
    with pytest.raises(JaxvizError, match="save_png takes one image"):
        save_png(tmp_path / "x.png", np.zeros((2, 8, 8, 3), np.uint8))
    assert not (tmp_path / "x.png").exists()
    save_png(tmp_path / "grey.png", np.zeros((8, 8), np.uint8))  # grey and RGBA images still save
    save_png(tmp_path / "rgba.png", np.zeros((8, 8, 4), np.uint8))
    save_png(tmp_path / "rgba-grid.png", make_grid(np.zeros((3, 8, 8, 4), np.uint8), cols=2))


def test_pixels_that_are_not_uint8_are_refused_not_cast(tmp_path):
    """A float image in [0, 1] was cast to uint8 (all black), 300 wrapped to 44, bools came out black."""
    from jaxviz.image import save_animation

    for bad in (np.full((4, 4, 3), 0.7, np.float32), np.zeros((4, 4, 3), bool)):
        with pytest.raises(JaxvizError, match="save_png takes uint8 pixels"):
            save_png(tmp_path / "x.png", bad)
        with pytest.raises(JaxvizError, match="make_grid takes uint8 pixels"):
            make_grid(bad[None])
        with pytest.raises(JaxvizError, match="save_animation takes uint8 pixels"):
            save_animation(tmp_path / "x.gif", bad[None])
    with pytest.raises(JaxvizError, match="pixels 0-255, not values from 0 to 300"):
        save_png(tmp_path / "x.png", np.array([[0, 300]]))
    with pytest.raises(JaxvizError, match="save_png takes one image"):
        save_png(tmp_path / "x.png", np.zeros((0, 4, 3), np.uint8))  # was PIL's ValueError
    with pytest.raises(JaxvizError, match="cols must be an integer"):
        make_grid(np.zeros((2, 4, 4, 3), np.uint8), cols=2.5)  # was a TypeError from range()
    with pytest.raises(JaxvizError, match="file name is empty"):
        save_png("", np.zeros((4, 4, 3), np.uint8))  # was a temporary file in the current folder's parent
    assert os.listdir(tmp_path) == []
    save_png(tmp_path / "ints.png", np.full((4, 4, 3), 255, np.int64))  # integers within 0-255 still save
    assert Image.open(tmp_path / "ints.png").getpixel((0, 0)) == (255, 255, 255)


def test_make_folder_is_one_line_where_a_file_is_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "sub" / "sub"):  # the file in the way is named, not only "File exists"
        with pytest.raises(JaxvizError, match=f"a file is in the way: {tmp_path / 'f'} is a file, not a folder"):
            make_folder(path)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(JaxvizError, match="dangling is a symbolic link to nothing"):
        make_folder(tmp_path / "dangling" / "sub")
    assert make_folder(tmp_path / "a" / "b") == str(tmp_path / "a" / "b") and (tmp_path / "a" / "b").is_dir()


def test_rgb_to_uint8_rounds_and_casts_nan_without_numpy_warning():
    """A NaN image (refused by the caller in its own one line) printed numpy's "invalid value
    encountered in cast" RuntimeWarning before that line, in the atlas."""
    import warnings

    x = np.asarray([[[0.0, 0.5, 1.2]]], np.float32)
    assert rgb_to_uint8(x).tolist() == [[[0, 128, 255]]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rgb_to_uint8(np.full((2, 2, 3), np.nan, np.float32)).dtype == np.uint8


def test_ragged_or_empty_tiles_and_odd_output_paths_are_one_line(tmp_path):
    """Ragged tiles were numpy's ValueError; 0 px wide tiles made a grid of black margins only; a
    None, number or bytes path or one holding NUL raised Python's TypeError or ValueError."""
    tile = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(JaxvizError, match="make_grid takes images of one shape"):
        make_grid([tile, tile[:2]])
    for bad in (np.zeros((2, 4, 0, 3), np.uint8), np.zeros((2, 0, 4, 3), np.uint8)):
        with pytest.raises(JaxvizError, match="with N, h and w 1 or more"):
            make_grid(bad)
    for path in (None, 3):
        with pytest.raises(JaxvizError, match="the output file name must be a str or path"):
            save_png(path, tile)
    with pytest.raises(JaxvizError, match="holds a NUL character"):
        save_png(str(tmp_path / "a\0b.png"), tile)
    assert save_png(os.fsencode(tmp_path / "b.png"), tile) == str(tmp_path / "b.png")


def test_a_device_or_pipe_is_not_replaced_by_the_file(tmp_path):
    """The rename put a regular file in place of /dev/null itself (as root): now refused. (Shown on
    a pipe of the test's own: a regression must not replace the machine's /dev/null.)"""
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(JaxvizError, match="is not a regular file"):
        save_png(tmp_path / "pipe", np.zeros((4, 4, 3), np.uint8))
    assert (tmp_path / "pipe").is_fifo() and [p.name for p in tmp_path.iterdir()] == ["pipe"]



def test_a_symbolic_link_is_written_through_not_replaced(tmp_path):
    """The atomic rename replaced a link (latest.png -> runs/3.png) by a file, where open() writes
    through it; a link to a file not yet made makes that file."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "3.png").write_bytes(b"old")
    os.chmod(tmp_path / "runs" / "3.png", 0o600)
    (tmp_path / "latest.png").symlink_to("runs/3.png")
    save_png(tmp_path / "latest.png", np.zeros((2, 2, 3), np.uint8))
    assert (tmp_path / "latest.png").is_symlink() and os.readlink(tmp_path / "latest.png") == "runs/3.png"
    assert Image.open(tmp_path / "runs" / "3.png").size == (2, 2)
    assert os.stat(tmp_path / "runs" / "3.png").st_mode & 0o777 == 0o600
    (tmp_path / "next.png").symlink_to(tmp_path / "runs" / "4.png")
    atomic_write(tmp_path / "next.png", lambda f: f.write(b"new"))
    assert (tmp_path / "next.png").is_symlink() and (tmp_path / "runs" / "4.png").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path / "runs")) == ["3.png", "4.png"]


def test_save_animation_refuses_bad_frames_durations_and_sizes_in_one_line(tmp_path):
    """A duration of -5 or 10**9 was an OverflowError or WebP's RuntimeError, NaN a ValueError; one
    image (H, W, 3) saved as H grey frames; None as the path a TypeError; frames wider than GIF's
    65,535 px (WebP's 16,383) an OverflowError (a RuntimeError) from inside Pillow."""
    from jaxviz.image import save_animation

    frames = np.zeros((3, 4, 4, 3), np.uint8)
    for bad in (-5, 0, 10**9, float("nan"), 2.5, "80"):
        for ext in ("gif", "webp"):
            with pytest.raises(JaxvizError, match="duration_ms must be"):
                save_animation(tmp_path / f"x.{ext}", frames, bad)
    for shape in ((4, 4, 3), (3, 4, 4), (3, 4, 4, 2), (1, 3, 4, 4, 3), (3, 0, 4, 3)):
        with pytest.raises(JaxvizError, match=r"save_animation takes frames \(F, H, W, 3\)"):
            save_animation(tmp_path / "x.gif", np.zeros(shape, np.uint8))
    with pytest.raises(JaxvizError, match="output file name must be a str or path"):
        save_animation(None, frames)
    with pytest.raises(JaxvizError, match="larger than GIF allows"):
        save_animation(tmp_path / "x.gif", np.zeros((1, 1, 70_000, 3), np.uint8))
    with pytest.raises(JaxvizError, match="larger than WEBP allows"):
        save_animation(tmp_path / "x.webp", np.zeros((1, 20_000, 1, 3), np.uint8))
    assert os.listdir(tmp_path) == []
    save_animation(tmp_path / "ok.gif", frames, 20)  # valid ones still save
    save_animation(tmp_path / "rgba.gif", np.zeros((2, 4, 4, 4), np.uint8))
    assert Image.open(tmp_path / "ok.gif").n_frames == 1  # Pillow merges identical frames


def test_a_gif_frame_shorter_than_browsers_show_is_refused(tmp_path):
    """duration_ms=5 was stored as 0 (GIF counts in 10 ms), 15 as 10: browsers show both at 100 ms,
    an animation asked to play fast played slower than the default."""
    from jaxviz.image import save_animation, webp_supported

    frames = np.zeros((2, 4, 4, 3), np.uint8)
    for short in (1, 5, 15, 19):
        with pytest.raises(JaxvizError, match=f"a GIF frame of {short} ms is shown at 100 ms"):
            save_animation(tmp_path / "x.gif", frames, short)
    assert os.listdir(tmp_path) == []
    save_animation(tmp_path / "x.gif", frames, 20)
    if webp_supported():  # WebP counts in 1 ms
        save_animation(tmp_path / "x.webp", frames, 5)


def test_a_tilde_is_the_home_folder_for_every_writer(tmp_path, monkeypatch):
    """save_png("~/x.png") wrote into a folder named "~" of the current one, or failed naming --out."""
    from jaxviz.image import save_animation

    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    image = np.zeros((2, 2, 3), np.uint8)
    assert save_png("~/x.png", image) == str(tmp_path / "home" / "x.png")
    assert save_animation("~/x.gif", image[None]) == str(tmp_path / "home" / "x.gif")
    assert make_folder("~/sub") == str(tmp_path / "home" / "sub")
    assert atomic_write("~/sub/x.npz", lambda f: f.write(b"x")) == str(tmp_path / "home" / "sub" / "x.npz")
    assert sorted(os.listdir(tmp_path / "home")) == ["sub", "x.gif", "x.png"] and os.listdir(tmp_path / "cwd") == []
    with pytest.raises(JaxvizError, match="~no-such-user-xyz/x.png: no such user's home folder; give another folder"):
        save_png("~no-such-user-xyz/x.png", image)
    assert os.listdir(tmp_path / "cwd") == []
    assert save_png("~no-such-user-xyz.png", image) == "~no-such-user-xyz.png"  # a name, as the shell leaves it
    assert os.listdir(tmp_path / "cwd") == ["~no-such-user-xyz.png"]


def test_a_folder_that_cannot_hold_the_file_is_named_without_command_options(tmp_path):
    """Called from Python, a missing folder or a file in the way said "check free space and
    permissions, or choose another --out": neither the cause nor an option the program has."""
    image = np.zeros((2, 2, 3), np.uint8)
    (tmp_path / "f").write_text("x")
    cases = [(tmp_path / "missing" / "x.png", f"the folder {tmp_path / 'missing'} does not exist; create it, or "
              "choose another folder"),
             (tmp_path / "f" / "x.png", f"{tmp_path / 'f'} is a file, not a folder; move it, or choose another folder"),
             (tmp_path / ("y" * 250 + ".png"), "its name is too long for the file system (the write goes through a "
              "temporary name 14 bytes longer); give a shorter one")]
    for path, message in cases:
        with pytest.raises(JaxvizError) as e:
            save_png(path, image)
        assert str(e.value) == f"cannot write {path}: {message}"
    with pytest.raises(JaxvizError) as e:
        make_folder(tmp_path / "f" / "sub")
    assert str(e.value).endswith("; move it, or choose another folder")
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("name, fmt", [("x.jpg", "JPEG"), ("x.JPEG", "JPEG"), ("x.webp", "WEBP"), ("x.gif", "GIF")])
def test_a_name_of_another_image_format_is_refused(tmp_path, name, fmt):
    """save_png("x.jpg", img) wrote PNG bytes into x.jpg."""
    with pytest.raises(JaxvizError) as e:
        save_png(tmp_path / name, np.zeros((2, 2, 3), np.uint8))
    assert str(e.value) == (f"save_png writes PNG, not {fmt}: give a name ending in .png "
                            f"({tmp_path / name[:-len(name.split('.')[1]) - 1]}.png), not {tmp_path / name}")
    assert os.listdir(tmp_path) == []
    for ok in ("x.PNG", "x.v2", "grid"):  # a PNG suffix in any case, or none of an image format: as given
        save_png(tmp_path / ok, np.zeros((2, 2, 3), np.uint8))
        assert Image.open(tmp_path / ok).format == "PNG"


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT"])
def test_a_full_disk_or_quota_says_to_free_space_and_leaves_nothing(tmp_path, monkeypatch, code):
    """A write failing for want of space said "([Errno 28] ...); check free space and permissions":
    now the cause as the system says it and the fix, the old file kept, no temporary left."""
    import errno
    import tempfile

    err = getattr(errno, code)
    target = tmp_path / "x.json"
    target.write_bytes(b"old")

    def write(f):
        if f is not None:
            f.write(b"partial")
        raise OSError(err, os.strerror(err))

    with pytest.raises(JaxvizError) as e:
        atomic_write(target, write)
    assert str(e.value) == f"cannot write {target} ({os.strerror(err)}); free some space, or choose another folder"
    assert os.listdir(tmp_path) == ["x.json"] and target.read_bytes() == b"old"
    with monkeypatch.context() as m:  # no room for the temporary file itself (no inodes left)
        m.setattr(tempfile, "mkstemp", lambda **k: write(None))
        with pytest.raises(JaxvizError) as e:
            atomic_write(target, write)
    assert str(e.value).endswith(f"({os.strerror(err)}); free some space, or choose another folder")


def test_a_folder_that_cannot_be_made_for_want_of_space_says_to_free_some(tmp_path, monkeypatch):
    """No room for a folder (a full disk, no inodes left) said "move it": nothing is in the way."""
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "makedirs", full)
    with pytest.raises(JaxvizError) as e:
        make_folder(tmp_path / "out")
    assert str(e.value) == (f"cannot create folder {tmp_path / 'out'} (No space left on device); free some space, or "
                            "choose another folder")
