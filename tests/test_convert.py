import shutil

import h5py
import numpy as np
import pytest
from conftest import EMBEDDED

from jaxviz.convert import load_keras_h5
from jaxviz.errors import JaxvizError
from jaxviz.model import VGG19, VGGSpec, layers

SMALL16 = VGGSpec("vgg16", (2, 2, 3, 3, 3), (2, 3, 4, 4, 5), fc=(6, 7), classes=4, top_input=32)
SMALL19 = VGGSpec("vgg19", (2, 2, 4, 4, 4), (2, 3, 4, 4, 5))


def random_params(spec, top=False, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for l in layers(spec):
        if l.kind == "conv":
            out[l.name] = (rng.normal(size=(3, 3, l.in_channels, l.out_channels)).astype(np.float32),
                           rng.normal(size=l.out_channels).astype(np.float32))
    if top:
        s = spec.top_input // 32
        sizes = (s * s * spec.channels[-1], *spec.fc, spec.classes)
        for name, a, b in zip(("fc1", "fc2", "predictions"), sizes[:-1], sizes[1:]):
            out[name] = (rng.normal(size=(a, b)).astype(np.float32), rng.normal(size=b).astype(np.float32))
    return out


def write_legacy(path, weights, style="W_1", wrap=False, extra_layers=("input_1", "block1_pool")):
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrap else f
        names = list(extra_layers) + list(weights)
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in extra_layers:
            root.create_group(n).attrs["weight_names"] = np.array([], dtype="S1")
        for n, (k, b) in weights.items():
            g = root.create_group(n)
            if style == "W_1":
                wn = [f"{n}_W_1:0", f"{n}_b_1:0"]
            else:  # nested, Keras 2 style
                wn = [f"{n}/kernel:0", f"{n}/bias:0"]
            g.attrs["weight_names"] = np.array([w.encode() for w in wn])
            g[wn[0]] = k
            g[wn[1]] = b


def write_keras3(path, weights):
    with h5py.File(path, "w") as f:
        lg = f.create_group("layers")
        lg.create_group("input_layer").create_group("vars")
        for n, (k, b) in weights.items():
            v = lg.create_group(n).create_group("vars")
            v["0"] = k
            v["1"] = b


def assert_same(params, weights):
    assert set(params) == set(weights)
    for n, (k, b) in weights.items():
        np.testing.assert_array_equal(params[n]["kernel"], k)
        np.testing.assert_array_equal(params[n]["bias"], b)
        assert params[n]["kernel"].dtype == np.float32


@pytest.mark.parametrize("layout", ["legacy_W_1", "legacy_nested", "keras2_model", "keras3"])
def test_each_layout_loads_array_by_array(tmp_path, layout):
    w = random_params(SMALL16, top=True)
    p = tmp_path / "w.h5"
    if layout == "legacy_W_1":
        write_legacy(p, w)
    elif layout == "legacy_nested":
        write_legacy(p, w, style="nested")
    elif layout == "keras2_model":
        write_legacy(p, w, style="nested", wrap=True)
    else:
        write_keras3(p, w)
    assert_same(load_keras_h5(p, spec=SMALL16), w)


def test_vgg19_is_detected_from_layer_names(tmp_path):
    w = random_params(SMALL19)
    write_legacy(tmp_path / "w.h5", w)
    # the shapes are SMALL19's, so loading with the detected VGG19 spec must fail on shape...
    with pytest.raises(JaxvizError, match="block1_conv1"):
        load_keras_h5(tmp_path / "w.h5")
    # ...and succeed with the matching spec
    assert_same(load_keras_h5(tmp_path / "w.h5", spec=SMALL19), w)
    assert "block5_conv4" in load_keras_h5(tmp_path / "w.h5", spec=SMALL19)


def test_dtype_option(tmp_path):
    w = random_params(SMALL16)
    write_legacy(tmp_path / "w.h5", w)
    p = load_keras_h5(tmp_path / "w.h5", spec=SMALL16, dtype=np.float64)
    assert p["block1_conv1"]["kernel"].dtype == np.float64


def test_embedded_file_is_the_imagenet_vgg16():
    p = load_keras_h5(EMBEDDED)
    assert len(p) == 13
    np.testing.assert_allclose(p["block1_conv1"]["bias"][:3], [0.73429835, 0.093403675, 0.06775674])
    assert p["block5_conv3"]["kernel"].shape == (3, 3, 512, 512)


def test_missing_file(tmp_path):
    with pytest.raises(JaxvizError, match="does not exist.*--weights"):
        load_keras_h5(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("hello, not an h5 file")
    with pytest.raises(JaxvizError, match="notes.h5.*not an HDF5 file"):
        load_keras_h5(p)


def test_truncated_file(tmp_path):
    p = tmp_path / "cut.h5"
    with open(EMBEDDED, "rb") as src, open(p, "wb") as dst:
        dst.write(src.read(2_000_000))
    with pytest.raises(JaxvizError, match="cut.h5"):
        load_keras_h5(p)


def test_h5_from_another_model(tmp_path):
    p = tmp_path / "resnet.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1", b"dense_1"])
        g = f.create_group("conv1")
        g.attrs["weight_names"] = np.array([b"conv1/kernel:0", b"conv1/bias:0"])
        g["conv1/kernel:0"] = np.zeros((7, 7, 3, 64), np.float32)
        g["conv1/bias:0"] = np.zeros(64, np.float32)
        f.create_group("dense_1").attrs["weight_names"] = np.array([], dtype="S1")
    with pytest.raises(JaxvizError, match="resnet.h5.*another model"):
        load_keras_h5(p)


