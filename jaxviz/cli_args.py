"""Parsing and validating the command line's values (shared by jaxviz.grid and jaxviz.atlas)."""
from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
import unicodedata

from jaxviz.checks import home, show
from jaxviz.errors import JaxvizError, error_line
from jaxviz.image import TMP_EXTRA, in_the_way, nearest_existing
from jaxviz.model import VGG16, VGGSpec, conv_layers, layer_info


def parse_layers(text: str, spec: VGGSpec = VGG16) -> list[str]:
    """``all`` or a comma-separated list of conv layer names."""
    if text.strip() == "all":
        return list(conv_layers(spec))
    names = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not names:
        raise JaxvizError("--layers is empty; give conv layer names such as block1_conv1,block2_conv1 or 'all'")
    valid = conv_layers(spec)
    for n in names:
        if n not in valid:
            kind = "a pooling layer" if n.endswith("_pool") and n in [l for l in _all(spec)] else "not a conv layer"
            raise JaxvizError(f"unknown layer {n!r} ({kind}); valid layers: {', '.join(valid)} or 'all'")
    return names


def split_layers(text: str, known) -> list[str]:
    """A model's --layers, comma-separated; a run of pieces that together name one of the ``known``
    layers is that layer (a model of yours may key one "conv,3x3": it was the layers "conv" and "3x3")."""
    parts, out, i = text.split(","), [], 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i + 1, -1) if ",".join(parts[i:j]).strip() in known), i + 1)
        out.append(",".join(parts[i:j]).strip())
        i = j
    return list(dict.fromkeys(t for t in out if t))


def _all(spec):
    from jaxviz.model import layers

    return [l.name for l in layers(spec)]


def parse_filters(text: str) -> list[tuple[int, int]] | None:
    """``all`` (None), a range ``0-63``, a list ``0,5,9``, or a mix ``0-3,9``, as inclusive spans.

    Spans, not lists: ``0-9999999999`` must be checked against a layer's channel count
    (``filters_for``) before anything is expanded.
    """
    text = text.strip()
    if text == "all":
        return None
    out: list[tuple[int, int]] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                a, b = int(a), int(b)
                if b < a:
                    raise ValueError
                out.append((a, b))
            else:
                out.append((int(part), int(part)))
    except ValueError:
        raise JaxvizError(
            f"malformed --filters {text!r}; use a range like 0-63, a list like 0,5,9, or 'all'"
        ) from None
    if any(a < 0 for a, _ in out):
        raise JaxvizError(f"malformed --filters {text!r}: filter indices start at 0")
    return out


def filters_for(layer: str, filters: list[tuple[int, int]] | None, spec: VGGSpec = VGG16,
                channels: int | None = None) -> list[int]:
    """The filters to render for one layer (spans expanded), checked against its channel count
    (``channels``, or the VGG ``spec``'s)."""
    n = layer_info(layer, spec).out_channels if channels is None else channels
    if filters is None:
        return list(range(n))
    bad = [b for _, b in filters if b >= n]
    if bad:
        first = next(max(a, n) for a, b in filters if b >= n)
        raise JaxvizError(f"filter {first} is out of range for {layer}, which has {n} filters (0-{n - 1})")
    return list(dict.fromkeys(f for a, b in filters for f in range(a, b + 1)))  # 5,5 or 0-3,2: each filter once


def expand_spans(spans: list[tuple[int, int]], limit: int = 1 << 20) -> list[int]:
    """Spans from :func:`parse_filters` as a list, each number once in its first place (``0-3,2``
    is 0, 1, 2, 3, as ``--filters`` reads it), refusing more than ``limit`` entries before expanding."""
    count = sum(b - a + 1 for a, b in spans)
    if count > limit:
        raise JaxvizError(f"{count} channels asked for; at most {limit} at once")
    return list(dict.fromkeys(f for a, b in spans for f in range(a, b + 1)))


def check_out_dir(path: str) -> str:
    """Check that ``path`` can be created and written to, without creating it yet.

    The nearest existing ancestor must be a folder where a file can be created (probed
    with a temporary file that is removed at once), so a bad ``--out`` fails before any
    work and leaves nothing behind.
    """
    if not path:
        raise JaxvizError("--out is empty; give a folder such as jaxviz-out")
    fix = "choose a writable folder with --out"
    if blocker := in_the_way(path):
        raise JaxvizError(f"cannot write to output folder {path}: {blocker}; move or remove it, or {fix}")
    existing = nearest_existing(path)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".jaxviz-probe-"):
            pass
    except OSError as e:
        raise JaxvizError(f"cannot write to output folder {path} ({e.strerror}); {fix}") from None
    return path


NAME_MAX = 255  # bytes in one file or folder name on common file systems (ext4, XFS, APFS)


