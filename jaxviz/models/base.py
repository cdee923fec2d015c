"""The model interface: everything the render engine, the CLIs and the atlas need of a network.

A :class:`Model` is a small NamedTuple of data and pure functions. Its ``activations``
function works on ONE unbatched image, as equinox modules do: the engine ``vmap``s it.
Adapters (``jaxviz.models.vgg``, ``linen``, ``nnx``, ``keras``, ``function``) build one
from a network in a few dozen lines each.

The engine passes ``model.params`` as traced data and the rest of the model as a static
(hashed) argument of ``jax.jit``: keep using the same Model object to reuse compiles.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax

from jaxviz import checks
from jaxviz.errors import JaxvizError

# The conventional name of the pre-softmax layer of a model with a classifier; ``class_logit`` reads it.
LOGITS = "logits"


class LayerInfo(NamedTuple):
    """A named layer and the shape of its output for one image of the model's ``input_size``:
    (h, w, C) for a spatial layer, (C,) for a vector (dense) layer."""

    name: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[-1]

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3


class Model(NamedTuple):
    """A network as the engine sees it.

    * ``params``: the weights, any pytree (traced; the engine never changes them).
    * ``activations(params, x, names) -> {name: array}``: the outputs of the named layers
      for one unbatched model-input image ``x`` (H, W, 3) (``preprocess``'s output); one
      forward pass, computing as little past the deepest named layer as the model allows.
    * ``layers``: every layer an objective may name, in forward order, with its shape.
    * ``preprocess(rgb) -> x``: an RGB image in [0, 1] (H, W, 3) -> the model's input.
    * ``min_size(name) -> int``: the smallest square input side for which the layer exists.
    * ``input_size``: the side of the input the ``layers`` shapes were taken at.
    * ``preact(params, x, name, n) -> (h, w)`` (optional): channel n of a layer *before* its
      relu, computed for that channel only (the VGG model's fast path), or None for a layer
      without one; objectives use it for ``channel``/``neuron`` where it is given, and
      ``dead_filter`` modes need it.
    * ``chunk(name, size, n, max_bytes) -> int`` (optional): how many images one compiled
      call takes; by default the engine bounds it by an estimate from ``layers``.
    * ``prepare(params) -> params`` (optional): work on the weights that every step of an
      ascent would repeat (the VGG model's Winograd kernel transforms); the engine calls
      it once per compiled call, before the step loop, and passes its result on.
    """

    name: str
    params: Any
    activations: Callable[[Any, jax.Array, tuple[str, ...]], dict]
    layers: tuple[LayerInfo, ...]
    preprocess: Callable[[jax.Array], jax.Array]
    min_size: Callable[[str], int]
    input_size: int = 224
    preact: Optional[Callable[[Any, jax.Array, str, Any], jax.Array]] = None
    chunk: Optional[Callable[[str, int, int, int], int]] = None
    prepare: Optional[Callable[[Any], Any]] = None

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name``; a one-line JaxvizError listing the valid names otherwise."""
        for info in self.layers:
            if info.name == name:
                return info
        raise JaxvizError(f"unknown layer {name!r} for model {self.name}; valid layers: "
                          f"{', '.join(l.name for l in self.layers)}")  # (--list-layers: the grid's alone)

    def layer_index(self, name: str) -> int:
        """The position of ``name`` in ``layers`` (keys per filter are derived from it)."""
        self.layer(name)
        return [l.name for l in self.layers].index(name)

    def static(self) -> "Model":
        """This model without its params: the hashable part the engine compiles against."""
        return self._replace(params=None)


def check_model(model: Model) -> Model:
    """``model`` once the fields of a hand-built one are checked: the engine failed on a list of layers,
    a min_size of None or an input_size of "224" with Python's TypeError or AttributeError."""
    if not isinstance(model.name, str):
        raise JaxvizError(f"the model's name must be a str such as 'mynet', not {checks.show(model.name)}")
    if not (isinstance(model.layers, tuple) and model.layers and all(
            isinstance(l, LayerInfo) and isinstance(l.name, str) and isinstance(l.shape, tuple) for l in model.layers)):
        raise JaxvizError(f"the layers of model {model.name} must be a tuple of jaxviz.models.LayerInfo(name, shape) "
                          f"(shape a tuple), not {checks.show(model.layers)}")
    for field in ("activations", "preprocess", "min_size"):
        checks.function(f"the {field} of model {model.name}", getattr(model, field))
    for field in ("preact", "chunk", "prepare"):
        checks.function(f"the {field} of model {model.name}", getattr(model, field), optional=True)
    checks.integer(f"the input_size of model {model.name}", model.input_size, 1, checks.MAX_SIZE)
    return model


def identity(x: jax.Array) -> jax.Array:
    """A preprocessing that feeds [0, 1] RGB images as they are."""
    return x


def unit_min_size(name: str) -> int:
    """A ``min_size`` for models with no downsampling constraint."""
    return 1


def user_min_size(fn: Callable[[str], int]) -> Callable[[str], int]:
    """A model's own ``min_size``, its answer checked: an int from 1 px up. One that returned
    None or a float, or raised, failed later in a size comparison with Python's TypeError."""
    def min_size(name: str) -> int:
        try:
            v = fn(name)
        except Exception as e:
            raise JaxvizError(f"the model's min_size({name!r}) failed ({first_line(e)}); "
                              "it must give every layer's smallest input side in px") from None
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= checks.MAX_SIZE:
            raise JaxvizError(f"the model's min_size({name!r}) returned {checks.show(v)}; it must return the "
                              f"layer's smallest input side in px, an int from 1 to {checks.MAX_SIZE}")
        return int(v)

    return min_size


def first_line(e: BaseException) -> str:
    """An exception as "Type: its first line" (a model's own error, quoted in one of ours)."""
    text = str(e).strip()
    return type(e).__name__ + (": " + text.splitlines()[0] if text else "")


def finite_weights(params, what: str) -> None:
    """One JaxvizError naming the first floating-point leaf of ``params`` that holds NaN or infinity
    (a diverged training run's weights): every image would come out NaN, which the engine could only
    call "not finite", and the dataset examples' gradient zero."""
    import jax.numpy as jnp
    import numpy as np

    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, float):  # a Python float (a scale of float("nan")) has no dtype: it passed unchecked
            leaf = np.float64(leaf)
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) and not bool(jnp.isfinite(leaf).all()):
            count = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf, np.float32))))
            raise JaxvizError(f"the weights of {what} hold {count} NaN or infinite value(s) in "
                              f"{jax.tree_util.keystr(path) or 'its one array'}; load finite weights")


