"""Any Keras 3 model (``keras.applications`` included) as a jaxviz Model, on Keras' JAX backend.

Layers are the Keras layers by name, each a single-tensor output. For the layers an
objective asks for, a sub-model ``keras.Model(model.inputs, [those outputs])`` is built
once and run with ``stateless_call(trainable, non_trainable, x, training=False)`` (batch
norm on moving statistics, dropout off); the params are the two lists of variable values.
The sub-model ends at the requested layers, so nothing after them is computed. A model
whose last layer is a softmax Dense also has a ``logits`` layer (its input @ kernel + bias).

Needs the ``jaxviz[keras]`` extra; ``KERAS_BACKEND`` is set to "jax" if unset.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jaxviz import checks
from jaxviz.errors import JaxvizError, notice
from jaxviz.models.base import LOGITS, LayerInfo, Model, eval_shapes, finite_weights, identity
from jaxviz.models.function import searched_min_size


def _keras():
    """keras, imported on the JAX backend; a one-line error if it runs on another one or is missing."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError:
        raise JaxvizError("Keras models need keras 3: pip install 'jaxviz[keras]'") from None
    if keras.backend.backend() != "jax":
        raise JaxvizError(f"keras runs on the {keras.backend.backend()} backend; jaxviz needs KERAS_BACKEND=jax "
                          f"set before keras is first imported")
    return keras


def _single_output(layer):
    """The layer's one output tensor, or None (several outputs, or never called). A layer called more
    than once (shared by two branches) gives its first call's, as Keras' own ``layer.output`` does."""
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return None
    return out if hasattr(out, "shape") and not isinstance(out, (list, tuple, dict)) else None


