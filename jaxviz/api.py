"""The public API: load the model's weights, render filters, assemble and save grids."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import checks
from jaxviz.ascent import DEFAULT_MAX_BYTES, AscentConfig, ascend
from jaxviz.convert import load_keras_h5
from jaxviz.errors import JaxvizError
from jaxviz.image import deprocess_batch
from jaxviz.model import VGG16, VGGSpec, conv_layers


def load_params(weights: str | os.PathLike | None = None, *, dtype=jnp.float32, download: bool = True,
                progress: bool = True) -> dict:
    """Load VGG weights as a pytree of device arrays keyed by Keras layer names.

    ``weights`` is a Keras h5 file; without it the file is found as documented in
    ``jaxviz.weights.resolve_weights`` (JAXVIZ_WEIGHTS, the embedded file, ...).

    >>> params = load_params()
    >>> params["block1_conv1"]["kernel"].shape
    (3, 3, 3, 64)
    """
    from jaxviz.weights import resolve_weights

    path = resolve_weights(weights, download=download, progress=progress, origin="the weights argument of load_params")
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), load_keras_h5(path))


def render(params: dict, layer: str, filters: Sequence[int], *, size: int | None = None, steps: int | None = None,
           step_size: float = 1.0, seed: int = 0, precision: str = "float32", start=None,
           max_bytes: int = DEFAULT_MAX_BYTES, return_raw: bool = False, spec: VGGSpec = VGG16,
           recipe: str = "seed", lucid_config=None, conv: str = "auto"):
    """Render the patterns that maximize ``filters`` of ``layer``.

    ``recipe="seed"`` (the default) is the book's gradient ascent (size 64, 40 steps
    unless given). ``recipe="lucid"`` is the quality recipe of ``jaxviz.lucid``, set by
    ``lucid_config`` (a ``LucidConfig``; its defaults otherwise: 128 px, 512 steps), with
    ``size``, ``steps`` and ``precision`` overriding it when given; with its diversity
    D > 1 each filter gives D images, filter by filter. ``conv`` picks the seed recipe's
    convolution algorithm: ``"auto"`` (Winograd in float32 on CPU, else XLA's conv),
    ``"winograd"`` or ``"xla"``.

    Returns uint8 images (N, size, size, 3); with ``return_raw=True`` returns
    ``(uint8 images, raw float32 images, final losses)`` as numpy arrays. The seed's raw
    images are in its pixel scale and deprocessed for uint8; the quality recipe's are in
    [0, 1] and become uint8 as round(x * 255).

    >>> params = load_params()
    >>> render(params, "block1_conv1", [0, 1], size=32, steps=5).shape
    (2, 32, 32, 3)
    """
    checks.integer("seed", seed, 0, checks.MAX_SEED)
    checks.params_for(params, layer, conv_layers(spec))
    if recipe == "lucid":
        return _render_lucid(params, layer, filters, size, steps, seed, precision, start, max_bytes, return_raw,
                             spec, lucid_config)
    if recipe != "seed":
        raise JaxvizError(f"recipe must be seed or lucid, not {recipe!r}")
    if lucid_config is not None:
        raise JaxvizError("lucid_config applies to recipe='lucid' only")
    size = 64 if size is None else size
    steps = 40 if steps is None else steps
    config = AscentConfig(size=size, steps=steps, step_size=step_size, precision=precision, conv=conv)
    result = ascend(params, layer, filters, seed=seed, config=config, start=start, max_bytes=max_bytes, spec=spec)
    checks.finite(f"the images of {layer}", result.images, result.losses)
    images = np.asarray(deprocess_batch(result.images)) if len(result.images) else np.zeros((0, size, size, 3), np.uint8)
    if return_raw:
        return images, np.asarray(result.images), np.asarray(result.losses)
    return images


def _render_lucid(params, layer, filters, size, steps, seed, precision, start, max_bytes, return_raw, spec, config):
    from jaxviz.lucid import LucidConfig, lucid, to_uint8

    if start is not None:
        raise JaxvizError("start images apply to recipe='seed' only")
    config = LucidConfig() if config is None else config
    config = config._replace(**{k: v for k, v in dict(size=size, steps=steps).items() if v is not None})
    if precision != "float32":
        config = config._replace(precision=precision)
    result = lucid(params, layer, filters, seed=seed, config=config, max_bytes=max_bytes, spec=spec)
    raw = np.asarray(result.images)
    checks.finite(f"the images of {layer}", raw, result.losses)
    images = to_uint8(raw)
    if return_raw:
        return images, raw, np.asarray(result.losses)
    return images
