import io
import os
import struct
import threading

import numpy as np
import pytest
from PIL import Image

from jaxviz import imagefolder
from jaxviz.errors import JaxvizError


def _rgb(h, w, value=(200, 100, 50)):
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = value
    return a


def test_list_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for p in ["z.png", "a.JPG", "b/c.jpeg", ".hidden/x.png", ".dot.png", "notes.txt"]:
        (tmp_path / p).write_bytes(b"x")
    assert imagefolder.list_images(tmp_path) == ["a.JPG", "b/c.jpeg", "z.png"]

def test_list_order_is_by_path_components(tmp_path):
    (tmp_path / "b").mkdir()
    for p in ["z.png", "a.png", "b/c.png"]:
        (tmp_path / p).write_bytes(b"x")
    assert imagefolder.list_images(tmp_path) == ["a.png", "b/c.png", "z.png"]


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no JPEG or PNG images"),
    (lambda p: (p / "readme.txt").write_text("hi"), "no JPEG or PNG images"),
])
def test_empty_folder_is_one_error(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(JaxvizError, match=message):
        imagefolder.list_images(tmp_path)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(JaxvizError, match="does not exist"):
        imagefolder.list_images(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(JaxvizError, match="is not a folder"):
        imagefolder.list_images(tmp_path / "f.png")
    with pytest.raises(JaxvizError, match="^--images is empty; give a folder"):  # said "image folder  does not exist"
        imagefolder.list_images("")


def test_modes_are_converted_to_rgb(tmp_path):
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(tmp_path / "gray.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red: white after compositing
    rgba[0, 0] = (0, 0, 255, 255)  # one opaque blue pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(_rgb(8, 8, (10, 200, 30))).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "white16.png")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "mid16.png")
    load = lambda n: imagefolder.load_rgb(str(tmp_path / n))
    assert (load("gray.png") == 77).all() and load("gray.png").shape == (8, 8, 3)
    a = load("rgba.png")
    assert (a[1:, 1:] == 255).all() and tuple(a[0, 0]) == (0, 0, 255)
    assert tuple(load("pal.png")[3, 3]) == (10, 200, 30)
    assert Image.open(tmp_path / "white16.png").mode.startswith("I")  # really a 16-bit PNG
    assert (load("white16.png") == 255).all()
    assert (load("mid16.png") == 128).all()


def test_exif_rotation_is_applied(tmp_path):
    a = _rgb(10, 20)  # 10 rows, 20 columns
    a[:, :10] = 0  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=95)
    b = imagefolder.load_rgb(str(tmp_path / "r.jpg"))
    assert b.shape == (20, 10, 3)
    assert b[:8].mean() < 30 and b[12:].mean() > 80  # the black half is now on top


def test_bad_files_are_skipped_with_counts_and_names(tmp_path):
    Image.fromarray(_rgb(40, 30)).save(tmp_path / "good.jpg", quality=90)
    full = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(full[: len(full) // 2])
    Image.fromarray(_rgb(40, 30)).save(tmp_path / "t2.png")
    (tmp_path / "t2.png").write_bytes((tmp_path / "t2.png").read_bytes()[:60])
    (tmp_path / "text.png").write_text("not an image at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    Image.fromarray(_rgb(3, 50)).save(tmp_path / "tiny.png")
    names = imagefolder.list_images(tmp_path)
    skipped = imagefolder.Skipped.empty()
    batches = list(imagefolder.stream(str(tmp_path), names, 16, 4, min_side=4, skipped=skipped))
    assert [names[i] for b in batches for i in b.indices] == ["good.jpg"]
    assert batches[0].images.shape == (1, 16, 16, 3) and batches[0].images.dtype == np.float32
    assert skipped.counts == {"not an image": 2, "unreadable or truncated": 2, "too small": 1, "too large": 0}
    assert sorted(skipped.names["not an image"]) == ["empty.jpg", "text.png"]
    assert sorted(skipped.names["unreadable or truncated"]) == ["t2.png", "trunc.jpg"]
    line = skipped.describe()
    assert line.startswith("skipped 5 files") and "tiny.png" in line and "\n" not in line


def test_a_decoder_failing_in_its_own_way_skips_the_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(8, 8)).save(buf, "DDS")
    data = bytearray(buf.getvalue())
    data[80:84] = struct.pack("<I", 0)  # the pixel format's flags: Pillow raises NotImplementedError
    (tmp_path / "odd.png").write_bytes(bytes(data))
    with pytest.raises(imagefolder.Unusable, match="unreadable"):
        imagefolder.load_rgb(str(tmp_path / "odd.png"))


def test_resize_crop_takes_the_centre_of_the_shorter_side(tmp_path):
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, 20:40] = 255  # the centre third is white
    out = imagefolder.resize_crop(a, 10)
    assert out.shape == (10, 10, 3)
    assert out[:, 2:8].min() > 200
    up = imagefolder.resize_crop(_rgb(5, 7), 32)  # smaller images are upsampled
    assert up.shape == (32, 32, 3) and tuple(up[16, 16]) == (200, 100, 50)


def test_a_thin_image_is_not_resized_whole(monkeypatch):
    """1 x 100000 px at 224 was first resized to 224 x 22,400,000 px (15 GB); now only the crop's region is."""
    resize = Image.Image.resize

    def bounded(self, size, *args, **kwargs):
        assert size[0] * size[1] <= 16 * 224 * 224, f"resized whole to {size}"
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded)
    thin = np.zeros((1, 100000, 3), np.uint8)
    thin[:, 50000] = 255  # at this scale the crop spans source pixels 49999.5-50000.5
    out = imagefolder.resize_crop(thin, 224)
    assert out.shape == (224, 224, 3) and out.max() > 200 and out.min() < 60  # the white pixel, at the crop's side
    wide = np.random.default_rng(0).integers(0, 255, (10, 400, 3), np.uint8)  # past MAX_ASPECT: about the same
    monkeypatch.setattr(imagefolder, "MAX_ASPECT", 10**9)
    whole = imagefolder.resize_crop(wide, 32)
    monkeypatch.setattr(imagefolder, "MAX_ASPECT", 16)
    assert np.abs(imagefolder.resize_crop(wide, 32).astype(int) - whole).mean() < 1


def test_stream_batches_in_order_and_resumes_at_start(tmp_path):
    for i in range(7):
        Image.fromarray(_rgb(9, 9, (i * 30, 0, 0))).save(tmp_path / f"{i}.png")
    names = imagefolder.list_images(tmp_path)
    bs = list(imagefolder.stream(str(tmp_path), names, 8, 3))
    assert [list(b.indices) for b in bs] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.end for b in bs] == [3, 6, 7]
    np.testing.assert_allclose(bs[1].images[:, 0, 0, 0], np.array([90, 120, 150]) / 255, atol=1e-6)
    again = list(imagefolder.stream(str(tmp_path), names, 8, 3, start=3))
    assert [list(b.indices) for b in again] == [[3, 4, 5], [6]]


def test_images_over_twice_pillows_pixel_limit_are_skipped_as_too_large(tmp_path, monkeypatch):
    """Pillow refuses them (DecompressionBombError): "too large", not "unreadable or truncated"."""
    from PIL import Image as PILImage

    Image.fromarray(_rgb(40, 40)).save(tmp_path / "ok.png")
    Image.fromarray(_rgb(70, 70)).save(tmp_path / "huge.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 2000)  # 70 x 70 = 4900 > 2 x 2000
    with pytest.raises(imagefolder.Unusable, match="too large"):
        imagefolder.load_rgb(str(tmp_path / "huge.png"))
    skipped = imagefolder.Skipped({"not an image": 0, "unreadable or truncated": 0, "too small": 0},
                                  {"not an image": [], "unreadable or truncated": [], "too small": []})  # an old state
    batches = list(imagefolder.stream(str(tmp_path), ["huge.png", "ok.png"], 16, 4, skipped=skipped))
    assert [i for b in batches for i in b.indices] == [1]
    assert skipped.counts["too large"] == 1 and skipped.describe() == "skipped 1 file: 1 too large (huge.png)"


def _photo(path, h=480, w=640):
    """A JPEG with detail at every scale (blocks plus noise), as a photo has."""
    rng = np.random.default_rng(0)
    a = np.kron(rng.integers(0, 256, (h // 16, w // 16, 3)), np.ones((16, 16, 1))) + rng.integers(-20, 20, (h, w, 3))
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=90)


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    """A 100-megapixel JPEG decoded whole took about 1.8 GB (two at a time in the pass); over
    LARGE_PIXELS it is decoded at 1/2..1/8 scale (Image.draft), still 3x the size, nearly the same."""
    _photo(tmp_path / "big.jpg")
    whole = imagefolder.load(str(tmp_path), "big.jpg", 32)
    monkeypatch.setattr(imagefolder, "LARGE_PIXELS", 1000)
    assert imagefolder.load_rgb(str(tmp_path / "big.jpg"), 1, 32).shape == (120, 160, 3)  # 1/4: 96 px would do
    drafted = imagefolder.load(str(tmp_path), "big.jpg", 32)
    diff = np.abs(drafted.astype(int) - whole)
    assert drafted.shape == (32, 32, 3) and diff.mean() < 1.5 and diff.max() < 16
    assert imagefolder.load(str(tmp_path), "big.jpg", 32, min_side=480).shape == (32, 32, 3)  # the file's side counts
    with pytest.raises(imagefolder.Unusable, match="too small"):
        imagefolder.load(str(tmp_path), "big.jpg", 32, min_side=481)
    assert imagefolder.draft_size(10000, 9000, 224) == (747, 672)  # 3 x 224: decoded at 1/8, 1250 x 1125 px
    Image.fromarray(_rgb(480, 640)).save(tmp_path / "big.png")  # no other format has a reduced decode
    assert imagefolder.load_rgb(str(tmp_path / "big.png"), 1, 32).shape == (480, 640, 3)


def test_an_ordinary_image_is_decoded_whole_without_copies(tmp_path, monkeypatch):
    """Under LARGE_PIXELS a JPEG's pixels are exactly Pillow's full decode; an RGB image is neither
    copied (EXIF transposed in place) nor converted (each was a copy of the whole decoded image)."""
    _photo(tmp_path / "p.jpg")
    with Image.open(tmp_path / "p.jpg") as img:
        full = np.asarray(img.convert("RGB"))
    monkeypatch.setattr(Image.Image, "copy", lambda self: pytest.fail("copied the decoded image"))
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: pytest.fail("converted an RGB image"))
    np.testing.assert_array_equal(imagefolder.load_rgb(str(tmp_path / "p.jpg"), 1, 32), full)
    monkeypatch.undo()
    assert np.array_equal(imagefolder.load(str(tmp_path), "p.jpg", 32), imagefolder.resize_crop(full, 32))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX's")
def test_a_named_pipe_or_device_is_skipped_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # opening it to read waits for a writer that never comes
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    outcome = []
    for name in ("pipe.png", "zero.jpg"):
        t = threading.Thread(target=lambda n=name: outcome.append(_reason(tmp_path / n)), daemon=True)
        t.start()
        t.join(20)
    assert outcome == ["not an image", "not an image"]


def _reason(path):
    try:
        imagefolder.load_rgb(str(path))
    except imagefolder.Unusable as e:
        return str(e)


def test_a_folder_that_is_no_path_is_one_error_and_bytes_work(tmp_path):
    """None or a number failed in os.fspath with Python's TypeError; a bytes path in os.walk (bytes names
    against str suffixes)."""
    for folder in (None, 5):
        with pytest.raises(JaxvizError, match="^the image folder must be a path, not"):
            imagefolder.list_images(folder)
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "a.png")
    assert imagefolder.list_images(os.fsencode(tmp_path)) == ["a.png"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch=0), "batch must be 1 or more, not 0"),  # KeyError from the window of files in flight
    (dict(batch=2.5), "batch must be an integer"),
    (dict(size=0), "size must be 1 to"),  # ZeroDivisionError inside Pillow
    (dict(size="16"), "size must be an integer"),
    (dict(start=-2), "start must be 0 or more"),  # gave images at indices -2, -1, 0, ...: two of them twice
    (dict(min_side="2"), "min_side must be an integer"),
])
def test_stream_settings_are_checked(tmp_path, kwargs, message):
    Image.fromarray(_rgb(9, 9)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(9, 9)).save(tmp_path / "b.png")
    args = dict(size=8, batch=2) | kwargs
    with pytest.raises(JaxvizError, match=message):
        list(imagefolder.stream(str(tmp_path), ["a.png", "b.png"], args.pop("size"), args.pop("batch"), **args))
    with pytest.raises(JaxvizError, match="size must be 1 to"):
        imagefolder.resize_crop(_rgb(4, 4), -3)


