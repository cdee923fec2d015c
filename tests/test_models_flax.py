"""The Flax adapters (jaxviz.models.linen, jaxviz.models.nnx) and the plain-function adapter:
one small CNN written in linen and in NNX with the same weights gives the same layers,
activations and rendered images."""
import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import engine
from jaxviz.errors import JaxvizError
from jaxviz.models.function import from_function
from jaxviz.models.linen import from_linen
from jaxviz.models.nnx import from_nnx
from jaxviz.objectives import channel, class_logit, deepdream, neuron

SIZE = 16
RECIPE = engine.SEED._replace(size=SIZE, steps=4)
LAYERS = ["stem", "block/conv", "block/bn", "block", "down", "output"]


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Conv(8, (3, 3), name="conv")(x)
        y = nn.BatchNorm(use_running_average=not train, name="bn")(y)
        return nn.relu(x + y)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
        x = LinenBlock(name="block")(x, train)
        x = nn.Conv(16, (3, 3), strides=2, name="down")(x)
        return nn.relu(x) * 0.5


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(8, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.bn(self.conv(x)))


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.block = NNXBlock(rngs)
        self.down = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)

    def __call__(self, x):
        x = self.block(nnx.relu(self.stem(x)))
        return nnx.relu(self.down(x)) * 0.5


@pytest.fixture(scope="module")
def models():
    """The linen net with random weights and non-trivial batch statistics, and the NNX net given the same."""
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    k1, k2 = jax.random.split(jax.random.key(1))
    stats = {"block": {"bn": {"mean": jax.random.normal(k1, (8,)), "var": jax.random.uniform(k2, (8,), minval=0.5, maxval=2.0)}}}
    variables = {"params": variables["params"], "batch_stats": stats}
    p = variables["params"]
    net = NNXNet(nnx.Rngs(0))
    for mod, src in ((net.stem, p["stem"]), (net.block.conv, p["block"]["conv"]), (net.down, p["down"])):
        mod.kernel[...], mod.bias[...] = src["kernel"], src["bias"]
    p["block"]["bn"]["scale"] = p["block"]["bn"]["scale"] + 0.3
    bn = net.block.bn
    bn.scale[...], bn.bias[...] = p["block"]["bn"]["scale"], p["block"]["bn"]["bias"]
    bn.mean[...], bn.var[...] = stats["block"]["bn"]["mean"], stats["block"]["bn"]["var"]
    linen = from_linen(LinenNet(), variables, input_size=SIZE, apply_kwargs={"train": False})
    return linen, from_nnx(net, input_size=SIZE)


