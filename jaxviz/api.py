"""The public API: load the model's weights, render filters, assemble and save grids."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.ascent import DEFAULT_MAX_BYTES, AscentConfig, ascend
from jaxviz.convert import load_keras_h5
from jaxviz.image import deprocess_batch
from jaxviz.model import VGG16, VGGSpec


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

    path = resolve_weights(weights, download=download, progress=progress)
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), load_keras_h5(path))


def render(params: dict, layer: str, filters: Sequence[int], *, size: int = 64, steps: int = 40,
           step_size: float = 1.0, seed: int = 0, precision: str = "float32", start=None,
           max_bytes: int = DEFAULT_MAX_BYTES, return_raw: bool = False, spec: VGGSpec = VGG16):
    """Render the patterns that maximize ``filters`` of ``layer`` with the seed's recipe.

    Returns uint8 images (N, size, size, 3); with ``return_raw=True`` returns
    ``(uint8 images, raw float32 images, final losses)`` as numpy arrays.

    >>> params = load_params()
    >>> render(params, "block1_conv1", [0, 1], size=32, steps=5).shape
    (2, 32, 32, 3)
    """
    config = AscentConfig(size=size, steps=steps, step_size=step_size, precision=precision)
    result = ascend(params, layer, filters, seed=seed, config=config, start=start, max_bytes=max_bytes, spec=spec)
    images = np.asarray(deprocess_batch(result.images)) if len(result.images) else np.zeros((0, size, size, 3), np.uint8)
    if return_raw:
        return images, np.asarray(result.images), np.asarray(result.losses)
    return images
