"""Where the weights come from: the search order, errors, and the checked download.

Downloads go to a small HTTP server started here on 127.0.0.1; nothing leaves the machine.
"""
from __future__ import annotations

import hashlib
import os
import http.server
import socket
import threading
from pathlib import Path

import pytest

from jaxviz import weights as W
from jaxviz.errors import JaxvizError

BODY = b"not really an h5 file, just some bytes for the download tests\n" * 300
BODY_MD5 = hashlib.md5(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/good.h5":
            self._send(BODY, len(BODY))
        elif self.path == "/short.h5":  # promises more than it sends, then hangs up
            self._send(BODY[:1000], len(BODY))
        else:
            self.send_error(404, "Not Found")

    def _send(self, body, length):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):  # keep pytest output quiet
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(5)


@pytest.fixture
def closed_url():
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/vgg16.h5"


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    return h


def _touch(p: Path, data: bytes = b"weights") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _setup_all(tmp_path, home):
    """A file at every place in the search, and the resolve_weights arguments that point there."""
    explicit = _touch(tmp_path / "explicit.h5")
    from_env = _touch(tmp_path / "env.h5")
    embedded = _touch(tmp_path / "repo" / "weights" / "vgg16_imagenet_notop.h5")
    keras = _touch(home / ".keras" / "models" / W.VGG16_NOTOP.filename)
    cache = tmp_path / "cache"
    cached = _touch(cache / W.VGG16_NOTOP.filename)
    return dict(explicit=explicit, env=from_env, embedded=embedded, keras=keras, cache=cache, cached=cached)


def _resolve(places, home, closed_url, path=None, env_weights=None, **kw):
    env = {"HOME": str(home)}
    if env_weights is not None:
        env["JAXVIZ_WEIGHTS"] = str(env_weights)
    source = W.WeightSource(url=closed_url, md5=BODY_MD5)
    kw.setdefault("download", True)
    return W.resolve_weights(
        path, env=env, embedded=places["embedded"], cache_dir=places["cache"],
        source=source, progress=False, timeout=5, **kw,
    )


# --- the search order -------------------------------------------------------------------


def test_order_explicit_env_embedded_keras_cache(tmp_path, home, closed_url):
    places = _setup_all(tmp_path, home)
    assert _resolve(places, home, closed_url, places["explicit"], places["env"]) == places["explicit"]
    assert _resolve(places, home, closed_url, None, places["env"]) == places["env"]
    assert _resolve(places, home, closed_url) == places["embedded"]
    places["embedded"].unlink()
    assert _resolve(places, home, closed_url) == places["keras"]
    places["keras"].unlink()
    # a file downloaded earlier is used without the network (the URL is a closed port)
    assert _resolve(places, home, closed_url) == places["cached"]


def test_downloads_when_nothing_else_is_there(tmp_path, home, server):
    cache = tmp_path / "cache"
    env = {"HOME": str(home)}
    source = W.WeightSource(url=server + "/good.h5", md5=BODY_MD5, filename="vgg.h5")
    got = W.resolve_weights(env=env, embedded=tmp_path / "absent.h5", cache_dir=cache,
                            source=source, progress=False, timeout=5)
    assert got == cache / "vgg.h5"
    assert got.read_bytes() == BODY
    assert _leftovers(cache) == ["vgg.h5"]
    # the second time it is found in the cache; the server is not needed
    source2 = source._replace(url="http://127.0.0.1:9/never-asked")
    assert W.resolve_weights(env=env, embedded=tmp_path / "absent.h5", cache_dir=cache,
                             source=source2, progress=False, download=False) == got


