"""Objectives: each value against a direct computation, the algebra, the text spelling, bad input."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import objectives as o
from jaxviz.errors import JaxvizError
from jaxviz.model import VGG, VGGSpec
from jaxviz.models import vgg
from jaxviz.objectives import Probe

SMALL_TOP = VGGSpec("vgg16", (2, 2, 3, 3, 3), fc=(8, 8), classes=5, top_input=32)


@pytest.fixture(scope="module")
def topped():
    """VGG16 with a small random classifier top at 32 px (fc 8, 8, 5 classes)."""
    params = VGG(SMALL_TOP, include_top=True).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    return vgg(params, SMALL_TOP)


def _value(model, obj, x, image=None):
    probe = Probe(model, model.params, x if image is None else image, x)
    return float(obj.term.value(probe, jax.tree.map(lambda a: a[0], obj.batched_args())))


def test_each_objective_against_a_direct_computation(topped):
    x = jax.random.normal(jax.random.key(1), (32, 32, 3)) * 50
    acts = topped.activations(topped.params, x, ("block2_conv1", "logits", "fc1"))
    a = np.asarray(acts["block2_conv1"])
    assert _value(topped, o.channel("block2_conv1", 7), x) == pytest.approx(np.maximum(a[..., 7], 0).mean(), rel=1e-4)
    assert _value(topped, o.neuron("block2_conv1", 7), x) == pytest.approx(a[8, 8, 7], rel=1e-4, abs=1e-4)
    assert _value(topped, o.neuron("block2_conv1", 7, y=1, x=2), x) == pytest.approx(a[1, 2, 7], rel=1e-4, abs=1e-4)
    v = np.linspace(-1, 1, 128).astype(np.float32)
    assert _value(topped, o.direction("block2_conv1", v), x) == pytest.approx((a @ v).mean(), rel=1e-4)
    assert _value(topped, o.deepdream("block2_conv1"), x) == pytest.approx((a ** 2).mean(), rel=1e-4)
    # class_logit: the pre-softmax value, computed by hand from the top's weights
    p = jax.tree.map(np.asarray, topped.params)
    flat = np.asarray(topped.activations(p, x, ("block5_pool",))["block5_pool"]).reshape(-1)
    h = np.maximum(flat @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    h = np.maximum(h @ p["fc2"]["kernel"] + p["fc2"]["bias"], 0)
    logits = h @ p["predictions"]["kernel"] + p["predictions"]["bias"]
    assert _value(topped, o.class_logit(3), x) == pytest.approx(logits[3], rel=1e-4, abs=1e-5)
    img = jax.random.uniform(jax.random.key(2), (32, 32, 3))
    i = np.asarray(img)
    tv = np.abs(np.diff(i, axis=0)).mean() + np.abs(np.diff(i, axis=1)).mean()
    assert _value(topped, o.total_variation(), x, img) == pytest.approx(tv, rel=1e-5)
    assert _value(topped, o.l2(0.5), x, img) == pytest.approx(np.sqrt(((i - 0.5) ** 2).mean()), rel=1e-5)


def test_weighted_sum_is_the_sum_of_the_weighted_parts(topped):
    x = jax.random.normal(jax.random.key(3), (32, 32, 3)) * 50
    a, b, c = o.channel("block2_conv1", 3), o.deepdream("block1_conv2"), o.total_variation()
    combo = 2 * a - 0.5 * b + c * 3
    want = 2 * _value(topped, a, x) - 0.5 * _value(topped, b, x) + 3 * _value(topped, c, x)
    assert _value(topped, combo, x) == pytest.approx(want, rel=1e-5)
    assert combo.term.layers() == ("block2_conv1", "block1_conv2")


def test_batches_broadcast_and_mismatches_are_refused():
    obj = o.channel("block2_conv1", [1, 2, 3]) - 0.1 * o.total_variation()
    assert len(obj) == 3
    with pytest.raises(JaxvizError, match="cannot add objectives of 3 and 2"):
        o.channel("block2_conv1", [1, 2, 3]) + o.channel("block1_conv1", [1, 2])


def test_key_ids_are_layer_index_and_channel(topped):
    ids = o.channel("block2_conv1", [4, 9]).key_ids(topped)
    np.testing.assert_array_equal(ids, [[3, 4], [3, 9]])  # block1_conv1, conv2, pool, block2_conv1


def test_text_spelling():
    assert o.parse("block3_conv1:0-3").term == o.Channel("block3_conv1")
    np.testing.assert_array_equal(o.parse("block3_conv1:0-3").args, [0, 1, 2, 3])
    assert o.parse("neuron:block4_conv1:5").term == o.Neuron("block4_conv1")
    assert o.parse("deepdream:block4_conv1").term == o.DeepDream("block4_conv1")
    np.testing.assert_array_equal(o.parse("logit:1,7").args, [1, 7])
    np.testing.assert_array_equal(o.parse("block1_conv1:0-3,2").args, [0, 1, 2, 3])  # as --filters: each once
    np.testing.assert_array_equal(o.parse("logit:7,1,7").args, [7, 1])
    np.testing.assert_array_equal(o.parse("block1_conv1", filters=[2]).args, [2])
    # spaces around the parts are spacing (layer names have none): 'block3_conv1 ' was an unknown layer
    assert o.parse(" neuron : block4_conv1 : 5").term == o.Neuron("block4_conv1")
    assert o.parse("block3_conv1 : 0-3").term == o.Channel("block3_conv1")
    assert o.parse("deepdream : block4_conv1 ").term == o.DeepDream("block4_conv1")
    np.testing.assert_array_equal(o.parse("logit : 1").args, [1])
    with pytest.raises(JaxvizError, match="names no channel; add :N, e.g. block1_conv1:0-15"):
        o.parse("block1_conv1")
    with pytest.raises(JaxvizError) as e:  # a newline in the text stays escaped: one line
        o.parse("block1\nconv1")
    assert "\n" not in str(e.value)
    with pytest.raises(JaxvizError) as e:
        o.parse("chanel:0\n1")
    assert "\n" not in str(e.value) and "did you mean 'channel:0\\n1'?" in str(e.value)


@pytest.mark.parametrize("bad", [1.5, "10", True, [True, False], [0.5]])
def test_channel_indices_must_be_integers(bad):
    with pytest.raises(JaxvizError, match="integer"):
        o.channel("block1_conv1", bad)


def test_constructors_check_their_arguments_at_once():
    """Each was a TypeError, ValueError or AttributeError from numpy or Python, or (NaN, inf)
    a whole run refused only at its end; JAX arrays of channels were refused."""
    bad = [(lambda: o.neuron("block1_conv1", 1, y=3.5, x=2), "neuron y must be an integer"),
           (lambda: o.neuron("block1_conv1", [1, 2], y=0, x=[3, 4]), "neuron x must be an integer"),
           (lambda: o.direction("block1_conv1", "abc"), "direction vectors must be finite numbers"),
           (lambda: o.direction("block1_conv1", 2.0), "direction vectors must be finite numbers"),
           (lambda: o.direction("block1_conv1", np.full(4, np.nan)), "direction vectors must be finite numbers"),
           (lambda: o.direction("block1_conv1", np.zeros(0)), "direction vectors must be finite numbers"),
           (lambda: o.direction("block1_conv1", np.ones((2, 2, 2))), r"not array\(\[\[\[1\., 1\.\], \[1\., 1\.\]\]"),
           (lambda: o.direction("block1_conv1", [[1, 0], [0, 0]]), "direction vector 1 is all zeros"),
           (lambda: o.channel("block1_conv1", 10**30), "a channel index must be 0 to 2147483647"),
           (lambda: o.class_logit([1, -1]), "a class index must be 0 to"),
           (lambda: o.l2("a"), "l2's constant must be a number"),
           (lambda: o.l2(float("nan")), "l2's constant must be a finite number"),
           (lambda: float("inf") * o.channel("block1_conv1", 1), "objective's weight must be a finite number"),
           (lambda: o.parse(None), "objective's text must be a str"),
           # a list of layers was a TypeError (unhashable) from inside the engine
           (lambda: o.deepdream(["block1_conv1", "block2_conv1"]), "a layer is named by a str such as"),
           (lambda: o.channel(["block1_conv1"], 0), "a layer is named by a str"),
           (lambda: o.neuron(("block1_conv1",), 0), "a layer is named by a str"),
           (lambda: o.direction({"block1_conv1"}, [1.0]), "a layer is named by a str"),
           (lambda: o.diversity_term(None), "a layer is named by a str")]
    for make, message in bad:
        with pytest.raises(JaxvizError, match=message) as e:
            make()
        assert "\n" not in str(e.value)
    assert o.channel("block1_conv1", jnp.arange(3)).args.tolist() == [0, 1, 2]
    assert o.channel("block1_conv1", jnp.int32(5)).args.tolist() == [5]
    assert o.neuron("block1_conv1", 1, y=np.int64(2), x=3).term.y == 2


def test_model_specific_errors(topped):
    with pytest.raises(JaxvizError, match="not spatial .* use neuron"):
        o.Channel("fc1").check(topped, np.asarray([0]))
    no_top = vgg(jax.tree.map(lambda a: a, {k: v for k, v in topped.params.items() if k.startswith("block")}),
                 SMALL_TOP)
    with pytest.raises(JaxvizError, match="no classifier .* VGG weights with the classifier top"):
        o.ClassLogit().check(no_top, np.asarray([0]))
    with pytest.raises(JaxvizError, match="direction vectors have 3 entries"):
        o.Direction("block2_conv1").check(topped, np.ones((1, 3)))
    with pytest.raises(JaxvizError, match="out of range"):
        o.ClassLogit().check(topped, np.asarray([5]))


def test_key_ids_come_from_the_first_channel_term_or_the_items_own_args(topped):
    """An item's key never depends on the rest of the batch: a penalty first still keys by the
    channel; without a channel, by a digest of the item's own args, not its position."""
    tv = -0.05 * o.total_variation()
    np.testing.assert_array_equal((tv + o.channel("block2_conv1", [4, 9])).key_ids(topped), [[3, 4], [3, 9]])
    v = np.random.RandomState(0).randn(3, 16).astype(np.float32)
    alone = o.direction("block2_conv1", v[2:]).key_ids(topped)
    together = o.direction("block2_conv1", v).key_ids(topped)
    np.testing.assert_array_equal(together[2], alone[0])
    assert len({int(i) for i in together[:, 1]}) == 3


