"""Where the VGG16 weights come from.

``resolve_weights`` looks in this order and returns the first file it finds:

1. an explicit path (the ``path`` argument, the command line's ``--weights``);
2. the ``JAXVIZ_WEIGHTS`` environment variable;
3. the file embedded in the repository, ``weights/vgg16_imagenet_notop.h5``;
4. the Keras cache, ``~/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``;
5. the jaxviz download cache (``$JAXVIZ_CACHE``, else ``$XDG_CACHE_HOME/jaxviz``, else
   ``~/.cache/jaxviz``), downloading the official Keras file there first when it is
   not there yet and downloads are allowed.

An explicit path or ``JAXVIZ_WEIGHTS`` naming a file that does not exist is an error;
the search does not fall through to the later places. When nothing is found, one
JaxvizError lists every place looked at and how to fix it.

A download goes to a temporary name in the cache folder and is moved to its final
name only after its md5 matches, so the final name never holds a partial or wrong
file. Everything here is a pure function of its arguments (``env`` defaults to
``os.environ``); there is no module state.
"""
from __future__ import annotations

import glob
import hashlib
import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, NamedTuple

from jaxviz.errors import JaxvizError

ENV_WEIGHTS = "JAXVIZ_WEIGHTS"
ENV_CACHE = "JAXVIZ_CACHE"
EMBEDDED_NAME = "vgg16_imagenet_notop.h5"
_CHUNK = 1 << 20
STALE_S = 600  # a download's temporary file unwritten this long was left by a stopped process


