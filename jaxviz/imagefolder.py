"""A folder of images as a stream of equal-size RGB batches in [0, 1].

The folder is searched **recursively** (sorted, hidden files and folders skipped, linked
folders followed once each, unreadable subfolders named in a notice) for
``.jpg``, ``.jpeg`` and ``.png`` files (any case), so a dataset laid out in class
subfolders works as it is; the sorted order makes image indices stable, which the
resumable pass of ``jaxviz.examples`` relies on.

Every image is read robustly: EXIF orientation applied, grayscale/palette/CMYK
converted to RGB, transparency composited on white, 16-bit PNGs scaled to 8 bits.
Files that cannot be used (not an image, a pipe or device, unreadable, truncated, smaller than
``min_side`` on their shorter side, larger than Pillow decodes) are skipped and counted;
``Skipped`` keeps the count and the first few names per reason. Usable images are resized
so that their shorter side is ``size`` and centre-cropped to ``size`` x ``size``.

Large images: Pillow refuses images over twice ``PIL.Image.MAX_IMAGE_PIXELS`` (about 179
megapixels) as possible decompression bombs; they are skipped as "too large". Between once
and twice that (a 100-megapixel photo) Pillow decodes them with a DecompressionBombWarning;
they are used (decoded once, at most ``workers`` at a time, then resized), and
``python -m jaxviz.examples`` silences that warning rather than print it raw. A JPEG over
``LARGE_PIXELS`` (Pillow's default limit) is decoded at 1/2, 1/4 or 1/8 scale (``draft_size``:
0.2 GB and 1.5 s for a 10000 x 9000 JPEG, was 1.8 GB and 7 s); a PNG has no reduced decode, so
one that size still takes about 1 GB (its pixels at 4 bytes each, plus one copy). Images up to
``LARGE_PIXELS`` are decoded whole, their pixels the same as ever.
"""
from __future__ import annotations

import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from jaxviz import checks
from jaxviz.errors import JaxvizError, notice, printable

EXTENSIONS = (".jpg", ".jpeg", ".png")
SHOW = 5  # names kept per skip reason
REDUCING_GAP = 3.0  # resize_crop's Pillow reducing_gap; a drafted JPEG keeps this many times the size
LARGE_PIXELS = 89_478_485  # Pillow's default MAX_IMAGE_PIXELS: JPEGs over it decode at reduced scale
MAX_ASPECT = 16  # longer side / shorter side past which only the crop's region is resized (resize_crop)


def list_images(folder: str | os.PathLike, *, warn: bool = True) -> list[str]:
    """The image files under ``folder``, recursively, as sorted paths relative to it. Linked folders
    are followed, each folder once (a link back up the tree is no loop); a subfolder that cannot be
    read is left out, said in a notice when ``warn``."""
    try:
        folder = os.fsdecode(folder)  # bytes too (os.walk gave bytes names); None failed with Python's TypeError
    except TypeError:
        raise JaxvizError(f"the image folder must be a path, not {checks.show(folder)}; give a folder of JPEG/PNG "
                          "images") from None
    if not folder:
        raise JaxvizError("--images is empty; give a folder of JPEG/PNG images")
    if not os.path.isdir(folder):
        what = "does not exist" if not os.path.exists(folder) else "is not a folder"
        raise JaxvizError(f"image folder {folder} {what}; give a folder of JPEG/PNG images with --images")
    found, unreadable, seen = [], [], set()

    def first_visit(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino)
        return key not in seen and not seen.add(key)

    first_visit(folder)
    # a linked folder was skipped silently (its images missing); a folder it can't read was "no images"
    for root, dirs, files in os.walk(folder, onerror=unreadable.append, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and first_visit(os.path.join(root, d)))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    found.sort(key=lambda p: p.split(os.sep))
    if unreadable and unreadable[0].filename == folder:
        raise JaxvizError(f"cannot read image folder {folder} ({unreadable[0].strerror}); give a folder of JPEG/PNG "
                          "images you can read with --images")
    unread = ""
    if unreadable:
        shown = ", ".join(printable(os.path.relpath(e.filename, folder)) for e in unreadable[:SHOW])
        more = ", ..." if len(unreadable) > SHOW else ""
        unread = (f"{len(unreadable)} folder{'s' if len(unreadable) != 1 else ''} under {folder} cannot be read "
                  f"({unreadable[0].strerror}): {shown}{more}")
        if found and warn:
            notice(f"jaxviz: {unread}; their images are left out")
    if not found:
        raise JaxvizError(f"no JPEG or PNG images in {folder} (searched recursively for "
                          f"{', '.join(EXTENSIONS)}{'; ' + unread if unread else ''}); give a folder of images "
                          "with --images")
    return found