def test_wrong_shape_names_layer(tmp_path):
    w = random_params(SMALL16)
    w["block2_conv1"] = (np.zeros((3, 3, 2, 9), np.float32), np.zeros(9, np.float32))
    write_legacy(tmp_path / "w.h5", w)
    with pytest.raises(JaxvizError, match=r"w.h5.*block2_conv1.*\(3, 3, 2, 9\).*expected"):
        load_keras_h5(tmp_path / "w.h5", spec=SMALL16)


def test_a_huge_declared_shape_is_refused_before_reading(tmp_path):
    """A dataset declaring 256 TiB (chunked, nothing stored) was read whole first: a MemoryError."""
    write_legacy(tmp_path / "w.h5", random_params(SMALL16))
    with h5py.File(tmp_path / "w.h5", "a") as f:
        g = f["block2_conv1"]
        del g["block2_conv1_W_1:0"]
        g.create_dataset("block2_conv1_W_1:0", shape=(1 << 20, 1 << 20, 64), dtype="f4", chunks=True)
    with pytest.raises(JaxvizError, match=r"block2_conv1 has kernel \(1048576, 1048576, 64\).*expected"):
        load_keras_h5(tmp_path / "w.h5", spec=SMALL16)


@pytest.mark.parametrize("odd", ["group", "empty"])
def test_a_weight_that_is_no_array_is_refused(tmp_path, odd):
    write_legacy(tmp_path / "w.h5", random_params(SMALL16))
    with h5py.File(tmp_path / "w.h5", "a") as f:
        g = f["block2_conv1"]
        del g["block2_conv1_b_1:0"]
        if odd == "group":
            g.create_group("block2_conv1_b_1:0")
        else:
            g.create_dataset("block2_conv1_b_1:0", data=h5py.Empty("f4"))
    with pytest.raises(JaxvizError, match="block2_conv1_b_1:0 is not an array"):
        load_keras_h5(tmp_path / "w.h5", spec=SMALL16)


def test_missing_layer_names_layer(tmp_path):
    w = random_params(SMALL16)
    del w["block3_conv2"]
    write_legacy(tmp_path / "w.h5", w)
    with pytest.raises(JaxvizError, match="w.h5.*block3_conv2"):
        load_keras_h5(tmp_path / "w.h5", spec=SMALL16)


def test_a_failed_file_leaves_nothing_behind(tmp_path):
    p = tmp_path / "w.h5"
    p.write_text("garbage")
    with pytest.raises(JaxvizError):
        load_keras_h5(p)
    w = random_params(SMALL16)
    write_legacy(p, w)  # fixed in place: the next load reads the new file
    assert_same(load_keras_h5(p, spec=SMALL16), w)


@pytest.mark.parametrize("what,value", [("kernel", np.nan), ("bias", np.inf)])
def test_non_finite_weights_are_refused_naming_the_layer(tmp_path, what, value):
    w = random_params(SMALL16)
    k, b = w["block2_conv1"]
    if what == "kernel":
        k = k.copy()
        k[0, 0, 0, 0] = value
    else:
        b = b.copy()
        b[1] = value
    w["block2_conv1"] = (k, b)
    path = tmp_path / "nan.h5"
    write_legacy(path, w)
    with pytest.raises(JaxvizError) as e:
        load_keras_h5(path, SMALL16)
    msg = str(e.value)
    assert f"layer block2_conv1's {what} holds 1 non-finite values" in msg and "\n" not in msg


def test_float64_weights_beyond_float32_are_refused(tmp_path):
    w = random_params(SMALL16)
    k, b = w["block1_conv1"]
    w["block1_conv1"] = (k.astype(np.float64) * 1e300, b)
    path = tmp_path / "big.h5"
    write_legacy(path, w)
    with pytest.raises(JaxvizError, match="block1_conv1's kernel holds .* non-finite"):
        load_keras_h5(path, SMALL16)


def write_keras3_by_class(path, weights):
    """As Keras 3 itself writes a VGG's .weights.h5: groups named by layer class in model order
    (conv2d, conv2d_1, ..., dense, ...), not by layer name."""
    with h5py.File(path, "w") as f:
        lg = f.create_group("layers")
        for n in ("input_layer", "max_pooling2d", "flatten"):
            lg.create_group(n).create_group("vars")
        counts: dict = {}
        for n, (k, b) in weights.items():
            kind = "conv2d" if n.startswith("block") else "dense"
            i = counts[kind] = counts.get(kind, -1) + 1
            v = lg.create_group(kind if i == 0 else f"{kind}_{i}").create_group("vars")
            v["0"] = k
            v["1"] = b


