"""Transformation robustness for the quality recipe: small random changes before each step.

Lucid's standard transforms, rewritten as pure jax functions of (key, image):
pad 12 px with grey, jitter 8 px, scale by 0.9-1.1, rotate by -10..10 degrees,
jitter 4 px. Every function takes an unbatched (H, W, C) image, has static output
shapes, is deterministic per key and differentiable with respect to the image
(gathers and bilinear interpolation), so it works under ``jit``, ``vmap`` and ``grad``.

Shapes: ``pad`` grows the image by 2 x ``width`` on each axis; the random transforms
(``jitter``, ``scale``, ``rotate``, ``affine``) keep the shape: a jitter is a random
translation (edge pixels repeat into the uncovered border, and after ``pad`` those
are the grey padding), and a scale or rotation resamples about the image's centre.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxviz import checks
from jaxviz.errors import JaxvizError

Transform = Callable[[jax.Array, jax.Array], jax.Array]  # (key, image) -> image


def pad(x: jax.Array, width: int, value: float = 0.5) -> jax.Array:
    """Pad (H, W, C) by ``width`` px on every side with a constant (grey by default)."""
    checks.integer("pad width", width, 0)  # -2 failed inside jnp.pad ("index can't contain negative values")
    if jnp.ndim(x) != 3:  # an (H, W) image failed inside jnp.pad
        raise JaxvizError(f"the transforms take one (H, W, C) image, not an array of shape {jnp.shape(x)}; "
                          "add a channel axis (x[..., None]), or vmap them over a batch")
    return jnp.pad(x, ((width, width), (width, width), (0, 0)), constant_values=value)


def translate(x: jax.Array, dy, dx, max_shift: int) -> jax.Array:
    """Shift (H, W, C) by integer (dy, dx), |dy|, |dx| <= max_shift; edge pixels fill the border."""
    h, w, c = x.shape
    xp = jnp.pad(x, ((max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    # the channel offset in dy's integer type: a literal 0 is int64 under jax_enable_x64 (dynamic_slice refused the mix)
    return jax.lax.dynamic_slice(xp, (max_shift - dy, max_shift - dx, jnp.zeros_like(dy)), (h, w, c))


def _shift(u, d: int):
    """A uniform u in [0, 1) -> an integer shift uniform in [-d, d]."""
    return jnp.clip(jnp.floor(u * (2 * d + 1)).astype(jnp.int32) - d, -d, d)


def jitter(key: jax.Array, x: jax.Array, d: int) -> jax.Array:
    """A random translation by up to ``d`` px on each axis (uniform integers in [-d, d])."""
    if checks.integer("jitter", d, 0) == 0:  # a negative one did nothing, silently
        return x
    u = jax.random.uniform(key, (2,), jnp.float32)
    return translate(x, _shift(u[0], d), _shift(u[1], d), d)


def bilinear(x: jax.Array, sy: jax.Array, sx: jax.Array) -> jax.Array:
    """Sample (H, W, C) at real coordinates (sy, sx) (each (h, w)) bilinearly -> (h, w, C).

    Coordinates outside the image are clamped to its edge (nearest edge pixel).
    """
    h, w, _ = x.shape
    sy = jnp.clip(sy, 0.0, h - 1.0)
    sx = jnp.clip(sx, 0.0, w - 1.0)
    y0 = jnp.clip(jnp.floor(sy), 0, h - 2).astype(jnp.int32) if h > 1 else jnp.zeros(sy.shape, jnp.int32)
    x0 = jnp.clip(jnp.floor(sx), 0, w - 2).astype(jnp.int32) if w > 1 else jnp.zeros(sx.shape, jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    top = x[y0, x0] * (1 - wx) + x[y0, x1] * wx
    bottom = x[y1, x0] * (1 - wx) + x[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def warp(x: jax.Array, scale, angle) -> jax.Array:
    """Resample (H, W, C) scaled by ``scale`` and rotated by ``angle`` radians about its centre.

    Bilinear, same shape; points that fall outside take the nearest edge pixel.
    """
    h, w, _ = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # output point p comes from source point R(-angle) p / scale
    sy = (cos * yy - sin * xx) / scale + cy
    sx = (sin * yy + cos * xx) / scale + cx
    return bilinear(x, sy, sx)


def scale(key: jax.Array, x: jax.Array, amount: float) -> jax.Array:
    """A random zoom by a factor uniform in [1 - amount, 1 + amount]."""
    if check_scale(amount) == 0:
        return x
    s = jax.random.uniform(key, (), jnp.float32, 1.0 - amount, 1.0 + amount)
    return warp(x, s, 0.0)


def rotate(key: jax.Array, x: jax.Array, degrees: float) -> jax.Array:
    """A random rotation by an angle uniform in [-degrees, degrees]."""
    if check_rotate(degrees) == 0:
        return x
    a = jax.random.uniform(key, (), jnp.float32, -degrees, degrees) * (math.pi / 180.0)
    return warp(x, 1.0, a)


def check_scale(amount) -> float:
    """A zoom amount from 0 to below 1, so that every factor 1 - amount .. 1 + amount stays positive
    (at 1 or more the image shrank to a point or turned upside down; below 0 nothing was done)."""
    a = checks.real("scale", amount)
    if not 0 <= a < 1:
        raise JaxvizError(f"transforms' scale must be from 0 to below 1 (zooms 1 - scale .. 1 + scale), "
                          f"not {checks.show(amount)}")
    return a


def check_rotate(degrees) -> float:
    """A turn from 0 to 360 degrees, finite (NaN degrees made every pixel NaN)."""
    a = checks.real("rotate", degrees)
    if not 0 <= a <= 360:
        raise JaxvizError(f"transforms' rotate must be from 0 to 360 degrees (turns by -rotate .. rotate), "
                          f"not {checks.show(degrees)}")
    return a


class Robustness(NamedTuple):
    """Lucid's standard transforms: pad, jitter, scale, rotate, jitter (0 turns one off)."""

    pad: int = 12
    jitter: int = 8
    scale: float = 0.1  # zoom uniform in [1 - scale, 1 + scale]
    rotate: float = 10.0  # degrees, uniform in [-rotate, rotate]
    jitter2: int = 4