def test_same_layer_table(models):
    linen, nnx_model = models
    assert [l.name for l in linen.layers] == LAYERS
    assert linen.layers == nnx_model.layers
    assert linen.layer("down").shape == (SIZE // 2, SIZE // 2, 16)
    assert linen.min_size("down") == 2 and linen.min_size("stem") == 1


def test_same_activations_in_eval_mode(models):
    linen, nnx_model = models
    x = jax.random.uniform(jax.random.key(2), (SIZE, SIZE, 3)) * 255
    a = linen.activations(linen.params, x, tuple(LAYERS))
    b = nnx_model.activations(nnx_model.params, x, tuple(LAYERS))
    for name in LAYERS:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-4)
    # eval mode: batch norm uses the running statistics (not the image's own)
    conv = a["block/conv"]
    stats = linen.params["batch_stats"]["block"]["bn"]
    scale, bias = linen.params["params"]["block"]["bn"]["scale"], linen.params["params"]["block"]["bn"]["bias"]
    want = (conv - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * scale + bias
    np.testing.assert_allclose(a["block/bn"], want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_stops_after_the_deepest_requested_layer(models, kind):
    model = models[0] if kind == "linen" else models[1]
    x = jnp.zeros((SIZE, SIZE, 3))
    convs = lambda names: str(jax.make_jaxpr(lambda p, x: model.activations(p, x, names))(model.params, x)).count(
        "conv_general_dilated")
    assert convs(("stem",)) == 1
    assert convs(("block/conv",)) == 2
    assert convs(("down", "stem")) == 3


def test_same_rendered_images_and_batched_equals_per_filter(models):
    linen, nnx_model = models
    obj = channel("block", [0, 3, 5])
    a = engine.render(linen, obj, RECIPE)
    b = engine.render(nnx_model, obj, RECIPE)
    np.testing.assert_allclose(a.images, b.images, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-4)
    assert np.all(np.isfinite(a.trace)) and np.all(a.trace[:, -1] > a.trace[:, 0])
    for i, n in enumerate([0, 3, 5]):
        one = engine.render(nnx_model, channel("block", n), RECIPE)
        np.testing.assert_allclose(one.images[0], b.images[i], rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_gradients_finite_under_vmap(models, kind):
    model = models[0] if kind == "linen" else models[1]
    xs = jax.random.uniform(jax.random.key(3), (2, SIZE, SIZE, 3)) * 255
    f = lambda x: model.activations(model.params, x, ("down",))["down"][..., 1].mean()
    g = jax.jit(jax.vmap(jax.grad(f)))(xs)
    assert g.shape == xs.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


def test_unknown_layer_lists_the_valid_ones(models):
    for model in models:
        with pytest.raises(JaxvizError) as e:
            engine.render(model, channel("block/conv2", 0), RECIPE)
        msg = str(e.value)
        assert "\n" not in msg and "block/conv2" in msg and "block/bn, block, down" in msg


def test_function_adapter():
    w = jax.random.normal(jax.random.key(4), (3, 5))
    fn = lambda p, x: {"lin": x @ p, "act": jnp.tanh(x @ p)}
    m = from_function(fn, w, input_size=8)
    assert [(l.name, l.shape) for l in m.layers] == [("lin", (8, 8, 5)), ("act", (8, 8, 5))]
    single = from_function(lambda p, x: jnp.tanh(x @ p), w, input_size=8)
    assert single.layers[0].name == "output"
    r = engine.render(single, deepdream("output"), RECIPE._replace(size=8, steps=2))
    assert r.images.shape == (1, 8, 8, 3) and r.trace[0, 1] > r.trace[0, 0]
    with pytest.raises(JaxvizError, match="returns no layer 'nope'; it returns: lin, act"):
        from_function(fn, w, ["nope"], input_size=8)


def test_linen_logits_alias_for_class_logit():
    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4, name="head")(nn.relu(nn.Conv(6, (3, 3), name="conv")(x)).mean(axis=(1, 2)))

    variables = Classifier().init(jax.random.key(5), jnp.zeros((1, 8, 8, 3)))
    model = from_linen(Classifier(), variables, input_size=8, logits="head")
    assert [l.name for l in model.layers] == ["conv", "head", "output", "logits"]
    x = jax.random.uniform(jax.random.key(6), (8, 8, 3))
    out = model.activations(model.params, x, ("logits", "head"))
    np.testing.assert_array_equal(out["logits"], out["head"])
    r = engine.render(model, class_logit([1, 2]), RECIPE._replace(size=8, steps=3))
    assert np.all(r.trace[:, -1] > r.trace[:, 0])


def test_min_size_is_searched_where_the_downsampling_bound_fails():
    kernel = jax.random.normal(jax.random.key(7), (3, 3, 3, 2))
    valid = lambda p, x: {"conv": jax.lax.conv_general_dilated(x[None], p, (1, 1), "VALID",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]}
    m = from_function(valid, kernel, input_size=10)
    assert m.layer("conv").shape == (8, 8, 2) and m.min_size("conv") == 3  # the bound, 2 px, gives no output
    w = jax.random.normal(jax.random.key(8), (4 * 4 * 3, 5))
    flat = lambda p, x: {"pool": x[::2, ::2], "fc": x[::2, ::2].reshape(-1) @ p}
    m = from_function(flat, w, input_size=8)
    assert m.min_size("fc") == 7  # a flatten needs the full 4x4 grid: 7 or 8 px
    assert m.min_size("pool") == 7  # and a plain function runs whole, whatever the layer
    with pytest.raises(JaxvizError, match="size 4 is too small for fc; the minimum is 7 px"):
        engine.render(m, deepdream("fc"), RECIPE._replace(size=4, steps=1))


@pytest.mark.parametrize("answer, message", [(lambda n: None, "returned None"), (lambda n: 3.5, "returned 3.5"),
                                             (lambda n: 0, "returned 0"), (lambda n: {}[n], "failed (KeyError")])
def test_a_models_own_min_size_is_checked_when_asked(answer, message):
    """A min_size giving None or a float, or raising, failed in a size comparison with Python's TypeError."""
    kernel = jax.random.normal(jax.random.key(7), (3, 3, 3, 2))
    m = from_function(lambda p, x: {"conv": x @ p[0, 0]}, kernel, input_size=8, min_size=answer)
    with pytest.raises(JaxvizError, match=f"the model's min_size\\('conv'\\) {message.replace('(', '.')}") as e:
        engine.render(m, deepdream("conv"), RECIPE._replace(size=8, steps=1))
    assert "\n" not in str(e.value)
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    linen = from_linen(LinenNet(), variables, input_size=SIZE, min_size=lambda n: np.int64(4))
    assert linen.min_size("stem") == 4 and type(linen.min_size("stem")) is int


def test_linen_module_left_in_training_mode_gets_one_line():
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(JaxvizError) as e:
        from_linen(LinenNet(), variables, input_size=SIZE, apply_kwargs={"train": True})
    assert "\n" not in str(e.value) and "apply_kwargs" in str(e.value) and "LinenNet failed" in str(e.value)


def test_adapters_refuse_bad_input_sizes_and_outputs_in_one_line():
    w = jax.random.normal(jax.random.key(4), (3, 5))
    for size in (0, -3, 8.0):
        with pytest.raises(JaxvizError, match="input_size must be"):
            from_function(lambda p, x: x @ p, w, input_size=size)
    with pytest.raises(JaxvizError, match="returns a tuple; return a dict"):
        from_function(lambda p, x: (x @ p, x), w, input_size=8)

    class Flat(nnx.Module):
        def __init__(self):
            self.fc = nnx.Linear(8 * 8 * 3, 2, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.fc(x.reshape(x.shape[0], -1))

    with pytest.raises(JaxvizError, match="Flat failed on a 16x16x3 input") as e:
        from_nnx(Flat(), input_size=16)
    assert "\n" not in str(e.value)


def test_adapters_refuse_wrong_types_in_one_line():
    """Each of these failed later, deep in a render, with Python's TypeError (or silently made a
    model of no layers, or of the layers "c", "o", ... of the string "conv")."""
    w = jax.random.normal(jax.random.key(4), (3, 5))
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    cases = [
        (lambda: from_function(5, w, input_size=8), "fn must be a function, not 5"),
        (lambda: from_function(lambda p, x: x @ p, w, input_size=8, min_size=3), "min_size must be a function or None"),
        (lambda: from_function(lambda p, x: x @ p, w, layers="output", input_size=8), "not the string 'output'"),
        (lambda: from_function(lambda p, x: None, w, input_size=8), "returns no array"),
        (lambda: from_function(lambda p, x: {}, w, input_size=8), "returns no array"),
        # keys that no objective text, --layers or file name can spell (a TypeError in a render before)
        (lambda: from_function(lambda p, x: {3: x @ p}, w, input_size=8), "returns a layer keyed 3;"),
        (lambda: from_function(lambda p, x: {("a", 1): x @ p}, w, input_size=8), "layer keyed ('a', 1);"),
        (lambda: from_function(lambda p, x: {"": x @ p}, w, input_size=8), "returns a layer keyed '';"),
        (lambda: from_function(lambda p, x: {"a\nb": x @ p}, w, input_size=8), "returns a layer keyed 'a\\\\nb';"),
        (lambda: from_linen("net", variables, input_size=SIZE), "from_linen needs a flax.linen Module, not 'net'"),
        (lambda: from_linen(LinenNet(), variables, input_size=SIZE, apply_kwargs=[("train", False)]),
         "apply_kwargs must be a dict"),
        (lambda: from_linen(LinenNet(), variables, input_size=SIZE, min_size=8), "min_size must be a function"),
        (lambda: from_nnx(LinenNet(), input_size=SIZE), "from_nnx needs a flax.nnx Module, not LinenNet()"),
        (lambda: from_nnx(NNXNet(nnx.Rngs(0)), input_size=SIZE, preprocess=2), "preprocess must be a function"),
    ]
    for make, message in cases:
        with pytest.raises(JaxvizError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            make()
        assert "\n" not in str(e.value)
    assert from_function(lambda p, x: x @ p, w, layers=["output", "output"], input_size=8).layers == (
        from_function(lambda p, x: x @ p, w, input_size=8).layers)  # one layer, not two of one name


@pytest.mark.parametrize("field, value, message", [
    ("layers", [("output", (8, 8, 5))], "must be a tuple of jaxviz.models.LayerInfo"),
    ("layers", None, "must be a tuple of jaxviz.models.LayerInfo"),
    ("min_size", None, "the min_size of model function must be a function"),
    ("preact", 3, "the preact of model function must be a function or None"),
    ("prepare", 3, "the prepare of model function must be a function or None"),
    ("input_size", "8", "the input_size of model function must be an integer"),
    ("name", ["x"], "the model's name must be a str"),
    ("activations", lambda p, x, names: {}, "give no array for layer 'output'"),
])
def test_a_hand_built_model_with_a_wrong_field_is_one_line(field, value, message):
    """A Model(...) written by hand or _replace'd: each failed in the engine with Python's TypeError,
    AttributeError or KeyError (an unhashable name in jax.jit's)."""
    import jaxviz

    w = jax.random.normal(jax.random.key(4), (3, 5))
    model = from_function(lambda p, x: x @ p, w, input_size=8)._replace(**{field: value})
    with pytest.raises(JaxvizError, match=message):
        jaxviz.render(model, "output:0", jaxviz.SEED._replace(size=8, steps=1))


def test_weights_holding_nan_or_infinity_are_refused_naming_the_array():
    """A diverged model's weights: every image came out NaN, said only as "not finite" (and the
    dataset examples said "the units do not depend on the input")."""
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    bad = {**variables, "params": {**variables["params"], "down": {**variables["params"]["down"],
                                                                   "bias": jnp.full((16,), jnp.inf)}}}
    net = NNXNet(nnx.Rngs(0))
    net.stem.kernel[...] = net.stem.kernel[...].at[0, 0, 0, :3].set(jnp.nan)
    cases = [(lambda: from_linen(LinenNet(), bad, input_size=SIZE),
              r"LinenNet hold 16 .* in \['params'\]\['down'\]\['bias'\]"),
             (lambda: from_nnx(net, input_size=SIZE), r"NNXNet hold 3 .* in \['stem'\]\['kernel'\]"),
             (lambda: from_function(lambda p, x: x @ p, jnp.ones((3, 2)).at[0, 0].set(jnp.nan), input_size=8),
              r"the model function hold 1 NaN or infinite value\(s\) in its one array")]
    for make, message in cases:
        with pytest.raises(JaxvizError, match="the weights of .*" + message) as e:
            make()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
def test_a_layer_that_is_not_floating_point_is_refused(dtype):
    """Integer and bool layers have no gradient: the images stayed the start's noise, silently
    (complex ones failed in jax.grad)."""
    m = from_function(lambda p, x: {"a": (x * p).astype(dtype), "b": x * p}, jnp.float32(3.0), input_size=8)
    with pytest.raises(JaxvizError, match=f"layer a of model function gives {jnp.dtype(dtype)} activations; "
                                          "objectives need floating-point ones"):
        engine.render(m, channel("a", 0), RECIPE._replace(size=8))
    assert engine.render(m, channel("b", 0), RECIPE._replace(size=8, steps=1)).images.shape == (1, 8, 8, 3)


def test_a_logits_name_that_is_no_layer_is_refused_at_once():
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(JaxvizError, match="logits='hed' names no layer of LinenNet; its layers: stem"):
        from_linen(LinenNet(), variables, input_size=SIZE, logits="hed")


def test_a_global_pool_does_not_raise_the_minimum_size_of_later_layers():
    """A squeeze-excite block's 1x1 pool exists at any size: the layers after it keep their own minimum."""
    kernel = jax.random.normal(jax.random.key(9), (3, 3, 3, 4))
    conv = lambda x: jax.lax.conv_general_dilated(x[None], kernel, (2, 2), "SAME",
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]

    def fn(p, x):
        h = conv(x)  # 16 -> 8
        se = h.mean(axis=(0, 1), keepdims=True)  # 1x1
        return {"down": h, "se": se, "scaled": h * se}

    m = from_function(fn, jnp.float32(0.0), input_size=16)
    assert m.layer("se").shape == (1, 1, 4) and [m.min_size(n) for n in ("down", "se", "scaled")] == [2, 2, 2]


def test_a_layer_inside_nn_remat_is_one_line_in_a_render_and_in_the_examples_pass(tmp_path):
    """Its output, caught inside the checkpoint's own trace, leaked out: JAX's UnexpectedTracerError
    from the step's compile (and from the examples pass's first batch)."""
    from PIL import Image

    import jaxviz
    from jaxviz import examples

    class Remat(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.relu(nn.remat(nn.Conv)(4, (3, 3), name="rc")(x))

    net = Remat()
    model = from_linen(net, net.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))), input_size=SIZE)
    message = r"a layer of model Remat \(rc\) is computed inside a JAX transformation of the model's own"
    for recipe in (jaxviz.SEED, jaxviz.LUCID):
        with pytest.raises(JaxvizError, match=message):
            jaxviz.render(model, "rc:0", recipe._replace(size=SIZE, steps=1))
    Image.new("RGB", (SIZE, SIZE), (90, 30, 200)).save(tmp_path / "a.png")
    with pytest.raises(JaxvizError, match=message):
        examples.collect(model, str(tmp_path), ["rc"], examples.Config(size=SIZE))
    assert jaxviz.render(model, "output:0", jaxviz.SEED._replace(size=SIZE, steps=1)).tiles.shape == (1, SIZE, SIZE, 3)


def test_a_linen_model_with_nn_scan_is_made_and_its_layers_outside_the_scan_render():
    """from_linen failed outright (UnexpectedTracerError, as "failed on a 16x16x3 input"): the
    layer table caught the scan body's outputs, whose tracers cannot leave the scan."""
    import jaxviz

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.relu(nn.Conv(4, (3, 3), name="conv")(x)), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (1, 1), name="stem")(x)
            scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            return scan(name="blocks")(x, None)[0]

    net = Net()
    model = from_linen(net, net.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))), input_size=SIZE)
    names = [l.name for l in model.layers]
    assert names[0] == "stem" and names[-1] == "output"
    recipe = jaxviz.SEED._replace(size=SIZE, steps=1)
    for name in ("stem", "output"):
        assert jaxviz.render(model, f"{name}:0", recipe).tiles.shape == (1, SIZE, SIZE, 3)
    for name in names[1:-1]:  # the scan body's, where the table still lists one: one line
        with pytest.raises(JaxvizError, match=r"is computed inside a JAX transformation of the model's own"):
            jaxviz.render(model, f"{name}:0", recipe)


