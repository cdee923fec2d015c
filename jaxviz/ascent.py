"""The seed's activation maximization on VGG: the book's settings and pure functions.

For layer L and filter f the loss is the mean over H, W of L's post-relu channel f.
Each step adds the RMS-normalized input gradient: x <- x + step * g / (rms(g) + 1e-5).
It runs on the one render engine (``jaxviz.engine``) as the ``SEED`` recipe: all steps
inside one compiled call (``lax.scan``), ``jax.vmap`` over filters, so a whole grid is a
single batched computation. This module keeps the seed's own vocabulary (settings,
start images, per-filter keys, chunk sizes) and ``ascend``, the engine on VGG.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import checks, engine, ops
from jaxviz.engine import DEFAULT_MAX_BYTES, SEED, Recipe
from jaxviz.errors import JaxvizError
from jaxviz.model import VGG16, VGGSpec, layer_info, layers, min_size
from jaxviz.models.vgg import channel_preact, vgg
from jaxviz.objectives import Channel, channel
from jaxviz.param import seed_start
from jaxviz.optim import SeedAscent, normalize  # noqa: F401  (the seed's normalization, re-exported)


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
    if not isinstance(config, AscentConfig):  # a tuple or dict failed with AttributeError
        raise JaxvizError(f"config must be a jaxviz.ascent.AscentConfig(...), not {checks.show(config)}")
    checks.settings(config.size, config.steps, config.step_size)
    info = layer_info(layer, spec)
    if info.kind != "conv":
        convs = ", ".join(l.name for l in layers(spec) if l.kind == "conv")
        raise JaxvizError(f"layer {layer} is a pooling layer and has no filters; use a conv layer: {convs}")
    checks.filter_list(filters, info.out_channels, layer)
    if config.size < min_size(layer, spec):
        raise JaxvizError(f"size {config.size} is too small for {layer}; the minimum is {min_size(layer, spec)} px")
    if config.steps < 0:
        raise JaxvizError(f"steps must be 0 or more, not {config.steps}")
    if why := ops.why_not(config.precision, config.conv):
        raise JaxvizError(why)


def run_key(key, seed: int, batch_size, max_bytes) -> jax.Array:
    """The run's key (``key``, else ``jax.random.key(seed)``), once ``seed``, ``key`` and the chunking
    arguments are checked: a float seed, an int key or a negative batch size failed inside JAX or the engine."""
    checks.integer("seed", seed, 0, checks.MAX_SEED)
    if batch_size is not None:
        checks.integer("batch_size", batch_size, 1)
    checks.integer("max_bytes", max_bytes, 1)
    return jax.random.key(seed) if key is None else engine.one_key(key)


def filter_key(key: jax.Array, layer: str, f, spec: VGGSpec = VGG16) -> jax.Array:
    """The key of one filter's start image: fold_in of the run's key with layer and filter."""
    index = [l.name for l in layers(spec)].index(layer)
    return engine.item_key(key, index, f)


def start_image(key: jax.Array, size: int) -> jax.Array:
    """The seed's start image: uniform [0, 1) x 20 + 128, raw pixel scale."""
    return seed_start(size).init(key)


def start_images(key: jax.Array, layer: str, filters, size: int, spec: VGGSpec = VGG16) -> jax.Array:
    """One start image per filter, each from its own key (same filter, same image)."""
    filters = jnp.asarray(filters, jnp.int32)
    keys = jax.vmap(lambda f: filter_key(key, layer, f, spec))(filters)
    return jax.vmap(lambda k: start_image(k, size))(keys)


def activation(params: dict, x: jax.Array, f, layer: str, spec: VGGSpec = VGG16,
               precision: str = "float32", preact: bool = False, conv: str = "auto") -> jax.Array:
    """Channel ``f`` of ``layer`` for one unbatched image ``x`` (H, W, 3) -> (h, w)."""
    y = channel_preact(params, x, layer, f, spec, precision, conv)
    return y if preact else jax.nn.relu(y)


def loss(params: dict, x: jax.Array, f, layer: str, spec: VGGSpec = VGG16, precision: str = "float32",
         conv: str = "auto") -> jax.Array:
    """The seed's loss: mean over H, W of the layer's post-relu channel f."""
    return activation(params, x, f, layer, spec, precision, conv=conv).mean()


