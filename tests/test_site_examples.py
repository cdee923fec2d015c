"""jaxviz.site_examples: dataset example patches in the atlas site, and their removal on rebuilds."""
import json

import numpy as np
import pytest

from jaxviz.errors import JaxvizError
from jaxviz.site import FilterEntry, build_site
from jaxviz.site_examples import SiteExamples, load


def _examples(folder, k: int, filters: int = 2) -> SiteExamples:
    """A summary of ``k`` examples per filter of layer conv (what jaxviz.site_examples.load gives)."""
    entry = {"image": "a.png", "activation": 1.0, "y": 0, "x": 0, "box": [0, 0, 1, 1]}
    meta = {"folder": str(folder), "settings": {"folder": str(folder), "size": 16, "model": "m"}, "images_used": 3,
            "layers": {"conv": {"channels": [[entry] * k for _ in range(filters)]}}}
    return SiteExamples(meta, {"conv": np.zeros((filters, k, 4, 4, 3), np.uint8)})


def _patches(out):
    folder = out / "conv" / "examples"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


def test_a_rebuild_with_other_examples_leaves_no_stale_patches(tmp_path):
    """A resumed atlas with fewer examples per filter, then with none: the old patches go (only ours,
    only inside --out)."""
    out = tmp_path / "atlas"
    layers = [("conv", [FilterEntry(0, 1.0, "f000.png"), FilterEntry(1, 2.0, "f001.png")])]
    build_site(str(out), layers, {}, examples=_examples(tmp_path, 3))
    assert _patches(out) == [f"f00{f}_{j}.png" for f in range(2) for j in range(3)]
    outside = tmp_path / "conv" / "examples"  # the same names outside --out are not ours to remove
    outside.mkdir(parents=True)
    (outside / "f000_2.png").write_bytes(b"x")

    build_site(str(out), layers, {}, examples=_examples(tmp_path, 1))
    assert _patches(out) == ["f000_0.png", "f001_0.png"]
    assert "examples/f000_0.png" in (out / "conv" / "f000.html").read_text()

    (out / "conv" / "examples" / "notes.txt").write_text("mine")  # not a patch name: kept
    build_site(str(out), layers, {}, examples=None)
    assert _patches(out) == ["notes.txt"] and "Dataset examples" not in (out / "conv" / "f000.html").read_text()
    (out / "conv" / "examples" / "notes.txt").unlink()
    build_site(str(out), layers, {}, examples=_examples(tmp_path, 1))
    build_site(str(out), layers, {}, examples=None)
    assert _patches(out) is None  # the emptied folder goes too
    assert (outside / "f000_2.png").exists()


def _summary(folder, meta, thumbs):
    folder.mkdir(exist_ok=True)
    (folder / "examples.json").write_text(json.dumps(meta))
    np.savez(folder / "examples.npz", **{"conv/thumbs": thumbs})
    return folder


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("settings"),
    lambda m: m.update(layers=5),
    lambda m: m["layers"]["conv"].update(channels=3),
    lambda m: m["layers"]["conv"]["channels"][0][0].pop("activation"),
    lambda m: m["layers"]["conv"]["channels"][1][0].update(image=5),
    lambda m: m["layers"]["conv"]["channels"].append([]),  # 3 filters, thumbnails of 2
])
def test_a_malformed_summary_is_refused_when_loaded(edit, tmp_path):
    """A summary edited by hand failed inside the atlas's pages (TypeError, KeyError), after its work."""
    meta = _examples(tmp_path, 2).meta
    good = load(_summary(tmp_path / "good", meta, np.zeros((2, 2, 4, 4, 3), np.uint8)))
    assert good.entries("conv", 1)[0]["image"] == "a.png"
    edit(meta)
    with pytest.raises(JaxvizError, match="unreadable or malformed"):
        load(_summary(tmp_path / "bad", meta, np.zeros((2, 2, 4, 4, 3), np.uint8)))


def test_examples_a_filter_did_not_fire_on_are_not_shown(tmp_path):
    """An activation of exactly 0 (a relu's) is an image the filter ignored, its patch at an arbitrary
    place (the first pixel): shown as an example, it suggested what the filter responds to."""
    ex = _examples(tmp_path, 2)
    chans = ex.meta["layers"]["conv"]["channels"]
    chans[0] = [dict(chans[0][0], activation=3.0), dict(chans[0][1], activation=0.0)]
    chans[1] = [dict(e, activation=0.0) for e in chans[1]]
    out = tmp_path / "atlas"
    build_site(str(out), [("conv", [FilterEntry(0, 1.0, "f000.png"), FilterEntry(1, 2.0, "f001.png")])], {},
               examples=ex)
    assert _patches(out) == ["f000_0.png"]
    first, second = ((out / "conv" / f"f00{f}.html").read_text() for f in range(2))
    assert "examples/f000_0.png" in first and "f000_1.png" not in first and "The 1 image of" in first
    assert "did not fire on any of the 3 images" in second and "examples/f001_" not in second
    assert "f001_0.png" not in (out / "conv" / "index.html").read_text()
