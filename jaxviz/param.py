"""Image parameterizations for the quality recipe: what the optimizer sees, and how it becomes an image.

A parameterization is a pair of pure functions (:class:`Param`):

* ``init(key) -> p``: the starting parameters (a small random array);
* ``to_image(p) -> x``: a valid RGB image (H, W, 3) in [0, 1].

Two are provided, as in the Distill "Feature Visualization" article and Lucid:

* ``fourier``: the image is the inverse real FFT of coefficients scaled by a 1/f
  spectrum (``fourier_scale``), so that a step of the optimizer changes low
  frequencies as much as high ones (a whitened, better conditioned problem);
* ``pixel``: one parameter per pixel and channel.

In both, the three channels are first mixed by the square root of ImageNet's colour
correlation (``decorrelate``; optional) and then squashed into [0, 1] by a sigmoid.
Every function is pure, has static shapes and works under ``jit`` and ``vmap``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import checks
from jaxviz.errors import JaxvizError

# The square root of ImageNet's RGB colour correlation matrix (the values Lucid
# publishes; columns are the colour "principal directions" scaled by the square root
# of their variance). Normalized so that its largest column has unit norm.
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02],
                        [0.27, 0.00, -0.05],
                        [0.27, -0.09, 0.03]], np.float64)
COLOR_SQRT = (_COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))).astype(np.float32)
COLOR_SQRT_INV = np.linalg.inv(COLOR_SQRT.astype(np.float64)).astype(np.float32)

FOURIER_SD = 0.01  # the start coefficients' standard deviation (Lucid's)
PIXEL_SD = 0.01


class Param(NamedTuple):
    """A parameterization: ``init(key) -> params`` and ``to_image(params) -> (H, W, 3)``.

    The image is RGB in [0, 1], given to the model through its preprocessing, unless
    ``raw``: then it is the model's input itself (the seed recipe's raw pixels). ``grey`` is
    the image's mid-grey, what the transforms pad with.
    """

    init: Callable[[jax.Array], jax.Array]
    to_image: Callable[[jax.Array], jax.Array]
    raw: bool = False
    grey: float = 0.5


# ---------------------------------------------------------------- colour

def _rgb(name: str, x) -> None:
    """One line for an array whose last axis is not RGB's 3 channels (dot_general's TypeError)."""
    if jnp.shape(x)[-1:] != (3,):
        raise JaxvizError(f"{name} mixes the 3 channels of RGB images (..., 3), not an array of shape {jnp.shape(x)}; "
                          "give RGB, or leave the colour mix out (decorrelated=False)")


def decorrelate(x: jax.Array) -> jax.Array:
    """Mix the channels of (..., 3) by the square root of ImageNet's colour correlation."""
    _rgb("decorrelate", x)
    return x @ jnp.asarray(COLOR_SQRT).T


def correlate(x: jax.Array) -> jax.Array:
    """The inverse of :func:`decorrelate`."""
    _rgb("correlate", x)
    return x @ jnp.asarray(COLOR_SQRT_INV).T


def to_valid_rgb(t: jax.Array, decorrelated: bool = True) -> jax.Array:
    """Unbounded (H, W, 3) -> RGB in [0, 1]: the colour mix (optional), then a sigmoid."""
    return jax.nn.sigmoid(decorrelate(t) if decorrelated else t)


def from_valid_rgb(x: jax.Array, decorrelated: bool = True, eps: float = 1e-4) -> jax.Array:
    """The inverse of :func:`to_valid_rgb` (for images strictly inside (0, 1); clipped to eps)."""
    x = jnp.clip(x, eps, 1.0 - eps)
    t = jnp.log(x) - jnp.log1p(-x)
    return correlate(t) if decorrelated else t


# ---------------------------------------------------------------- Fourier