def longest_name(path: str) -> int:
    """The bytes of the longest name in ``path``'s parts ("a/b"), to hold against NAME_MAX."""
    return max(len(part.encode("utf-8", "surrogateescape")) for part in path.split("/"))


def check_out_paths(out: str, files=(), folders=()) -> None:
    """Refuse, before any work, a folder where the command writes the file ``out/NAME`` of
    ``files``, or a file where it makes the folder ``out/NAME`` of ``folders``: found only at
    writing, either would fail after the work, with part of the output written. So is a name
    longer than a file system takes (a layer's, after the rendering: "File name too long")."""
    for name, limit in [*((f, NAME_MAX - TMP_EXTRA) for f in files), *((d, NAME_MAX) for d in folders)]:
        if (longest := longest_name(name)) > limit:
            raise JaxvizError(f"cannot write {show(os.path.join(out, name))}: {longest} bytes in one name, over the "
                              f"{limit} a file system takes; rename the layer in the model, or leave it out")
    for name in files:
        if os.path.isdir(path := os.path.join(out, name)):
            raise JaxvizError(f"cannot write {path}: a folder is in the way; move it, or choose another --out")
        if os.path.exists(path) and not os.path.isfile(path):  # reading or writing a pipe there hung the command
            raise JaxvizError(f"cannot write {path}: it is not a regular file (a device, pipe or socket); move it, "
                              "or choose another --out")
    for name in folders:
        if os.path.lexists(path := os.path.join(out, name)) and not os.path.isdir(path):
            raise JaxvizError(f"cannot create folder {path}: a file is in the way; move it, or choose another --out")


def check_clashes(out: str, files, folders, owner, fix="rename one in the model, or leave it out of --layers") -> None:
    """Refuse output paths (``files`` and ``folders`` relative to ``out``) that meet: a file of one
    where another's folder goes ("a" and "a/index.html"), or, on a file system that ignores case
    (macOS', Windows'), one path spelt two ways ("Conv" and "conv"). Either failed after the work,
    or wrote one layer's files over the other's. ``owner(kind, path)`` names whose a path is."""
    key = (lambda p: unicodedata.normalize("NFC", p).casefold()) if folds_case(out) else (lambda p: p)
    seen: dict[str, tuple[str, str]] = {}
    for kind, paths in (("folder", folders), ("file", files)):
        for p in paths:
            first = seen.setdefault(key(p), (kind, p))
            if first == (kind, p):
                continue
            how = "is a file of one and a folder of the other" if first[0] != kind else \
                "is one path for both on this file system, which ignores case"
            raise JaxvizError(f"{owner(*first)} and {owner(kind, p)} clash: {os.path.join(out, first[1])} {how}; {fix}")


def folds_case(folder: str) -> bool:
    """Whether the file system of ``folder`` (or its nearest existing parent) takes names differing in case as one."""
    try:
        with tempfile.NamedTemporaryFile(dir=nearest_existing(folder), prefix=".jaxviz-case-") as f:
            return os.path.exists(os.path.join(os.path.dirname(f.name), os.path.basename(f.name).upper()))
    except OSError:
        return False


def check_layer_folder(name: str, reserved=()) -> str:
    """Refuse a layer ``name`` that as the folder ``OUT/name`` would not be a folder of its own
    inside OUT: absolute, with a ``..``, ``.`` or empty part, or one of the command's own
    ``reserved`` names (a model's layer ``..`` had the atlas write its images and pages into
    OUT's parent, and ``/tmp/x`` into /tmp/x), or a name too long for a folder."""
    parts = name.split("/")
    if os.path.isabs(name) or "\0" in name or any(p in ("", ".", "..") for p in parts) or parts[0] in reserved \
            or os.sep != "/" and os.sep in name:
        raise JaxvizError(f"layer {name!r} cannot be a folder of --out, where this command writes OUT/LAYER/; "
                          "rename the layer in the model, or leave it out of --layers")
    if (longest := longest_name(name)) > NAME_MAX:  # the folder failed after the rendering: "File name too long; move it"
        raise JaxvizError(f"layer {show(name)} is too long for a folder of --out ({longest} bytes in one "
                          f"name; at most {NAME_MAX}); rename the layer in the model, or leave it out of --layers")
    return name


def missing_folders(path: str) -> list[str]:
    """The folders of ``path`` not there yet, deepest first: ``path`` itself, then its parents up to
    the nearest one that exists. What ``make_out_dir`` creates, taken before it runs, so that a
    failure removes those again (``remove_if_empty``) and no folder that was there before."""
    missing, p, top = [], os.path.abspath(path), nearest_existing(path)
    while p != top:
        missing.append(p)
        p = os.path.dirname(p)
    return missing


