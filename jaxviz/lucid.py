"""The quality recipe (Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017; Lucid).

For layer L and filter f, each of ``diversity`` images (1 by default) is a
parameterization (``jaxviz.param``: scaled Fourier coefficients with decorrelated
colours and a sigmoid, or plain pixels) whose image in [0, 1] goes, at every step,
through random transformations (``jaxviz.transforms``: pad, jitter, scale, rotate,
jitter), then through Keras VGG16's own preprocessing (``jaxviz.objectives.preprocess``)
into the network. The loss is minus the mean of filter f's activation (post-relu, or
pre-relu / redirected relu for filters that never start: ``dead_filter``), plus
``diversity_weight`` times Lucid's diversity term when several images are asked for.
Adam (optax) minimizes it for ``steps`` steps.

These settings are a preset of the one render engine (``jaxviz.engine``): ``recipe``
maps them to its parts (parameterization, transforms, Adam, steps) and ``objective``
to a channel objective (plus the diversity term). Each filter's randomness comes from
its own key, so a filter's result does not depend on the batch or on the chunking.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxviz import checks, engine, objectives, transforms
from jaxviz.ascent import DEFAULT_MAX_BYTES, AscentConfig, batch_size_for, run_key, validate
from jaxviz.engine import Recipe
from jaxviz.errors import JaxvizError
from jaxviz.model import VGG16, VGGSpec
from jaxviz.models.vgg import vgg
from jaxviz.objectives import Objective, channel, diversity_term
from jaxviz.optim import Adam
from jaxviz.param import Fourier, Pixel

LUCID_STEPS = 512


class LucidConfig(NamedTuple):
    """The quality recipe's settings (hashable: it is a static argument of the compiled run)."""

    size: int = 128
    steps: int = LUCID_STEPS
    lr: float = 0.05  # Adam's learning rate
    param: str = "fourier"  # or "pixel"
    decorrelate: bool = True  # mix colours by the square root of ImageNet's colour correlation
    decay_power: float = 1.0  # the Fourier spectrum's 1/f**decay_power
    transforms: bool = True  # transformation robustness (pad, jitter, scale, rotate, jitter)
    pad: int = 12
    jitter: int = 8
    scale: float = 0.1
    rotate: float = 10.0
    jitter2: int = 4
    dead_filter: str = "none"  # "preact" (objective before the relu) or "redirect" (redirected relu)
    redirect_steps: Optional[int] = None  # redirect only in the first N steps; None: every step (Lucid)
    diversity: int = 1  # images per filter
    diversity_weight: float = 100.0  # weight of Lucid's diversity term when diversity > 1
    precision: str = "float32"  # or "bfloat16" (the network's matmuls)

    def robustness(self) -> transforms.Robustness:
        return transforms.Robustness(self.pad, self.jitter, self.scale, self.rotate, self.jitter2)


class LucidResult(NamedTuple):
    """Final images (N, size, size, 3) in [0, 1]; each image's final loss, the mean post-relu
    activation of its filter on the untransformed image (N,); the objective per step (N, steps).
    With ``diversity`` D > 1 the N = filters x D images come filter by filter."""

    images: jax.Array
    losses: jax.Array
    trace: jax.Array


def validate_config(layer: str, filters: Sequence[int], config: LucidConfig, spec: VGGSpec = VGG16) -> None:
    """Raise a one-line JaxvizError for an unknown layer, filter or impossible setting."""
    if not isinstance(config, LucidConfig):  # a tuple or None failed with AttributeError
        raise JaxvizError(f"config must be a jaxviz.lucid.LucidConfig(...), not {checks.show(config)}")
    checks.lucid_settings(config)
    validate(layer, filters, AscentConfig(config.size, config.steps, 1.0, config.precision), spec)
    if config.param not in ("fourier", "pixel"):
        raise JaxvizError(f"param must be fourier or pixel, not {config.param!r}")
    if config.dead_filter not in objectives.DEAD_FILTER:
        raise JaxvizError(f"dead_filter must be one of {', '.join(objectives.DEAD_FILTER)}, not {config.dead_filter!r}")
    if config.diversity < 1:
        raise JaxvizError(f"diversity must be 1 or more images per filter, not {config.diversity}")
    if not config.lr > 0:
        raise JaxvizError(f"lr must be positive, not {config.lr}")
    if min(config.pad, config.jitter, config.jitter2) < 0 or config.scale < 0 or config.rotate < 0:
        raise JaxvizError("transform sizes (pad, jitter, scale, rotate) must be 0 or more")
    if config.diversity_weight < 0:  # it pulled a filter's images together, silently
        raise JaxvizError(f"diversity_weight must be 0 or more (it pushes a filter's images apart), "
                          f"not {config.diversity_weight}")


def recipe(config: LucidConfig) -> Recipe:
    """The engine's recipe for these settings."""
    param = Fourier(config.decorrelate, config.decay_power) if config.param == "fourier" else Pixel(config.decorrelate)
    return Recipe(param=param, transforms=config.robustness() if config.transforms else None,
                  optimizer=Adam(config.lr), steps=config.steps, size=config.size, diversity=config.diversity)


def objective(layer: str, filters, config: LucidConfig) -> Objective:
    """The channel objective of these settings, with Lucid's diversity term when several images are asked for."""
    obj = channel(layer, filters, config.dead_filter, config.redirect_steps)
    if config.diversity > 1 and config.diversity_weight:
        obj = obj + config.diversity_weight * diversity_term(layer)
    return obj


def filters_per_batch(layer: str, config: LucidConfig, n: int, max_bytes: int = DEFAULT_MAX_BYTES,
                      spec: VGGSpec = VGG16) -> int:
    """How many filters (each with ``config.diversity`` images) one compiled call takes, at most n."""
    work = config.size + (2 * config.pad if config.transforms else 0)
    return max(1, min(n, batch_size_for(layer, work, n * config.diversity, max_bytes, spec) // config.diversity))


def lucid(params: dict, layer: str, filters, *, key: jax.Array | None = None, seed: int = 0,
          config: LucidConfig = LucidConfig(), max_bytes: int = DEFAULT_MAX_BYTES, spec: VGGSpec = VGG16,
          batch_size: int | None = None) -> LucidResult:
    """Render ``filters`` of VGG's ``layer`` with the quality recipe (the engine with :func:`recipe`).

    Filters go in chunks of equal size (the last one padded) so that the estimated
    memory stays under ``max_bytes``; a filter's result does not depend on the chunks.
    """
    filters = checks.filter_list(filters)
    validate_config(layer, filters, config, spec)
    key = run_key(key, seed, batch_size, max_bytes)
    s = config.size
    if not filters:
        return LucidResult(jnp.zeros((0, s, s, 3)), jnp.zeros((0,)), jnp.zeros((0, config.steps)))
    model = vgg(params, spec, precision=config.precision)
    b = batch_size or filters_per_batch(layer, config, len(filters), max_bytes, spec)
    r = engine.render(model, objective(layer, filters, config), recipe(config), key=key, batch_size=b)
    return LucidResult(r.images, r.values, r.trace)
