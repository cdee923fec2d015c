"""The seed's activation maximization as one jit-compiled, vmapped computation.

For layer L and filter f the loss is the mean over H, W of L's post-relu channel f.
Each step adds the RMS-normalized input gradient: x <- x + step * g / (rms(g) + 1e-5).
All steps run inside one compiled call (``lax.fori_loop``) and ``jax.vmap`` maps the
per-image function over filters, so a whole grid is a single batched computation.
The layer is static; filters, start images, step count and step size are data.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxviz import ops
from jaxviz.errors import JaxvizError
from jaxviz.model import VGG, VGG16, VGGSpec, layer_info, layers, min_size

DEFAULT_MAX_BYTES = 2 * 1024**3


class AscentConfig(NamedTuple):
    """The seed's settings; every default reproduces the book."""

    size: int = 64
    steps: int = 40
    step_size: float = 1.0
    precision: str = "float32"  # or "bfloat16": bf16 matmuls with f32 accumulation
    conv: str = "auto"  # "winograd" (CPU's default in float32) or "xla" (XLA's own conv)


class AscentResult(NamedTuple):
    """Final raw images (N, size, size, 3), float32, and each filter's final loss."""

    images: jax.Array
    losses: jax.Array


def validate(layer: str, filters: Sequence[int], config: AscentConfig, spec: VGGSpec = VGG16) -> None:
    """Raise a one-line JaxvizError for an unknown layer or impossible settings."""
    info = layer_info(layer, spec)
    if info.kind != "conv":
        convs = ", ".join(l.name for l in layers(spec) if l.kind == "conv")
        raise JaxvizError(f"layer {layer} is a pooling layer and has no filters; use a conv layer: {convs}")
    for f in filters:
        if not 0 <= int(f) < info.out_channels:
            raise JaxvizError(
                f"filter {f} is out of range for {layer}, which has {info.out_channels} filters (0-{info.out_channels - 1})"
            )
    if config.size < min_size(layer, spec):
        raise JaxvizError(f"size {config.size} is too small for {layer}; the minimum is {min_size(layer, spec)} px")
    if config.steps < 0:
        raise JaxvizError(f"steps must be 0 or more, not {config.steps}")
    if config.precision not in ("float32", "bfloat16"):
        raise JaxvizError(f"precision must be float32 or bfloat16, not {config.precision!r}")
    if config.conv not in ops.ALGORITHMS:
        raise JaxvizError(f"conv must be one of {', '.join(ops.ALGORITHMS)}, not {config.conv!r}")
    if config.conv == "winograd" and config.precision != "float32":
        raise JaxvizError("the winograd conv runs in float32 only; use --conv auto or xla with bfloat16")


def filter_key(key: jax.Array, layer: str, f, spec: VGGSpec = VGG16) -> jax.Array:
    """The key of one filter's start image: fold_in of the run's key with layer and filter."""
    index = [l.name for l in layers(spec)].index(layer)
    return jax.random.fold_in(jax.random.fold_in(key, index), f)


def start_image(key: jax.Array, size: int) -> jax.Array:
    """The seed's start image: uniform [0, 1) x 20 + 128, raw pixel scale."""
    return jax.random.uniform(key, (size, size, 3), jnp.float32) * 20.0 + 128.0


def start_images(key: jax.Array, layer: str, filters, size: int, spec: VGGSpec = VGG16) -> jax.Array:
    """One start image per filter, each from its own key (same filter, same image)."""
    filters = jnp.asarray(filters, jnp.int32)
    keys = jax.vmap(lambda f: filter_key(key, layer, f, spec))(filters)
    return jax.vmap(lambda k: start_image(k, size))(keys)


def _single_channel_conv(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME conv of one (H, W, C) image with one (3, 3, C) filter -> (H, W).

    The target layer only needs each image's own filter: nine shifted mat-vecs
    instead of the layer's full conv (under vmap they become batched dots).
    """
    hh, ww, _ = h.shape
    hp = jnp.pad(h, ((1, 1), (1, 1), (0, 0)))
    out = 0.0
    for dy in range(3):
        for dx in range(3):
            out = out + jnp.dot(hp[dy : dy + hh, dx : dx + ww], kernel[dy, dx], preferred_element_type=jnp.float32)
    return out


def activation(params: dict, x: jax.Array, f, layer: str, spec: VGGSpec = VGG16,
               precision: str = "float32", preact: bool = False, conv: str = "auto") -> jax.Array:
    """Channel ``f`` of ``layer`` for one unbatched image ``x`` (H, W, 3) -> (h, w)."""
    below = VGG(spec=spec, stop_at=layer, output="input", conv=ops.conv_for(precision, algorithm=conv))
    h = below.apply({"params": params}, x[None])[0]
    kernel = params[layer]["kernel"][..., f]
    if precision == "bfloat16" and kernel.shape[-1] >= ops.BF16_MIN_IN_CHANNELS:
        h, kernel = h.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    y = _single_channel_conv(h, kernel) + params[layer]["bias"][f]
    return y if preact else jax.nn.relu(y)


def loss(params: dict, x: jax.Array, f, layer: str, spec: VGGSpec = VGG16, precision: str = "float32",
         conv: str = "auto") -> jax.Array:
    """The seed's loss: mean over H, W of the layer's post-relu channel f."""
    return activation(params, x, f, layer, spec, precision, conv=conv).mean()


def normalize(g: jax.Array) -> jax.Array:
    """The seed's gradient normalization: g / (sqrt(mean(g^2)) + 1e-5)."""
    return g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-5)