def from_keras(model: Any, preprocess: Optional[Callable] = None, *, input_size: Optional[int] = None,
               name: Optional[str] = None) -> Model:
    """A Model from a built functional/sequential ``keras.Model`` taking (N, H, W, 3) images.

    ``preprocess`` turns RGB in [0, 1] into the model's input (default: as it is).
    ``input_size``: the size the layer shapes are given at (default: the model's fixed input
    size, else 224). A model with a fixed input size accepts only that size.
    """
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise JaxvizError(f"from_keras needs a keras.Model, not a {type(model).__name__}")
    if model.built and not getattr(model, "inputs", None):  # calling it once gives it no graph of layers
        raise JaxvizError(f"Keras model {model.name} is a subclassed model, without a graph of layers to read; "
                          f"jaxviz needs a functional or Sequential model: keras.Model(inputs, outputs)")
    if not model.built or not getattr(model, "inputs", None):
        raise JaxvizError(f"Keras model {model.name} has no inputs yet; build it with keras.Input(...) "
                          f"(or call it once on an image batch) before handing it to jaxviz")
    if len(model.inputs) != 1:  # Keras failed with "Output with path `1` is not connected to `inputs`"
        raise JaxvizError(f"Keras model {model.name} takes {len(model.inputs)} inputs; jaxviz renders models of one "
                          f"image input: build one, keras.Model(image_input, outputs)")
    preprocess = checks.function("preprocess", preprocess or identity)
    if input_size is not None:  # 0 was taken for "not given" (224), -5 reached Keras
        checks.integer("input_size", input_size, 1, checks.MAX_SIZE)
    if isinstance(model.input_shape, tuple) and len(model.input_shape) != 4:  # (N, 10): an IndexError below
        raise JaxvizError(f"Keras model {model.name} takes inputs of shape {model.input_shape}; jaxviz renders "
                          "models of images, (N, H, W, channels)")
    channels_first = [l.name for l in model.layers if getattr(l, "data_format", None) == "channels_first"]
    if channels_first:  # its (C, H, W) outputs were read as (H, W, C): channel n was a column of the image
        raise JaxvizError(f"Keras model {model.name} has channels-first layers ({', '.join(channels_first[:3])}); "
                          f"jaxviz reads layers as (H, W, channels): build it with data_format='channels_last'")
    fixed = tuple(model.input_shape[1:3]) if isinstance(model.input_shape, tuple) else (None, None)
    if fixed[0] is not None and fixed[0] == fixed[1]:
        if input_size not in (None, fixed[0]):
            raise JaxvizError(f"input_size={input_size}, but Keras model {model.name} takes {fixed[0]} px images "
                              f"only; leave input_size out")
        input_size = fixed[0]
    elif fixed[0] is not None or fixed[1] is not None:
        notice(f"Keras model {model.name} declares {fixed[0] or 'any'} x {fixed[1] or 'any'} px inputs; jaxviz "
               f"renders square images, so its layers are taken at {input_size or 224} px (pass input_size=...)")
    input_size = input_size or 224
    trainable, non_trainable = list(model.trainable_variables), list(model.non_trainable_variables)
    index = {id(v): ("t", i) for i, v in enumerate(trainable)}
    index.update({id(v): ("n", i) for i, v in enumerate(non_trainable)})
    # a model nested as a layer gives its own graph's output, not its call's here ("not connected to
    # inputs" for the whole model): left out; from_keras(that model) renders its layers
    layers = {l.name: l for l in model.layers
              if not isinstance(l, (keras.layers.InputLayer, keras.Model)) and _single_output(l) is not None}
    if not layers:
        raise JaxvizError(f"Keras model {model.name} has no layers jaxviz can render (each with one output "
                          f"tensor); add some between its input and its output")
    last = model.layers[-1]
    has_logits = (isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "softmax"
                  and LOGITS not in layers)
    subs: dict = {}

    def tensor(n):
        return last.input if n == LOGITS else layers[n].output

    def sub_model(names: tuple):
        if names not in subs:
            sub = keras.Model(model.inputs, [tensor(n) for n in names])
            picks = ([index[id(v)] for v in sub.trainable_variables], [index[id(v)] for v in sub.non_trainable_variables])
            subs[names] = sub, picks
        return subs[names]

    def activations(p, x, names):
        names = tuple(names)
        sub, picks = sub_model(names)
        src = {"t": p[0], "n": p[1]}
        values = [[src[k][i] for k, i in pick] for pick in picks]
        outs, _ = sub.stateless_call(values[0], values[1], x[None], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        out = {n: o[0] for n, o in zip(names, outs)}
        if LOGITS in out:
            (k, i) = index[id(last.kernel)]
            z = out[LOGITS] @ src[k][i]
            if last.use_bias:
                (k, i) = index[id(last.bias)]
                z = z + src[k][i]
            out[LOGITS] = z
        return out

    params = ([jnp.asarray(v.value) for v in trainable], [jnp.asarray(v.value) for v in non_trainable])
    names = tuple(layers)
    if has_logits:  # keep forward order: logits just before the softmax layer
        names = tuple(n for n in layers if n != last.name) + (LOGITS, last.name)
    for v, value in zip(trainable + non_trainable, params[0] + params[1]):  # named by the variable's path
        finite_weights({getattr(v, "path", v.name): value}, f"Keras model {model.name}")
    shapes = eval_shapes(lambda p, x: activations(p, preprocess(x), names), params, input_size,
                         f"Keras model {model.name}", "check input_size and preprocess")
    table = tuple(LayerInfo(n, tuple(shapes[n].shape)) for n in names)
    if fixed[0] is not None:
        min_size = lambda n: input_size  # noqa: E731  (a fixed input takes that size only)
    else:
        min_size = searched_min_size(activations, params, table, input_size, preprocess)
    return Model(name or model.name, params, activations, table, preprocess, min_size, input_size)


def applications() -> list[str]:
    """The names of the ``keras.applications`` model builders (ResNet50, MobileNetV2, ...)."""
    apps = _keras().applications
    return sorted(n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n)))


