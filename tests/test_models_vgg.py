"""jaxviz.models.vgg: the one-channel target conv and its hand-written gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.models.vgg import TAPS_MIN_CHANNELS, single_channel_conv


def autodiff_form(h, k):
    """Nine shifted mat-vecs, left to JAX's own gradient: the form the hand-written one reproduces."""
    hh, ww, _ = h.shape
    hp = jnp.pad(h, ((1, 1), (1, 1), (0, 0)))
    out = 0.0
    for dy in range(3):
        for dx in range(3):
            out = out + jnp.dot(hp[dy : dy + hh, dx : dx + ww], k[dy, dx], preferred_element_type=jnp.float32)
    return out


def grads(f, h, k, w):
    loss = lambda h, k: jnp.sum(jax.nn.relu(jax.vmap(f)(h, k)) * w)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(h, k)


@pytest.mark.parametrize("shape", [(2, 6, 7, 5), (3, 4, 4, 16)])
def test_one_channel_conv_gradient_matches_jax_own(shape):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(shape[0], 3, 3, shape[-1])).astype(np.float32))
    w = jnp.asarray(rng.normal(size=shape[:3]).astype(np.float32))
    (dh, dk), (want_dh, want_dk) = grads(single_channel_conv, h, k, w), grads(autodiff_form, h, k, w)
    y, want = jax.vmap(single_channel_conv)(h, k), jax.vmap(autodiff_form)(h, k)
    if shape[-1] < TAPS_MIN_CHANNELS:
        np.testing.assert_array_equal(y, want)  # the same nine mat-vecs
    else:
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)  # one matmul for all taps: other sums
    np.testing.assert_allclose(dh, want_dh, rtol=1e-6, atol=1e-6)  # FMA fusion may move the last bit
    np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(dh) > dh.size // 2  # the relu lets a real gradient through


def test_one_channel_conv_gradient_is_bit_for_bit_for_a_mean():
    # the seed's loss is a spatial mean: its cotangent 1/(H W) is a power of two, products are exact
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.normal(size=(2, 8, 8, 32)).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(2, 3, 3, 32)).astype(np.float32))
    w = jnp.full((2, 8, 8), 1 / 64, jnp.float32)
    (dh, _), (want_dh, _) = grads(single_channel_conv, h, k, w), grads(autodiff_form, h, k, w)
    np.testing.assert_array_equal(dh, want_dh)


def test_one_channel_conv_gradient_in_bfloat16_keeps_the_input_dtype():
    h = jnp.ones((4, 4, 8), jnp.bfloat16)
    k = jnp.full((3, 3, 8), 0.5, jnp.bfloat16)
    dh = jax.grad(lambda h: single_channel_conv(h, k).sum())(h)
    assert dh.dtype == jnp.bfloat16
    assert float(dh[1, 1, 0]) == 4.5  # nine taps of 0.5 reach an inner pixel


def test_forward_fuses_a_pool_into_its_conv_only_when_the_conv_itself_is_not_asked_for(params):
    """block1_pool alone comes from one fused conv + relu + pool call (ops.conv_bias_relu); asked
    with block1_conv2 too, the conv's output is kept and pooled apart: the same bits either way."""
    from jaxviz import ops
    from jaxviz.model import max_pool2
    from jaxviz.models.vgg import VGG16, _forward

    conv = ops.conv_for("float32")
    x = jax.random.uniform(jax.random.key(3), (20, 20, 3)) * 20 + 118
    alone = jax.jit(lambda x: _forward(params, x, ("block1_pool",), VGG16, conv))(x)
    both = jax.jit(lambda x: _forward(params, x, ("block1_conv2", "block1_pool"), VGG16, conv))(x)
    np.testing.assert_array_equal(alone["block1_pool"], both["block1_pool"])
    np.testing.assert_array_equal(both["block1_pool"], max_pool2(both["block1_conv2"][None])[0])
    g_alone = jax.grad(lambda x: _forward(params, x, ("block1_pool",), VGG16, conv)["block1_pool"].sum())(x)
    g_both = jax.grad(lambda x: _forward(params, x, ("block1_conv2", "block1_pool"), VGG16, conv)["block1_pool"].sum())(x)
    np.testing.assert_array_equal(g_alone, g_both)


def test_forward_leaves_the_colour_layers_bias_and_relu_to_the_next_conv(params):
    """block1_conv1's conv has no fused form: its bias and relu are made as block1_conv2's call
    reads it (and their gradient as that call writes), unless block1_conv1 itself is asked for;
    the same bits either way, forward and gradient."""
    from jaxviz import onednn, ops
    from jaxviz.models.vgg import VGG16, _forward

    conv = ops.conv_for("float32")
    x = jax.random.uniform(jax.random.key(4), (20, 20, 3)) * 20 + 118
    f = lambda names: jax.jit(lambda x: _forward(params, x, names, VGG16, conv)["block1_pool"])
    alone, kept = f(("block1_pool",)), f(("block1_conv1", "block1_pool"))
    np.testing.assert_array_equal(alone(x), kept(x))
    np.testing.assert_array_equal(jax.grad(lambda x: alone(x).sum())(x), jax.grad(lambda x: kept(x).sum())(x))
    if onednn.available():
        assert "jaxviz_winograd4_in_relu_bias_relu_pool_f32" in alone.lower(x).as_text()
        assert "jaxviz_winograd4_in_relu" not in kept.lower(x).as_text()


def test_integer_or_nan_weights_are_refused(params):
    """int weights: every gradient zero, the images never moved; NaN: ascend returned NaN images, silently
    (jaxviz.render said so; the weights are not scanned in vgg(), which ascend calls for every grid)."""
    from jaxviz.ascent import AscentConfig, ascend
    from jaxviz.errors import JaxvizError
    from jaxviz.models import vgg

    broken = {**params, "block1_conv1": jax.tree.map(lambda a: a.astype(jnp.int32), params["block1_conv1"])}
    with pytest.raises(JaxvizError, match="the weights of block1_conv1 are int32, not floating point"):
        vgg(broken)
    with pytest.raises(JaxvizError, match="the weights of block1_conv1 are int32"):
        ascend(broken, "block1_conv1", [0], config=AscentConfig(size=8, steps=1))
    broken = {**params, "block1_conv1": jax.tree.map(lambda a: a.at[..., 0].set(jnp.nan), params["block1_conv1"])}
    with pytest.raises(JaxvizError, match="the images of block1_conv1 came out not finite.*check the weights"):
        ascend(broken, "block1_conv1", [0], config=AscentConfig(size=8, steps=1))


def test_a_spec_that_is_not_a_vggspec_is_one_line(params):
    from jaxviz.ascent import AscentConfig, ascend
    from jaxviz.errors import JaxvizError
    from jaxviz.models import vgg

    with pytest.raises(JaxvizError, match="spec must be a jaxviz.VGGSpec"):
        vgg(params, "vgg16")
    with pytest.raises(JaxvizError, match="spec must be a jaxviz.VGGSpec"):
        ascend(params, "block1_conv1", [0], config=AscentConfig(size=8, steps=1), spec="vgg16")