def ascend_one(params: dict, x0: jax.Array, f, steps, step_size, layer: str,
               spec: VGGSpec = VGG16, precision: str = "float32", conv: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Run the ascent for one image and filter; returns (final image, final loss)."""
    grad = jax.grad(loss, argnums=1)

    def step(_, x):
        return x + step_size * normalize(grad(params, x, f, layer, spec, precision, conv))

    x = lax.fori_loop(0, steps, step, x0)
    return x, loss(params, x, f, layer, spec, precision, conv)


def _ascend_batch(params, x0, filters, steps, step_size, layer, spec, precision, conv="auto"):
    run = lambda x, f: ascend_one(params, x, f, steps, step_size, layer, spec, precision, conv)
    return jax.vmap(run)(x0, filters)


ascend_batch = jax.jit(_ascend_batch, static_argnames=("layer", "spec", "precision", "conv"))
"""The whole batch of filters in one compiled call (one compile per layer, size and batch)."""


def bytes_per_image(layer: str, size: int, spec: VGGSpec = VGG16) -> int:
    """A rough upper bound of the memory one image needs during its ascent.

    Sums the activations up to the layer (kept for the backward pass) plus their
    gradients, float32, with a factor for XLA's temporaries.
    """
    total, s = size * size * 3, size
    for l in layers(spec):
        if l.kind == "pool":
            s //= 2
        total += s * s * l.out_channels * (2 if l.kind == "conv" else 1)
        if l.name == layer:
            break
    return int(total * 4 * 3)


def batch_size_for(layer: str, size: int, n: int, max_bytes: int = DEFAULT_MAX_BYTES, spec: VGGSpec = VGG16) -> int:
    """The largest batch (at most n) whose estimated memory stays under max_bytes."""
    return max(1, min(n, max_bytes // max(1, bytes_per_image(layer, size, spec))))


# On CPU, chunks of 16 filters ran a 64-filter grid 1.2-1.5x faster than one batch of
# 64 with the Winograd conv (block2..4_conv1, bench/README.md "Engine"): the
# transformed tiles of 16 images stay in the 32 MB L3 cache. Off CPU, batches are
# bounded by memory only.
CPU_BATCH = 16


def chunk_size(layer: str, size: int, n: int, max_bytes: int = DEFAULT_MAX_BYTES, spec: VGGSpec = VGG16,
               platform: str | None = None) -> int:
    """Filters per compiled call: the memory bound, capped on CPU at this machine's planned
    chunk (jaxviz.plan, opt-in through JAXVIZ_PLAN) or CPU_BATCH when there is none."""
    b = batch_size_for(layer, size, n, max_bytes, spec)
    if (platform or jax.default_backend()) == "cpu":
        from jaxviz import plan

        b = min(b, plan.chunk_for(layer, size, spec) or CPU_BATCH)
    return b


def ascend(params: dict, layer: str, filters, *, key: jax.Array | None = None, seed: int = 0,
           config: AscentConfig = AscentConfig(), start: jax.Array | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES, spec: VGGSpec = VGG16,
           batch_size: int | None = None) -> AscentResult:
    """Maximize each filter's mean activation from its own start image.

    Filters are processed in chunks of equal batch size (the last one padded) so
    that peak memory stays under ``max_bytes`` (and, on CPU, of at most CPU_BATCH
    filters, the fastest measured); each filter's result does not depend on the
    chunking. ``start`` (N, size, size, 3) replaces the seeded start images.
    """
    filters = [int(f) for f in filters]
    validate(layer, filters, config, spec)
    if not filters:
        return AscentResult(jnp.zeros((0, config.size, config.size, 3)), jnp.zeros((0,)))
    key = jax.random.key(seed) if key is None else key
    if start is None:
        start = start_images(key, layer, filters, config.size, spec)
    start = jnp.asarray(start, jnp.float32)
    if start.shape != (len(filters), config.size, config.size, 3):
        raise JaxvizError(
            f"start images have shape {start.shape}, expected {(len(filters), config.size, config.size, 3)}"
        )
    n = len(filters)
    b = batch_size or chunk_size(layer, config.size, n, max_bytes, spec)
    chunks = math.ceil(n / b)
    if batch_size is None:
        b = math.ceil(n / chunks)  # equal chunks: the least padding for this many chunks
    pad = chunks * b - n
    fs = jnp.asarray(filters + [filters[-1]] * pad, jnp.int32)
    xs = jnp.concatenate([start, jnp.repeat(start[-1:], pad, axis=0)]) if pad else start
    images, losses = [], []
    for c in range(chunks):
        sl = slice(c * b, (c + 1) * b)
        x, l = ascend_batch(params, xs[sl], fs[sl], config.steps, config.step_size, layer, spec,
                            config.precision, config.conv)
        images.append(x)
        losses.append(l)
    return AscentResult(jnp.concatenate(images)[:n], jnp.concatenate(losses)[:n])
