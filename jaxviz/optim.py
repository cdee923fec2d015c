"""Optimizers of the render engine: optax ``GradientTransformation``s and hashable specs of them.

The engine minimizes ``-objective`` with any optax transformation. Two are named here so
that a recipe can hold them as plain data (and compile once per setting):

* :func:`seed_ascent`: the book's step, ``x <- x + step_size * g / (rms(g) + 1e-5)`` with g
  the gradient of the objective, written as an optax transformation of the loss gradient;
* Adam, as ``optax.adam(lr)`` (the quality recipe).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxviz import checks


def normalize(g: jax.Array) -> jax.Array:
    """The seed's gradient normalization: g / (sqrt(mean(g^2)) + 1e-5)."""
    return g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-5)


def seed_ascent(step_size: float = 1.0) -> optax.GradientTransformation:
    """The seed's normalized gradient step as an optax transformation (stateless).

    It receives the gradient of the loss (minus the objective) and returns
    ``-step_size * normalize(g)``, so ``optax.apply_updates`` adds the book's step.
    """
    def update(updates, state, params=None):
        return jax.tree.map(lambda g: -step_size * normalize(g), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class _SeedAscentFields(NamedTuple):
    step_size: float = 1.0


class SeedAscent(_SeedAscentFields):
    """Spec of :func:`seed_ascent` (hashable, so a recipe holding it compiles once).

    ``step_size`` must be more than 0 and finite in float32 (``checks.rate``), refused here
    with one JaxvizError: a negative one would silently descend instead of ascend."""

    __slots__ = ()

    def __new__(cls, step_size: float = 1.0):
        return super().__new__(cls, checks.rate("step_size", step_size))

    def build(self) -> optax.GradientTransformation:
        return seed_ascent(self.step_size)


class _AdamFields(NamedTuple):
    lr: float = 0.05


class Adam(_AdamFields):
    """Spec of ``optax.adam(lr)``; ``lr`` is checked as :class:`SeedAscent`'s step size is."""

    __slots__ = ()

    def __new__(cls, lr: float = 0.05):
        return super().__new__(cls, checks.rate("lr", lr))

    def build(self) -> optax.GradientTransformation:
        return optax.adam(self.lr)


def check(optimizer) -> None:
    """Check a spec of ours again, as its constructor does (``_replace`` builds a copy without
    calling it); anything else (an optax transformation, another spec) is taken as it is."""
    if isinstance(optimizer, (SeedAscent, Adam)):
        type(optimizer)(*optimizer)


def check_update(optimizer, shape: tuple) -> None:
    """One line where ``optimizer`` (an optax transformation) cannot step parameters of ``shape``: its
    ``init`` or ``update`` fails or is not a function, or ``update`` does not return ``(updates, state)``
    with updates of that shape (by tracing), or where its first step is not finite or goes against the
    objective (one step run on a gradient of ones); before a render's long work: an update returning the
    updates alone failed inside the compiled step, ``optax.sgd(-1.0)`` descended silently and
    ``optax.sgd(nan)`` was told only after the render."""
    from jaxviz.errors import JaxvizError
    from jaxviz.models.base import first_line

    fix = "an optax GradientTransformation's update(grads, state, params) must return (updates, new_state)"
    p = jax.ShapeDtypeStruct(shape, jnp.float32)

    def one_step(p):
        opt = build(optimizer)
        out = opt.update(p, opt.init(p), p)
        if not (isinstance(out, tuple) and len(out) == 2):
            got = "an array" if hasattr(out, "shape") else type(out).__name__
            raise JaxvizError(f"recipe.optimizer's update returned {got}, not (updates, state); {fix}")
        return optax.apply_updates(p, out[0])

    try:
        new = jax.eval_shape(one_step, p)
    except JaxvizError:
        raise
    except Exception as e:
        raise JaxvizError(f"recipe.optimizer fails on the recipe's parameters of shape {shape} ({first_line(e)}); "
                          f"{fix}") from None
    if getattr(new, "shape", None) != shape:
        raise JaxvizError(f"recipe.optimizer's updates change the parameters' shape {shape} to "
                          f"{getattr(new, 'shape', type(new).__name__)}; {fix}, updates shaped as the parameters")
    # the engine hands optax the gradient of -objective: a first step along it would descend the objective
    opt, g, p0 = build(optimizer), jnp.ones(shape, jnp.float32), jnp.zeros(shape, jnp.float32)
    first = opt.update(g, opt.init(p0), p0)[0]
    if not bool(jnp.isfinite(first).all()):  # every image NaN, said only after the whole render
        raise JaxvizError("recipe.optimizer's first step is not finite (NaN or infinity), so no image would be: a "
                          "learning rate of NaN or infinity, such as optax.sgd(float('nan'))?; give a finite one")
    if float(jnp.vdot(first, g)) > 0:
        raise JaxvizError("recipe.optimizer steps the images against the objective (a negative learning rate, such "
                          "as optax.sgd(-1.0)?): jaxviz hands optax the gradient of -objective to minimize, so give "
                          "it a positive learning rate")


def build(optimizer) -> optax.GradientTransformation:
    """A spec (anything with ``build()``) or an optax transformation -> the transformation."""
    return optimizer.build() if hasattr(optimizer, "build") else optimizer
