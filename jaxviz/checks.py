"""Input checks shared by the library and the command lines: small pure functions.

Each check returns the clean value or raises one JaxvizError whose message is one
line naming the setting, the value and the fix. They run before anything is built
from the value, so a bad number never reaches numpy, JAX or XLA (no OverflowError,
MemoryError, XLA abort or silent all-black image).
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Mapping

import numpy as np

from jaxviz.errors import JaxvizError

MAX_SIZE = 1 << 20  # px; a sanity bound only: memory_budget refuses far smaller sizes with its estimate
MAX_STEPS = 1_000_000  # steps; at a few ms per step at the smallest size, hours of work
F32_MAX = float(np.finfo(np.float32).max)  # a larger step size is infinity once in float32
F32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32
MAX_SEED = 2**32 - 1  # seeds are 0 to 2**32 - 1 (jax.random.key takes them without overflow)
ENV_MAX_MEMORY = "JAXVIZ_MAX_MEMORY"  # bytes (suffix K, M, G, T allowed): lowers the memory limit
OFF = ("0", "off", "no", "false", "none")  # the values that turn a JAXVIZ_ switch off (any case)


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi]; bools, floats, strings and other types are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise JaxvizError(f"{name} must be an integer, not {show(value)}")
    v = int(value)
    if lo is not None and v < lo or hi is not None and v > hi:
        raise JaxvizError(f"{name} must be {_range(lo, hi)}, not {show(v)}")
    return v


def flag(name: str, value) -> bool:
    """``value`` as a bool; anything else is refused (a string such as "no" would count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise JaxvizError(f"{name} must be True or False, not {show(value)}")
    return bool(value)


def field(name: str, value, default):
    """A recipe part's field checked as the kind of its ``default``: a flag, an integer 0 to
    MAX_SIZE, a number finite in float32; without a default, by the value's own kind."""
    kind = value if default is None else default
    if isinstance(kind, (bool, np.bool_)):
        return flag(name, value)
    if isinstance(kind, numbers.Integral):
        return integer(name, value, 0, MAX_SIZE)
    if isinstance(kind, numbers.Real):
        return real(name, value, -F32_MAX, F32_MAX)
    return value


def off(text: str | None) -> bool:
    """Whether an environment switch's value (``JAXVIZ_ONEDNN``, ``JAXVIZ_COMPILE_CACHE``,
    ``JAXVIZ_PLAN``) turns it off: one set of words for all, so ``off`` never reads as on."""
    return (text or "").strip().lower() in OFF


def home(path: str, what: str = "") -> str:
    """``path`` with a leading ``~`` or ``~user`` expanded, as a shell would (``--out=~/viz``, which
    the shell leaves as it is, and a program's ``save_png("~/x.png")`` wrote into a folder named
    "~"); one JaxvizError, naming ``what`` (an option), for a user with no home folder."""
    if not path.startswith("~"):
        return path
    full = os.path.expanduser(path)
    if full.startswith("~"):
        raise JaxvizError(f"{what + ' ' if what else ''}{path}: no such user's home folder; give another folder")
    return full


def function(name: str, value, optional: bool = False):
    """``value`` if it is callable (or None, with ``optional``): a model's ``fn``, ``preprocess``
    or ``min_size`` that is not would fail only later, inside a render, with Python's TypeError."""
    if not (callable(value) or optional and value is None):
        raise JaxvizError(f"{name} must be a function{' or None' if optional else ''}, not {show(value)}")
    return value


def takes(fn, n: int) -> bool:
    """Whether ``fn`` is callable with ``n`` positional arguments (one whose signature is hidden counts):
    a ``progress`` function that cannot take them failed only after the first chunk or batch, its work lost."""
    import inspect

    if not callable(fn):
        return False
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins)
        pass
    return True