def test_a_float_image_holding_nan_prints_no_numpy_warning(tmp_path):
    """A 32-bit float TIFF (under a .png name) holding NaN: NumPy's "invalid value encountered in cast"
    warning was printed raw; NaN now counts as black."""
    import warnings

    a = np.full((8, 8), 0.5, np.float32)
    a[0, 0] = np.nan
    Image.fromarray(a, "F").save(tmp_path / "f.tif")
    os.rename(tmp_path / "f.tif", tmp_path / "f.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = imagefolder.load_rgb(str(tmp_path / "f.png"))
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[4, 4]) == (128, 128, 128)


def test_linked_folders_are_followed_once_and_a_link_up_is_no_loop(tmp_path):
    """A linked class folder (cats -> /data/cats) was left out without a word; a link back up the tree,
    or a second link to a folder, is walked once."""
    (tmp_path / "data").mkdir()
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "data" / "c.png")
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(4, 4)).save(imgs / "a.png")
    os.symlink(tmp_path / "data", imgs / "cats")
    os.symlink(tmp_path / "data", imgs / "zcats")
    os.symlink("..", imgs / "sub" / "up")
    assert imagefolder.list_images(imgs) == ["a.png", "cats/c.png"]


def test_a_folder_that_cannot_be_read_is_said(tmp_path, monkeypatch, caplog):
    """An image folder without read permission was "no JPEG or PNG images in it"; a subfolder so was
    left out without a word. (os.scandir refuses here: chmod 000 does not stop root.)"""
    (tmp_path / "locked").mkdir()
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "a.png")
    scandir = os.scandir

    def refusing(path="."):
        if os.path.basename(os.fsdecode(path)) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(JaxvizError, match=r"^cannot read image folder .*locked \(Permission denied\); give a folder"):
        imagefolder.list_images(tmp_path / "locked")
    assert imagefolder.list_images(tmp_path) == ["a.png"]
    assert "1 folder under" in caplog.text and "cannot be read (Permission denied): locked; their images are left " \
                                                 "out" in caplog.text
    caplog.clear()
    assert imagefolder.list_images(tmp_path, warn=False) == ["a.png"] and not caplog.text
    (tmp_path / "a.png").unlink()  # the images only in the folder it cannot read: the error names it
    with pytest.raises(JaxvizError, match=r"^no JPEG or PNG images in .* \(searched recursively for .jpg, .jpeg, "
                                          r".png; 1 folder under .* cannot be read \(Permission denied\): locked\)"):
        imagefolder.list_images(tmp_path, warn=False)


def test_skipped_names_with_a_newline_or_escape_stay_one_line():
    skipped = imagefolder.Skipped.empty()
    skipped.add("not an image", "new\nline.jpg")
    skipped.add("not an image", "esc\x1b[2J.png")
    assert skipped.describe() == r"skipped 2 files: 2 not an image (new\nline.jpg, esc\x1b[2J.png)"
