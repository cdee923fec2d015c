"""The public API: load VGG's weights, render any objective of any model with a recipe."""
from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import checks, engine, objectives
from jaxviz.convert import load_keras_h5
from jaxviz.engine import LUCID, SEED, Recipe
from jaxviz.errors import JaxvizError, notice
from jaxviz.image import deprocess_batch, rgb_to_uint8
from jaxviz.models.base import Model, check_model, float16_cause
from jaxviz.models.vgg import vgg


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

    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise JaxvizError(f"weights must be the path of a Keras h5 file, or None for the default, "
                          f"not {type(weights).__name__}")
    if weights is not None and not os.fspath(weights).strip():  # an unset variable, say: not the default
        raise JaxvizError("the weights argument of load_params is an empty path; give a Keras h5 file, "
                          "or None for the default weights")
    try:
        floating = jnp.issubdtype(dtype, jnp.floating)
    except TypeError:
        floating = False
    if not floating:  # integer weights would be truncated (mostly to 0): every filter dead
        raise JaxvizError(f"dtype must be a floating type such as jnp.float32 or jnp.bfloat16, not {dtype!r}")
    path = resolve_weights(weights, download=download, progress=progress, origin="the weights argument of load_params")
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), load_keras_h5(path))


class Rendered(NamedTuple):
    """What ``render`` returns, as numpy arrays: uint8 tiles (N, S, S, 3); the final raw images
    (the seed's pixel scale, else RGB in [0, 1]); each image's final objective value; the value at
    every step (N, steps); and uint8 snapshots (N, frames, S, S, 3) when ``every`` > 0, else None."""

    tiles: np.ndarray
    images: np.ndarray
    values: np.ndarray
    trace: np.ndarray
    frames: np.ndarray | None = None


RECIPES = {"seed": SEED, "lucid": LUCID}


def as_model(model) -> Model:
    """A Model as given, or VGG from a params pytree (``load_params``)."""
    if isinstance(model, Model):
        return check_model(model)
    if isinstance(model, dict):
        return vgg(model)
    raise JaxvizError(f"model must be a jaxviz Model (jaxviz.models) or VGG params from load_params, not {type(model).__name__}")


def as_recipe(recipe) -> Recipe:
    """A Recipe as given, or one named: "seed" (the book's) or "lucid" (the quality recipe)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str) and recipe in RECIPES:
        return RECIPES[recipe]
    raise JaxvizError(f"recipe must be seed, lucid or a jaxviz.Recipe, not {recipe!r}")


def to_uint8(recipe: Recipe, images) -> np.ndarray:
    """Final images -> uint8: the seed's deprocess for raw pixels, round(x * 255) for RGB in [0, 1]."""
    images = np.asarray(images, np.float32)
    if recipe.param.build(1).raw:
        checks.showable("the images", images)
        flat = images.reshape((-1,) + images.shape[-3:])
        out = np.asarray(deprocess_batch(flat)) if len(flat) else np.zeros(flat.shape, np.uint8)
        return out.reshape(images.shape)
    return rgb_to_uint8(images)


def render(model, objective, recipe="seed", *, seed: int = 0, start=None, every: int = 0, progress=None) -> Rendered:
    """Render what maximizes ``objective`` on ``model`` with ``recipe``; see :class:`Rendered`.

    ``model``: a ``jaxviz.models`` Model, or VGG params from ``load_params``. ``objective``: a
    ``jaxviz.objectives`` Objective or its text (``"block3_conv1:0-63"``, ``"neuron:block4_conv1:5"``).
    ``recipe``: "seed" (the book's, 64 px, 40 steps), "lucid" (the quality recipe) or a
    ``jaxviz.Recipe`` (e.g. ``jaxviz.SEED._replace(size=128)``). ``seed`` seeds the start
    images and transforms; ``start`` replaces the start parameters; ``every`` > 0 keeps a
    snapshot every that many steps (an animation of the ascent); ``progress(k)`` is called
    as each compiled chunk of k items finishes (a progress bar). Items whose image never moved
    from its start (a unit that never fired, a layer that does not depend on the input) are
    named in a notice (``jaxviz.errors.notice``).

    >>> tiles = render(load_params(), "block1_conv1:0-1", jaxviz.SEED._replace(size=32, steps=5)).tiles
    >>> tiles.shape
    (2, 32, 32, 3)
    """
    model, recipe = as_model(model), as_recipe(recipe)
    if isinstance(objective, str):
        objective = objectives.parse(objective)
    r = render_quiet(model, objective, recipe, seed=seed, start=start, every=every, progress=progress)
    note = unmoved_note(model, objective, r) if recipe.steps else None
    if note:
        notice(note)
    return r


def render_quiet(model, objective, recipe="seed", *, seed: int = 0, start=None, every: int = 0,
                 progress=None) -> Rendered:
    """``render`` without its notice of unmoved images, for a caller that says its own (the grid)."""
    model, recipe = as_model(model), as_recipe(recipe)
    checks.integer("seed", seed, 0, checks.MAX_SEED)
    if isinstance(objective, str):
        objective = objectives.parse(objective)
    r = engine.render(model, objective, recipe, key=jax.random.key(seed), start=start, every=every,
                      progress=progress)
    checks.finite(f"the images of {model.name}", r.images, r.values, why=lambda: float16_cause(model, recipe))
    frames = None if r.frames is None else to_uint8(recipe, r.frames)
    return Rendered(to_uint8(recipe, r.images), np.asarray(r.images), np.asarray(r.values, np.float32),
                    np.asarray(r.trace, np.float32), frames)


def unmoved_note(model: Model, objective, r: Rendered) -> str | None:
    """A line naming the items whose image never moved from its start (``checks.unmoved``): no
    gradient reached it, so the result is the start image; None when there are none."""
    n = len(objective)
    stuck, frozen = checks.unmoved(r.trace, r.values, len(r.values) // max(1, n))
    items = stuck or frozen
    if not items:
        return None
    term = objective.term
    kind = {objectives.Channel: "", objectives.Neuron: "neuron:", objectives.ClassLogit: "logit"}.get(type(term))
    if kind is not None:  # the items in the objective's text spelling: conv:3, neuron:conv:3, logit:3
        names = [f"{kind}{getattr(term, 'layer', '')}:{int(objective.batched_args()[i])}" for i in items]
    else:
        names = [f"item{'' if len(items) == 1 else 's'} {', '.join(map(str, items))} of the objective"]
    images = "its image" if len(items) == 1 else "their images"
    line = f"jaxviz: {', '.join(names)} on model {model.name} " + (
        f"never fired (objective 0 at every step): no gradient moved {images} from the start" if stuck else
        f"kept the same objective at every step, so {images} never moved from the start: {checks.FROZEN_CAUSES}")
    if stuck and isinstance(term, objectives.Channel) and term.dead_filter != "redirect" and model.preact is not None:
        line += "; objectives.channel(layer, n, dead_filter='redirect') wakes such units"
    return line