def float16_cause(model: Model, recipe) -> str | None:
    """Why ``model``'s images under ``recipe`` came out not finite where it computes in float16 (at
    most 65504, which the seed's 0-255 pixels overflow): its first float16 layer, else param, and the
    fix; None where neither is. Traces the model (nothing runs): for that error only."""
    import jax.numpy as jnp

    raw, names = recipe.param.build(1).raw, tuple(l.name for l in model.layers)
    x = jax.ShapeDtypeStruct((recipe.size, recipe.size, 3), jnp.float32)
    forward = lambda p, x: model.activations(p, x if raw else model.preprocess(x), names)
    try:
        out = jax.eval_shape(forward, model.params, x)
    except Exception:  # the render traced it at this size; anything else: the params may still tell
        out = {}
    half = [n for n in names if isinstance(out, dict) and getattr(out.get(n), "dtype", None) == jnp.float16]
    params = [p for p, leaf in jax.tree_util.tree_flatten_with_path(model.params)[0]
              if getattr(leaf, "dtype", None) == jnp.float16]
    if not (half or params):
        return None
    where = f"layer {half[0]} of model {model.name} computes in float16" if half else \
        f"model {model.name} has float16 params ({jax.tree_util.keystr(params[0]) or 'its one array'})"
    fix = ("scale the input down inside the model (the seed recipe feeds it raw 0-255 pixels, bypassing preprocess) "
           "or use the lucid recipe") if raw else "give preprocess a smaller input scale"
    return f"{where}, and float16 overflows past 65504: give the model float32 params and compute, or {fix}"