def _application_preprocess(builder) -> Callable:
    """The application's own ``preprocess_input`` on 255-scaled RGB, or the 255 scaling alone."""
    module = sys.modules.get(builder.__module__)
    pre = getattr(module, "preprocess_input", None)
    if pre is None:
        return lambda x: x * 255.0
    return lambda x: pre(x * 255.0)


def keras_application(name: str, weights: Optional[str | os.PathLike] = None, *, input_size: Optional[int] = None,
                      include_top: Optional[bool] = None) -> Model:
    """``keras.applications.<name>`` as a Model, with its own preprocessing.

    ``weights``: None (random initialization), "imagenet" (Keras downloads them: needs the
    internet once) or a Keras weights file (with or without the classifier top; tried
    with it first). Without the top the model takes any input size (layer shapes at
    ``input_size``, default 224); with it (``include_top=True``, or a file holding the top) the
    size is fixed, and the model has a ``logits`` layer.
    """
    keras = _keras()
    builder = getattr(keras.applications, name, None) if isinstance(name, str) else None
    if builder is None or not name[:1].isupper():
        same = [n for n in applications() if isinstance(name, str) and n.lower() == name.strip().lower()]
        if same:  # keras:resnet50
            raise JaxvizError(f"unknown keras.applications model {name!r}; the names are case-sensitive: {same[0]}")
        raise JaxvizError(f"unknown keras.applications model {name!r}; choose one of: {', '.join(applications())}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):  # 3 or bytes: pathlib's TypeError
        raise JaxvizError(f"weights must be None, \"imagenet\" or the path of a Keras weights file of {name}, "
                          f"not {type(weights).__name__}")
    if weights is not None and not os.fspath(weights).strip():  # Path("") is the current folder
        raise JaxvizError(f"weights is an empty path; give a Keras weights file of {name}, \"imagenet\", or None "
                          f"for random weights")
    if include_top is not None:
        checks.flag("include_top", include_top)
    is_file = weights is not None and str(weights) != "imagenet"
    if is_file:
        p = Path(weights)
        try:
            why = ("" if p.is_file() else "is a folder" if p.is_dir() else "is not a regular file" if p.exists()
                   else "does not exist")
            why = why or ("" if os.access(p, os.R_OK) else "cannot be read (permission denied)")
        except OSError as e:  # the name itself is bad (too long, say)
            why = f"cannot be read ({e.strerror})"
        if why:
            raise JaxvizError(f"weights file {weights} {why}; give a Keras weights file of {name}")
    # with the top first: Keras loads a file with the top into a model without one, silently
    # dropping the classifier, but refuses a file without the top for a model with one
    tops = [include_top] if include_top is not None else ([True, False] if is_file else [False])
    error = None
    for top in tops:
        shape = None if top else (None, None, 3)
        if top and input_size is not None:
            shape = (input_size, input_size, 3)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # Keras' own download talk:
                warnings.simplefilter("ignore")  # a failure is the one line below
                model = builder(weights=None if is_file else weights, include_top=top, input_shape=shape)
                if is_file:
                    model.load_weights(str(weights))
            break
        except Exception as e:  # download failure, wrong file: one line, below
            error = e
    else:
        lines = [l.strip() for l in str(error).splitlines() if l.strip()] or [type(error).__name__]
        first = lines[0]
        if first.endswith(":") and len(lines) > 1:  # Keras' "... for object <Conv2D name=c1>:", its reason next
            first += " " + lines[1].split(" Target variable:")[0][:300]
        from jaxviz.convert import check_unlocked

        check_unlocked(weights, first)
        if weights == "imagenet":
            raise JaxvizError(f"could not get {name}'s ImageNet weights ({first}); offline, give a Keras weights "
                              f"file (--weights FILE)") from None
        if weights is None:  # random weights: nothing to load; the size, say
            raise JaxvizError(f"could not build {name} ({first}); check input_size and include_top")
        raise JaxvizError(f"could not build {name} with weights {weights} ({first}); give {name}'s Keras weights file")
    return from_keras(model, _application_preprocess(builder), input_size=input_size, name=name)