def test_the_function_adapter_refuses_odd_layer_lists_and_names_and_skips_other_data():
    """layers=3 was Python's TypeError; layers=[] a model of no layers; a layer " a " could not be
    named in an objective's text (stripped); a str beside the arrays failed as "check input_size"."""
    w = jax.random.normal(jax.random.key(4), (3, 5))
    for layers in (3, [], ()):
        with pytest.raises(JaxvizError, match="layers must be a list of the layer names to render"):
            from_function(lambda p, x: x @ p, w, layers=layers, input_size=8)
    with pytest.raises(JaxvizError, match="returns a layer keyed ' a '; key every layer by a printable name without"):
        from_function(lambda p, x: {" a ": x @ p}, w, input_size=8)
    m = from_function(lambda p, x: {"a": x @ p, "note": "debug"}, w, input_size=8)
    assert [l.name for l in m.layers] == ["a"]


def test_outputs_whose_first_axis_is_not_the_batch_are_left_out_and_named(caplog):
    """A submodule returning batch statistics (mean over the batch: (H, W, C)) or a transposed
    output ((H, 1, W, C)) was listed as a layer whose [0] is one row, not the image's activation."""

    class Stats(nn.Module):
        def __call__(self, x):
            return x.mean(axis=0)

    class Swap(nn.Module):
        def __call__(self, x):
            return x.transpose(1, 0, 2, 3)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
            Stats(name="stats")(x)
            Swap(name="swap")(x)
            return x

    class NNXStats(nnx.Module):
        def __call__(self, x):
            return x.mean(axis=0)

    class NNXNet(nnx.Module):
        def __init__(self, rngs):
            self.conv, self.stats = nnx.Conv(3, 4, (3, 3), rngs=rngs), NNXStats()

        def __call__(self, x):
            x = nnx.relu(self.conv(x))
            self.stats(x)
            return x

    import jaxviz

    net = Net()
    variables = net.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    made = {"linen": lambda: from_linen(net, variables, input_size=SIZE),
            "nnx": lambda: from_nnx(NNXNet(nnx.Rngs(0)), input_size=SIZE)}
    for kind, make in made.items():
        caplog.clear()
        model = make()
        names = [l.name for l in model.layers]
        assert "stats" not in names and "swap" not in names and names[-1] == "output", (kind, names)
        assert "left out of its layers, as their first axis is not the batch" in caplog.text
        assert "stats" in caplog.text and (kind == "nnx" or "swap" in caplog.text)
        with pytest.raises(JaxvizError, match="unknown layer 'stats'"):
            jaxviz.render(model, "stats:0", RECIPE)
        assert jaxviz.render(model, "conv:0", RECIPE).tiles.shape == (1, SIZE, SIZE, 3)
    with pytest.raises(JaxvizError, match=r"logits='stats': that output's first axis is not the batch"):
        from_linen(net, variables, input_size=SIZE, logits="stats")


