"""Images: the seed's deprocess, grids of tiles, and PNGs written atomically."""
from __future__ import annotations

import errno
import os
import stat
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import checks
from jaxviz.errors import JaxvizError


def deprocess(x: jax.Array) -> jax.Array:
    """The seed's deprocess of one raw image into uint8 (pure, vmappable).

    x - mean, / (std + 1e-5), x 0.1, + 0.5, clip [0, 1], x 255, truncated to uint8. A batch
    (N, H, W, 3) is deprocessed image by image, as ``render``'s tiles are (not by the batch's mean).
    An image holding NaN or infinity, which would come out black, or values too large for the
    float32 std (every pixel grey), is refused where its values are known (outside jit and vmap).
    """
    if not isinstance(x, jax.core.Tracer):
        a = np.asarray(x)
        if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)) or a.ndim < 2:
            # None, a number, a string, bools or complex: Python's, numpy's or JAX's errors
            raise JaxvizError(f"deprocess takes a raw image (H, W, 3) of real numbers, or a batch (N, H, W, 3), "
                              f"not {checks.show(x)}")
        if a.size and jnp.issubdtype(a.dtype, jnp.floating) and not np.isfinite(a).all():
            raise JaxvizError("deprocess takes a finite raw image; this one holds NaN or infinity "
                              "(it would come out black)")
        if a.ndim >= 3:
            checks.showable("the image given to deprocess", a)
        if not hasattr(x, "mean"):
            x = a
    if x.ndim == 4:
        return jax.vmap(deprocess)(x)
    x = x - x.mean()
    x = x / (x.std() + 1e-5)
    x = jnp.clip(x * 0.1 + 0.5, 0.0, 1.0) * 255.0
    return jnp.clip(x, 0, 255).astype(jnp.uint8)


deprocess_batch = jax.jit(jax.vmap(deprocess))


def rgb_to_uint8(images) -> np.ndarray:
    """RGB images in [0, 1] -> uint8, round(x * 255) (the quality recipe's images). NaN casts
    without numpy's RuntimeWarning: callers refuse non-finite results in their own one line."""
    with np.errstate(invalid="ignore"):
        return np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def pixels(what: str, image) -> np.ndarray:
    """``image`` as uint8: uint8 as it is, other integers within 0-255; floats (an RGB image in
    [0, 1] would come out black), bools and values outside 0-255 (they would wrap) are refused."""
    a = as_array(what, image)
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.integer):
        raise JaxvizError(f"{what} takes uint8 pixels (0-255), not {a.dtype}; convert raw images with "
                          "jaxviz.deprocess, RGB in [0, 1] with np.round(x * 255).astype(np.uint8)")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise JaxvizError(f"{what} takes pixels 0-255, not values from {a.min()} to {a.max()}")
    return a.astype(np.uint8)


def as_array(what: str, images) -> np.ndarray:
    """``images`` as a numpy array; one line where they are not one (tiles of different sizes)."""
    try:
        return np.asarray(images)
    except ValueError:
        raise JaxvizError(f"{what} takes images of one shape, stacked as an array; these differ in shape") from None


def make_grid(images, cols: int = 8, margin: int = 5) -> np.ndarray:
    """Tiles (N, h, w, 3) uint8 (or RGBA, (N, h, w, 4)) in reading order: filter i at row
    i // cols, column i % cols.

    Black margins of ``margin`` px sit between tiles (not around the edge), as in the
    seed: width = cols * w + (cols - 1) * margin.
    """
    images = as_array("make_grid", images)
    if images.ndim != 4 or 0 in images.shape[:3] or images.shape[-1] not in (3, 4):  # 0 px wide: margins only, black
        raise JaxvizError(f"make_grid takes tiles (N, h, w, 3) or (N, h, w, 4) with N, h and w 1 or more, not an "
                          f"array of shape {images.shape}")
    images = pixels("make_grid", images)
    n, h, w, c = images.shape
    cols, margin = checks.integer("cols", cols, 1), checks.integer("margin", margin, 0)
    shape = checks.grid_shape(n, h, w, cols, margin, c)
    checks.grid_memory(*shape)
    grid = np.zeros(shape, np.uint8)
    for i, tile in enumerate(images):
        r, col = divmod(i, cols)
        y, x = r * (h + margin), col * (w + margin)
        grid[y : y + h, x : x + w] = tile
    return grid


def nearest_existing(path: str | os.PathLike) -> str:
    """``path`` or its nearest ancestor that exists (a broken link counts: it is in the way too)."""
    p = os.path.abspath(path)
    while not os.path.lexists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def in_the_way(folder: str | os.PathLike) -> str:
    """Why ``folder`` cannot be made: "<p> is a file, not a folder" (or a broken link) for its nearest
    existing ancestor ``p``; "" where that is a folder. makedirs says only "File exists"."""
    p = nearest_existing(folder)
    if os.path.isdir(p):
        return ""
    return f"{p} is {'a symbolic link to nothing (or a loop)' if not os.path.exists(p) else 'a file'}, not a folder"


