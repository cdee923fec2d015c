"""jaxviz.site: every link and image of the static site resolves, whatever the layer names."""
import os
import signal
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.site import FilterEntry, build_site
from jaxviz.site_examples import SiteExamples

# a flat name, a linen path (nested folders), and names a URL would cut at '#', '?' or '%'
LAYERS = ["conv_0", "block1/conv2", "odd #1?%20 name", "deep/er/layer x"]


class Links(HTMLParser):
    """The href and src values of a page."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("href", "src") and v is not None]


def _targets(out):
    """(page, url, file the url names) for every relative link and image of every page under out."""
    for folder, _, files in os.walk(out):
        for name in (f for f in files if f.endswith(".html")):
            page = os.path.join(folder, name)
            links = Links()
            with open(page, encoding="utf-8") as f:
                links.feed(f.read())
            for u in links.urls:
                parts = urlsplit(u)
                assert not parts.scheme and not parts.netloc, (page, u)
                yield page, u, os.path.normpath(os.path.join(folder, unquote(parts.path)))


def test_every_link_and_image_resolves(tmp_path):
    out, data = tmp_path / "atlas", tmp_path / "my images"
    data.mkdir()
    (data / "cat #1.png").write_bytes(b"x")
    entry = {"image": "cat #1.png", "activation": 1.0, "y": 0, "x": 0, "box": [0, 0, 1, 1]}
    meta = {"folder": str(data), "settings": {"folder": str(data), "size": 16, "model": "m"}, "images_used": 1,
            "layers": {l: {"channels": [[entry]] * 2} for l in LAYERS}}
    examples = SiteExamples(meta, {l: np.zeros((2, 1, 4, 4, 3), np.uint8) for l in LAYERS})
    layers = [(l, [FilterEntry(f, 1.0, f"f{f:03d}.png") for f in range(2)]) for l in LAYERS]
    for l, entries in layers:
        os.makedirs(out / l, exist_ok=True)
        for e in entries:
            (out / l / e.image).write_bytes(b"x")
    build_site(str(out), layers, {"animate": False}, examples=examples)

    seen = list(_targets(out))
    assert len(seen) > 10 * len(LAYERS)
    missing = [(os.path.relpath(p, out), u) for p, u, target in seen if not os.path.isfile(target)]
    assert not missing
    nested = (out / "deep" / "er" / "layer x" / "f001.html").read_text()
    assert 'href="../../../index.html"' in nested and "cat%20%231.png" in nested
    # the links run through every page, across layers: the next filter after block1/conv2's last
    assert 'href="../../odd%20%231%3F%2520%20name/f000.html"' in (out / "block1" / "conv2" / "f001.html").read_text()


def test_a_filter_that_never_fired_says_so_on_its_page(tmp_path):
    """Its image is the start image, unchanged (no gradient): its page said only "final activation 0"."""
    layers = [("conv_0", [FilterEntry(0, 0.0, "f000.png"), FilterEntry(1, 2.5, "f001.png")])]
    build_site(str(tmp_path), layers, {"animate": False, "recipe": "seed"})
    assert "never fired" in (tmp_path / "conv_0" / "f000.html").read_text()
    assert "never fired" not in (tmp_path / "conv_0" / "f001.html").read_text()
    build_site(str(tmp_path), layers, {"animate": False, "recipe": "lucid"})  # its steps see transformed images
    assert "never fired" not in (tmp_path / "conv_0" / "f000.html").read_text()


def test_counts_are_singular_for_one_and_name_the_filters_that_never_fired(tmp_path):
    """An atlas of one filter said "1 layers, 1 filters"; one whose filters all never fired said only
    "4 filters" on the index and layer page, its captions all 0."""
    build_site(str(tmp_path), [("one", [FilterEntry(0, 1.5, "f000.png")])], {"animate": False, "recipe": "seed"})
    index, layer = (tmp_path / "index.html").read_text(), (tmp_path / "one" / "index.html").read_text()
    assert "1 layer, 1 filter;" in index and ">1 filter<" in index and "1 filter;" in layer and "filters" not in layer
    dead = [("c1", [FilterEntry(f, 0.0, f"f{f:03d}.png") for f in range(4)]), ("c2", [FilterEntry(0, 2.0, "f000.png")])]
    build_site(str(tmp_path), dead, {"animate": False, "recipe": "seed"})
    index = (tmp_path / "index.html").read_text()
    assert "2 layers, 5 filters, 4 never fired;" in index and ">4 filters, 4 never fired<" in index
    assert "4 filters, 4 never fired;" in (tmp_path / "c1" / "index.html").read_text()
    assert "never fired" not in (tmp_path / "c2" / "index.html").read_text()


def test_a_folder_where_a_page_goes_is_one_error(tmp_path):
    """A folder at LAYER/fNNN.html or LAYER/index.html was an IsADirectoryError traceback (python -m
    jaxviz.atlas refuses it before any work; this is the writer's own guard, for a folder made since)."""
    layers = [("conv_0", [FilterEntry(0, 1.0, "f000.png"), FilterEntry(1, 2.5, "f001.png")])]
    for name in ("f001.html", "index.html"):
        out = tmp_path / name
        (out / "conv_0" / name).mkdir(parents=True)
        with pytest.raises(JaxvizError, match=f"cannot write {out / 'conv_0' / name}: a folder is in the way; "
                                              "move it, or choose another --out"):
            build_site(str(out), layers, {"animate": False})


def test_a_pipe_where_a_page_goes_is_one_error_not_a_hang(tmp_path):
    """A named pipe at index.html: the writer read it to compare, waiting for a writer for good."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("named pipes are POSIX's")
    os.mkfifo(tmp_path / "index.html")
    layers = [("conv_0", [FilterEntry(0, 1.0, "f000.png")])]

    def hung(*_):
        raise TimeoutError("build_site waited on the pipe at index.html")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)  # a regression fails the test instead of hanging it
    try:
        with pytest.raises(JaxvizError, match="index.html: it is not a regular file"):
            build_site(str(tmp_path), layers, {"animate": False})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert (tmp_path / "index.html").is_fifo()
