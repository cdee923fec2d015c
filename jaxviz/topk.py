"""Running top-k dataset examples per channel, and the receptive field of a layer's units.

A channel's score on an image is its maximum spatial activation; ``TopK`` keeps, for
every channel, the k best images seen so far with that score and the (y, x) of the
maximum. ``merge`` folds one batch in, so memory is O(channels x k) however many
images stream past. Ties are broken deterministically: higher score first, then the
lower image index (the first maximum in raster order gives the position).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import checks
from jaxviz.errors import JaxvizError


class TopK(NamedTuple):
    """The best k images of each of C channels, best first; unused slots have index -1."""

    values: np.ndarray  # (C, k) float32, -inf where unused
    index: np.ndarray  # (C, k) int64 image index, -1 where unused
    y: np.ndarray  # (C, k) int32 row of the maximum in the layer's output
    x: np.ndarray  # (C, k) int32 column


def empty(channels: int, k: int) -> TopK:
    """A TopK with no images yet."""
    channels, k = checks.integer("channels", channels, 0), checks.integer("k", k, 0)
    need, limit = channels * k * 20, checks.memory_limit()  # float32 + int64 + 2 x int32 per slot
    if need > limit:
        raise JaxvizError(f"the top {k} of {channels} channels need about {checks.gib(need)} of memory, more than "
                          f"the {checks.gib(limit)} available; lower k")
    return TopK(np.full((channels, k), -np.inf, np.float32), np.full((channels, k), -1, np.int64),
                np.zeros((channels, k), np.int32), np.zeros((channels, k), np.int32))


def spatial_max(act: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(B, h, w, C) activations -> per image and channel: max value, and its y and x (B, C).

    The position is the first maximum in raster order (``argmax``'s rule).
    """
    if act.ndim != 4 or not act.shape[1] * act.shape[2]:
        raise JaxvizError(f"spatial_max: activations must be (images, h, w, channels) with h, w of 1 or more, "
                          f"not {act.shape}")
    b, h, w, c = act.shape
    flat = act.reshape(b, h * w, c)
    arg = jnp.argmax(flat, axis=1)
    val = jnp.take_along_axis(flat, arg[:, None, :], axis=1)[:, 0]
    return val, (arg // w).astype(jnp.int32), (arg % w).astype(jnp.int32)


def merge(top: TopK, values, index, y, x) -> TopK:
    """Fold one batch into ``top``: ``values``, ``y``, ``x`` (B, C), ``index`` (B,) image indices.

    Pure: returns a new TopK. Equals the top-k of everything merged so far, in any
    batching, because the order (-value, index) is total for distinct indices.
    """
    if not isinstance(top, TopK):
        raise JaxvizError(f"merge: top must be a TopK (topk.empty(channels, k)), not {checks.show(top)}")
    values, index, y, x = (np.asarray(a) for a in (values, index, y, x))
    c, k = top.values.shape
    if values.ndim != 2 or values.shape[1] != c or index.shape != values.shape[:1] \
            or not y.shape == x.shape == values.shape:
        raise JaxvizError(f"merge: values, y and x must be (images, {c}) and index (images,), not {values.shape}, "
                          f"{y.shape}, {x.shape} and {index.shape}")
    if values.dtype.kind in "OSUMmc":  # text, objects, times, complex: no score (bfloat16, no np.number, is one)
        raise JaxvizError(f"merge: values must be numbers, not {values.dtype}")
    if index.size and (not np.issubdtype(index.dtype, np.integer) or index.min() < 0):  # -1 marks an unused slot
        raise JaxvizError(f"merge: image indices must be whole numbers from 0, not {checks.show(index)}")
    index = index.astype(np.int64)
    ids, counts = np.unique(index, return_counts=True)
    twice = ids[counts > 1].tolist() + index[np.isin(index, top.index)].tolist()
    if twice:  # it would hold two of a channel's k slots
        raise JaxvizError(f"merge: image {twice[0]} is merged twice; merge each image once")
    vals = np.concatenate([top.values, values.T.astype(np.float32)], axis=1)
    idx = np.concatenate([top.index, np.broadcast_to(index, (c, index.shape[0]))], axis=1)
    ys = np.concatenate([top.y, y.T.astype(np.int32)], axis=1)
    xs = np.concatenate([top.x, x.T.astype(np.int32)], axis=1)
    # unused slots (index -1) sort after every real image; NaN scores count as -inf
    key_v = np.where(idx < 0, np.inf, -np.nan_to_num(vals, nan=-np.inf))
    key_i = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((key_i, key_v), axis=1)[:, :k]
    take = lambda a: np.take_along_axis(a, order, axis=1)
    return TopK(take(vals), take(idx), take(ys), take(xs))


def brute_force(values, y, x, k: int) -> TopK:
    """The top-k of all images at once (N, C): the reference that ``merge`` must equal."""
    values = np.asarray(values)
    return merge(empty(values.shape[1], k), values, np.arange(values.shape[0]), y, x)


# Fast convolutions (Winograd, FFT) leak ~1e-7 of the peak gradient outside the true support;
# true support values stay above ~1e-4 of the peak at VGG16's depths (measured with XLA's conv).
RELATIVE = 1e-5


class Field(NamedTuple):
    """The receptive field of a layer's units, in input pixels.

    Unit (y, x) sees rows ``y * stride_y + offset_y`` .. ``+ height - 1`` (likewise
    columns), before clipping to the image.
    """

    stride_y: int
    stride_x: int
    offset_y: int
    offset_x: int
    height: int
    width: int

    def box(self, y, x, size: int) -> tuple[int, int, int, int]:
        """The patch (top, left, height, width) that unit (y, x) sees, clipped to a size x size image."""
        top, left = int(y) * self.stride_y + self.offset_y, int(x) * self.stride_x + self.offset_x
        t, l = max(0, top), max(0, left)
        b, r = min(size, top + self.height), min(size, left + self.width)
        return t, l, max(0, b - t), max(0, r - l)


def _support(model, layer: str, size: int, keys: jax.Array) -> tuple[np.ndarray, int, int]:
    """The input pixels on which the centre unit of ``layer`` depends (union over random inputs, one per key)."""

    def unit(params, x, cy, cx):
        a = model.activations(params, model.preprocess(x), (layer,))[layer]
        return a[cy, cx].astype(jnp.float32).sum()  # all channels: a dead channel cannot hide the support

    shape = jax.eval_shape(lambda x: model.activations(model.params, model.preprocess(x), (layer,))[layer],
                           jax.ShapeDtypeStruct((size, size, 3), jnp.float32)).shape
    h, w = shape[0], shape[1]
    cy, cx = h // 2, w // 2
    grad = jax.jit(jax.grad(unit, argnums=1), static_argnums=(2, 3))  # params traced: no constant folding
    seen = np.zeros((size, size), bool)
    for k in keys:
        g = np.asarray(grad(model.params, jax.random.uniform(k, (size, size, 3), jnp.float32), cy, cx))
        if not np.isfinite(g).all():  # no support can be read from it (it said "zero gradient everywhere")
            raise JaxvizError(f"layer {layer} of model {model.name} gives NaN or infinite gradients with respect to "
                              "the input image, so its receptive field cannot be derived; check the model and its "
                              "weights")
        g = np.abs(g).sum(-1)
        seen |= g > RELATIVE * g.max()
    return seen, (cy, cx), (h, w)


def receptive_field(model, layer: str, size: int | None = None, key: jax.Array | None = None,
                    tries: int = 3) -> Field:
    """The receptive field of ``layer``'s units, from the support of one unit's input gradient.

    The gradient of the centre unit (summed over channels) with respect to the input
    is taken at ``tries`` uniform random inputs and the supports (|g| > RELATIVE x peak)
    are united, so a ReLU that happens to be off on one input does not shrink the field. If the support
    reaches the image border the input is doubled (up to twice ``size``) so it is not
    clipped.
    The stride is ``size / layer side``.
    """
    from jaxviz.api import as_model

    model = as_model(model)
    info = model.layer(layer)
    if not info.spatial:
        raise JaxvizError(f"{layer} is not a spatial layer; dataset examples need a conv or pooling layer")
    size = model.input_size if size is None else checks.integer("size", size, 1, checks.MAX_SIZE)
    tries = checks.integer("tries", tries, 1, 1000)  # 0 found no support: "zero gradient everywhere"
    key = jax.random.key(0) if key is None else key
    try:
        keys = jax.random.split(key, tries)
    except (TypeError, ValueError):  # an int seed: JAX's "invalid PRNG key data"
        raise JaxvizError(f"key must be a JAX random key such as jax.random.key(0), not {checks.show(key)}") from None
    target = max(size, model.min_size(layer))
    size = target  # one compile per size, which costs more than the gradients: start at the target
    while True:
        seen, (cy, cx), (h, w) = _support(model, layer, size, keys)
        rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
        if rows.size == 0:
            raise JaxvizError(f"the units of {layer} do not depend on the input (zero gradient everywhere); "
                              "cannot derive their receptive field")
        inside = rows[0] > 0 and cols[0] > 0 and rows[-1] < size - 1 and cols[-1] < size - 1
        if inside or size >= 2 * target:
            break
        size *= 2
    sy, sx = size // h, size // w
    return Field(sy, sx, int(rows[0]) - cy * sy, int(cols[0]) - cx * sx,
                 int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