def make_out_dir(path: str) -> str:
    """Create the output folder (after ``check_out_dir`` passed); where that fails part-way (a
    path too long for the system, say), the folders it made are removed again."""
    missing = missing_folders(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        remove_if_empty(missing)
        raise JaxvizError(f"cannot create output folder {path} ({e.strerror}); choose a writable folder with --out") from None
    return path


def model_name(text: str) -> str:
    """An argparse type: a --model name, not blank (blank would silently load VGG16 as a non-VGG model)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--model is empty; use vgg16, vgg19, keras:NAME or package.module:function")
    return text


def home_path(option: str):
    """An argparse type: a path with ``~`` and ``~user`` expanded, as for --weights (the shell leaves
    ``--out=~/viz`` as it is: it made a folder named "~" in the current one, and --images=~/photos
    was "does not exist")."""
    def parse(text: str) -> str:
        try:
            return home(text, option)
        except JaxvizError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def weights_file(text: str) -> str:
    """An argparse type: a --weights path, not blank (blank, an unset shell variable, say,
    would silently mean the default weights)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--weights is empty; give a weights file, or leave --weights out "
                                         "for the default weights")
    return text


def positive_int(name: str, minimum: int, maximum: int | None = None):
    """An argparse type: an integer in [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, not {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be {minimum} or more, not {v}")
        if maximum is not None and v > maximum:
            raise argparse.ArgumentTypeError(f"{name} must be {maximum} or less, not {v}")
        return v

    return parse


def number(name: str, positive: bool = False):
    """An argparse type: a finite number (NaN and infinity would give black images)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, not {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, not {text!r}")
        if positive and not v > 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, not {v}")
        return v

    return parse


def rate(name: str):
    """An argparse type: a step size or learning rate, more than 0 and finite in float32 (jaxviz.checks.rate)."""
    def parse(text: str) -> float:
        from jaxviz import checks

        try:
            return checks.rate(name, number(name)(text))
        except JaxvizError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def fit_default_size(model, objectives, recipe, say, verb: str = "rendering", unpadded: str = " --pad 0"):
    """No --size given, and a model that cannot take the default size (a flatten before a dense head
    takes its own input size only): ``recipe`` at the model's input size, without its transforms'
    padding where it takes that size only (``engine.fitted``), said in one line; else ``recipe``.
    A model that takes neither fails with the default size's error."""
    from jaxviz.engine import fitted

    for objective in objectives:
        fit = fitted(model, objective, recipe)
        if fit != recipe:
            pad = unpadded if fit.transforms != recipe.transforms else ""
            say(f"model {model.name} cannot take {recipe.size} px images: {verb} at its input size, "
                f"--size {fit.size}{pad}")
            return fit
    return recipe


def check_budget(layer: str, size: int, n: int, batch: int, spec: VGGSpec = VGG16, frames: int = 0) -> None:
    """Refuse up front a layer whose estimated memory (with ``frames`` animation frames an image)
    exceeds the limit (jaxviz.checks.run_budget)."""
    from jaxviz import checks

    checks.run_budget(layer, size, n, batch, spec, frames=frames)


def remove_if_empty(made: list[str]) -> None:
    """After a failure, remove the folders a run ``made`` (``missing_folders`` before it made them),
    each only when nothing else is in it, the deepest with its empty subfolders: "--out a/b/c" left
    an empty "a/b" behind. No folder that was there before is touched."""
    if not made:
        return
    for folder in [f for f, _, _ in sorted(os.walk(made[0]), key=lambda t: -len(t[0]))] + made[1:]:
        try:
            os.rmdir(folder)
        except OSError:
            pass


# what jaxviz.image.atomic_write leaves when killed: .NAME.XXXXXXXX.tmp beside NAME
_OUR_TEMPORARY = re.compile(r"^\..+\.(png|npz|json|html|gif|webp)\.[A-Za-z0-9_]{8}\.tmp$")


# A temporary file written to less than this long ago may be another run's write in progress
# (two grids into one --out): a write's file is modified at least this often while it lasts.
WRITING_S = 30


def remove_stale_temporaries(out: str, folders=(), before: float | None = None) -> int:
    """Remove our temporary files (``.NAME.XXXXXXXX.tmp``, left by a killed writer) in ``out``
    and ``folders`` last modified before ``before``; returns how many."""
    n = 0
    for folder in [out, *folders]:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if _OUR_TEMPORARY.match(e.name) and e.is_file(follow_symlinks=False) and (
                        before is None or e.stat(follow_symlinks=False).st_mtime < before):
                    os.unlink(e.path)
                    n += 1
            except OSError:
                pass
    return n


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, error_line(self.prog, message) + "\n")