def _home(path: str) -> str:
    """``path`` with ``~`` expanded (``checks.home``); a name alone such as ``~draft.png``, of no user,
    is a name, as the shell leaves it."""
    return path if os.sep not in path and os.path.expanduser(path).startswith("~") else checks.home(path)


def make_folder(path: str | os.PathLike) -> str:
    """``os.makedirs(path, exist_ok=True)`` (``~`` expanded), or one JaxvizError (a file in the way, no permission)."""
    path = _home(os.fspath(path))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        why = f"a file is in the way: {blocker}" if (blocker := in_the_way(path)) else e.strerror
        fix = "free some space" if not blocker and e.errno in FULL else "move it"
        raise JaxvizError(f"cannot create folder {path} ({why}); {fix}, or choose another folder") from None
    return path


FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no room left: on the disk (or its inodes), or in the user's quota
TMP_EXTRA = len("." + "." + "XXXXXXXX" + ".tmp")  # what atomic_write's temporary file adds to a file's name


def atomic_write(path: str | os.PathLike, write, fix: str = "choose another folder") -> str:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it into place
    (where ``path`` is a symbolic link: beside and onto its target, so the link stays).

    ``~`` is expanded. An interruption leaves ``path`` as it was (absent or the old file) and
    removes the temporary file. A failed write is one JaxvizError ending in ``fix``, what the user can do.
    """
    try:
        path = os.fsdecode(path)  # bytes too; None or a number failed in os.fspath with Python's TypeError
    except TypeError:
        raise JaxvizError(f"the output file name must be a str or path such as out/grid.png, "
                          f"not {checks.show(path)}") from None
    if not path:
        raise JaxvizError("the output file name is empty; give a path such as out/grid.png")
    if "\0" in path:  # ValueError from deep inside tempfile
        raise JaxvizError(f"the output file name {path!r} holds a NUL character; give a path such as out/grid.png")
    path = _home(path)
    if os.path.isdir(path) or path.endswith(("/", os.sep)):  # its temporary file went into the parent folder
        raise JaxvizError(f"cannot write {path}: it names a folder; give a file name such as "
                          f"{os.path.join(path, 'grid.png')}")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):  # the rename replaced /dev/null itself
        raise JaxvizError(f"cannot write {path}: it is not a regular file (a device, pipe or socket); give a file "
                          "name such as out/grid.png")
    target = os.path.realpath(path)  # a symbolic link is written through, as open() does, not replaced
    folder = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=folder)
    except OSError as e:
        raise JaxvizError(_cannot_write(path, folder, e, fix)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, os.stat(target).st_mode & 0o7777 if os.path.exists(target) else 0o644)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise JaxvizError(write_error(path, e, fix)) from None
        raise
    return path


def write_error(path: str, e: OSError, fix: str) -> str:
    """The line for ``e`` failing a write to ``path``: a full disk or a quota reached says to free
    space (not "check permissions"); anything else names the error as it is."""
    if e.errno in FULL:
        return f"cannot write {path} ({e.strerror}); free some space, or {fix}"
    return f"cannot write {path} ({e}); check free space and permissions, or {fix}"


def _cannot_write(path: str, folder: str, e: OSError, fix: str) -> str:
    """The line for no file made in ``folder`` (``e``) for ``path``: a missing folder, a file in
    the way or a name too long are not a matter of "free space and permissions"."""
    if blocker := in_the_way(folder):
        return f"cannot write {path}: {blocker}; move it, or {fix}"
    if not os.path.isdir(folder):
        return f"cannot write {path}: the folder {folder} does not exist; create it, or {fix}"
    if e.errno == errno.ENAMETOOLONG:
        return f"cannot write {path}: its name is too long for the file system (the write goes through a " \
               f"temporary name {TMP_EXTRA} bytes longer); give a shorter one"
    if e.errno in FULL:  # no room for the temporary file's name (no inodes left)
        return write_error(path, e, fix)
    return f"cannot write to {folder} ({e.strerror}); check free space and permissions, or {fix}"


def save_png(path: str | os.PathLike, image) -> str:
    """Save a uint8 (H, W, 3) image (or grey (H, W), RGBA (H, W, 4)) as PNG, atomically; returns the
    path, ``~`` expanded. A name with another image format's suffix (x.jpg) is refused: it got PNG bytes."""
    from PIL import Image

    _png_name(path)
    image = as_array("save_png", image)
    if not (image.ndim == 2 or image.ndim == 3 and image.shape[-1] in (3, 4)) or not image.size:
        raise JaxvizError(f"save_png takes one image (H, W, 3), (H, W) or (H, W, 4), not an array of shape {image.shape}")
    img = Image.fromarray(pixels("save_png", image))
    return atomic_write(path, lambda f: img.save(f, format="PNG", optimize=False))


