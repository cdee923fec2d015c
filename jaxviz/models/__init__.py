"""Models the engine renders: the interface (``base``) and adapters for VGG, Flax and Keras models.

    vgg16(), vgg19(weights)               the book's networks (fast paths)
    from_function(fn, params)             fn(params, x) -> {name: activation} or one array
    from_linen(module, variables)         any flax.linen Module, layers by module path
    from_nnx(module)                      any flax.nnx Module, layers by module path
    from_keras(model), keras_application(name, weights)   Keras 3 on JAX (extra jaxviz[keras])
    load(spec, weights)                   a model from its command-line name

The adapters are imported when first used (Keras is only imported for Keras models).
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

from jaxviz.errors import JaxvizError
from jaxviz.models.base import LOGITS, LayerInfo, Model, first_line
from jaxviz.models.vgg import vgg, vgg16, vgg19

_LAZY = {
    "from_function": "jaxviz.models.function",
    "from_linen": "jaxviz.models.linen",
    "from_nnx": "jaxviz.models.nnx",
    "from_keras": "jaxviz.models.keras",
    "keras_application": "jaxviz.models.keras",
}

__all__ = ["LOGITS", "LayerInfo", "Model", "vgg", "vgg16", "vgg19", "load", *_LAZY]

RANDOM = ("random", "none")  # --weights values asking a Keras application for random weights


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _why(e: BaseException) -> str:
    """An error of the user's code in a few words; ``SystemExit`` as the exit it asked for."""
    return f"it called exit({e.code!r})" if isinstance(e, SystemExit) else first_line(e)


def _user_model(spec: str, weights) -> Model:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing and not (module_name == missing or module_name.startswith(missing + ".")):
            # the module was found: an import of its own failed
            hint = "; install what it imports" if isinstance(e, ModuleNotFoundError) else ""
            raise JaxvizError(f"importing {module_name!r} for model {spec!r} failed ({e}){hint}") from None
        raise JaxvizError(f"cannot import {module_name!r} for model {spec!r} ({e}); "
                          f"is the package on the path?") from None
    except (Exception, SystemExit) as e:  # the module's own code failed (a SyntaxError, an error at import time)
        raise JaxvizError(f"importing {module_name!r} for model {spec!r} failed ({_why(e)})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise JaxvizError(f"module {module_name} has no function {attr!r} for model {spec!r}")
    try:
        made = fn() if weights is None else fn(weights)
    except JaxvizError:
        raise
    except (Exception, SystemExit) as e:  # sys.exit in it ended the command silently, with its status
        how = "with no argument" if weights is None else f"with the weights {str(weights)!r}"
        raise JaxvizError(f"{spec}, called {how}, failed ({_why(e)}); it must build and return a jaxviz "
                          f"Model or (fn, params)") from None
    if isinstance(made, Model):
        return made
    if isinstance(made, tuple) and len(made) == 2 and callable(made[0]):
        from jaxviz.models.function import from_function

        return from_function(made[0], made[1], name=attr)
    raise JaxvizError(f"{spec} returned a {type(made).__name__}; it must return a jaxviz Model "
                      f"(jaxviz.models.from_linen, from_nnx, from_keras, ...) or (fn, params)")


def load(spec: Optional[str] = "vgg16", weights: Optional[str | os.PathLike] = None, **vgg_options) -> Model:
    """The model called ``spec`` on the command line.

    "vgg16" (default; ``weights`` a Keras h5 file, else the embedded ImageNet weights),
    "vgg19" (``weights`` needed), "keras:NAME" for any ``keras.applications`` model
    (``weights`` a Keras weights file, "imagenet" (the default: Keras downloads them) or
    "random"), "package.module:function" for a function returning a jaxviz Model or
    ``(fn, params)`` (called with ``weights`` when given). ``vgg_options`` (``precision``,
    ``conv``) go to the VGG models and must be left at their defaults for the others.
    """
    if spec is not None and not str(spec).strip():
        raise JaxvizError("the model name is empty; use vgg16, vgg19, keras:NAME or package.module:function")
    spec = (spec or "vgg16").strip()
    low = spec.lower()
    if low == "vgg16":
        return vgg16(weights, **vgg_options)
    if low == "vgg19":
        return vgg19(weights, **vgg_options)
    given = {k: v for k, v in vgg_options.items() if v not in (None, "auto", "float32")}
    if given:
        raise JaxvizError(f"{', '.join('--' + k for k in given)} apply to the VGG models only, not {spec}")
    if low.startswith("keras:"):
        from jaxviz.models.keras import keras_application

        name = spec.split(":", 1)[1]
        w = "imagenet" if weights is None else None if str(weights).lower() in RANDOM else weights  # "": an error
        return keras_application(name, w)
    if ":" in spec and all(p.isidentifier() for p in spec.split(":", 1)[0].split(".")) \
            and spec.split(":", 1)[1].isidentifier():
        return _user_model(spec, weights)
    raise JaxvizError(f"unknown model {spec!r}; use vgg16, vgg19, keras:NAME (a keras.applications model, "
                      f"e.g. keras:ResNet50) or package.module:function")