def recipe(config: AscentConfig) -> Recipe:
    """The engine's recipe for these settings: the seed's parts with this size, step count and step size."""
    return SEED._replace(steps=config.steps, size=config.size, optimizer=SeedAscent(config.step_size))


def ascend_one(params: dict, x0: jax.Array, f, steps: int, step_size: float, layer: str,
               spec: VGGSpec = VGG16, precision: str = "float32", conv: str = "auto") -> tuple[jax.Array, jax.Array]:
    """Run the ascent for one image and filter (the engine's per-item function); returns (final image, final loss).

    ``steps`` is a static number of steps (under ``jit``, make it a static argument).
    """
    model = vgg(params, spec, precision=precision, conv=conv)
    # _make: under jit the step size is a tracer, which SeedAscent's check cannot read
    r = recipe(AscentConfig(size=x0.shape[0], steps=steps))._replace(optimizer=SeedAscent._make((step_size,)))
    blank, hyper = engine._split_optimizer(r)
    image, value, _, _ = engine._item(model.static(), params, Channel(layer), blank, 0, f, jax.random.key(0), x0, hyper)
    return image, value


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
# ... unless that leaves the layer's own Winograd calls fewer than CPU_MIN_TILES 4x4 tiles: at
# block5 (64 px images: one tile an image) 16 images gave each 1 MB plane of a transformed
# kernel 16 rows to multiply, and chunks of 64 ran the block5_conv1/conv3 grids 0.87-0.90x
# the time of 16 on a Zen 5 (block4, 4 tiles an image: 0.94-0.97x, within noise; bench/README.md).
CPU_MIN_TILES = 64


def cpu_chunk(layer: str, size: int, spec: VGGSpec = VGG16) -> int:
    """The built-in filters per chunk on CPU: CPU_BATCH, or enough images for CPU_MIN_TILES
    tiles at ``layer``."""
    at = next(l for l in layers(spec) if l.name == layer)
    tiles = (-(-(size >> at.pools_before) // 4)) ** 2
    return max(CPU_BATCH, -(-CPU_MIN_TILES // max(1, tiles)))


def chunk_size(layer: str, size: int, n: int, max_bytes: int = DEFAULT_MAX_BYTES, spec: VGGSpec = VGG16,
               platform: str | None = None) -> int:
    """Filters per compiled call: the memory bound, capped on CPU at this machine's planned
    chunk (jaxviz.plan, opt-in through JAXVIZ_PLAN) or ``cpu_chunk`` when there is none."""
    b = batch_size_for(layer, size, n, max_bytes, spec)
    if (platform or jax.default_backend()) == "cpu":
        from jaxviz import plan

        b = min(b, plan.chunk_for(layer, size, spec) or cpu_chunk(layer, size, spec))
    return b


def ascend(params: dict, layer: str, filters, *, key: jax.Array | None = None, seed: int = 0,
           config: AscentConfig = AscentConfig(), start: jax.Array | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES, spec: VGGSpec = VGG16,
           batch_size: int | None = None) -> AscentResult:
    """Maximize each filter's mean activation from its own start image (the engine with the seed recipe).

    Filters are processed in chunks of equal batch size (the last one padded) so
    that peak memory stays under ``max_bytes`` (and, on CPU, of at most CPU_BATCH
    filters, the fastest measured); each filter's image does not depend on the
    chunking (its loss, a mean XLA sums in an order that can depend on the batch size, may
    differ in the last bits). ``start`` (N, size, size, 3) replaces the seeded start images.
    """
    filters = checks.filter_list(filters)
    validate(layer, filters, config, spec)
    key = run_key(key, seed, batch_size, max_bytes)
    if not filters:
        return AscentResult(jnp.zeros((0, config.size, config.size, 3)), jnp.zeros((0,)))
    if start is not None and np.shape(start) != (len(filters), config.size, config.size, 3):
        raise JaxvizError(
            f"start images have shape {np.shape(start)}, expected {(len(filters), config.size, config.size, 3)}"
        )
    model = vgg(params, spec, precision=config.precision, conv=config.conv)
    result = engine.render(model, channel(layer, filters), recipe(config), key=key, start=start,
                           max_bytes=max_bytes, batch_size=batch_size)
    if not isinstance(result.images, jax.core.Tracer):  # NaN weights gave NaN images without a word
        checks.finite(f"the images of {layer}", result.images, result.values)
    return AscentResult(result.images, result.values)