class WeightSource(NamedTuple):
    """A downloadable weights file: its URL, md5 and file name in the caches."""

    url: str = (
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    md5: str = "6d6bbae143d832006294945121d1f1fc"
    filename: str = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


VGG16_NOTOP = WeightSource()


def embedded_weights_path() -> Path:
    """The weights file kept in the repository, next to the package (it is not in the wheel)."""
    return Path(__file__).resolve().parent.parent / "weights" / EMBEDDED_NAME


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path(os.path.expanduser("~"))


def _expand(p: str | os.PathLike, env: Mapping[str, str]) -> Path:
    s = os.fspath(p)
    if s == "~" or s.startswith("~/"):
        return _home(env) / s[2:]
    return Path(os.path.expanduser(s))  # ~alice/c: alice's home (it was a folder "~alice" here)


def keras_cache_path(env: Mapping[str, str] | None = None, source: WeightSource = VGG16_NOTOP) -> Path:
    """Where Keras keeps the file after its own download: ``~/.keras/models/<filename>``."""
    return _home(_env(env)) / ".keras" / "models" / source.filename


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$JAXVIZ_CACHE``, else ``$XDG_CACHE_HOME/jaxviz``, else ``~/.cache/jaxviz`` (empty values are unset)."""
    env = _env(env)
    if env.get(ENV_CACHE):
        return _expand(env[ENV_CACHE], env)
    xdg = env.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative values
        return Path(xdg) / "jaxviz"
    return _home(env) / ".cache" / "jaxviz"


def md5sum(path: str | os.PathLike) -> str:
    """The md5 hex digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _why_unusable(p: Path) -> str:
    """'' if ``p`` is a usable file, else a short reason."""
    try:
        if not p.exists():  # raises where the name itself is bad (too long, say)
            return "missing"
        if not p.is_file():
            return "not a file"
        if not os.access(p, os.R_OK):
            return "unreadable (permission denied)"
        if p.stat().st_size < 200:
            with open(p, "rb") as f:
                if f.read(40).startswith(b"version https://git-lfs"):
                    return "a Git LFS pointer, run `git lfs pull`"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return ""


def _one_line(e: BaseException | str) -> str:
    s = str(e) or type(e).__name__
    return " ".join(s.split())


class _Failed(Exception):
    """Internal: a download failed; ``str()`` is the reason. Never escapes this module."""


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str,
    *,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest`` and check its md5; return ``dest``.

    The bytes go to a temporary file in ``dest``'s folder, which is moved to ``dest``
    (``os.replace``) only once the md5 matches. A wrong md5, an HTTP error, a
    connection error or timeout, or fewer bytes than the server's Content-Length
    remove the temporary file and raise JaxvizError; ``dest`` is then untouched.
    The progress bar (tqdm, on stderr) shows only when ``progress`` and stderr is a
    tty; with ``progress`` and no tty, one line on stderr says what is downloaded.
    """
    try:
        return _download(url, Path(dest), md5, progress=progress, timeout=timeout)
    except _Failed as e:
        raise JaxvizError(
            f"download of {url} failed: {e}; nothing was kept at {dest}; try again, or fetch the "
            f"file yourself and pass it with --weights"
        ) from None


def _remove_stale_parts(dest: Path) -> None:
    """Remove the temporary files of earlier downloads to ``dest`` that a stopped process left (a
    command's Ctrl-C ends in os._exit, which skips the clean-up): those unwritten for STALE_S
    seconds; a download still running writes at least every ``timeout`` seconds."""
    now = time.time()
    for p in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
        try:
            if now - p.stat().st_mtime > STALE_S:
                p.unlink()
        except OSError:
            pass


def _download(url: str, dest: Path, md5: str, *, progress: bool, timeout: float) -> Path:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(dest)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise _Failed(
            f"cannot write to the cache folder {dest.parent} ({_one_line(e)}; set {ENV_CACHE} "
            f"to a writable folder)"
        ) from None
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            got, expected_len, digest = _fetch(url, out, progress=progress, timeout=timeout)
        if expected_len is not None and got < expected_len:
            raise _Failed(f"transfer stopped after {got} of {expected_len} bytes")
        if digest != md5.lower():
            raise _Failed(f"md5 of the downloaded file is {digest}, expected {md5.lower()}")
        os.replace(tmp, dest)
        done = True
    except OSError as e:
        raise _Failed(f"cannot save to {dest} ({_one_line(e)})") from None
    finally:
        if not done:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
    return dest


def _fetch(url: str, out, *, progress: bool, timeout: float) -> tuple[int, int | None, str]:
    """Stream ``url`` into the open file ``out``: (bytes read, Content-Length or None, md5)."""
    from tqdm import tqdm

    h = hashlib.md5()
    got = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "jaxviz"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.strip().isdigit() else None
            show = bool(progress) and _isatty(sys.stderr)
            if progress and not show:
                print(f"jaxviz: downloading {url}", file=sys.stderr, flush=True)
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="VGG16 weights",
                file=sys.stderr,
                disable=not show,
                leave=False,
            ) as bar:
                while True:
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    got += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        raise _Failed(f"HTTP {e.code} {_one_line(e.reason or '')}".rstrip()) from None
    except http.client.IncompleteRead as e:
        raise _Failed(f"connection closed after {got + len(e.partial)} bytes") from None
    except urllib.error.URLError as e:
        raise _Failed(_one_line(e.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _Failed(f"{_one_line(e)} after {got} bytes") from None
    return got, expected, h.hexdigest()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _shown(p) -> str:
    """A path for a message: quoted where blank space at its ends would not show (JAXVIZ_WEIGHTS=" ")."""
    text = os.fspath(p)
    return repr(text) if text != text.strip() else text


def resolve_weights(
    path: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    source: WeightSource = VGG16_NOTOP,
    progress: bool = True,
    timeout: float = 60,
    embedded: str | os.PathLike | None = None,
    origin: str = "--weights",
) -> Path:
    """The weights file to use, found in the documented order (see the module docstring).

    ``env`` defaults to ``os.environ`` (it supplies ``JAXVIZ_WEIGHTS``, ``JAXVIZ_CACHE``,
    ``XDG_CACHE_HOME`` and ``HOME``); ``cache_dir`` overrides the download cache
    folder; ``embedded`` overrides the embedded file's path (for tests);
    ``download=False`` never touches the network; ``origin`` names where ``path`` came
    from in messages (``--weights`` on the command line). Raises JaxvizError.
    """
    env = _env(env)
    if path is not None and not isinstance(path, (str, os.PathLike)):  # 5: os.fspath's TypeError
        raise JaxvizError(f"the weights given with {origin} must be the path of a Keras VGG16 .h5 file, not "
                          f"{type(path).__name__}; or leave {origin} out to use the default weights")
    if path is not None and os.fspath(path) != "":
        p = _expand(path, env)
        why = _why_unusable(p)
        if why:
            raise JaxvizError(
                f"weights file {_shown(p)} given with {origin} is {why}; pass the path of an existing "
                f"Keras VGG16 .h5 file, or leave {origin} out to use the default weights"
            )
        return p
    if env.get(ENV_WEIGHTS):
        p = _expand(env[ENV_WEIGHTS], env)
        why = _why_unusable(p)
        if why:
            raise JaxvizError(
                f"weights file {_shown(p)} named by {ENV_WEIGHTS} is {why}; set {ENV_WEIGHTS} to an existing "
                f"Keras VGG16 .h5 file, or unset it to use the default weights"
            )
        return p

    looked = ["--weights (not given)", f"${ENV_WEIGHTS} (not set)"]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(env)
    keras = keras_cache_path(env, source)
    places = [
        ("embedded file", Path(embedded) if embedded is not None else embedded_weights_path()),
        ("Keras cache", keras),
        ("jaxviz cache", cache / source.filename),
    ]
    for label, p in places:
        why = _why_unusable(p)
        if not why:
            return p
        looked.append(f"{label} {p} ({why})")

    if download:
        try:
            return _download(source.url, cache / source.filename, source.md5,
                             progress=progress, timeout=timeout)
        except _Failed as e:
            looked.append(f"download of {source.url} (failed: {e})")
    else:
        looked.append(f"download of {source.url} (turned off)")
    raise JaxvizError(
        "no VGG16 weights found; looked at: " + "; ".join(looked)
        + f". Fix: pass --weights FILE, set {ENV_WEIGHTS}=FILE, or put {source.filename} "
        f"(md5 {source.md5}, from {source.url}) at {keras}"
    )