def test_default_cache_dir_comes_from_env(tmp_path):
    home = str(tmp_path / "h")
    assert W.default_cache_dir({"HOME": home}) == Path(home) / ".cache" / "jaxviz"
    assert W.default_cache_dir({"HOME": home, "XDG_CACHE_HOME": "/x/cache"}) == Path("/x/cache/jaxviz")
    assert W.default_cache_dir({"HOME": home, "XDG_CACHE_HOME": "rel"}) == Path(home) / ".cache" / "jaxviz"
    env = {"HOME": home, "XDG_CACHE_HOME": "/x/cache", "JAXVIZ_CACHE": "/j"}
    assert W.default_cache_dir(env) == Path("/j")
    assert W.default_cache_dir({"HOME": home, "JAXVIZ_CACHE": "~/c"}) == Path(home) / "c"
    root = os.path.expanduser("~root")  # another user's home: it was a relative folder "~root/c"
    assert W.default_cache_dir({"HOME": home, "JAXVIZ_CACHE": "~root/c"}) == Path(root) / "c"
    assert W.keras_cache_path({"HOME": home}) == (
        Path(home) / ".keras" / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


def test_download_goes_to_the_default_cache_dir(tmp_path, home, server):
    env = {"HOME": str(home), "JAXVIZ_CACHE": str(tmp_path / "jc")}
    source = W.WeightSource(url=server + "/good.h5", md5=BODY_MD5)
    got = W.resolve_weights(env=env, embedded=tmp_path / "absent.h5", source=source, progress=False)
    assert got == tmp_path / "jc" / W.VGG16_NOTOP.filename


def test_embedded_path_is_the_repository_file():
    p = W.embedded_weights_path()
    assert p == Path(W.__file__).resolve().parent.parent / "weights" / "vgg16_imagenet_notop.h5"
    if p.exists():
        assert p.stat().st_size == 58_892_792


# --- explicit paths that do not exist are errors, never skipped ----------------------------


def test_missing_explicit_path_is_an_error(tmp_path, home, closed_url):
    places = _setup_all(tmp_path, home)
    missing = tmp_path / "nope" / "vgg16.h5"
    with pytest.raises(JaxvizError) as e:
        _resolve(places, home, closed_url, missing, places["env"])
    msg = str(e.value)
    assert str(missing) in msg and "--weights" in msg and "\n" not in msg


def test_missing_env_path_is_an_error(tmp_path, home, closed_url):
    places = _setup_all(tmp_path, home)
    missing = tmp_path / "gone.h5"
    with pytest.raises(JaxvizError, match="JAXVIZ_WEIGHTS") as e:
        _resolve(places, home, closed_url, None, missing)
    assert str(missing) in str(e.value)
    with pytest.raises(JaxvizError, match="weights file ' ' named by JAXVIZ_WEIGHTS is missing"):
        _resolve(places, home, closed_url, None, " ")  # blank: said "weights file   named by"


def test_explicit_folder_is_an_error(tmp_path, home, closed_url):
    places = _setup_all(tmp_path, home)
    with pytest.raises(JaxvizError, match="not a file"):
        _resolve(places, home, closed_url, tmp_path)


def test_a_name_too_long_is_one_error(tmp_path, home, closed_url):
    """pathlib's exists() raises on a name the OS refuses (ENAMETOOLONG): it was a traceback."""
    places = _setup_all(tmp_path, home)
    with pytest.raises(JaxvizError, match=r"unreadable \(File name too long\)"):
        _resolve(places, home, closed_url, tmp_path / ("x" * 300 + ".h5"))


def test_explicit_path_expands_tilde(tmp_path, home, closed_url):
    places = _setup_all(tmp_path, home)
    f = _touch(home / "mine.h5")
    assert _resolve(places, home, closed_url, "~/mine.h5") == f


def test_git_lfs_pointer_is_not_used(tmp_path, home, closed_url):
    places = _setup_all(tmp_path, home)
    places["embedded"].write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    assert _resolve(places, home, closed_url) == places["keras"]


# --- the download ------------------------------------------------------------------------


def test_download_good_file(tmp_path, server):
    dest = tmp_path / "cache" / "w.h5"
    assert W.download(server + "/good.h5", dest, BODY_MD5, progress=False, timeout=5) == dest
    assert dest.read_bytes() == BODY
    assert W.md5sum(dest) == BODY_MD5
    assert _leftovers(dest.parent) == ["w.h5"]


def test_download_progress_without_tty_prints_one_line(tmp_path, server, capsys):
    dest = tmp_path / "w.h5"
    W.download(server + "/good.h5", dest, BODY_MD5.upper(), progress=True, timeout=5)
    err = capsys.readouterr().err
    assert err.strip() == f"jaxviz: downloading {server}/good.h5"


def test_download_wrong_md5_keeps_nothing(tmp_path, server):
    dest = tmp_path / "cache" / "w.h5"
    with pytest.raises(JaxvizError, match="md5") as e:
        W.download(server + "/good.h5", dest, "0" * 32, progress=False, timeout=5)
    assert BODY_MD5 in str(e.value) and "\n" not in str(e.value)
    assert _leftovers(dest.parent) == []


def test_download_failure_leaves_an_older_file_alone(tmp_path, server):
    dest = _touch(tmp_path / "w.h5", b"old")
    with pytest.raises(JaxvizError):
        W.download(server + "/good.h5", dest, "0" * 32, progress=False, timeout=5)
    assert dest.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["w.h5"]


def test_download_interrupted_keeps_nothing(tmp_path, server):
    dest = tmp_path / "cache" / "w.h5"
    with pytest.raises(JaxvizError, match=r"1000|closed") as e:
        W.download(server + "/short.h5", dest, BODY_MD5, progress=False, timeout=5)
    assert str(len(BODY)) in str(e.value) or "closed" in str(e.value)
    assert _leftovers(dest.parent) == []


def test_download_http_error(tmp_path, server):
    dest = tmp_path / "w.h5"
    with pytest.raises(JaxvizError, match="404"):
        W.download(server + "/missing.h5", dest, BODY_MD5, progress=False, timeout=5)
    assert _leftovers(tmp_path) == []


def test_download_connection_refused(tmp_path, closed_url):
    dest = tmp_path / "w.h5"
    with pytest.raises(JaxvizError, match="failed"):
        W.download(closed_url, dest, BODY_MD5, progress=False, timeout=5)
    assert _leftovers(tmp_path) == []


def test_download_ctrl_c_keeps_nothing(tmp_path, monkeypatch):
    class Interrupted:
        headers = {"Content-Length": "100"}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(W.urllib.request, "urlopen", lambda *a, **k: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        W.download("http://127.0.0.1:9/x.h5", tmp_path / "w.h5", BODY_MD5, progress=False)
    assert _leftovers(tmp_path) == []


def test_a_download_removes_what_a_stopped_download_left(tmp_path, server):
    """A command stopped mid-download ends in os._exit (cli_run), which skips the clean-up: each
    such stop left its temporary file (the whole 58 MB, say) in the cache for good. The next download
    removes those unwritten for STALE_S seconds, and leaves one still being written alone."""
    import os
    import time

    dest = tmp_path / "cache" / "w.h5"
    stale = _touch(dest.parent / ".w.h5.abc123.part", b"half")
    old = time.time() - W.STALE_S - 60
    os.utime(stale, (old, old))
    running = _touch(dest.parent / ".w.h5.def456.part", b"being written")
    other = _touch(dest.parent / ".x.h5.abc123.part", b"another file's")
    os.utime(other, (old, old))
    W.download(server + "/good.h5", dest, BODY_MD5, progress=False, timeout=5)
    assert _leftovers(dest.parent) == sorted([running.name, other.name, "w.h5"])


def test_md5sum(tmp_path):
    f = _touch(tmp_path / "f", BODY)
    assert W.md5sum(f) == BODY_MD5


# --- nothing anywhere ----------------------------------------------------------------------


def _assert_lists_every_place(msg, tmp_path, home, url):
    assert "\n" not in msg
    for where in (
        "--weights",
        "JAXVIZ_WEIGHTS",
        str(tmp_path / "absent.h5"),
        str(home / ".keras" / "models" / W.VGG16_NOTOP.filename),
        str(tmp_path / "cache" / W.VGG16_NOTOP.filename),
        url,
    ):
        assert where in msg, (where, msg)
    assert "Fix: pass --weights FILE, set JAXVIZ_WEIGHTS=FILE, or put" in msg


def test_offline_with_nothing_found_lists_every_place(tmp_path, home, closed_url):
    source = W.WeightSource(url=closed_url, md5=BODY_MD5)
    with pytest.raises(JaxvizError) as e:
        W.resolve_weights(env={"HOME": str(home)}, embedded=tmp_path / "absent.h5",
                          cache_dir=tmp_path / "cache", source=source, progress=False, timeout=5)
    msg = str(e.value)
    _assert_lists_every_place(msg, tmp_path, home, closed_url)
    assert "failed" in msg
    assert _leftovers(tmp_path / "cache") == []


def test_download_turned_off_with_nothing_found(tmp_path, home):
    with pytest.raises(JaxvizError) as e:
        W.resolve_weights(env={"HOME": str(home)}, embedded=tmp_path / "absent.h5",
                          cache_dir=tmp_path / "cache", download=False)
    msg = str(e.value)
    _assert_lists_every_place(msg, tmp_path, home, W.VGG16_NOTOP.url)
    assert "turned off" in msg and W.VGG16_NOTOP.md5 in msg
    assert not (tmp_path / "cache").exists()


def test_failed_download_in_resolve_says_why(tmp_path, home, server):
    source = W.WeightSource(url=server + "/good.h5", md5="0" * 32)
    with pytest.raises(JaxvizError, match="md5") as e:
        W.resolve_weights(env={"HOME": str(home)}, embedded=tmp_path / "absent.h5",
                          cache_dir=tmp_path / "cache", source=source, progress=False, timeout=5)
    _assert_lists_every_place(str(e.value), tmp_path, home, source.url)
    assert _leftovers(tmp_path / "cache") == []


def test_env_defaults_to_os_environ(tmp_path, monkeypatch):
    f = _touch(tmp_path / "from_environ.h5")
    monkeypatch.setenv("JAXVIZ_WEIGHTS", str(f))
    assert W.resolve_weights(download=False) == f


def test_load_params_from_python_does_not_speak_of_the_command_line(tmp_path):
    """load_params("bad.h5") names its own argument, not --weights (issue 12, item 8)."""
    import jaxviz

    missing = tmp_path / "bad.h5"
    with pytest.raises(JaxvizError) as e:
        jaxviz.load_params(missing, download=False)
    msg = str(e.value)
    assert str(missing) in msg and "weights argument of load_params" in msg and "--weights" not in msg


def test_load_params_refuses_a_weights_argument_that_is_no_path_and_integer_dtypes():
    """load_params(5) was a TypeError from os.fspath; dtype=np.int32 truncated every weight
    (mostly to 0) and rendered dead filters without a word; dtype="foo" was numpy's TypeError."""
    import numpy as np

    import jaxviz

    with pytest.raises(JaxvizError, match="weights must be the path of a Keras h5 file, or None"):
        jaxviz.load_params(5, download=False)
    for bad in (np.int32, "foo", object):
        with pytest.raises(JaxvizError, match="dtype must be a floating type"):
            jaxviz.load_params(dtype=bad, download=False)


def test_load_params_refuses_an_empty_path():
    """load_params("") loaded the default weights without a word (an unset variable passed on,
    say), where the command line refuses an empty --weights."""
    import jaxviz

    for empty in ("", "  "):
        with pytest.raises(JaxvizError, match="weights argument of load_params is an empty path"):
            jaxviz.load_params(empty, download=False)
    with pytest.raises(JaxvizError, match="empty path"):
        jaxviz.models.vgg16("")


def test_an_unreadable_file_is_named_and_skipped_in_the_search(tmp_path, home, closed_url, monkeypatch):
    """An unreadable --weights file passed the check and failed in h5py with a traceback; an
    unreadable file in the search was taken over the readable one after it."""
    import os

    places = _setup_all(tmp_path, home)
    for p in (places["explicit"], places["embedded"]):
        p.chmod(0)
    if os.access(places["explicit"], os.R_OK):  # root reads any file: fake what chmod 000 does
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: real(p, mode, **kw) and Path(p).stat().st_mode & 0o444)
    with pytest.raises(JaxvizError, match=r"explicit.h5 given with --weights is unreadable \(permission denied\)"):
        _resolve(places, home, closed_url, places["explicit"])
    assert _resolve(places, home, closed_url) == places["keras"]


def test_a_weights_argument_that_is_no_path_is_one_error(tmp_path, home, closed_url):
    """resolve_weights(5) was os.fspath's TypeError; b"w.h5", a TypeError of str.startswith."""
    places = _setup_all(tmp_path, home)
    for bad in (5, b"w.h5", ["w.h5"]):
        with pytest.raises(JaxvizError, match=f"weights given with --weights must be the path of a Keras VGG16 .h5 "
                                              f"file, not {type(bad).__name__}"):
            _resolve(places, home, closed_url, bad)
