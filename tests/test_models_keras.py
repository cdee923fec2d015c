"""The Keras 3 adapter (jaxviz.models.keras) and the command-line resolver (jaxviz.models.load)."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
pytest.importorskip("keras")

from jaxviz import engine
from jaxviz.errors import JaxvizError
from jaxviz.image import deprocess
from jaxviz.models import LOGITS, load, vgg16
from jaxviz.models.keras import _keras, from_keras, keras_application
from jaxviz.objectives import channel, class_logit

from conftest import EMBEDDED, ROOT

keras = _keras()


@pytest.fixture(scope="module")
def keras_vgg16():
    """Keras' own VGG16 (JAX backend) with the embedded ImageNet weights (a no-top h5), through the adapter."""
    return load("keras:VGG16", EMBEDDED)


def _same_start(recipe, n):
    return engine.initial(recipe, jax.random.split(jax.random.key(7), n))


def test_keras_vgg16_seed_preset_matches_the_native_path(keras_vgg16):
    native = vgg16()
    assert [l.name for l in keras_vgg16.layers] == [l.name for l in native.layers]
    assert keras_vgg16.layer("block3_conv1") == native.layer("block3_conv1")
    rgb = jax.random.uniform(jax.random.key(1), (8, 8, 3))  # keras.applications.vgg16.preprocess_input = ours
    np.testing.assert_allclose(keras_vgg16.preprocess(rgb), native.preprocess(rgb), rtol=1e-6, atol=1e-4)
    recipe = engine.SEED._replace(size=32, steps=5)
    start = _same_start(recipe, 2)
    a = engine.render(keras_vgg16, channel("block1_conv1", [1, 7]), recipe, start=start)
    b = engine.render(native, channel("block1_conv1", [1, 7]), recipe, start=start)
    for x, y in zip(a.images, b.images):
        diff = np.abs(np.asarray(deprocess(x), np.int32) - np.asarray(deprocess(y), np.int32))
        assert diff.max() <= 1
    a = engine.render(keras_vgg16, channel("block3_conv1", [0, 3]), recipe, start=start)
    b = engine.render(native, channel("block3_conv1", [0, 3]), recipe, start=start)
    np.testing.assert_allclose(a.values, b.values, rtol=0.01)
    assert np.all(b.values > b.trace[:, 0])


def test_keras_application_with_random_weights_renders_an_inner_layer():
    model = keras_application("MobileNetV2", input_size=64)
    info = model.layer("block_2_add")
    assert info.shape == (16, 16, 24) and model.min_size("block_2_add") == 4
    r = engine.render(model, channel("block_2_add", [0, 1, 2]), engine.SEED._replace(size=32, steps=3))
    assert r.images.shape == (3, 32, 32, 3)
    assert np.all(np.isfinite(r.images)) and np.all(r.trace[:, -1] > r.trace[:, 0])
    with pytest.raises(JaxvizError) as e:
        engine.render(model, channel("block_2_addd", 0), engine.SEED._replace(size=32, steps=1))
    assert "\n" not in str(e.value) and "block_2_add" in str(e.value) and "valid layers" in str(e.value)


def test_a_weights_file_with_the_classifier_top_keeps_it(tmp_path, capsys):
    """Keras loads a file with the top into a model without one, dropping the classifier silently:
    tried without the top first, a full file had no logits. Now with the top first; a file without
    the top still loads (into a model without one), and the CLI renders a class at the top's 224 px."""
    from jaxviz import grid

    top, notop = tmp_path / "top.weights.h5", tmp_path / "notop.weights.h5"
    keras.applications.MobileNetV2(weights=None, include_top=True).save_weights(str(top))
    keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(None, None, 3)).save_weights(str(notop))
    full = keras_application("MobileNetV2", str(top))
    assert full.input_size == 224 and full.layer("logits").shape == (1000,)
    base = keras_application("MobileNetV2", str(notop))
    assert "logits" not in {l.name for l in base.layers} and base.layer("block_2_add").spatial
    out = tmp_path / "out"
    assert grid.main(["--model", "keras:MobileNetV2", "--weights", str(top), "--objective", "logit:3",
                      "--steps", "1", "--out", str(out)]) == 0
    assert "cannot take 64 px images: rendering at its input size, --size 224" in capsys.readouterr().out
    assert (out / "logit-3.png").is_file()