def test_weights_holding_a_python_float_nan_or_infinity_are_refused_too():
    """A scale kept as a Python float has no dtype: float('nan') passed the check, and the render
    said only that the images came out not finite (lower the step size)."""
    for bad in (float("nan"), [float("inf")]):
        with pytest.raises(JaxvizError, match=r"the weights of the model function hold 1 NaN or infinite value\(s\) "
                                              r"in \['s'\]"):
            from_function(lambda p, x: x * jnp.asarray(p["s"]).sum(), {"s": bad}, input_size=8)
    assert from_function(lambda p, x: x * p["s"], {"s": 2.0, "n": 3}, input_size=8).layers[0].shape == (8, 8, 3)


def test_a_linen_model_computing_in_float16_that_overflows_is_named():
    """Its images came out not finite on the seed's 0-255 pixels, told to lower the step size."""
    import jaxviz

    class Half(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(4, (3, 3), dtype=jnp.float16, param_dtype=jnp.float16)(x * 1000)

    net = Half()
    model = from_linen(net, net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))), input_size=8)
    with pytest.raises(JaxvizError, match=r"not finite \(NaN or infinity\); layer Conv_0 of model Half computes in "
                                          r"float16, and float16 overflows past 65504: give the model float32"):
        jaxviz.render(model, "Conv_0:0", jaxviz.SEED._replace(size=8, steps=1))