def real(name: str, value, lo: float | None = None, hi: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (and > 0 with ``positive``); NaN and inf are refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise JaxvizError(f"{name} must be a number, not {show(value)}")
    v = float(value)
    if not math.isfinite(v):
        raise JaxvizError(f"{name} must be a finite number, not {v}")
    if positive and not v > 0:
        raise JaxvizError(f"{name} must be positive, not {v}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise JaxvizError(f"{name} must be {_range(lo, hi)}, not {v}")
    return v


def rate(name: str, value) -> float:
    """A step size or learning rate: a finite number above 0 that float32 can hold (0 would not
    move, a negative one would descend instead of ascend, a larger one is infinity in float32)."""
    v = real(name, value)
    if not 0 < v <= F32_MAX:
        raise JaxvizError(f"{name} must be more than 0 and at most {F32_MAX:.8g} (the largest float32), not {v}")
    if v < F32_TINY:  # 1e-46 is 0 in float32, and the images never moved
        raise JaxvizError(f"{name} must be at least {F32_TINY:.8g} (float32's smallest normal number; less is too "
                          f"small to move the images), not {v}")
    return v


def filter_list(filters, channels: int | None = None, layer: str = "the layer") -> list[int]:
    """Filter indices as a list of ints, each in [0, channels).

    Refuses a string (``"10"`` is not [1, 0]), bools or a bool array, floats (1.5 is
    not filter 1) and anything that is not a flat sequence of integers.
    """
    if isinstance(filters, (str, bytes)):
        raise JaxvizError(f"filters must be a list of integers such as [0, 5, 9], not the string {filters!r}")
    if _array_like(filters):  # a JAX array (jnp.arange(8)): as numpy's
        filters = np.asarray(filters)
    if isinstance(filters, np.ndarray):
        if filters.ndim != 1:
            raise JaxvizError(f"filters must be a flat list of integers, not an array of shape {filters.shape}")
        if filters.dtype == np.bool_:
            raise JaxvizError("filters must be integers, not a bool array (use np.flatnonzero(mask) for a mask)")
        filters = filters.tolist()
    try:
        items = list(filters)
    except TypeError:
        raise JaxvizError(f"filters must be a list of integers such as [0, 5, 9], not {show(filters)}") from None
    out = []
    for f in items:
        if (isinstance(f, np.ndarray) or _array_like(f)) and np.ndim(f) == 0:
            f = np.asarray(f)[()]
        out.append(integer("each filter", f))
    if channels is not None:
        for f in out:
            if not 0 <= f < channels:
                raise JaxvizError(f"filter {f} is out of range for {layer}, which has {channels} filters "
                                  f"(0-{channels - 1})")
    return out


def finite(name: str, *arrays, why=None) -> None:
    """Refuse results holding NaN or infinity, so nothing is written from them (bfloat16 too).

    ``why()``, asked only then, may name a likelier cause than the usual ones (a model computing in
    float16: ``models.base.float16_cause``). The message does not say what was written: a command
    that wrote earlier results says that itself."""
    import jax.numpy as jnp

    for a in arrays:
        a = np.asarray(a)
        if a.size and jnp.issubdtype(a.dtype, jnp.floating) and not np.isfinite(a).all():
            cause = why() if why else None
            raise JaxvizError(f"{name} came out not finite (NaN or infinity); " + (cause or (
                "lower the step size or learning rate, and check the weights, the objective's scale (its "
                "weights, direction vectors) and any optax optimizer of your own")))


# why an item's objective stayed the same nonzero value at every step (``unmoved``'s frozen items)
FROZEN_CAUSES = ("no gradient reached the image (a layer that ignores the input, a saturated unit such as relu6 at 6, "
                 "a stop_gradient), or the step size or learning rate is too small to change its pixels")


def unmoved(trace, values, per: int = 1) -> tuple[list[int], list[int]]:
    """(stuck, frozen): the items (of ``per`` images each) whose image never moved from its start,
    as no gradient reached it: stuck, the objective 0 at every step and at the end (a unit that never
    fired); frozen, the same nonzero value throughout (``FROZEN_CAUSES``)."""
    if not np.size(values):
        return [], []
    trace = np.asarray(trace).reshape(len(np.asarray(values)) // max(1, per), -1)
    values = np.asarray(values).reshape(len(trace), -1)
    stuck = [i for i, (t, v) in enumerate(zip(trace, values)) if not t.any() and not v.any()]
    frozen = [i for i, (t, v) in enumerate(zip(trace, values))
              if t.size > 1 and t.any() and (t == t[0]).all() and (v == t[0]).all()]
    return stuck, frozen


def showable(name: str, images) -> None:
    """Refuse raw images (..., H, W, 3) too large for the seed's deprocess: it sums squared
    distances from each image's mean in float32, which past about 1e19 per pixel is infinite,
    and every pixel would come out the same grey."""
    a = np.asarray(images)
    if not a.size:
        return
    flat = a.reshape((-1,) + a.shape[-3:])
    axes, n = (1, 2, 3), flat[0].size
    peak = np.maximum(flat.max(axis=axes), -flat.min(axis=axes)).astype(np.float64)
    for i in np.flatnonzero((n * peak >= F32_MAX / 2) | (n * 4 * peak ** 2 >= F32_MAX / 2)):  # could overflow: sum exactly
        x = flat[i].astype(np.float64)
        dev = x - x.mean()
        if not (abs(x.sum()) < F32_MAX / 2 and np.sum(dev * dev) < F32_MAX / 2):
            raise JaxvizError(f"{name} grew too large to show (pixel values up to {peak[i]:.3g}, past what the seed's "
                              "contrast normalization can take in float32); lower the step size")


def grid_shape(n: int, h: int, w: int, cols: int, margin: int, channels: int = 3) -> tuple[int, int, int]:
    """The shape of ``jaxviz.make_grid``'s image for ``n`` tiles of h x w."""
    rows = max(1, -(-n // cols))
    used = min(cols, n) if rows == 1 else cols
    return rows * h + (rows - 1) * margin, used * w + (used - 1) * margin, channels


def grid_memory(height: int, width: int, channels: int = 3) -> None:
    """Refuse a grid image (and the PNG encoder's copy of it) larger than the memory available:
    a huge margin or column count, before anything is rendered."""
    need, limit = 2 * height * width * channels, memory_limit()
    if need > limit:
        raise JaxvizError(f"a grid of {width}x{height} px needs about {gib(need)} of memory, more than the "
                          f"{gib(limit)} available; use a smaller --size, --margin or --cols")


def params_for(params, layer: str, conv_names) -> None:
    """``params`` holds a kernel and a bias for every conv layer up to and including ``layer``."""
    if not isinstance(params, Mapping):
        raise JaxvizError(f"params must be the dict of weights from jaxviz.load_params(), not {show(params)}")
    for name in conv_names:
        p = params.get(name)
        if not isinstance(p, Mapping) or "kernel" not in p or "bias" not in p:
            raise JaxvizError(f"params has no kernel and bias for layer {name}; load them with jaxviz.load_params()")
        if name == layer:
            return


# memory ------------------------------------------------------------------------------


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1000000"`` -> bytes."""
    t = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if t and t[-1] in "KMGT":
        scale = 1024 ** ("KMGT".index(t[-1]) + 1)
        t = t[:-1]
    try:
        v = float(t) * scale
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or v < 1:  # 1e300T overflows to infinity; 1e-3 would be a limit of 0 bytes
        raise JaxvizError(f"{ENV_MAX_MEMORY}={text!r} is not a size; use bytes, or a number with K, M, G or T")
    return int(v)


def host_memory() -> int:
    """Memory available to this process now (MemAvailable, else physical memory), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def memory_limit(device_bytes: int | None = None, env: Mapping[str, str] | None = None) -> int:
    """The bytes a run may use: the smallest of available host memory, the device's memory
    (when known) and ``JAXVIZ_MAX_MEMORY``."""
    env = os.environ if env is None else env
    limits = [host_memory()]
    if device_bytes:
        limits.append(int(device_bytes))
    if env.get(ENV_MAX_MEMORY):
        limits.append(parse_bytes(env[ENV_MAX_MEMORY]))
    return min(limits)


# bytes per value of an animation's snapshot: its float32 kept to the end of the run, the uint8
# conversion's float32 temporaries and the frames, grids and encoder copies of the writers (measured:
# 64 filters at 128 px, 41 frames, added about 2.8 times the float32 snapshots to the peak)
FRAME_BYTES = 12


def estimate_bytes(per_image: int, size: int, batch: int, n: int, frames: int = 0) -> int:
    """Peak bytes of a run: ``batch`` images in flight (``per_image`` each) plus the
    results of all ``n`` images kept on the host (float32 raw and uint8), plus ``frames``
    snapshots of each image where the run is animated."""
    return per_image * max(1, batch) + n * size * size * 3 * (4 + 1 + frames * FRAME_BYTES)


def memory_budget(what: str, per_image: int, size: int, batch: int, n: int, limit: int, frames: int = 0) -> None:
    """Refuse up front a run whose estimated memory (with its ``frames`` snapshots an image)
    exceeds ``limit``, with both numbers."""
    need = estimate_bytes(per_image, size, batch, n, frames)
    if need > limit:
        animated = f" with {frames} animation frames each" if frames else ""
        fix = "use a smaller size or fewer filters" + (", or no animation" if frames else "")
        raise JaxvizError(
            f"{what}{animated} needs about {gib(need)} of memory, more than the {gib(limit)} available "
            f"(limit: free memory, the device's, or ${ENV_MAX_MEMORY}); {fix}"
        )


def backend(env: Mapping[str, str] | None = None) -> None:
    """Start JAX's backend now, or raise one JaxvizError. Where JAX_PLATFORMS names a backend this
    machine cannot start (cuda without a visible NVIDIA GPU, tpu without libtpu, a typo), the
    commands failed in their first device call with JAX's traceback (for cuda a bare AssertionError)."""
    import jax

    try:
        jax.devices()
    except Exception as e:  # RuntimeError naming the backend, or cuda's assertion with no text
        asked = (os.environ if env is None else env).get("JAX_PLATFORMS", "")
        why = str(e).split(" (set JAX_PLATFORMS")[0].strip().splitlines()
        why = why[0].split("': ", 1)[-1] if why else "no such device is visible"  # "Unable to ... 'tpu': " dropped
        if "not in the list of known backends" in why:  # JAX_PLATFORMS=gpu here said "Backend 'rocm' is not ..."
            why = "this jax has no plugin for it; on an NVIDIA GPU machine: pip install -U 'jax[cuda13]'"
        if asked:
            raise JaxvizError(f"JAX cannot start the backend JAX_PLATFORMS={asked!r} asks for ({why}); unset "
                              f"JAX_PLATFORMS (or set it to cpu) to use the devices this machine has") from None
        raise JaxvizError(f"JAX cannot start a backend ({why}); check the jax and jaxlib installation") from None


def device_memory() -> int | None:
    """The first local device's memory limit in bytes, when its backend reports one (GPUs do; CPUs do not)."""
    try:
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # no backend or no statistics: the host's limit applies
        return None
    return stats.get("bytes_limit")


def run_budget(layer: str, size: int, n: int, batch: int, spec=None, env: Mapping[str, str] | None = None,
               device_bytes: int | None = None, frames: int = 0) -> None:
    """Refuse rendering ``n`` images of ``size`` px at ``layer`` in batches of ``batch`` when
    the estimate (``jaxviz.ascent.bytes_per_image`` per image in flight, plus the results and
    their ``frames`` snapshots each) exceeds ``memory_limit``."""
    from jaxviz.ascent import bytes_per_image
    from jaxviz.model import VGG16

    per = bytes_per_image(layer, size, spec or VGG16)
    memory_budget(f"{n} image(s) of {size} px at {layer} in batches of {batch}", per, size, batch, n,
                  memory_limit(device_bytes, env), frames)


def settings(size, steps, step_size=None) -> tuple[int, int, float | None]:
    """The seed's numbers: size 1 to MAX_SIZE, steps 0 to MAX_STEPS, a step size more than 0 (``rate``)."""
    return (integer("size", size, 1, MAX_SIZE), integer("steps", steps, 0, MAX_STEPS),
            None if step_size is None else rate("step_size", step_size))


def lucid_settings(config) -> None:
    """The quality recipe's numbers (a ``jaxviz.lucid.LucidConfig``): integers in range, finite floats."""
    integer("size", config.size, 1, MAX_SIZE)
    integer("steps", config.steps, 0, MAX_STEPS)
    rate("lr", config.lr)
    integer("diversity", config.diversity, 1, 1024)
    for name in ("pad", "jitter", "jitter2"):
        integer(name, getattr(config, name), 0, MAX_SIZE)
    for name in ("scale", "rotate", "decay_power", "diversity_weight"):
        real(name, getattr(config, name))
    if config.redirect_steps is not None:
        integer("redirect_steps", config.redirect_steps, 0, MAX_STEPS)
    for name in ("decorrelate", "transforms"):
        flag(name, getattr(config, name))


# helpers -----------------------------------------------------------------------------


def gib(n: int) -> str:
    return f"{n / 1024**3:.3g} GiB" if n >= 1024**3 / 10 else f"{n / 1024**2:.3g} MiB"


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    return f"{lo} or more" if lo is not None else f"{hi} or less"


def _array_like(v) -> bool:
    """An array of another library (JAX's, say): not numpy's, not a Python number or sequence."""
    return hasattr(v, "__array__") and not isinstance(v, (np.ndarray, np.generic, numbers.Number, list, tuple))


def show(v) -> str:
    """``v``'s repr for an error line: on one line (an array's spans several), cut to 40 characters."""
    s = " ".join(repr(v).split())
    return s if len(s) <= 40 else s[:37] + "..."
