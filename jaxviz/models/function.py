"""A plain JAX function as a jaxviz Model: ``fn(params, x) -> {name: activation}`` or one array.

``fn`` takes ONE unbatched model-input image (H, W, 3) (``preprocess``'s output). A
function returning a single array gives one layer, named ``"output"``. The whole
function runs for every request (it has no way to stop early): name the layers it returns.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz import checks
from jaxviz.models.base import LayerInfo, Model, eval_shapes, finite_weights, identity, layer_shapes, user_min_size

OUTPUT = "output"


def downsampling_min_size(table: Sequence[LayerInfo], input_size: int) -> Callable[[str], int]:
    """Each layer's ``min_size`` by its downsampling, from the layer table: a spatial layer of
    side h at ``input_size`` px gets ``ceil(input_size / h)`` px per output pixel; a vector
    layer what the deepest spatial layer before it gets."""
    sizes, need = {}, 1
    for info in table:
        if info.spatial and min(info.shape[:2]) > 1:  # a 1x1 global pool (squeeze-excite) exists at any size
            need = max(need, math.ceil(input_size / min(info.shape[:2])))
        sizes[info.name] = need
    return lambda name: sizes.get(name, 1)


def searched_min_size(activations: Callable, params: Any, table: Sequence[LayerInfo], input_size: int,
                      preprocess: Callable = identity) -> Callable[[str], int]:
    """``min_size(name)``: the smallest input side at which the layer has a non-empty output.

    Starts from :func:`downsampling_min_size`'s size and confirms it with one ``jax.eval_shape``
    (nothing runs); where it fails (valid convs, a flatten before a dense layer), a binary
    search up to ``input_size`` finds the size. Each layer's answer is computed once.
    """
    bound, known = downsampling_min_size(table, input_size), {}

    def works(name: str, size: int) -> bool:
        x = jax.ShapeDtypeStruct((size, size, 3), jax.numpy.float32)
        try:
            out = jax.eval_shape(lambda p, x: activations(p, preprocess(x), (name,))[name], params, x)
        except Exception:  # the model cannot take this size: any error of the user's code means no
            return False
        return all(d > 0 for d in out.shape)

    def min_size(name: str) -> int:
        if name not in known:
            lo, hi = min(bound(name), input_size), input_size
            if not works(name, lo):
                while hi - lo > 1:  # works(hi) holds: the layer table was made at input_size
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if works(name, mid) else (mid, hi)
                lo = hi
            known[name] = lo
        return known[name]

    return min_size


def _as_dict(out) -> dict:
    if isinstance(out, (tuple, list)):
        raise JaxvizError(f"the model function returns a {type(out).__name__}; return a dict of named activations "
                          "({name: array}) or one array")
    return out if isinstance(out, dict) else {OUTPUT: out}


def _array(v) -> bool:
    """Whether ``v`` is an activation (an array or a number), not other data returned beside them."""
    return isinstance(v, (jax.Array, np.ndarray, np.generic, numbers.Number))


def from_function(fn: Callable[[Any, jax.Array], Any], params: Any, layers: Optional[Sequence[str]] = None, *,
                  preprocess: Callable = identity, input_size: int = 224, min_size: Optional[Callable] = None,
                  name: str = "function") -> Model:
    """A Model from ``fn(params, x)`` -> a dict of named activations (or one array, layer ``"output"``).

    ``layers`` picks and orders the layers objectives may name (default: every array ``fn``
    returns, in its order); their shapes come from ``jax.eval_shape`` at ``input_size`` px.
    ``min_size(name)`` defaults to the size the layer's downsampling needs, checked (:func:`searched_min_size`).

    >>> m = from_function(lambda p, x: jnp.tanh(x @ p), jnp.eye(3), input_size=8)
    >>> m.layers
    (LayerInfo(name='output', shape=(8, 8, 3)),)
    """
    checks.integer("input_size", input_size, 1, checks.MAX_SIZE)
    checks.function("fn", fn)
    checks.function("preprocess", preprocess)
    checks.function("min_size", min_size, optional=True)
    if isinstance(layers, str):  # "conv1" would be the layers "c", "o", ...
        raise JaxvizError(f"layers must be a list of layer names such as [{layers!r}], not the string {layers!r}")
    if layers is not None and not (isinstance(layers, (list, tuple)) and layers):  # 3: Python's TypeError
        raise JaxvizError(f"layers must be a list of the layer names to render such as ['conv1'], or None for all, "
                          f"not {checks.show(layers)}")
    order: list = []  # fn's own order (eval_shape's dicts come back sorted)

    def every(p, x):
        out = {k: v for k, v in _as_dict(fn(p, preprocess(x))).items() if _array(v)}  # a str failed eval_shape
        order.extend(out)
        return out

    finite_weights(params, "the model function")
    shapes = eval_shapes(every, params, input_size, "the model function", "check input_size and preprocess")
    names = [k for k in order if isinstance(shapes[k], jax.ShapeDtypeStruct)]
    if not names:  # None, {} or only other values: a model with no layer to render
        raise JaxvizError("the model function returns no array; return a dict of named activations "
                          "({name: array}) or one array")
    odd = [k for k in names if not isinstance(k, str) or not k.strip() or k != k.strip() or not k.isprintable()]
    if odd:  # objectives, --layers, file names and one-line errors all name a layer by its text (stripped)
        raise JaxvizError(f"the model function returns a layer keyed {odd[0]!r}; key every layer by a printable "
                          "name without spaces around it, such as 'conv1'")
    if layers is not None:
        missing = [n for n in layers if n not in names]
        if missing:
            raise JaxvizError(f"the model function returns no layer {missing[0]!r}; it returns: {', '.join(map(str, names))}")
        names = list(dict.fromkeys(layers))  # a layer named twice is one layer

    def activations(p, x, wanted):
        out = _as_dict(fn(p, x))
        return {n: out[n] for n in wanted}

    table = layer_shapes(activations, params, tuple(names), input_size, preprocess)
    return Model(name, params, activations, table, preprocess,
                 user_min_size(min_size) if min_size
                 else searched_min_size(activations, params, table, input_size, preprocess), input_size)