def test_an_nnx_module_that_changes_its_state_in_a_forward_pass_is_refused_when_made():
    """Batch norm or dropout switched on by a call argument (which nnx.view cannot reach), or a random
    draw in __call__: the model was made, and every render then failed, said to be a gradient jaxviz
    cannot take ("write those layers in JAX operations")."""
    class BNFlag(nnx.Module):
        def __init__(self, rngs):
            self.conv, self.bn = nnx.Conv(3, 4, (3, 3), rngs=rngs), nnx.BatchNorm(4, rngs=rngs)

        def __call__(self, x, train=True):
            return nnx.relu(self.bn(self.conv(x), use_running_average=not train))

    class DropoutFlag(nnx.Module):
        def __init__(self, rngs):
            self.conv, self.drop = nnx.Conv(3, 4, (3, 3), rngs=rngs), nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x, train=True):
            return self.drop(self.conv(x), deterministic=not train)

    class NeedsFlag(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)

        def __call__(self, x, train):
            return self.conv(x)

    for cls, what in ((BNFlag, "BatchStat bn/mean"), (DropoutFlag, "RngCount drop/rngs/count")):
        with pytest.raises(JaxvizError, match=f"{cls.__name__} changes its state in a forward pass \\({what}\\), as "
                                              "batch norm in training mode.*make __call__'s defaults eval mode"):
            from_nnx(cls(nnx.Rngs(0)), input_size=SIZE)
    with pytest.raises(JaxvizError, match=r"missing 1 required positional argument: 'train'.*give __call__'s other "
                                          r"arguments eval-mode defaults \(train=False\)"):
        from_nnx(NeedsFlag(nnx.Rngs(0)), input_size=SIZE)
    model = from_nnx(NNXNet(nnx.Rngs(0)), input_size=SIZE)  # batch norm and dropout attributes: put in eval mode
    assert engine.render(model, channel("block/bn", 0), RECIPE._replace(steps=1)).images.shape == (1, SIZE, SIZE, 3)