def test_softmax_classifier_gets_a_logits_layer():
    # seeded: with some random kernels all four relu channels are dead on the seed's grey start
    # (about 1 init in 16), and the logits cannot move
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(5, activation="softmax", name="predictions")(h)
    model = from_keras(keras.Model(inputs, outputs))
    assert [l.name for l in model.layers] == ["conv", "gap", LOGITS, "predictions"]
    assert model.input_size == 8 and model.min_size("conv") == 8
    x = jax.random.uniform(jax.random.key(0), (8, 8, 3))
    out = model.activations(model.params, x, ("gap", LOGITS, "predictions"))
    dense = model.params[0][-2:]
    np.testing.assert_allclose(out[LOGITS], out["gap"] @ dense[0] + dense[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.nn.softmax(out[LOGITS]), out["predictions"], rtol=1e-5, atol=1e-6)
    r = engine.render(model, class_logit([0, 4]), engine.SEED._replace(size=8, steps=3))
    assert np.all(r.trace[:, -1] > r.trace[:, 0])


def test_batch_norm_runs_on_moving_statistics():
    inputs = keras.Input((None, None, 3))
    bn = keras.layers.BatchNormalization(name="bn")
    net = keras.Model(inputs, keras.layers.Dropout(0.5, name="drop")(bn(inputs)))
    mean, var = np.array([1.0, 2.0, 3.0], np.float32), np.array([4.0, 1.0, 0.25], np.float32)
    bn.moving_mean.assign(mean)
    bn.moving_variance.assign(var)
    model = from_keras(net, input_size=4)
    x = jnp.full((4, 4, 3), 5.0)
    out = model.activations(model.params, x, ("bn", "drop"))
    np.testing.assert_allclose(out["bn"][0, 0], (5.0 - mean) / np.sqrt(var + bn.epsilon), rtol=1e-5)
    np.testing.assert_array_equal(out["drop"], out["bn"])  # dropout off


def test_from_keras_refuses_bad_input_sizes_and_preprocess_in_one_line():
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c")(inputs))
    cases = [(0, None, "input_size must be 1 to"),  # was 224, silently
             (-5, None, "input_size must be 1 to"),  # reached Keras
             ("16", None, "input_size must be an integer"),  # a TypeError from inside JAX
             (2, None, "failed on a 2x2x3 input"),  # Keras' ValueError
             (16, 3, "preprocess must be a function")]
    for size, pre, message in cases:
        with pytest.raises(JaxvizError, match=message) as e:
            from_keras(net, pre, input_size=size)
        assert "\n" not in str(e.value)
    inputs = keras.Input((8, 8, 3))
    fixed = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c")(inputs))
    with pytest.raises(JaxvizError, match="input_size=16, but Keras model .* takes 8 px images only"):
        from_keras(fixed, input_size=16)  # was ignored: 8 px


def test_a_model_nested_as_a_layer_is_left_out_and_a_vector_input_is_one_line():
    """The usual transfer-learning shape (a base model called as a layer): the whole model failed
    ("Output with path 1 is not connected to inputs"); a (N, 10) input was an IndexError."""
    inputs = keras.Input((None, None, 3))
    inner_in = keras.Input((None, None, 3))
    base = keras.Model(inner_in, keras.layers.Conv2D(4, 3, name="inner_conv")(inner_in), name="base")
    h = keras.layers.Conv2D(4, 3, name="top")(base(inputs))
    model = from_keras(keras.Model(inputs, keras.layers.ReLU(name="head")(h)), input_size=16)
    assert [l.name for l in model.layers] == ["top", "head"]
    r = engine.render(model, channel("head", [0, 1]), engine.SEED._replace(size=16, steps=2))
    assert np.isfinite(np.asarray(r.images)).all()
    assert [l.name for l in from_keras(base, input_size=16).layers] == ["inner_conv"]
    vector = keras.Input((10,))
    with pytest.raises(JaxvizError, match=r"takes inputs of shape \(None, 10\); jaxviz renders models of images"):
        from_keras(keras.Model(vector, keras.layers.Dense(3)(vector)))


def test_weights_holding_nan_are_refused_naming_the_array():
    """A diverged model's weights: every image came out NaN, said only as "not finite"."""
    inputs = keras.Input((None, None, 3))
    net = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="c")(inputs))
    kernel = net.get_layer("c").kernel
    kernel.assign(np.where(np.arange(kernel.shape[-1]) == 1, np.nan, np.asarray(kernel)))
    with pytest.raises(JaxvizError, match=r"the weights of Keras model .* hold 27 NaN or infinite value\(s\) in "
                                          r"\['c/kernel'\]; load finite weights"):  # was [0][0]
        from_keras(net, input_size=16)