def rfft_freqs(h: int, w: int) -> np.ndarray:
    """The radial frequency (cycles per pixel) of each coefficient of an (h, w) real FFT: (h, w//2 + 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def fourier_scale(h: int, w: int, decay_power: float = 1.0) -> np.ndarray:
    """Lucid's spectrum: 1 / max(f, 1/max(h, w)) ** decay_power, per coefficient, (h, w//2 + 1).

    The floor keeps the DC term finite (it gets the weight of the lowest frequency).
    """
    f = np.maximum(rfft_freqs(h, w), 1.0 / max(h, w))
    return (1.0 / f**decay_power).astype(np.float32)


def irfft2_matrices(h: int, w: int) -> tuple[np.ndarray, ...]:
    """Real matrices (cos_y, sin_y, cos_x, sin_x) that compute the orthonormal ``irfft2`` of an
    (h, w//2 + 1) spectrum A + iB as (cos_y A - sin_y B) cos_x - (sin_y A + cos_y B) sin_x.

    The x matrices carry the real inverse's weights: 1 for the DC column (and the Nyquist
    column when w is even), 2 for the others, whose conjugates are implied.
    """
    ky = np.arange(h)
    ang_y = 2 * np.pi * np.outer(ky, ky) / h  # (m, k)
    lx = np.arange(w // 2 + 1)
    weight = np.full(w // 2 + 1, 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    ang_x = 2 * np.pi * np.outer(lx, np.arange(w)) / w  # (l, n)
    cy, sy = np.cos(ang_y) / np.sqrt(h), np.sin(ang_y) / np.sqrt(h)
    cx, sx = weight[:, None] * np.cos(ang_x) / np.sqrt(w), weight[:, None] * np.sin(ang_x) / np.sqrt(w)
    return tuple(m.astype(np.float32) for m in (cy, sy, cx, sx))


def irfft2_real(a: jax.Array, b: jax.Array, h: int, w: int) -> jax.Array:
    """``jnp.fft.irfft2(a + ib, s=(h, w), axes=(0, 1), norm="ortho")`` for (h, w//2 + 1, C) as
    four small real matmuls: quick to compile, differentiable, the same on every backend."""
    cy, sy, cx, sx = (jnp.asarray(m) for m in irfft2_matrices(h, w))
    mm = lambda m, x: jnp.einsum("mk,klc->mlc", m, x, precision=jax.lax.Precision.HIGHEST)
    yr, yi = mm(cy, a) - mm(sy, b), mm(sy, a) + mm(cy, b)
    nn = lambda x, m: jnp.einsum("mlc,ln->mnc", x, m, precision=jax.lax.Precision.HIGHEST)
    return nn(yr, cx) - nn(yi, sx)


def fourier_to_image(coeffs: jax.Array, h: int, w: int, decay_power: float = 1.0) -> jax.Array:
    """Scaled coefficients (2, h, w//2 + 1, 3) (real, imaginary) -> unbounded image (h, w, 3).

    image = irfft2(coeffs * scale, orthonormal) / 4, as in Lucid (whose unnormalized
    inverse times sqrt(h*w) is the orthonormal inverse used here).
    """
    scale = jnp.asarray(fourier_scale(h, w, decay_power))[..., None]
    return irfft2_real(coeffs[0] * scale, coeffs[1] * scale, h, w) / 4.0


def fourier_from_image(t: jax.Array, decay_power: float = 1.0) -> jax.Array:
    """The coefficients whose :func:`fourier_to_image` is ``t`` (H, W, 3): the inverse transform."""
    h, w = t.shape[:2]
    scale = jnp.asarray(fourier_scale(h, w, decay_power))[..., None]
    spectrum = jnp.fft.rfft2(t * 4.0, axes=(0, 1), norm="ortho") / scale
    return jnp.stack([spectrum.real, spectrum.imag]).astype(jnp.float32)


def fourier_init(key: jax.Array, h: int, w: int, sd: float = FOURIER_SD) -> jax.Array:
    """Random start coefficients, normal(0, sd), (2, h, w//2 + 1, 3)."""
    return sd * jax.random.normal(key, (2, h, w // 2 + 1, 3), jnp.float32)


# ---------------------------------------------------------------- the pairs

def fourier(size: int, decorrelated: bool = True, decay_power: float = 1.0, sd: float = FOURIER_SD) -> Param:
    """The Fourier parameterization of a size x size image."""
    checks.integer("size", size, 1, checks.MAX_SIZE)  # 0 failed with ZeroDivisionError
    return Param(
        init=lambda key: fourier_init(key, size, size, sd),
        to_image=lambda c: to_valid_rgb(fourier_to_image(c, size, size, decay_power), decorrelated),
    )


def pixel(size: int, decorrelated: bool = True, sd: float = PIXEL_SD) -> Param:
    """The plain pixel parameterization of a size x size image (through the same colour mix and sigmoid)."""
    checks.integer("size", size, 1, checks.MAX_SIZE)
    return Param(
        init=lambda key: sd * jax.random.normal(key, (size, size, 3), jnp.float32),
        to_image=lambda p: to_valid_rgb(p, decorrelated),
    )


def seed_start(size: int) -> Param:
    """The seed's raw pixels: start uniform [0, 1) x 20 + 128, fed to the model as they are."""
    return Param(init=lambda key: jax.random.uniform(key, (size, size, 3), jnp.float32) * 20.0 + 128.0,
                 to_image=lambda x: x, raw=True, grey=128.0)


PARAMETERIZATIONS = {"fourier": fourier, "pixel": pixel}


# ---------------------------------------------------------------- specs (hashable parts of a recipe)

class SeedStart(NamedTuple):
    """The seed recipe's parameterization: raw pixels from its grey noise start (:func:`seed_start`)."""

    def build(self, size: int) -> Param:
        return seed_start(size)


class Fourier(NamedTuple):
    """Scaled Fourier coefficients, decorrelated colours and a sigmoid (:func:`fourier`)."""

    decorrelate: bool = True
    decay_power: float = 1.0

    def build(self, size: int) -> Param:
        return fourier(size, self.decorrelate, self.decay_power)


class Pixel(NamedTuple):
    """One parameter per pixel and channel, decorrelated colours and a sigmoid (:func:`pixel`)."""

    decorrelate: bool = True

    def build(self, size: int) -> Param:
        return pixel(size, self.decorrelate)


def parameterization(name: str, size: int, decorrelated: bool = True, decay_power: float = 1.0) -> Param:
    """The parameterization called ``name`` ("fourier" or "pixel") for size x size images."""
    if name == "fourier":
        return fourier(size, decorrelated, decay_power)
    if name == "pixel":
        return pixel(size, decorrelated)
    raise ValueError(f"parameterization must be 'fourier' or 'pixel', not {name!r}")
