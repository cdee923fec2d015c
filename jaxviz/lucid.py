"""The quality recipe (Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017; Lucid).

For layer L and filter f, each of ``diversity`` images (1 by default) is a
parameterization (``jaxviz.param``: scaled Fourier coefficients with decorrelated
colours and a sigmoid, or plain pixels) whose image in [0, 1] goes, at every step,
through random transformations (``jaxviz.transforms``: pad, jitter, scale, rotate,
jitter), then through Keras VGG16's own preprocessing (``jaxviz.objectives.preprocess``)
into the network. The loss is minus the mean of filter f's activation (post-relu, or
pre-relu / redirected relu for filters that never start: ``dead_filter``), plus
``diversity_weight`` times Lucid's diversity term when several images are asked for.
Adam (optax) minimizes it for ``steps`` steps.

Everything runs as one compiled call: ``lax.scan`` over steps inside a per-filter
function, ``jax.vmap`` over filters. Each filter's randomness comes from its own key,
``jax.random.fold_in`` of the run's key with the layer's index and the filter
(``jaxviz.ascent.filter_key``), so a filter's result does not depend on the other
filters of the batch or on the chunking.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxviz import checks, objectives, transforms
from jaxviz.ascent import DEFAULT_MAX_BYTES, AscentConfig, batch_size_for, filter_key, validate
from jaxviz.errors import JaxvizError
from jaxviz.model import VGG16, VGGSpec
from jaxviz.param import parameterization

LUCID_STEPS = 512


class LucidConfig(NamedTuple):
    """The quality recipe's settings (hashable: it is a static argument of the compiled run)."""

    size: int = 128
    steps: int = LUCID_STEPS
    lr: float = 0.05  # Adam's learning rate
    param: str = "fourier"  # or "pixel"
    decorrelate: bool = True  # mix colours by the square root of ImageNet's colour correlation
    decay_power: float = 1.0  # the Fourier spectrum's 1/f**decay_power
    transforms: bool = True  # transformation robustness (pad, jitter, scale, rotate, jitter)
    pad: int = 12
    jitter: int = 8
    scale: float = 0.1
    rotate: float = 10.0
    jitter2: int = 4
    dead_filter: str = "none"  # "preact" (objective before the relu) or "redirect" (redirected relu)
    redirect_steps: Optional[int] = None  # redirect only in the first N steps; None: every step (Lucid)
    diversity: int = 1  # images per filter
    diversity_weight: float = 100.0  # weight of Lucid's diversity term when diversity > 1
    precision: str = "float32"  # or "bfloat16" (the network's matmuls; not with diversity > 1)

    def robustness(self) -> transforms.Robustness:
        return transforms.Robustness(self.pad, self.jitter, self.scale, self.rotate, self.jitter2)


class LucidResult(NamedTuple):
    """Final images (N, size, size, 3) in [0, 1]; each image's final loss, the mean post-relu
    activation of its filter on the untransformed image (N,); the objective per step (N, steps).
    With ``diversity`` D > 1 the N = filters x D images come filter by filter."""

    images: jax.Array
    losses: jax.Array
    trace: jax.Array


def validate_config(layer: str, filters: Sequence[int], config: LucidConfig, spec: VGGSpec = VGG16) -> None:
    """Raise a one-line JaxvizError for an unknown layer, filter or impossible setting."""
    checks.lucid_settings(config)
    validate(layer, filters, AscentConfig(config.size, config.steps, 1.0, config.precision), spec)
    if config.param not in ("fourier", "pixel"):
        raise JaxvizError(f"param must be fourier or pixel, not {config.param!r}")
    if config.dead_filter not in objectives.DEAD_FILTER:
        raise JaxvizError(f"dead_filter must be one of {', '.join(objectives.DEAD_FILTER)}, not {config.dead_filter!r}")
    if config.diversity < 1:
        raise JaxvizError(f"diversity must be 1 or more images per filter, not {config.diversity}")
    if not config.lr > 0:
        raise JaxvizError(f"lr must be positive, not {config.lr}")
    if min(config.pad, config.jitter, config.jitter2) < 0 or config.scale < 0 or config.rotate < 0:
        raise JaxvizError("transform sizes (pad, jitter, scale, rotate) must be 0 or more")
    if config.diversity > 1 and config.precision != "float32":
        raise JaxvizError("diversity > 1 runs in float32 only; drop --precision bfloat16")