def test_a_keras3_file_naming_layers_by_class_loads(tmp_path):
    """Keras 3's save_weights names a VGG16's groups conv2d, conv2d_1, ..., conv2d_12 (and dense,
    dense_1, dense_2): a real Keras 3 VGG16 file was refused as "from another model"."""
    w = random_params(SMALL16, top=True)
    write_keras3_by_class(tmp_path / "vgg16.weights.h5", w)
    assert_same(load_keras_h5(tmp_path / "vgg16.weights.h5", spec=SMALL16), w)


def test_a_group_that_is_a_dataset_is_refused_without_reading_it(tmp_path):
    """``layers`` a dataset was an AttributeError; ``layers/<name>`` a dataset of 2**40 rows was
    iterated row by row (``"vars" in dataset``): a hang."""
    p = tmp_path / "w.h5"
    with h5py.File(p, "w") as f:
        f["layers"] = np.zeros(3, np.float32)
    with pytest.raises(JaxvizError, match="w.h5.*not a Keras file"):
        load_keras_h5(p)
    with h5py.File(p, "w") as f:
        f.create_group("layers").create_dataset("block1_conv1", shape=(1 << 40,), dtype="f4", chunks=(1 << 16,))
        f.create_dataset("model_weights", shape=(1 << 40,), dtype="f4", chunks=(1 << 16,))
    with pytest.raises(JaxvizError, match="w.h5 holds no VGG conv layers"):
        load_keras_h5(p)


def test_damage_h5py_reports_as_runtime_error_is_one_error(tmp_path):
    """A damaged group B-tree: h5py's RuntimeError ("wrong B-tree signature") was a traceback."""
    p = tmp_path / "w.h5"
    write_keras3(p, random_params(SMALL16))
    data = p.read_bytes()
    i = data.index(b"TREE", data.index(b"TREE") + 1)  # the second group's B-tree: the layers' group
    p.write_bytes(data[:i] + b"X" + data[i + 1:])
    with pytest.raises(JaxvizError, match="w.h5.*B-tree signature.*truncated or not a Keras file"):
        load_keras_h5(p, spec=SMALL16)


def test_a_device_a_path_of_no_path_type_and_an_unreadable_file_are_one_error(tmp_path, monkeypatch):
    """/dev/null was read as a file (a fifo: opened, waiting for a writer forever); load_keras_h5(3)
    was os.fspath's TypeError; an unreadable file, h5py.is_hdf5's PermissionError."""
    import h5py as h5

    with pytest.raises(JaxvizError, match="weights path /dev/null is not a regular file"):
        load_keras_h5("/dev/null")
    with pytest.raises(JaxvizError, match="weights path must be a str or os.PathLike, not int"):
        load_keras_h5(3)
    p = tmp_path / "w.h5"
    write_legacy(p, random_params(SMALL16))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(h5, "File", denied)  # as chmod 000 does (root reads any file, so it is faked)
    monkeypatch.setattr(h5, "is_hdf5", denied)
    with pytest.raises(JaxvizError, match="cannot read weights file .*w.h5: permission denied; make it readable"):
        load_keras_h5(p, spec=SMALL16)


def test_a_non_float_bias_is_named(tmp_path):
    """An int32 bias beside a float32 kernel was said as "non-float weights (float32)"."""
    w = random_params(SMALL16)
    k, b = w["block2_conv1"]
    w["block2_conv1"] = (k, b.astype(np.int32))
    write_legacy(tmp_path / "w.h5", w)
    with pytest.raises(JaxvizError, match=r"layer block2_conv1 has a non-float bias \(int32\)"):
        load_keras_h5(tmp_path / "w.h5", spec=SMALL16)


def test_a_keras_zip_is_named_with_the_way_to_use_it(tmp_path):
    """A whole Keras 3 model (.keras, a zip) given as weights was "not an HDF5 file" alone."""
    import zipfile

    path = tmp_path / "vgg16.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(JaxvizError, match=r"a zip archive, such as a whole Keras 3 model \(\.keras\).*"
                                          r"--model keras:VGG16 --weights"):
        load_keras_h5(path)


def test_a_file_another_process_writes_is_said_so(tmp_path):
    """HDF5's lock held by a writer (Keras saving it) was reported as a truncated or damaged file."""
    import fcntl

    write_legacy(tmp_path / "w.h5", random_params(SMALL16))
    with open(tmp_path / "w.h5", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as h5py.File(path, "w") in another process
        with pytest.raises(JaxvizError, match="another process has it open for writing; wait until"):
            load_keras_h5(tmp_path / "w.h5", spec=SMALL16)
