"""jaxviz.models.vgg: the one-channel target conv and its hand-written gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz.models.vgg import single_channel_conv


def autodiff_form(h, kernel):
    """The same nine shifted mat-vecs, left to JAX's own gradient."""
    hh, ww, _ = h.shape
    hp = jnp.pad(h, ((1, 1), (1, 1), (0, 0)))
    out = 0.0
    for dy in range(3):
        for dx in range(3):
            out = out + jnp.dot(hp[dy : dy + hh, dx : dx + ww], kernel[dy, dx], preferred_element_type=jnp.float32)
    return out


@pytest.mark.parametrize("shape", [(2, 6, 7, 5), (3, 4, 4, 16)])
def test_one_channel_conv_gradient_is_jax_own_bit_for_bit(shape):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    k = jnp.asarray(rng.normal(size=(shape[0], 3, 3, shape[-1])).astype(np.float32))
    w = jnp.asarray(rng.normal(size=shape[:3]).astype(np.float32))

    def grads(f):
        loss = lambda h, k: jnp.sum(jax.nn.relu(jax.vmap(f)(h, k)) * w)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(h, k)

    (dh, dk), (want_dh, want_dk) = grads(single_channel_conv), grads(autodiff_form)
    np.testing.assert_array_equal(jax.vmap(single_channel_conv)(h, k), jax.vmap(autodiff_form)(h, k))
    np.testing.assert_array_equal(dh, want_dh)
    np.testing.assert_allclose(dk, want_dk, rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(dh) > dh.size // 2  # the relu lets a real gradient through


def test_one_channel_conv_gradient_in_bfloat16_keeps_the_input_dtype():
    h = jnp.ones((4, 4, 8), jnp.bfloat16)
    k = jnp.full((3, 3, 8), 0.5, jnp.bfloat16)
    dh = jax.grad(lambda h: single_channel_conv(h, k).sum())(h)
    assert dh.dtype == jnp.bfloat16
    assert float(dh[1, 1, 0]) == 4.5  # nine taps of 0.5 reach an inner pixel