def test_linen_variables_that_are_not_init_s_whole_dict_are_named():
    """variables['params'] alone (a frequent slip) or None: the line said to pass apply_kwargs for eval mode."""
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(JaxvizError, match=r"variables holds no 'params' collection: pass all that module.init "
                                          r"returns .*not variables\['params'\]"):
        from_linen(LinenNet(), variables["params"], input_size=SIZE)
    with pytest.raises(JaxvizError, match=r"^variables must be the dict that module.init returns .*not None$"):
        from_linen(LinenNet(), None, input_size=SIZE)


def test_a_model_runs_under_jax_enable_x64():
    """A model module of yours that turns on jax_enable_x64: the quality recipe's transforms failed in
    lax.dynamic_slice (int64 and int32 offsets), then made float64 images a float32 model refused, and
    the dataset examples' receptive field fed it float64 noise; all in tracebacks."""
    from jaxviz import topk

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 4), jnp.float32)
    conv = lambda p, x: jax.lax.conv_general_dilated(x[None], p, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    with jax.enable_x64(True):
        model = from_function(lambda p, x: {"conv": jax.nn.relu(conv(p, x))}, kernel, input_size=SIZE)
        r = engine.render(model, channel("conv", [0, 1]), engine.LUCID._replace(size=SIZE, steps=2))
        assert r.images.shape == (2, SIZE, SIZE, 3) and r.images.dtype == jnp.float32
        assert topk.receptive_field(model, "conv", SIZE).height == 3


def test_a_preprocess_the_seed_recipe_skips_is_named_when_the_model_needs_it():
    """The seed recipe feeds raw pixels, not through preprocess: a model taking one grey channel
    failed with "render at a size it accepts", at the very size it was made at."""
    kernel = jax.random.normal(jax.random.key(0), (3, 3, 1, 4), jnp.float32)
    grey = lambda p, x: {"conv": jax.lax.conv_general_dilated(x[None], p, (1, 1), "SAME",
                                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]}
    model = from_function(grey, kernel, preprocess=lambda x: x.mean(-1, keepdims=True), input_size=SIZE)
    with pytest.raises(JaxvizError, match=r"the seed recipe feeds a model its raw pixels \(16x16x3\) without its "
                                          r"preprocess.*--recipe lucid"):
        engine.render(model, channel("conv", 0), RECIPE)
    assert engine.render(model, channel("conv", 0), engine.LUCID._replace(size=SIZE, steps=1)).images.shape == (
        1, SIZE, SIZE, 3)
    flat = from_function(lambda p, x: {"dense": x.reshape(-1) @ p}, jnp.ones((SIZE * SIZE * 3, 2)),
                         preprocess=lambda x: 2 * x, input_size=SIZE)
    with pytest.raises(JaxvizError, match="render at a size it accepts"):  # a size it cannot take: that line still
        engine.render(flat, neuron("dense", 0), RECIPE._replace(size=24))


def test_an_nnx_model_with_nnx_scan_or_nnx_remat_inside_renders_past_them():
    """nnx.scan over stacked layers and nnx.remat write their variables back into the module: merged
    from the traced params' own variables, that was "from a different trace level" in every render,
    said to be a gradient jaxviz cannot take."""
    class Stack(nnx.Module):
        def __init__(self, rngs):
            @nnx.split_rngs(splits=3)
            @nnx.vmap(in_axes=0, out_axes=0)
            def make(rngs):
                return nnx.Conv(4, 4, (3, 3), rngs=rngs)

            self.stem, self.layers = nnx.Conv(3, 4, (3, 3), rngs=rngs), make(rngs)
            self.head = nnx.Conv(4, 4, (3, 3), rngs=rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
            def body(layer, x):
                return nnx.relu(layer(x))

            return self.head(body(self.layers, self.stem(x)))

    class Remat(nnx.Module):
        def __init__(self, rngs):
            self.stem, self.bn = nnx.Conv(3, 4, (3, 3), rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
            self.head = nnx.Conv(4, 4, (3, 3), rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.remat(lambda conv, bn, x: nnx.relu(bn(conv(x))))(self.stem, self.bn, x))

    for cls in (Stack, Remat):
        model = from_nnx(cls(nnx.Rngs(0)), input_size=SIZE)
        assert [l.name for l in model.layers][-2:] == ["head", "output"], cls
        r = engine.render(model, channel("head", [0, 1]), RECIPE._replace(steps=2))
        assert r.images.shape == (2, SIZE, SIZE, 3) and np.isfinite(np.asarray(r.values)).all()


def test_a_root_returning_its_submodule_named_output_gives_one_layer_output():
    class Net(nn.Module):
        soft: bool = False

        @nn.compact
        def __call__(self, x):
            y = nn.Conv(5, (3, 3), name="output")(nn.relu(nn.Conv(4, (3, 3), name="c")(x)))
            return jax.nn.softmax(y) if self.soft else y

    def names(soft):
        v = Net(soft).init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
        return [layer.name for layer in from_linen(Net(soft), v, input_size=SIZE).layers]

    assert names(False) == ["c", "output"]
    assert names(True) == ["c", "output", "output@1"]  # another array: both kept