N_RANDOM = 6  # uniforms that one application of ``robust`` consumes


def apply_robust(r: Robustness, u: jax.Array, x: jax.Array, grey: float = 0.5) -> jax.Array:
    """The standard transforms of (S, S, C) driven by ``u``, 6 uniforms in [0, 1):
    pad, jitter (u0, u1), scale (u2), rotate (u3), jitter (u4, u5) -> (S + 2 r.pad, S + 2 r.pad, C).

    Deterministic in ``u``; separate from the drawing of ``u`` so that one call of the
    random generator serves a whole step (its compile time on XLA:CPU is large).
    """
    x = pad(x, r.pad, grey) if r.pad else x
    if r.jitter:
        x = translate(x, _shift(u[0], r.jitter), _shift(u[1], r.jitter), r.jitter)
    if r.scale or r.rotate:
        s = 1.0 + r.scale * (2.0 * u[2] - 1.0)
        a = r.rotate * (2.0 * u[3] - 1.0) * (math.pi / 180.0)
        x = warp(x, s, a)
    if r.jitter2:
        x = translate(x, _shift(u[4], r.jitter2), _shift(u[5], r.jitter2), r.jitter2)
    return x


def robust(r: Robustness = Robustness(), grey: float = 0.5) -> Transform:
    """The standard transforms as one (key, (S, S, C)) -> (S + 2 r.pad, S + 2 r.pad, C) function.

    Scale and rotation are one resampling (one interpolation, not two). ``grey`` pads: 0.5 for
    images in [0, 1], the parameterization's own for others (the seed's raw pixels: 128).
    """
    return lambda key, x: apply_robust(r, jax.random.uniform(key, (N_RANDOM,), jnp.float32), x, grey)


def compose(transforms: Sequence[Transform]) -> Transform:
    """One (key, image) -> image function applying ``transforms`` in order, each with its own subkey."""

    def apply(key, x):
        for i, t in enumerate(transforms):
            x = t(jax.random.fold_in(key, i), x)
        return x

    return apply
