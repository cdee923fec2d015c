"""Parsing and validating the command line's values (shared by jaxviz.grid and jaxviz.atlas)."""
from __future__ import annotations

import argparse
import os
import tempfile

from jaxviz.errors import JaxvizError
from jaxviz.model import VGG16, VGGSpec, conv_layers, layer_info


def parse_layers(text: str, spec: VGGSpec = VGG16) -> list[str]:
    """``all`` or a comma-separated list of conv layer names."""
    if text.strip() == "all":
        return list(conv_layers(spec))
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise JaxvizError("--layers is empty; give conv layer names such as block1_conv1,block2_conv1 or 'all'")
    valid = conv_layers(spec)
    for n in names:
        if n not in valid:
            kind = "a pooling layer" if n.endswith("_pool") and n in [l for l in _all(spec)] else "not a conv layer"
            raise JaxvizError(f"unknown layer {n!r} ({kind}); valid layers: {', '.join(valid)} or 'all'")
    return names


def _all(spec):
    from jaxviz.model import layers

    return [l.name for l in layers(spec)]


def parse_filters(text: str) -> list[int] | None:
    """``all`` (None), a range ``0-63``, a list ``0,5,9``, or a mix ``0-3,9``."""
    text = text.strip()
    if text == "all":
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                a, b = int(a), int(b)
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise JaxvizError(
            f"malformed --filters {text!r}; use a range like 0-63, a list like 0,5,9, or 'all'"
        ) from None
    if any(f < 0 for f in out):
        raise JaxvizError(f"malformed --filters {text!r}: filter indices start at 0")
    return out


def filters_for(layer: str, filters: list[int] | None, spec: VGGSpec = VGG16) -> list[int]:
    """The filters to render for one layer, checked against its channel count."""
    n = layer_info(layer, spec).out_channels
    if filters is None:
        return list(range(n))
    bad = [f for f in filters if f >= n]
    if bad:
        raise JaxvizError(f"filter {bad[0]} is out of range for {layer}, which has {n} filters (0-{n - 1})")
    return filters


def check_out_dir(path: str) -> str:
    """Check that ``path`` can be created and written to, without creating it yet.

    The nearest existing ancestor must be a folder where a file can be created (probed
    with a temporary file that is removed at once), so a bad ``--out`` fails before any
    work and leaves nothing behind.
    """
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    fix = "choose a writable folder with --out"
    if not os.path.isdir(existing):
        raise JaxvizError(f"cannot write to output folder {path}: {existing} is a file, not a folder; {fix}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".jaxviz-probe-"):
            pass
    except OSError as e:
        raise JaxvizError(f"cannot write to output folder {path} ({e.strerror}); {fix}") from None
    return path


def make_out_dir(path: str) -> str:
    """Create the output folder (after ``check_out_dir`` passed)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise JaxvizError(f"cannot create output folder {path} ({e.strerror}); choose a writable folder with --out") from None
    return path


def positive_int(name: str, minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, not {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be {minimum} or more, not {v}")
        return v

    return parse


def number(name: str):
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, not {text!r}") from None

    return parse


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")