class Unusable(Exception):
    """An image file that is skipped; the message is the reason (one of ``REASONS``)."""


REASONS = ("not an image", "unreadable or truncated", "too small", "too large")


def to_rgb(img) -> np.ndarray:
    """A PIL image of any mode -> uint8 (H, W, 3) RGB.

    Alpha is composited on white; 16-bit and 32-bit integer modes are scaled from
    their full range (Pillow's own ``convert`` would clip them at 255).
    """
    from PIL import Image

    mode = img.mode
    if mode.startswith("I"):  # 16-bit PNGs open as "I;16*" or "I" (8-bit gray opens as "L")
        g = np.asarray(img, np.float64) / 65535.0
    elif mode == "F":
        g = np.nan_to_num(np.asarray(img, np.float64), nan=0.0)  # NaN: NumPy's "invalid value" warning, printed raw
        g = g / 255.0 if g.max(initial=0) > 1 else g
    else:
        g = None
    if g is not None:
        g = np.clip(np.round(g * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info) or \
            (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img if mode == "RGB" else img.convert("RGB"))  # RGB's convert: a copy of it all


def draft_size(width: int, height: int, size: int | None) -> tuple[int, int] | None:
    """The size to ask a JPEG decoder for (``Image.draft``) so that a large image decodes at 1/2, 1/4 or
    1/8 scale, its shorter side still ``REDUCING_GAP`` x ``size`` (what ``resize_crop``'s own reduction
    keeps before its bicubic step); None for an image of at most ``LARGE_PIXELS``, decoded whole as
    always (a 100-megapixel JPEG decoded whole took about 1.8 GB)."""
    if size is None or width * height <= LARGE_PIXELS:
        return None
    k = REDUCING_GAP * size / min(width, height)
    return max(1, math.ceil(width * k)), max(1, math.ceil(height * k))


def load_rgb(path: str, min_side: int = 1, size: int | None = None) -> np.ndarray:
    """The image at ``path`` as uint8 (H, W, 3) RGB, upright; raises Unusable. With ``size`` (the
    side ``resize_crop`` will take), a JPEG over ``LARGE_PIXELS`` is decoded at reduced scale
    (``draft_size``); ``min_side`` is checked against the file's own size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a broken link, say
        raise Unusable(REASONS[1]) from None
    if not regular:  # a named pipe or a device behind the name: reading it could wait for good
        raise Unusable(REASONS[0])
    try:
        with Image.open(path) as img:
            side = min(img.size)
            want = draft_size(*img.size, size) if img.format == "JPEG" else None
            if want:
                img.draft(None, want)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # not a copy of the whole decoded image
            rgb = to_rgb(img)
    except UnidentifiedImageError:
        raise Unusable(REASONS[0]) from None
    except Image.DecompressionBombError:  # over twice Pillow's MAX_IMAGE_PIXELS: not decoded at all
        raise Unusable(REASONS[3]) from None
    except Exception:  # OSError, ValueError, ...; also a plugin's own (a DDS of an unknown pixel format:
        raise Unusable(REASONS[1]) from None  # NotImplementedError): one bad file must not end the pass
    if side < min_side:
        raise Unusable(REASONS[2])
    return rgb


def resize_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3): shorter side resized to ``size``, centre crop."""
    from PIL import Image

    size = checks.integer("size", size, 1, checks.MAX_SIZE)
    h, w = rgb.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    img = Image.fromarray(rgb)
    top, left = (nh - size) // 2, (nw - size) // 2
    if nh * nw > MAX_ASPECT * size * size:  # a thin image (1 x 100000 px at 224) resized whole was gigabytes
        box = (left / s, top / s, (left + size) / s, (top + size) / s)  # the crop, in the image's own pixels
        return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP))
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    return np.asarray(img.crop((left, top, left + size, top + size)))


