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


@pytest.mark.parametrize("edit, thumbs", [
    (lambda m: m["layers"]["conv"]["channels"][0][0].update(activation=10**400), None),  # OverflowError in a page
    (lambda m: m["layers"]["conv"]["channels"][0][0].update(activation=float("nan")), None),
    (lambda m: None, np.zeros((2, 2, 4, 4, 5), np.uint8)),  # save_png's error, after the atlas's work
    (lambda m: None, np.zeros((2, 2, 0, 0, 3), np.uint8)),
])
def test_a_summary_that_would_fail_in_the_pages_is_refused_when_loaded(tmp_path, edit, thumbs):
    meta = _examples(tmp_path, 2).meta
    edit(meta)
    with pytest.raises(JaxvizError, match="unreadable or malformed"):
        load(_summary(tmp_path / "bad", meta, np.zeros((2, 2, 4, 4, 3), np.uint8) if thumbs is None else thumbs))


def test_a_deeply_nested_json_is_one_line(tmp_path):
    """json's RecursionError was a traceback."""
    folder = _summary(tmp_path / "deep", {}, np.zeros((2, 2, 4, 4, 3), np.uint8))
    (folder / "examples.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(JaxvizError, match=r"unreadable or malformed \(RecursionError\)"):
        load(folder)


def test_load_refuses_a_path_that_is_none_or_empty(tmp_path, monkeypatch):
    """None was os.fspath's TypeError; "" read the current folder's summary."""
    _summary(tmp_path, _examples(tmp_path, 2).meta, np.zeros((2, 2, 4, 4, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JaxvizError, match="the dataset examples path is empty"):
        load("")
    with pytest.raises(JaxvizError, match="the dataset examples summary must be a path, not None"):
        load(None)


def test_write_no_filters_writes_nothing_and_no_layer_climbs_out(tmp_path):
    """write(out, {}) wrote every patch (the {} taken as "all"); a summary's layer "../x" (a model's own
    layer name) wrote its patches outside ``out``."""
    ex = _examples(tmp_path, 2)
    assert ex.write(str(tmp_path / "site"), {}) == [] and not (tmp_path / "site").exists()
    evil = SiteExamples({**ex.meta, "layers": {"../x": ex.meta["layers"]["conv"]}}, {"../x": ex.thumbs["conv"]})
    with pytest.raises(JaxvizError, match=r"layer '\.\./x' cannot be a folder of --out"):
        evil.write(str(tmp_path / "site"))
    assert not (tmp_path / "x").exists()


def _damage_thumbs(path, where):
    """Damage examples.npz's member conv/thumbs.npy: its deflate data, or its central directory flags
    (bit 5, compressed patched data, which zipfile does not read)."""
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo("conv/thumbs.npy").header_offset  # the only member
    if where == "deflate":
        start = local + 30 + int.from_bytes(data[local + 26: local + 28], "little") + \
            int.from_bytes(data[local + 28: local + 30], "little")
        data[start: start + 4] = b"\xff" * 4  # an invalid block type
    else:
        data[data.rindex(b"PK\x01\x02") + 8] |= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where, error", [("deflate", "error"), ("flags", "NotImplementedError")])
def test_a_damaged_npz_is_one_line(tmp_path, where, error):
    """zlib.error from a damaged deflate stream, and zipfile's NotImplementedError, were tracebacks."""
    meta = _examples(tmp_path, 2).meta
    folder = _summary(tmp_path / "s", meta, np.zeros((2, 2, 4, 4, 3), np.uint8))
    np.savez_compressed(folder / "examples.npz", **{"conv/thumbs": np.zeros((2, 2, 4, 4, 3), np.uint8)})
    _damage_thumbs(folder / "examples.npz", where)
    with pytest.raises(JaxvizError, match=rf"unreadable or malformed \({error}\)"):
        load(folder)
