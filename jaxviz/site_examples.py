"""Dataset examples in the atlas: patch images and HTML for filter and layer pages.

``load(path)`` reads the summary of ``jaxviz.examples`` (its folder, or examples.npz /
examples.json). ``SiteExamples.write(out)`` writes every patch as
``OUT/LAYER/examples/fNNN_J.png`` (``remove_stale`` removes those a rebuild no longer
shows); ``filter_html`` gives a filter page's section (the
top patches with their activation, each linking to the whole image, by a relative path
to the original file: keep the image folder where it was) and ``strip_html`` a small
strip for the filter's cell on the layer page. ``jaxviz.site.build_site(...,
examples=...)`` calls the two.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import NamedTuple
from urllib.parse import quote

import numpy as np

from jaxviz import checks
from jaxviz.errors import JaxvizError
from jaxviz.site import _esc, url  # one HTML escape and one URL form for the whole site

STRIP = 3  # patches per filter on the layer page


def patch_name(f: int, j: int) -> str:
    return f"examples/f{f:03d}_{j}.png"


PATCH_FILE = re.compile(r"^f\d{3,}_\d+\.png$")  # the file names patch_name gives, and no others


def remove_stale(out: str, layers, keep) -> list[str]:
    """Remove the patch PNGs in ``OUT/LAYER/examples/`` of ``layers`` that are not in ``keep``
    (the paths this build wrote), and each such folder once it is empty; returns what went.

    An atlas rebuilt with other --examples (fewer per filter, another summary, none) would
    otherwise keep the old patches beside the new pages. Only files named as ``patch_name``
    names them, in folders inside ``out``, are touched: nothing of the user's, nothing outside."""
    root = os.path.realpath(out)
    keep = {os.path.realpath(p) for p in keep}
    removed = []
    for layer in layers:
        folder = os.path.join(out, layer, "examples")
        real = os.path.realpath(folder)
        if not real.startswith(root + os.sep) or not os.path.isdir(folder):
            continue
        for e in os.scandir(folder):
            if PATCH_FILE.match(e.name) and e.is_file(follow_symlinks=False) and os.path.realpath(e.path) not in keep:
                os.unlink(e.path)
                removed.append(e.path)
        try:
            os.rmdir(folder)  # only when empty
        except OSError:
            pass
    return removed


class SiteExamples(NamedTuple):
    """A loaded summary: the json metadata and, per layer, the (C, k, T, T, 3) thumbnails."""

    meta: dict
    thumbs: dict

    @property
    def layers(self) -> list:
        return list(self.meta["layers"])

    def entries(self, layer: str, f: int) -> list:
        """Filter ``f``'s examples, best first: dicts with image, activation, y, x, box."""
        ch = self.meta["layers"].get(layer, {}).get("channels", [])
        return ch[f] if 0 <= f < len(ch) else []

    def shown(self, layer: str, f: int) -> list:
        """(rank, entry) of filter ``f``'s examples where the filter fired: an activation of exactly
        0 (a relu's) is an image it did not respond to, at an arbitrary place, not an example."""
        return [(j, e) for j, e in enumerate(self.entries(layer, f)) if e["activation"] != 0]

    def write(self, out: str, filters: dict | None = None) -> list:
        """Write the patch PNGs of ``filters`` ({layer: [filter, ...]}, default all) under ``out``."""
        from jaxviz.cli_args import check_layer_folder
        from jaxviz.image import make_folder, save_png

        paths = []
        filters = {l: range(t.shape[0]) for l, t in self.thumbs.items()} if filters is None else filters  # {}: none
        for l, fs in filters.items():
            if l not in self.thumbs:
                continue
            check_layer_folder(l)  # a summary's layer "../x" wrote its patches outside ``out``
            make_folder(os.path.join(out, l, "examples"))
            t = self.thumbs[l]
            for f in (f for f in fs if f < t.shape[0]):
                for j, _ in self.shown(l, f):
                    paths.append(save_png(os.path.join(out, l, patch_name(f, j)), t[f, j]))
        return paths

    def _link(self, image: str, page_dir: str) -> str:
        """The whole image's URL from the page's folder (HTML-escaped)."""
        target = os.path.join(self.meta["folder"], image)
        try:
            return url(os.path.relpath(target, os.path.abspath(page_dir)).replace(os.sep, "/"))
        except ValueError:  # another drive (Windows)
            return _esc("file:///" + quote(os.path.abspath(target).replace(os.sep, "/").lstrip("/"), safe="/:"))

    def filter_html(self, layer: str, f: int, page_dir: str) -> str:
        """A filter page's "dataset examples" section ('' if the summary has none for it)."""
        if not self.entries(layer, f):
            return ""
        ex, s = self.shown(layer, f), self.meta["settings"]
        if not ex:
            return (f"<h2>Dataset examples</h2><p class=\"settings\">None: this filter did not fire on any of the "
                    f"{self.meta['images_used']} images of {_esc(s['folder'])} used (its highest activation on them "
                    "is 0).</p>")
        cells = "".join(
            f"<figure><a href=\"{self._link(e['image'], page_dir)}\" title=\"{_esc(e['image'])}\">"
            f"<img class=\"px\" src=\"{url(patch_name(f, j))}\" alt=\"example {j + 1}: {_esc(e['image'])}\"></a>"
            f"<figcaption><span>{j + 1}</span><span class=\"example-activation\">{e['activation']:.4g}</span>"
            f"</figcaption></figure>"
            for j, e in ex)
        return (f"<h2>Dataset examples</h2><p class=\"settings\">The {len(ex)} image{'s' if len(ex) != 1 else ''} of "
                f"{_esc(s['folder'])} "
                f"({self.meta['images_used']} used) whose maximum activation of this filter is highest, "
                f"cropped to the patch the maximum sees (grey: outside the image), at {s['size']} px; "
                "captions: rank and activation; click for the whole image.</p>"
                f"<div class=\"grid examples\">{cells}</div>")

    def strip_html(self, layer: str, f: int) -> str:
        """The first few patches of filter ``f``, for its cell on the layer page."""
        imgs = "".join(f"<img class=\"px\" src=\"{url(patch_name(f, j))}\" alt=\"\" "
                       f"title=\"{_esc(e['image'])}: {e['activation']:.4g}\">" for j, e in self.shown(layer, f)[:STRIP])
        return f"<div class=\"example-strip\">{imgs}</div>" if imgs else ""