class Skipped(NamedTuple):
    """Skipped files: how many per reason and the first few names (relative paths)."""

    counts: dict
    names: dict

    @staticmethod
    def empty() -> "Skipped":
        return Skipped({r: 0 for r in REASONS}, {r: [] for r in REASONS})

    def copy(self) -> "Skipped":
        return Skipped(dict(self.counts), {r: list(v) for r, v in self.names.items()})

    def add(self, reason: str, name: str) -> None:
        """Count one file (a state saved before a reason existed has no entry for it yet)."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        names = self.names.setdefault(reason, [])
        if len(names) < SHOW:
            names.append(name)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        """One line, e.g. 'skipped 3 files: 2 not an image (a.png, b.jpg), 1 too small (c.png)'; a name's
        newline or terminal escape is shown escaped (it broke the line, or drove the terminal)."""
        if not self.total:
            return "skipped no files"
        parts = []
        for r in REASONS:
            if self.counts.get(r):
                more = ", ..." if self.counts[r] > len(self.names[r]) else ""
                parts.append(f"{self.counts[r]} {r} ({', '.join(map(printable, self.names[r]))}{more})")
        return f"skipped {self.total} file{'s' if self.total != 1 else ''}: " + "; ".join(parts)


class Batch(NamedTuple):
    """Up to ``batch`` usable images: their indices in the file list, and the pixels."""

    indices: np.ndarray  # (n,) int64, positions in ``list_images``
    images: np.ndarray  # (n, size, size, 3) float32 in [0, 1]
    end: int  # the position in the file list after this batch's last file


def load(folder: str, name: str, size: int, min_side: int = 1) -> np.ndarray:
    """One file, resized and cropped: uint8 (size, size, 3); raises Unusable."""
    return resize_crop(load_rgb(os.path.join(folder, name), min_side, size), size)


def stream(folder: str, names: Sequence[str], size: int, batch: int, *, start: int = 0, min_side: int = 1,
           skipped: Skipped | None = None, workers: int = 2) -> Iterator[Batch]:
    """Batches of the usable images among ``names[start:]``, in order.

    Files are decoded by ``workers`` threads (Pillow releases the GIL) while the caller
    computes on the previous batch; skipped files are recorded in ``skipped``.
    """
    size, batch = checks.integer("size", size, 1, checks.MAX_SIZE), checks.integer("batch", batch, 1)
    start, min_side = checks.integer("start", start, 0), checks.integer("min_side", min_side, 1, checks.MAX_SIZE)
    skipped = Skipped.empty() if skipped is None else skipped

    def one(i):
        try:
            return load(folder, names[i], size, min_side)
        except Unusable as e:
            return e

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pos = start
        window = batch * 2  # files in flight: bounded memory
        pending = {i: pool.submit(one, i) for i in range(pos, min(len(names), pos + window))}
        idx, imgs = [], []
        while pos < len(names):
            out = pending.pop(pos).result()
            nxt = pos + window
            if nxt < len(names):
                pending[nxt] = pool.submit(one, nxt)
            if isinstance(out, Unusable):
                skipped.add(str(out), names[pos])
            else:
                idx.append(pos)
                imgs.append(out)
            pos += 1
            if len(imgs) == batch or (pos == len(names) and imgs):
                yield Batch(np.asarray(idx, np.int64), np.stack(imgs).astype(np.float32) / 255.0, pos)
                idx, imgs = [], []