def _png_name(path) -> None:
    """Refuse a file name ending in the suffix of an image format other than PNG (x.jpg, x.webp):
    a viewer goes by the suffix. Names with no image suffix (grid, grid.v2) are written as given."""
    from PIL import Image

    try:
        path = os.fsdecode(path)
    except TypeError:
        return  # atomic_write names the problem
    base, suffix = os.path.splitext(path)
    fmt = Image.registered_extensions().get(suffix.lower(), "PNG")
    if fmt != "PNG":
        raise JaxvizError(f"save_png writes PNG, not {fmt}: give a name ending in .png ({base}.png), not {path}")


ANIMATION_FORMATS = ("gif", "webp")
MAX_ANIMATION_SIDE = {"gif": 65535, "webp": 16383}  # px: the formats' own limits (16 bits; WebP's 14)
MAX_FRAME_MS = 60_000  # a frame's duration; the last frame's, three times it, still fits a GIF's 16 bits of 10 ms
MIN_GIF_FRAME_MS = 20  # GIF counts in 10 ms (under 10 ms is stored as 0); browsers show 0 and 10 ms frames at 100 ms


def check_animation_size(height: int, width: int, formats=ANIMATION_FORMATS) -> None:
    """Refuse frames of ``height`` x ``width`` px larger than GIF or WebP can hold (a grid of 512
    filters at 256 px is 16,699 px tall): Pillow failed in a traceback after the render."""
    for fmt in formats:
        side = MAX_ANIMATION_SIDE[fmt]
        if max(height, width) > side:
            raise JaxvizError(f"an animation of {width}x{height} px is larger than {fmt.upper()} allows ({side} px "
                              "a side); animate fewer filters, or use a smaller --size, --margin or --cols")


def webp_supported() -> bool:
    """Whether this Pillow can write (animated) WebP."""
    from PIL import features

    return bool(features.check("webp"))


def save_animation(path: str | os.PathLike, frames, duration_ms: int = 80) -> str:
    """Save uint8 frames (F, H, W, 3) as an animated GIF or WebP (by the extension), atomically.

    WebP is written lossless (every frame exact); GIF quantizes each frame to 256 colours and
    counts durations in 10 ms (a GIF frame under 20 ms is refused: browsers show it at 100 ms).
    The last frame is held three times as long, so the loop pauses on the result.
    """
    from PIL import Image

    try:
        path = os.fsdecode(path)
    except TypeError:
        raise JaxvizError(f"the output file name must be a str or path such as out/grid.gif, "
                          f"not {checks.show(path)}") from None
    frames = as_array("save_animation", frames)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or 0 in frames.shape[1:3]:  # (H, W, 3): H grey frames
        raise JaxvizError(f"save_animation takes frames (F, H, W, 3) or (F, H, W, 4) with H and W 1 or more, not an "
                          f"array of shape {frames.shape}")
    frames = pixels("save_animation", frames)
    duration_ms = checks.integer("duration_ms", duration_ms, 1, MAX_FRAME_MS)
    fmt = os.path.splitext(path)[1][1:].lower()
    if fmt not in ANIMATION_FORMATS:
        raise JaxvizError(f"animations are written as .gif or .webp, not {path!r}")
    if fmt == "gif" and duration_ms < MIN_GIF_FRAME_MS:  # the animation played slower, not faster
        raise JaxvizError(f"a GIF frame of {duration_ms} ms is shown at 100 ms by browsers (GIF counts in 10 ms); "
                          f"give duration_ms {MIN_GIF_FRAME_MS} or more, or write a .webp")
    if fmt == "webp" and not webp_supported():
        raise JaxvizError("this Pillow cannot write WebP; write a .gif instead")
    if len(frames) == 0:
        raise JaxvizError("an animation needs at least one frame")
    check_animation_size(*frames.shape[1:3], formats=(fmt,))
    images = [Image.fromarray(f) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [3 * duration_ms]
    options = dict(save_all=True, append_images=images[1:], duration=durations, loop=0)
    if fmt == "webp":
        options.update(lossless=True, method=0)
    else:
        options.update(optimize=False, disposal=1)
    return atomic_write(path, lambda f: images[0].save(f, format=fmt.upper(), **options))


def frames_every(steps: int, frames: int = 40) -> int:
    """Steps between snapshots so that an animation of ``steps`` steps has about ``frames`` frames."""
    return max(1, round(steps / frames)) if steps > 0 else 1