def test_text_errors_name_the_objective_not_the_filters_option():
    for text, message in [("dream:conv2", "malformed channel list 'conv2' in objective 'dream:conv2'"),
                          ("conv2:5-2", "malformed channel list '5-2'"),
                          ("deepdream:conv2:3", "deepdream takes a layer only"),
                          ("logit:3:4", "logit takes class numbers only")]:
        with pytest.raises(JaxvizError, match=message) as e:
            o.parse(text)
        assert "--filters" not in str(e.value)


def test_a_layer_named_with_a_colon_takes_its_channels_after_the_last_colon():
    """User models may name layers ``stem:conv``: such a layer could not be written in the text spelling
    (its channels were read as 'conv:0-3'); N now follows the last ':'."""
    c = o.parse("stem:conv:0-3")
    assert c.term == o.Channel("stem:conv")
    np.testing.assert_array_equal(c.args, [0, 1, 2, 3])
    assert o.parse("channel:stem:conv:2").term == o.Channel("stem:conv")
    assert o.parse("neuron:stem:conv:5").term == o.Neuron("stem:conv")
    assert o.parse("deepdream:stem:conv").term == o.DeepDream("stem:conv")
    with pytest.raises(JaxvizError, match="takes N after its last ':', e.g. stem:conv:0-3"):
        o.parse("stem:conv")