def test_load_specs_and_their_errors(tmp_path):
    assert load().name == "vgg16" and load("VGG16").layer("block5_pool").shape == (7, 7, 512)
    with pytest.raises(JaxvizError, match="unknown model 'resnet'; use vgg16, vgg19, keras:NAME"):
        load("resnet")
    with pytest.raises(JaxvizError, match="unknown keras.applications model 'ResNet5'; choose one of: .*ResNet50"):
        load("keras:ResNet5")
    with pytest.raises(JaxvizError, match="unknown keras.applications model 'resnet50'; the names are case-sensitive: "
                                          "ResNet50$"):  # was the list of every name
        load("keras:resnet50")
    with pytest.raises(JaxvizError, match="unknown keras.applications model 5; choose one of"):
        keras_application(5)  # was Python's TypeError from getattr
    with pytest.raises(JaxvizError, match="weights file .*missing.h5 does not exist"):
        load("keras:ResNet50", tmp_path / "missing.h5")
    with pytest.raises(JaxvizError, match="weights file .* is a folder"):  # was: does not exist
        load("keras:ResNet50", tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.h5")
        with pytest.raises(JaxvizError, match="weights file .*pipe.h5 is not a regular file"):  # was: does not exist
            load("keras:ResNet50", tmp_path / "pipe.h5")
    with pytest.raises(JaxvizError, match=r"weights file .*x\.h5 cannot be read \(File name too long\)"):
        load("keras:ResNet50", tmp_path / ("x" * 300 + ".h5"))  # was OSError from pathlib, a traceback
    with pytest.raises(JaxvizError, match="cannot import 'no_such_pkg.mod'"):
        load("no_such_pkg.mod:make")
    with pytest.raises(JaxvizError, match="has no function 'nope'"):
        load("tests.test_models_keras:nope")
    with pytest.raises(JaxvizError, match="must return a jaxviz Model"):
        load("tests.test_models_keras:not_a_model")
    m = load("tests.test_models_keras:user_function_model")
    assert [l.name for l in m.layers] == ["output"] and m.layer("output").shape == (224, 224, 2)


def test_a_model_module_whose_own_import_fails_is_not_said_to_be_missing(tmp_path, monkeypatch):
    """A model module importing a package not installed was "cannot import it; is the package on the path?"."""
    (tmp_path / "needs_more.py").write_text("import no_such_dependency_xyz\ndef make(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(JaxvizError, match=r"importing 'needs_more' for model 'needs_more:make' failed "
                                          r"\(No module named 'no_such_dependency_xyz'\); install what it imports"):
        load("needs_more:make")
    with pytest.raises(JaxvizError, match=r"cannot import 'no_such_pkg\.mod'.*is the package on the path\?"):
        load("no_such_pkg.mod:make")


def not_a_model():
    return 3


def user_function_model():
    """A ``package.module:function`` model for :func:`load`: (fn, params)."""
    return (lambda p, x: x @ p), jnp.ones((3, 2))


def test_keras_is_imported_only_when_used_and_other_backends_are_refused():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = "import sys, jaxviz, jaxviz.models, jaxviz.engine; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    code = ("import keras\nfrom jaxviz.models.keras import _keras\ntry:\n    _keras()\n"
            "except Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(env, KERAS_BACKEND="numpy"),
                         capture_output=True, text=True)
    assert out.stdout.strip() == ("JaxvizError keras runs on the numpy backend; jaxviz needs KERAS_BACKEND=jax "
                                  "set before keras is first imported"), out.stderr