def eval_shapes(fn, params, size: int, what: str, hint: str):
    """``jax.eval_shape`` of ``fn(params, x)`` for one (size, size, 3) float32 image (nothing
    runs); where the model's own code fails on it, one JaxvizError naming ``what``, the
    error's first line and ``hint``, instead of a traceback from inside JAX or Flax."""
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((size, size, 3), jnp.float32)
    try:
        return jax.eval_shape(fn, params, x)
    except JaxvizError:
        raise
    except Exception as e:
        raise JaxvizError(f"{what} failed on a {size}x{size}x3 input ({first_line(e)}); {hint}") from None


def layer_shapes(activations, params, names: tuple[str, ...], size: int, preprocess=identity) -> tuple[LayerInfo, ...]:
    """Each named layer's output shape for one image of ``size`` px, by ``jax.eval_shape`` (nothing runs)."""
    out = eval_shapes(lambda p, x: activations(p, preprocess(x), tuple(names)), params, size, "the model",
                      "check input_size and preprocess")
    return tuple(LayerInfo(n, tuple(out[n].shape)) for n in names)


def traceable(model: Model, names, size: int, raw: bool = False, error: Optional[Exception] = None) -> None:
    """A one-line JaxvizError where the model's own code fails on a ``size`` px image, or cannot be
    differentiated with respect to its input image, or batched with ``jax.vmap``, at the named
    layers (a ``jax.pure_callback`` without a ``custom_jvp`` or a ``vmap_method``, say): all by
    tracing alone, nothing runs. The engine asks it after a chunk fails with ``error``, to tell the
    model's fault from its own (whose error then propagates); a tracer leaked out of a
    transformation inside the model is the model's too."""
    import jax.numpy as jnp

    known = {l.name for l in model.layers}
    names = tuple(n for n in names if n in known)
    forward = lambda x, p: model.activations(p, x if raw else model.preprocess(x), names)
    total = lambda x, p: sum(jnp.sum(a.astype(jnp.float32)) for a in forward(x, p).values())
    x = jax.ShapeDtypeStruct((size, size, 3), jnp.float32)
    what = f"model {model.name}, up to {', '.join(names) or 'its layers'},"
    eval_shapes(lambda p, x: forward(x, p), model.params, size, f"model {model.name}",  # a wrong size first
                f"its layers were taken at {model.input_size} px; give a size it accepts")
    try:
        jax.eval_shape(jax.grad(total), x, model.params)
    except Exception as e:
        raise JaxvizError(f"{what} cannot be differentiated with respect to its input image ({first_line(e)}); "
                          "jaxviz needs that gradient: write those layers in JAX operations (or give a "
                          "callback a custom_jvp)") from None
    try:
        jax.eval_shape(jax.vmap(forward, (0, None)), jax.ShapeDtypeStruct((2,) + x.shape, x.dtype), model.params)
    except Exception as e:
        raise JaxvizError(f"{what} cannot be batched with jax.vmap ({first_line(e)}); jaxviz runs many images "
                          "at once: make those layers vmappable (a pure_callback needs a vmap_method)") from None
    if isinstance(error, jax.errors.UnexpectedTracerError):  # a layer read from inside nn.remat, nn.scan, ...
        raise JaxvizError(f"a layer of model {model.name} ({', '.join(names)}) is computed inside a JAX "
                          "transformation of the model's own (nn.remat, nn.scan, jax.checkpoint, ...), so its "
                          "output cannot be read from outside it; name a layer outside that transformation") from None


@contextlib.contextmanager
def model_errors(model: Model, names, size: int, raw: bool = False):
    """Around work that traces ``model`` (a step, a batch, a gradient): an error in it that the
    model's own code explains becomes :func:`traceable`'s one line; any other propagates as it was."""
    try:
        yield
    except JaxvizError:
        raise
    except Exception as e:
        traceable(model, names, size, raw, e)
        raise