def test_a_misspelt_kind_is_named_not_taken_for_a_layer_with_a_colon():
    """'dream:conv2' read as layer 'dream', channels 'conv2': the hint is the kind it resembles,
    not the one about layers whose names hold ':'."""
    for text, meant in (("dream:conv2", "deepdream:conv2"), ("chanel:conv:x", "channel:conv:x")):
        with pytest.raises(JaxvizError, match=f"did you mean {meant}\\?") as e:
            o.parse(text)
        assert "holds ':'" not in str(e.value)


def test_grid_renders_a_layer_named_with_a_colon(tmp_path, capsys):
    from jaxviz import grid

    rc = grid.main(["--model", "tests.tiny_model:build_colon", "--objective", "stem:conv:0-1", "--size", "16",
                    "--steps", "2", "--out", str(tmp_path), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert os.listdir(tmp_path) == ["stem-conv-0-1.png"]


def test_weights_may_be_numpy_or_jax_scalars():
    for w in (np.float32(0.5), jnp.float32(0.5), np.int64(2)):
        assert (o.channel("block1_conv1", [0]) * w).term.weights == (float(w),)
    with pytest.raises(TypeError):
        o.channel("block1_conv1", [0]) * jnp.ones(2)
    with pytest.raises(TypeError, match="unsupported operand type.*'Objective' and 'str'"):
        o.channel("block1_conv1", [0]) - "a"  # was "bad operand type for unary -: 'str'"
    for w in (np.float32(0.5), np.int64(2)):  # on the left too
        assert (w * o.channel("block1_conv1", [0])).term.weights == (float(w),)
    for make in (lambda a: o.channel("block1_conv1", [0]) * a, lambda a: a * o.channel("block1_conv1", [0])):
        # the second made a numpy array of objectives
        with pytest.raises(TypeError, match=r"weight must be one number, not an array of shape \(2,\)"):
            make(np.array([1.0, 2.0]))


def test_python_sum_adds_objectives():
    a, b = o.channel("block2_conv1", 3), o.deepdream("block1_conv2")
    assert sum([a, b]) == a + b and sum([a]) is a  # sum starts from 0, which was a TypeError
    with pytest.raises(TypeError):
        1 + a


def test_layers_must_hold_one_images_activations():
    """A scalar, an (H, W) map or a 4-D layer with a batch axis: one line naming the shape, and a fix
    for that shape (a (T, C) sequence was told to drop a batch axis it does not have)."""
    from jaxviz.models import from_function

    fn = lambda p, x: {"score": (x * p).sum(), "map": (x * p).sum(-1), "batched": (x * p)[None]}
    m = from_function(fn, jnp.float32(2.0), input_size=8)
    for layer in ("score", "map", "batched"):
        with pytest.raises(JaxvizError, match=f"layer {layer} has shape .* objectives need"):
            o.Neuron(layer).check(m, np.asarray([0]))
        with pytest.raises(JaxvizError, match=f"layer {layer} has shape") as e:
            o.Channel(layer).check(m, np.asarray([0]))
        assert ("no batch axis" in str(e.value)) == (layer == "batched"), str(e.value)


def test_a_layer_with_an_empty_output_is_refused_by_every_objective():
    """No rows, or no channels, at the model's input size: a neuron took an IndexError, a
    channel said "out of range ... (0--1)", deepdream's NaN came out as "not finite" images."""
    import jaxviz
    from jaxviz.models import from_function

    m = from_function(lambda p, x: {"rows": (x * p)[:0], "chans": (x * p)[..., :0], "ok": x * p}, jnp.float32(2.0),
                      input_size=8)
    for objective in ("rows:0", "neuron:rows:0", "chans:0", "deepdream:rows", o.direction("chans", np.ones(3))):
        with pytest.raises(JaxvizError, match=r"layer (rows|chans) of model function has an empty output \(shape "
                                              r"\((0, 8, 3|8, 8, 0)\) at 8 px\)") as e:
            jaxviz.render(m, objective, jaxviz.SEED._replace(size=8, steps=1))
        assert "\n" not in str(e.value)
    assert jaxviz.render(m, "ok:0", jaxviz.SEED._replace(size=8, steps=1)).tiles.shape == (1, 8, 8, 3)


def test_class_logit_on_a_model_without_a_classifier_gives_a_hint_for_that_model():
    """A non-VGG model is not told about VGG's top: it is told how to name a logits layer."""
    from jaxviz.models import from_function

    model = from_function(lambda p, x: {"conv": x * p}, jnp.ones(()), input_size=8, name="mynet")
    with pytest.raises(JaxvizError) as e:
        o.ClassLogit().check(model, np.asarray([0]))
    message = str(e.value)
    assert "model mynet has no classifier" in message and "VGG" not in message and "fc1" not in message
    assert "logits=LAYER" in message and "\n" not in message


def test_neuron_position_on_a_vector_layer_and_class_logit_on_a_map_are_refused():
    """y and x on a dense layer were silently ignored; logits aliasing a spatial layer failed in
    the gradient with JAX's "Gradient only defined for scalar-output functions"."""
    import jaxviz
    from jaxviz.models import from_function

    m = from_function(lambda p, x: {"dense": (x * p).mean((0, 1)), "logits": x * p}, jnp.float32(2.0), input_size=8)
    recipe = jaxviz.SEED._replace(size=8, steps=1)
    with pytest.raises(JaxvizError, match=r"layer dense is not spatial \(shape \(3,\)\), so a neuron there has no "
                                          "position; drop y and x"):
        jaxviz.render(m, o.neuron("dense", 1, y=0), recipe)
    assert jaxviz.render(m, o.neuron("dense", 1), recipe).tiles.shape == (1, 8, 8, 3)
    with pytest.raises(JaxvizError, match=r"layer logits of model function has shape \(8, 8, 3\); class_logit needs"):
        jaxviz.render(m, "logit:0", recipe)


@pytest.mark.parametrize("weight", [1e39, 1e300, -1e300, 1e-50])
def test_a_weight_that_float32_cannot_hold_is_refused(weight):
    """1e300 was infinity in the step (NaN images, said only at the end); 1e-300 was 0 (the term dropped)."""
    c = o.channel("block1_conv1", 0)
    with pytest.raises(JaxvizError, match="an objective's weight must be 0 or from"):
        c * weight
    with pytest.raises(JaxvizError, match="an objective's weight must be 0 or from"):
        (c * 1e30) * 1e30  # the product is the term's weight
    assert (c * 0).term.weights == (0.0,) and (c * 3e38).term.weights == (3e38,)


def test_the_text_spelling_does_not_suggest_the_same_text():
    """logit:-1 was told "did you mean logit:-1?", and logit:a about layers whose names hold ':'."""
    for text in ("logit:-1", "logit:a", "neuron:conv:"):
        with pytest.raises(JaxvizError) as e:
            o.parse(text)
        assert "did you mean" not in str(e.value) and "stem:conv" not in str(e.value)
    with pytest.raises(JaxvizError, match="did you mean neuron:conv:x"):
        o.parse("neurn:conv:x")


def test_a_layer_returned_as_a_numpy_constant_renders():
    """A model function may return a layer as a numpy array (a constant): indexing it with the
    traced channel failed with JAX's TracerArrayConversionError; now it renders, unmoved."""
    import jaxviz
    from jaxviz.models import from_function

    model = from_function(lambda p, x: {"const": np.ones((16, 16, 4), np.float32), "img": x * p}, jnp.float32(1.0),
                          input_size=16)
    r = jaxviz.render(model, "const:1", jaxviz.SEED._replace(size=16, steps=2))
    np.testing.assert_allclose(r.values, [1.0])