def _objective(params, p, f, u, redirect, layer, config: LucidConfig, spec):
    """Loss of one filter's D parameter sets and each image's activation (D,).

    ``u`` (D, transforms.N_RANDOM) uniforms drive each image's transforms.
    """
    P = parameterization(config.param, config.size, config.decorrelate, config.decay_power)
    d = config.diversity
    images = jax.vmap(P.to_image)(p)
    if config.transforms:
        r = config.robustness()
        images = jax.vmap(lambda ui, x: transforms.apply_robust(r, ui, x))(u, images)
    xs = objectives.preprocess(images)
    if d > 1 and config.diversity_weight:
        hs = jax.vmap(lambda x: objectives.layer_input(params, x, layer, spec))(xs)
        pre = jax.vmap(lambda h: objectives.channel_from_input(params, h, f, layer))(hs)
        acts = objectives.apply_dead(pre, config.dead_filter, redirect).mean(axis=(1, 2))
        loss = -acts.mean() + config.diversity_weight * objectives.diversity(hs)
    else:
        acts = jax.vmap(lambda x: objectives.channel(params, x, f, layer, config.dead_filter, redirect, spec,
                                                     config.precision))(xs)
        loss = -acts.mean()
    return loss, acts


def run_one(params: dict, key: jax.Array, f, layer: str, config: LucidConfig, spec: VGGSpec = VGG16):
    """One filter: D images (D, S, S, 3) in [0, 1], their final losses (D,) and the trace (steps, D).

    ``key`` is the filter's own key; the D starts come from fold_in(key, 0) and step t's
    transforms from fold_in(fold_in(key, 1), t) (one draw of D x 6 uniforms per step).
    """
    P = parameterization(config.param, config.size, config.decorrelate, config.decay_power)
    init_key, step_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    p0 = jax.vmap(P.init)(jax.random.split(init_key, config.diversity))
    opt = optax.adam(config.lr)
    grad = jax.value_and_grad(_objective, argnums=1, has_aux=True)
    limit = config.steps if config.redirect_steps is None else config.redirect_steps

    def step(carry, t):
        p, state = carry
        redirect = (t < limit).astype(jnp.float32)
        u = jax.random.uniform(jax.random.fold_in(step_key, t), (config.diversity, transforms.N_RANDOM))
        (_, acts), g = grad(params, p, f, u, redirect, layer, config, spec)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), acts

    (p, _), trace = lax.scan(step, (p0, opt.init(p0)), jnp.arange(config.steps))
    images = jax.vmap(P.to_image)(p)
    final = jax.vmap(lambda x: objectives.channel(params, objectives.preprocess(x), f, layer, "none",
                                                  0.0, spec, config.precision))(images)
    return images, final, trace.T


def _run_batch(params, keys, filters, layer, config, spec):
    return jax.vmap(lambda k, f: run_one(params, k, f, layer, config, spec))(keys, filters)


run_batch = jax.jit(_run_batch, static_argnames=("layer", "config", "spec"))
"""A batch of filters in one compiled call (one compile per layer, config and batch size)."""


def to_uint8(images) -> np.ndarray:
    """Images in [0, 1] -> uint8, round(x * 255)."""
    return np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def filters_per_batch(layer: str, config: LucidConfig, n: int, max_bytes: int = DEFAULT_MAX_BYTES,
                      spec: VGGSpec = VGG16) -> int:
    """How many filters (each with ``config.diversity`` images) one compiled call takes, at most n."""
    work = config.size + (2 * config.pad if config.transforms else 0)
    return max(1, min(n, batch_size_for(layer, work, n * config.diversity, max_bytes, spec) // config.diversity))


def lucid(params: dict, layer: str, filters, *, key: jax.Array | None = None, seed: int = 0,
          config: LucidConfig = LucidConfig(), max_bytes: int = DEFAULT_MAX_BYTES, spec: VGGSpec = VGG16,
          batch_size: int | None = None) -> LucidResult:
    """Render ``filters`` of ``layer`` with the quality recipe; see :class:`LucidResult`.

    Filters go in chunks of equal size (the last one padded) so that the estimated
    memory stays under ``max_bytes``; a filter's result does not depend on the chunks.
    """
    filters = checks.filter_list(filters)
    validate_config(layer, filters, config, spec)
    d, s = config.diversity, config.size
    if not filters:
        return LucidResult(jnp.zeros((0, s, s, 3)), jnp.zeros((0,)), jnp.zeros((0, config.steps)))
    key = jax.random.key(seed) if key is None else key
    n = len(filters)
    b = min(n, batch_size or filters_per_batch(layer, config, n, max_bytes, spec))
    checks.run_budget(layer, s + (2 * config.pad if config.transforms else 0), n * d, b * d, spec,
                      device_bytes=checks.device_memory())
    chunks = math.ceil(n / b)
    fs = filters + [filters[-1]] * (chunks * b - n)
    fs_arr = jnp.asarray(fs, jnp.int32)
    keys = jax.vmap(lambda f: filter_key(key, layer, f, spec))(fs_arr)
    outs = [run_batch(params, keys[c * b:(c + 1) * b], fs_arr[c * b:(c + 1) * b], layer, config, spec)
            for c in range(chunks)]
    images, losses, trace = (jnp.concatenate([o[i] for o in outs])[:n] for i in range(3))
    return LucidResult(images.reshape(n * d, s, s, 3), losses.reshape(n * d), trace.reshape(n * d, config.steps))