CSS = (".example-strip { display: flex; gap: 2px; margin-top: 2px; } "
       ".example-strip img { width: calc((100% - 4px) / 3); aspect-ratio: 1; } "
       ".examples { max-width: 900px; }")


def _check(meta: dict, thumbs: dict) -> None:
    """Raise ValueError unless ``meta`` and ``thumbs`` have the form ``examples.write_summary``
    gives them: a summary edited by hand or by another tool would otherwise fail inside a
    page's HTML, after the atlas's work."""
    s = meta.get("settings")
    ok = isinstance(meta.get("folder"), str) and isinstance(meta.get("images_used"), int) and isinstance(s, dict) \
        and isinstance(s.get("folder"), str) and isinstance(s.get("size"), int) and isinstance(meta["layers"], dict)
    for l, info in meta["layers"].items() if ok else ():
        channels, t = info.get("channels") if isinstance(info, dict) else None, thumbs[l]
        ok = isinstance(channels, list) and t.dtype == np.uint8 and t.ndim == 5 and t.shape[0] == len(channels) \
            and min(t.shape[2:4]) > 0 and t.shape[4] in (3, 4) and all(_entries(c, t.shape[1]) for c in channels)
        if not ok:
            break
    if not ok:
        raise ValueError("not the form python -m jaxviz.examples writes")


def _entries(c, k: int) -> bool:
    """Whether ``c`` is one filter's list of at most ``k`` examples, each with its image and activation."""
    return isinstance(c, list) and len(c) <= k and all(
        isinstance(e, dict) and isinstance(e.get("image"), str) and isinstance(e.get("activation"), (int, float))
        and abs(e["activation"]) <= sys.float_info.max for e in c)  # NaN, inf or 10**400: not what it writes


def load(path: str) -> SiteExamples:
    """The summary at ``path``: a folder holding examples.npz and examples.json, or either file."""
    from jaxviz.examples import NPZ_ERRORS, SUMMARY_JSON, SUMMARY_NPZ

    try:
        path = os.fsdecode(path)
    except TypeError:
        raise JaxvizError(f"the dataset examples summary must be a path, not {checks.show(path)}; give the --out "
                          "folder of python -m jaxviz.examples (or its examples.npz)") from None
    if not path:  # the current folder's summary was read
        raise JaxvizError("the dataset examples path is empty; give the --out folder of python -m jaxviz.examples "
                          "(or its examples.npz)")
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    npz, js = os.path.join(folder, SUMMARY_NPZ), os.path.join(folder, SUMMARY_JSON)
    fix = "give the --out folder of python -m jaxviz.examples (or its examples.npz)"
    if not (os.path.isfile(npz) and os.path.isfile(js)):
        raise JaxvizError(f"no dataset examples summary at {path} (examples.npz and examples.json); {fix}")
    try:
        with open(js, encoding="utf-8") as fh:
            meta = json.load(fh)
        with np.load(npz, allow_pickle=False) as z:
            thumbs = {l: z[f"{l}/thumbs"] for l in meta["layers"]}
        _check(meta, thumbs)
    except (*NPZ_ERRORS, TypeError, RecursionError) as e:
        raise JaxvizError(f"the dataset examples summary at {folder} is unreadable or malformed ({type(e).__name__}); "
                          f"{fix}") from None
    return SiteExamples(meta, thumbs)