def test_a_keras_application_with_random_weights_renders_through_the_cli(tmp_path, capsys):
    from PIL import Image

    from jaxviz import grid

    out = tmp_path / "mobilenet"
    argv = ["--model", "keras:MobileNetV2", "--weights", "random", "--layers", "block_2_add", "--filters", "0-2",
            "--size", "32", "--steps", "3", "--npz", "--out", str(out), "--quiet"]
    assert grid.main(argv) == 0
    tiles = np.load(out / "block_2_add.npz")["uint8"]
    assert tiles.shape == (3, 32, 32, 3) and tiles.std() > 0  # not a blank image
    assert np.asarray(Image.open(out / "block_2_add.png")).shape == (32, 32 * 3 + 2 * 5, 3)
    assert grid.main([*argv[:4], "--layers", "block_99_add", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown layer 'block_99_add' for model MobileNetV2; valid layers: Conv1" in err
    assert grid.main([*argv[:4], "--list-layers"]) == 0
    assert "block_2_add" in capsys.readouterr().out


def test_a_keras3_vgg16_weights_file_loads_into_the_native_vgg16(tmp_path):
    """Keras 3's own save_weights of VGG16 names its groups by class (conv2d, conv2d_1, ...): the
    file was refused as "from another model" by --weights and vgg16(file)."""
    net = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    net.save_weights(str(tmp_path / "vgg16.weights.h5"))
    model = vgg16(tmp_path / "vgg16.weights.h5")
    for name in ("block1_conv1", "block3_conv2", "block5_conv3"):
        np.testing.assert_array_equal(model.params[name]["kernel"], np.asarray(net.get_layer(name).kernel))
        np.testing.assert_array_equal(model.params[name]["bias"], np.asarray(net.get_layer(name).bias))


def test_from_keras_refuses_subclassed_multi_input_and_empty_models_in_one_line():
    """A subclassed model called once was told to be called once; two inputs failed inside Keras
    ("Output with path `1` is not connected to `inputs`", after Keras' own warning); a model of no
    layers, with "`outputs` argument cannot be empty"."""
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.c = keras.layers.Conv2D(2, 3)

        def call(self, x):
            return self.c(x)

    sub = Sub()
    sub(np.zeros((1, 8, 8, 3), np.float32))
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    two = keras.Model([a, b], keras.layers.Add(name="add")([a, b]))
    cases = [(sub, "is a subclassed model, without a graph of layers to read; jaxviz needs a functional or "
                   "Sequential model"),
             (two, "takes 2 inputs; jaxviz renders models of one image input"),
             (keras.Model(a, a), "has no layers jaxviz can render")]
    for net, message in cases:
        with pytest.raises(JaxvizError, match=message) as e:
            from_keras(net)
        assert "\n" not in str(e.value)


def test_keras_application_refuses_odd_weights_and_include_top_in_one_line(tmp_path):
    """weights=3 or b"..." were pathlib's TypeError; "" was "weights file  is a folder", and through
    load("keras:NAME", "") an ImageNet download; include_top="no" was taken as True; a build failing
    with random weights asked for a weights file."""
    for bad in (3, b"w.h5"):
        with pytest.raises(JaxvizError, match=f"weights must be None, \"imagenet\" or the path of a Keras weights "
                                              f"file of MobileNetV2, not {type(bad).__name__}"):
            keras_application("MobileNetV2", bad)
    for call in (lambda: keras_application("MobileNetV2", ""), lambda: load("keras:MobileNetV2", "")):
        with pytest.raises(JaxvizError, match="weights is an empty path; give a Keras weights file of MobileNetV2"):
            call()
    with pytest.raises(JaxvizError, match="include_top must be True or False, not 'no'"):
        keras_application("MobileNetV2", include_top="no")
    with pytest.raises(JaxvizError, match=r"could not build MobileNetV2 \(Input size must be at least 32x32.*\); "
                                          r"check input_size and include_top$"):
        keras_application("MobileNetV2", include_top=True, input_size=16)


def test_a_non_square_fixed_input_is_said_and_taken_at_a_square_size(caplog):
    """A model declaring 32 x 48 px inputs was taken at 224 px without a word."""
    x = keras.Input((32, 48, 3))
    net = keras.Model(x, keras.layers.Conv2D(2, 3, name="conv")(x))
    model = from_keras(net, input_size=40)
    assert "declares 32 x 48 px inputs; jaxviz renders square images, so its layers are taken at 40 px" in caplog.text
    assert model.layer("conv").shape == (38, 38, 2)
    caplog.clear()
    x = keras.Input((32, 32, 3))
    from_keras(keras.Model(x, keras.layers.Conv2D(2, 3, name="conv")(x)))
    assert "declares" not in caplog.text


def test_a_channels_first_model_is_refused_in_one_line():
    """Its (C, H, W) layers were read as (H, W, C): with a transposing preprocess it rendered columns of
    the image as channels; without one, Keras' error came after a notice of a "3 x any px" input."""
    x = keras.Input((3, None, None))
    net = keras.Model(x, keras.layers.Conv2D(4, 3, data_format="channels_first", name="cf")(x))
    with pytest.raises(JaxvizError, match=r"Keras model .* has channels-first layers \(cf\); jaxviz reads layers as "
                                          r"\(H, W, channels\): build it with data_format='channels_last'"):
        from_keras(net, lambda rgb: rgb.transpose(2, 0, 1), input_size=16)


def test_a_weights_file_of_another_model_says_which_variable_did_not_fit(tmp_path):
    """Keras' first line ended "Example error message for object <Conv2D name=conv>:", its reason cut off;
    a file another process was writing was "Unable to synchronously open file (unable to lock file ...)"."""
    x = keras.Input((None, None, 3))
    keras.Model(x, keras.layers.Conv2D(4, 3, use_bias=False, name="c")(x)).save_weights(tmp_path / "tiny.weights.h5")
    with pytest.raises(JaxvizError, match=r"could not build MobileNetV3Small with weights .*tiny.weights.h5 \(.*"
                                          r"<Conv2D name=conv, built=True>: The shape of the target variable .*"
                                          r"value\.shape=\(3, 3, 3, 4\)\.\); give MobileNetV3Small's Keras weights file$"):
        keras_application("MobileNetV3Small", tmp_path / "tiny.weights.h5")
    import fcntl

    with open(tmp_path / "tiny.weights.h5", "rb") as held:  # HDF5's lock, as a Keras process saving it holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(JaxvizError, match="another process has it open for writing; wait until"):
            keras_application("MobileNetV3Small", tmp_path / "tiny.weights.h5")
