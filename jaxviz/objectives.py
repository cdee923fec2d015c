"""Objectives of the quality recipe: the model's preprocessing, a channel's activation, diversity.

* ``preprocess``: Keras VGG16's own input transform for [0, 1] RGB images: x 255,
  RGB -> BGR, minus the ImageNet channel means (B 103.939, G 116.779, R 123.68).
* ``redirected_relu``: a relu whose gradient, while ``redirect`` is on and the ordinary
  relu lets no gradient through at all, passes the gradient through anyway (except where
  it would push an already negative value further down), like Lucid's redirected relu.
  It lets filters that never fire on the start image ("dead" at the start) get going.
* ``channel``: the mean over H, W of one filter's activation, post-relu, pre-relu or
  with the redirected relu (see ``DEAD_FILTER``), reusing ``jaxviz.ascent.activation``.
* ``diversity``: Lucid's diversity term for a batch of images of one filter: the mean
  pairwise cosine similarity of their Gram matrices (lower is more diverse).

Every function is pure and works on unbatched images under ``jit`` and ``vmap``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxviz import ascent, ops
from jaxviz.model import VGG, VGG16, VGGSpec

IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
DEAD_FILTER = ("none", "preact", "redirect")


def preprocess(x: jax.Array) -> jax.Array:
    """RGB (..., 3) in [0, 1] -> what Keras' VGG16 expects: BGR, 0-255, ImageNet means subtracted."""
    return x[..., ::-1] * 255.0 - jnp.asarray(IMAGENET_BGR_MEANS, x.dtype)


def deprocess(x: jax.Array) -> jax.Array:
    """The inverse of :func:`preprocess`."""
    return (x + jnp.asarray(IMAGENET_BGR_MEANS, x.dtype))[..., ::-1] / 255.0


@jax.custom_vjp
def redirected_relu(x: jax.Array, redirect: jax.Array) -> jax.Array:
    """relu(x); its gradient is redirected (see the module doc) where ``redirect`` (a 0/1 scalar) is 1.

    The cotangent convention is gradient *descent* on a loss: a positive cotangent
    pushes x down. ``redirect`` receives no gradient.
    """
    return jnp.maximum(x, 0.0)


def _rr_fwd(x, redirect):
    return jnp.maximum(x, 0.0), (x, redirect)


def _rr_bwd(res, g):
    x, redirect = res
    relu_grad = jnp.where(x > 0, g, 0.0)
    # pass everything through, except what would push negative values further down
    passed = jnp.where((x < 0) & (g > 0), 0.0, g)
    blocked = jnp.sum(jnp.square(relu_grad)) == 0  # the ordinary relu lets nothing through
    use = (redirect > 0) & blocked
    return jnp.where(use, passed, relu_grad), jnp.zeros_like(redirect)


redirected_relu.defvjp(_rr_fwd, _rr_bwd)


def apply_dead(pre: jax.Array, dead_filter: str = "none", redirect=0.0) -> jax.Array:
    """A pre-relu activation -> what the objective maximizes, by ``dead_filter``.

    "none": relu(pre); "preact": pre itself; "redirect": :func:`redirected_relu` (its
    redirection active while ``redirect`` is 1).
    """
    if dead_filter == "preact":
        return pre
    if dead_filter == "redirect":
        return redirected_relu(pre, jnp.asarray(redirect, jnp.float32))
    if dead_filter == "none":
        return jax.nn.relu(pre)
    raise ValueError(f"dead_filter must be one of {DEAD_FILTER}, not {dead_filter!r}")


def channel_map(params: dict, x: jax.Array, f, layer: str, dead_filter: str = "none", redirect=0.0,
                spec: VGGSpec = VGG16, precision: str = "float32") -> jax.Array:
    """Filter ``f`` of ``layer`` for one preprocessed image (H, W, 3) -> (h, w), through :func:`apply_dead`."""
    pre = ascent.activation(params, x, f, layer, spec, precision, preact=True)
    return apply_dead(pre, dead_filter, redirect)


def channel(params: dict, x: jax.Array, f, layer: str, dead_filter: str = "none", redirect=0.0,
            spec: VGGSpec = VGG16, precision: str = "float32") -> jax.Array:
    """The mean over H, W of :func:`channel_map`: the objective to maximize."""
    return channel_map(params, x, f, layer, dead_filter, redirect, spec, precision).mean()


def layer_input(params: dict, x: jax.Array, layer: str, spec: VGGSpec = VGG16) -> jax.Array:
    """The tensor entering ``layer`` for one preprocessed image (H, W, 3) -> (h, w, C)."""
    return VGG(spec=spec, stop_at=layer, output="input", conv=ops.conv_for("float32", 0)).apply({"params": params}, x[None])[0]


def channel_from_input(params: dict, h: jax.Array, f, layer: str) -> jax.Array:
    """Pre-relu filter ``f`` of ``layer`` from the tensor entering it (h, w, C) -> (h, w)."""
    kernel = params[layer]["kernel"][..., f][..., None]
    y = ops.conv_for("float32", 0)(h[None], kernel)[0, ..., 0]
    return y + params[layer]["bias"][f]


def gram(h: jax.Array) -> jax.Array:
    """The Gram matrix (C, C) of a feature map (h, w, C), scaled to unit Frobenius norm."""
    flat = h.reshape(-1, h.shape[-1])
    g = jnp.matmul(flat.T, flat, precision=jax.lax.Precision.HIGHEST)
    return g / jnp.maximum(jnp.sqrt(jnp.sum(g * g)), 1e-10)


def diversity(features: jax.Array) -> jax.Array:
    """Lucid's diversity of a batch of feature maps (D, h, w, C): sum over pairs i != j of
    <gram_i, gram_j> (cosine similarity of Gram matrices), divided by D. 0 for D = 1."""
    g = jax.vmap(gram)(features).reshape(features.shape[0], -1)
    sim = jnp.matmul(g, g.T, precision=jax.lax.Precision.HIGHEST)
    d = features.shape[0]
    return (jnp.sum(sim) - jnp.trace(sim)) / d
