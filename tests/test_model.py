import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from jaxviz.errors import JaxvizError
from jaxviz.model import VGG, VGG16, VGG19, VGGSpec, conv_layers, layer_info, layers, min_size


def test_layer_names_follow_keras():
    names = [l.name for l in layers(VGG16)]
    assert names[:4] == ["block1_conv1", "block1_conv2", "block1_pool", "block2_conv1"]
    assert names[-1] == "block5_pool" and len(conv_layers(VGG16)) == 13
    assert len(conv_layers(VGG19)) == 16 and "block5_conv4" in conv_layers(VGG19)
    assert layer_info("block4_conv1").in_channels == 256 and layer_info("block4_conv1").out_channels == 512


def test_min_size_and_unknown_layer():
    assert min_size("block1_conv1") == 1 and min_size("block4_conv1") == 8 and min_size("block5_pool") == 32
    with pytest.raises(JaxvizError, match="valid layers"):
        layer_info("block9_conv1")


def test_stop_at_builds_only_the_layers_it_needs():
    v = VGG(stop_at="block2_conv1").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert sorted(v["params"]) == ["block1_conv1", "block1_conv2", "block2_conv1"]
    v = VGG(stop_at="block2_conv1", output="input").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert sorted(v["params"]) == ["block1_conv1", "block1_conv2"]


def _numpy_conv_relu(x, k, b):
    h, w, _ = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, k.shape[-1]), np.float64)
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("hwc,co->hwo", xp[dy : dy + h, dx : dx + w], k[dy, dx])
    return np.maximum(out + b, 0)


def test_block1_conv1_matches_numpy_reference(params):
    x = np.random.default_rng(1).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    got = VGG(stop_at="block1_conv1").apply({"params": params}, x[None])[0]
    p = {k: np.asarray(v, np.float64) for k, v in params["block1_conv1"].items()}
    want = _numpy_conv_relu(x.astype(np.float64), p["kernel"], p["bias"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_preact_and_relu_outputs(params):
    x = jnp.asarray(np.random.default_rng(2).normal(0, 50, (1, 6, 6, 3)), jnp.float32)
    pre = VGG(stop_at="block1_conv2", output="preact").apply({"params": params}, x)
    post = VGG(stop_at="block1_conv2").apply({"params": params}, x)
    assert (pre < 0).any()
    np.testing.assert_allclose(post, jnp.maximum(pre, 0))


@pytest.mark.parametrize("layer", ["block1_conv1", "block3_conv1", "block5_conv3"])
def test_matches_real_keras_outputs(params, layer):
    ref = np.load(FIXTURES / "keras_vgg16_outputs.npz")
    got = np.asarray(VGG(stop_at=layer).apply({"params": params}, jnp.asarray(ref["input"])))
    want = ref[layer]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_classifier_top_flattens_in_keras_nhwc_order():
    spec = VGGSpec("tiny", (1, 1), (2, 3), fc=(5, 4), classes=3, top_input=8)
    m = VGG(spec=spec, include_top=True)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 3)), jnp.float32)
    v = m.init(jax.random.key(1), x)
    assert v["params"]["fc1"]["kernel"].shape == (2 * 2 * 3, 5)
    probs = m.apply(v, x)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    feats = np.asarray(VGG(spec=spec).apply(v, x)).reshape(2, -1)  # NHWC flatten
    p = v["params"]
    h = np.maximum(feats @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
    h = np.maximum(h @ p["fc2"]["kernel"] + p["fc2"]["bias"], 0)
    logits = h @ p["predictions"]["kernel"] + p["predictions"]["bias"]
    want = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, want / want.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 4)])
def test_max_pool_gradient_is_jax_own_bit_for_bit(shape):
    from jaxviz.model import max_pool2

    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, shape).astype(np.float32)  # small integers: many tied maxima
    w = jnp.asarray(rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32)

    def reduce_max(x):
        n, h, w_, c = x.shape
        return x[:, : h // 2 * 2, : w_ // 2 * 2].reshape(n, h // 2, 2, w_ // 2, 2, c).max(axis=(2, 4))

    for f in (max_pool2, jax.jit(max_pool2)):
        np.testing.assert_array_equal(f(x), reduce_max(x))
    got = jax.grad(lambda x: jnp.sum(max_pool2(x) * w))(x)
    want = jax.grad(lambda x: jnp.sum(reduce_max(x) * w))(x)
    n, h, w_, c = shape
    hits = (np.asarray(got)[:, : h // 2 * 2, : w_ // 2 * 2] != 0).reshape(n, h // 2, 2, w_ // 2, 2, c).sum(axis=(2, 4))
    assert (hits > 1).any()  # ties really split the cotangent
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("spec", ["vgg16", None, VGGSpec("empty", ()), VGGSpec("short", (2, 2, 2), (64,)),
                                  VGGSpec("neg", (-1, 2), (64, 128)), VGGSpec("zero", (2,), (0,)),
                                  VGGSpec("str", "22", (64, 128))])
def test_a_spec_that_is_not_one_is_one_line(spec):
    """A str spec failed with AttributeError, a zero-channel one in Flax's init with ZeroDivisionError;
    extra blocks or a negative count were dropped without a word."""
    with pytest.raises(JaxvizError, match="VGGSpec"):
        conv_layers(spec)
    with pytest.raises(JaxvizError, match="VGGSpec"):
        VGG(spec=spec).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_a_spec_of_numpy_integers_is_fine():
    assert conv_layers(VGGSpec("np", (np.int64(1),), (np.int64(4),))) == ("block1_conv1",)
