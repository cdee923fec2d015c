"""The one render engine: parameterization + transforms + optimizer + steps, for any model.

``render(model, objective, recipe)`` maximizes each item of a batched objective from its
own start, as one ``jax.jit`` of ``jax.vmap`` over the items of a ``lax.scan`` over steps,
in chunks whose estimated memory stays under a bound. Each item's randomness comes from
its own key, ``fold_in(fold_in(key, layer index), channel)`` (``Objective.key_ids``), so an
item's result does not depend on the rest of the batch, on the chunking or on the device
(up to the last bits of the arithmetic: with the seed recipe on CPU a 64-filter grid's images
are the same in chunks of 8 or 16, its reported values differ by a few float32 ulps).

A :class:`Recipe` is a choice of parts (all hashable, so a recipe compiles once):
``param`` (``jaxviz.param.SeedStart``, ``Fourier``, ``Pixel``), ``transforms`` (a
``jaxviz.transforms.Robustness`` or None), ``optimizer`` (``jaxviz.optim.SeedAscent``,
``Adam``, or any optax ``GradientTransformation``), ``steps``, ``size`` and ``diversity``
(images per objective item). ``SEED`` is the book's recipe, ``LUCID`` the quality recipe.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxviz import checks, objectives, optim, transforms
from jaxviz.errors import JaxvizError
from jaxviz.models.base import LayerInfo, Model, eval_shapes, identity, model_errors
from jaxviz.objectives import Diversity, Objective, Probe, Term
from jaxviz.param import Fourier, SeedStart
from jaxviz.transforms import Robustness

DEFAULT_MAX_BYTES = 2 * 1024**3


class Recipe(NamedTuple):
    """How to render: the parts and their sizes. Every field is hashable data."""

    param: Any = SeedStart()
    transforms: Optional[Robustness] = None
    optimizer: Any = optim.SeedAscent(1.0)
    steps: int = 40
    size: int = 64
    diversity: int = 1  # images per objective item, pushed apart by a diversity term


SEED = Recipe()
"""The book's recipe: raw pixels from grey noise, no transforms, 40 normalized gradient steps of 1.0, 64 px."""

LUCID = Recipe(param=Fourier(), transforms=Robustness(), optimizer=optim.Adam(0.05), steps=512, size=128)
"""The quality recipe (Distill's Feature Visualization): Fourier + decorrelated colour + sigmoid,
pad/jitter/scale/rotate, Adam 0.05, 512 steps, 128 px."""


class Result(NamedTuple):
    """Per image (N x diversity, filter by filter): the final image (raw pixel scale when the
    parameterization is raw, else RGB in [0, 1]), the objective's final value on it, the value
    at every step (N, steps), and snapshots (N, frames, S, S, 3) when asked for, else None."""

    images: jax.Array
    values: jax.Array
    trace: jax.Array
    frames: Optional[jax.Array] = None


def _split_optimizer(recipe: Recipe):
    """(the recipe with its optimizer spec's numbers blanked, those numbers as float32 arrays).

    The numbers (step size, learning rate) go into the compiled run as data: one compile
    serves every value, and the seed's step multiplies by a traced step size exactly as
    the book's code does (a constant 1.0 would be folded away, changing the rounding).
    """
    spec = recipe.optimizer
    if isinstance(spec, tuple) and hasattr(spec, "_fields") and hasattr(spec, "build"):
        blank = spec._replace(**{f: None for f in spec._fields})
        return recipe._replace(optimizer=blank), tuple(jnp.float32(v) for v in spec)
    return recipe, None


def _item(model: Model, params, term: Term, recipe: Recipe, every: int, args, key, start, hyper=None):
    """One objective item: its D images from start to finish (the per-item function that is vmapped)."""
    if model.prepare is not None:
        params = model.prepare(params)
    d = recipe.diversity
    P = recipe.param.build(recipe.size)
    # _make, not the constructor: the traced numbers were checked when the spec was made (optim.check)
    opt = optim.build(recipe.optimizer if hyper is None else recipe.optimizer._make(hyper))
    # Raw pixels (the seed) run unbatched, exactly as the book's code; the other parameterizations
    # always carry an axis of D images, which keeps an item's result independent of the batch
    # (measured: without it Fourier + transforms drifted by 1e-3 between batch sizes in 4 steps).
    single = d == 1 and P.raw
    squeeze = d == 1 and not single
    p0 = start[None] if squeeze else start
    step_key = jax.random.fold_in(key, 1)
    to_image = P.to_image if single else jax.vmap(P.to_image)

    def seen(p, k, final=False):
        """The images of parameters ``p`` (after this step's transforms) and the model's inputs."""
        image = to_image(p)
        if recipe.transforms is not None and not final:
            robust = transforms.robust(recipe.transforms, P.grey)  # raw pixels' grey is 128, not 0.5
            image = robust(k, image) if single else jax.vmap(robust)(jax.random.split(k, d), image)
        x = image if P.raw else (model.preprocess(image) if single else jax.vmap(model.preprocess)(image))
        return image, x

    def value(p, t, k, final=False):
        image, x = seen(p, k, final)
        if single:
            v = term.value(Probe(model, params, image, x, t, final), args)
            return v, v
        v = jax.vmap(lambda i, xi: term.value(Probe(model, params, i, xi, t, final), args))(image, x)
        total = v.mean() + term.batch_value(Probe(model, params, image, x, t, final, batched=True), args)
        return total, v

    def loss(p, t):
        total, v = value(p, t, jax.random.fold_in(step_key, t))
        return -total, v

    grad = jax.value_and_grad(loss, has_aux=True)

    def step(carry, t):
        p, state = carry
        (_, v), g = grad(p, t)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), v

    carry = (p0, opt.init(p0))
    if every:
        def block(carry, ts):
            carry, v = lax.scan(step, carry, ts)
            return carry, (to_image(carry[0]), v)

        blocks, rest = divmod(recipe.steps, every)
        ts = jnp.arange(recipe.steps)
        carry, (snaps, vs) = lax.scan(block, carry, ts[: blocks * every].reshape(blocks, every))
        carry, vr = lax.scan(step, carry, ts[blocks * every:])
        trace = jnp.concatenate([vs.reshape((blocks * every,) + vs.shape[2:]), vr])
        frames = [to_image(p0)[None], snaps] + ([to_image(carry[0])[None]] if rest else [])
        frames = jnp.concatenate(frames)
    else:
        carry, trace = lax.scan(step, carry, jnp.arange(recipe.steps))
        frames = None
    p = carry[0]
    _, final = value(p, recipe.steps, step_key, final=True)
    if squeeze:
        return to_image(p)[0], final[0], trace[:, 0], None if frames is None else frames[:, 0]
    return to_image(p), final, trace, frames


def _run(model, params, term, recipe, every, hyper, args, keys, start):
    run = lambda a, k, s: _item(model, params, term, recipe, every, a, k, s, hyper)
    return jax.vmap(run)(args, keys, start)


run_chunk = jax.jit(_run, static_argnames=("model", "term", "recipe", "every"))
"""One chunk of items in one compiled call (one compile per model, term, recipe and chunk size)."""


def work_size(recipe: Recipe) -> int:
    """The side of the images the model sees: the recipe's size and its transforms' padding."""
    return recipe.size + (2 * recipe.transforms.pad if recipe.transforms is not None else 0)


def bytes_per_item(model: Model, layers: tuple[str, ...], recipe: Recipe) -> int:
    """A rough upper bound of one item's memory: the activations of every layer up to the deepest
    one named (kept for the backward pass) and their gradients, float32, x3 for XLA's temporaries."""
    work = work_size(recipe)
    scale = (work / model.input_size) ** 2
    names = [l.name for l in model.layers]
    last = max((names.index(n) for n in layers), default=len(names) - 1)
    total = work * work * 3 + sum(int(np.prod(l.shape)) * scale for l in model.layers[: last + 1])
    return int(total * 2 * 4 * 3) * recipe.diversity


def chunk_for(model: Model, objective: Objective, recipe: Recipe, n: int, max_bytes: int) -> int:
    """Items per compiled call: the model's own choice where it has one, else the memory bound."""
    layers = objective.term.layers()
    work = work_size(recipe)
    if model.chunk is not None and layers:
        deepest = max(layers, key=model.layer_index)
        return max(1, min(n, model.chunk(deepest, work, n * recipe.diversity, max_bytes) // recipe.diversity))
    return max(1, min(n, max_bytes // max(1, bytes_per_item(model, layers, recipe))))


def item_key(key: jax.Array, layer_index, channel) -> jax.Array:
    """An item's own key: ``fold_in`` of the run's key with the layer's index, then the channel."""
    return jax.random.fold_in(jax.random.fold_in(key, layer_index), channel)


def item_keys(key: jax.Array, ids) -> jax.Array:
    """One key per row (layer index, channel) of ``ids`` (``Objective.key_ids``)."""
    return jax.vmap(lambda i: item_key(key, i[0], i[1]))(jnp.asarray(ids))


def initial(recipe: Recipe, keys: jax.Array) -> jax.Array:
    """Every item's start parameters (N, [diversity,] ...) from its key.

    Computed op by op outside the compiled run, as the book's code makes its start images
    (inside one jit XLA may fuse the seed's x 20 + 128 into one rounding, not two).
    """
    P = recipe.param.build(recipe.size)
    if recipe.diversity == 1:
        return jax.vmap(P.init)(keys)
    return jax.vmap(lambda k: jax.vmap(P.init)(jax.random.split(k, recipe.diversity)))(keys)


def saturated(recipe: Recipe, start: jax.Array) -> list[int]:
    """The items of ``start`` (diversity 1) whose image, through a non-raw parameterization, is 0 or 1
    at every pixel: the sigmoid's gradient is exactly 0 there, so no step can move it (pixel values
    of 0-255 given as a Pixel() start, say)."""
    P = recipe.param.build(recipe.size)
    if P.raw:
        return []
    flat = jax.vmap(P.to_image)(start).reshape(len(start), -1)
    return np.flatnonzero(np.asarray(jnp.all((flat == 0) | (flat == 1), axis=1))).tolist()


def snapshot_count(steps: int, every: int) -> int:
    """The frames ``render(every=every)`` keeps of each image: the start, one every ``every``
    steps, and the final image where ``steps`` is not a multiple of ``every``; 0 without ``every``."""
    return steps // every + 1 + (steps % every > 0) if every else 0


def batch_for(model: Model, objective: Objective, recipe: Recipe, batch_size: int | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES, every: int = 0) -> int:
    """The items of ``objective`` per compiled call (``batch_size``, else ``chunk_for``'s in equal
    chunks: the least padding); one JaxvizError where the run's estimated memory (with the snapshots
    of ``every``) is over the limit (checks.memory_limit), so a caller with several runs can refuse
    them all before the first."""
    n, s = len(objective), recipe.size
    b = batch_size or chunk_for(model, objective, recipe, n, max_bytes)
    if batch_size is None:
        b = math.ceil(n / math.ceil(n / b))
    checks.memory_budget(f"{n} item(s) of {s} px on {model.name} in batches of {b}",
                         bytes_per_item(model, objective.term.layers(), recipe), s, b, n * recipe.diversity,
                         checks.memory_limit(checks.device_memory()), snapshot_count(recipe.steps, every))
    return b


def check(model: Model, objective: Objective, recipe: Recipe) -> None:
    """Raise a one-line JaxvizError for an objective or recipe that cannot run on ``model``."""
    if not isinstance(recipe, Recipe):  # "lucid" or None failed with AttributeError
        raise JaxvizError(f"recipe must be a jaxviz.Recipe such as jaxviz.SEED or jaxviz.LUCID (jaxviz.render "
                          f"also takes 'seed' or 'lucid'), not {checks.show(recipe)}")
    if not isinstance(objective, Objective):
        raise JaxvizError(f"objective must be a jaxviz.objectives objective or its text (e.g. 'block3_conv1:0-63'), "
                          f"not {type(objective).__name__}")
    checks.settings(recipe.size, recipe.steps)
    checks.integer("diversity", recipe.diversity, 1, 1024)
    _check_parts(recipe)
    optim.check(recipe.optimizer)
    if not isinstance(recipe.optimizer, (optim.SeedAscent, optim.Adam)):  # ours are known to step any shape
        optim.check_update(recipe.optimizer, param_shape(recipe))
    for part in (recipe.optimizer, recipe.transforms, recipe.param):
        defaults = getattr(part, "_field_defaults", {})
        for name, v in (part._asdict().items() if hasattr(part, "_asdict") else ()):
            checks.field(name, v, defaults.get(name))
    _check_ranges(recipe)
    known = {l.name for l in model.layers}
    names = tuple(n for n in objective.term.layers() if n in known)
    for name in names:
        if recipe.size < model.min_size(name):
            raise JaxvizError(f"size {recipe.size} is too small for {name}; the minimum is {model.min_size(name)} px")
    # the terms check their layers' shapes at the sizes the model sees (a neuron's position, say):
    # the transformed images' in the steps, the recipe's own in the final value
    raw = recipe.param.build(1).raw
    for size in dict.fromkeys((work_size(recipe), recipe.size)):
        objective.term.check(at_size(model, names, size, raw), objective.args)
    if recipe.diversity == 1 and any(isinstance(t, Diversity) for t in objective.terms()):
        raise JaxvizError("diversity_term pushes apart the several images of one objective, and this recipe makes "
                          "one (diversity 1): it would do nothing; set the recipe's diversity to 2 or more "
                          "(jaxviz.LUCID._replace(diversity=4)), or drop the term")
    if recipe.steps < 0:
        raise JaxvizError(f"steps must be 0 or more, not {recipe.steps}")
    if recipe.diversity < 1:
        raise JaxvizError(f"diversity must be 1 or more images per objective, not {recipe.diversity}")


def fitted(model: Model, objective: Objective, recipe: Recipe) -> Recipe:
    """``recipe`` where it can run on ``model``; else the recipe at the model's own ``input_size``
    (a model with a larger minimum size), or at that size with no padding in its transforms (a
    model that takes only that size, such as a flatten before a dense head: padding grows the
    images past it), the first that can run. A command line's default when its user names no
    size; the first error stands where neither runs."""
    try:
        check(model, objective, recipe)
        return recipe
    except JaxvizError as error:
        first = error
    at_input = recipe._replace(size=model.input_size)
    unpadded = at_input._replace(transforms=recipe.transforms and recipe.transforms._replace(pad=0))
    for fit in dict.fromkeys((at_input, unpadded)):
        if fit == recipe:
            continue
        try:
            check(model, objective, fit)
            return fit
        except JaxvizError:
            pass
    raise first


def param_shape(recipe: Recipe) -> tuple[int, ...]:
    """The shape of one item's parameters, as the optimizer steps them (``_item``): the
    parameterization's own, with an axis of D images unless it is raw and D is 1."""
    P = recipe.param.build(recipe.size)
    one = jax.eval_shape(P.init, jax.random.key(0)).shape
    return one if recipe.diversity == 1 and P.raw else (recipe.diversity,) + one


def _check_parts(recipe: Recipe) -> None:
    """The recipe's parts are of the kinds the engine runs (not None, a class or a name)."""
    def made(v) -> bool:  # an instance with build(), not the class itself
        return hasattr(v, "build") and not isinstance(v, type)

    if not made(recipe.param):
        raise JaxvizError(f"recipe.param must be a parameterization such as jaxviz.param.SeedStart(), Fourier() "
                          f"or Pixel(), not {checks.show(recipe.param)}")
    if recipe.transforms is not None and not isinstance(recipe.transforms, Robustness):
        raise JaxvizError(f"recipe.transforms must be a jaxviz.transforms.Robustness(...) or None, "
                          f"not {checks.show(recipe.transforms)}")
    if not (made(recipe.optimizer) or isinstance(recipe.optimizer, optax.GradientTransformation)):
        raise JaxvizError(f"recipe.optimizer must be jaxviz.optim.SeedAscent(step), Adam(lr) or an optax "
                          f"GradientTransformation such as optax.sgd(5.0), not {checks.show(recipe.optimizer)}")


def _check_ranges(recipe: Recipe) -> None:
    """The ranges of the parts' numbers (their kinds were checked by ``checks.field``): a Fourier
    spectrum that can move the image, a zoom that stays positive, a turn within a circle, and
    shifts that keep part of the image in view (larger ones showed the model only the padding,
    so the objective never rose, and a huge one asked XLA for terabytes)."""
    decay = recipe.param.decay_power if isinstance(recipe.param, Fourier) else 1.0
    if not 0 <= decay <= 2:
        raise JaxvizError(f"Fourier's decay_power must be from 0 to 2 (Lucid's 1.0): below 0 the image stays grey "
                          f"noise, above 2 it saturates to a few flat colours; not {checks.show(decay)}")
    t = recipe.transforms
    if t is None:
        return
    transforms.check_scale(t.scale)
    transforms.check_rotate(t.rotate)
    for name in ("jitter", "jitter2"):
        if getattr(t, name) > recipe.size + t.pad:
            raise JaxvizError(f"transforms' {name} {getattr(t, name)} px shifts the {recipe.size} px image past its "
                              f"{t.pad} px padding, out of view; use at most size + pad ({recipe.size + t.pad} px)")


def at_size(model: Model, names: tuple[str, ...], size: int, raw: bool) -> Model:
    """``model`` with the named layers' shapes taken at ``size`` px, the size a recipe feeds it
    (``raw``: without ``preprocess``); one line where the model cannot take that size, or where a
    layer is not floating point."""
    if not names:
        return model
    leaves, tree = jax.tree.flatten(model.params)
    shapes = _shapes(model.static(), names, size, raw, tree, tuple((np.shape(a), jnp.result_type(a)) for a in leaves))
    return model._replace(layers=tuple(LayerInfo(l.name, shapes.get(l.name, l.shape)) for l in model.layers),
                          input_size=size)


@functools.lru_cache(maxsize=256)
def _shapes(static: Model, names, size, raw, tree, leaves) -> dict:
    """{name: shape} at ``size`` px, by ``jax.eval_shape`` (nothing runs), once per model and size; a layer of
    integers or bools is refused (its gradient is zero: the images would stay the start's noise, silently)."""
    params = jax.tree.unflatten(tree, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    acts = lambda raw: lambda p, x: static.activations(p, x if raw else static.preprocess(x), names)
    shapes = lambda raw, hint: eval_shapes(acts(raw), params, size, f"model {static.name}", hint)
    sized = (f"the recipe feeds it {size} px images (its size and its transforms' padding), and its layers were "
             f"taken at {static.input_size} px; render at a size it accepts")
    try:
        out = shapes(raw, sized)
    except JaxvizError:
        if not (raw and static.preprocess is not identity and _works(shapes, False, sized)):
            raise
        shapes(raw, f"the seed recipe feeds a model its raw pixels ({size}x{size}x3) without its preprocess, which "
                    "this model needs (one that makes another shape or dtype): use a recipe of RGB images "
                    "(--recipe lucid, or a Pixel() or Fourier() param)")
        raise
    missing = [n for n in names if not isinstance(out, dict) or not hasattr(out.get(n), "dtype")]
    if missing:  # a hand-built Model's activations: KeyError or AttributeError here
        raise JaxvizError(f"the activations of model {static.name} give no array for layer {missing[0]!r}; they must "
                          "return {name: array} with every layer name they are asked for")
    for n in names:
        if not jnp.issubdtype(out[n].dtype, jnp.floating):
            raise JaxvizError(f"layer {n} of model {static.name} gives {out[n].dtype} activations; objectives need "
                              "floating-point ones (they ascend its gradient): cast it, or name another layer")
    return {n: tuple(out[n].shape) for n in names}


def _works(f, *args) -> bool:
    """Whether ``f(*args)`` runs without a JaxvizError."""
    try:
        f(*args)
    except JaxvizError:
        return False
    return True


def one_key(key) -> jax.Array:
    """``key`` if it is one JAX random key, typed (``jax.random.key(0)``) or raw (``jax.random.PRNGKey(0)``);
    else one line (an int or a batch of keys failed inside JAX's ``fold_in``)."""
    dtype = getattr(key, "dtype", None)
    if not (isinstance(key, jax.Array) and (jnp.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ()
                                            or dtype == jnp.uint32 and key.shape == (2,))):
        raise JaxvizError(f"key must be one JAX random key such as jax.random.key(0), not {checks.show(key)}")
    return key


def render(model: Model, objective: Objective, recipe: Recipe = SEED, *, key: jax.Array | None = None,
           start=None, every: int = 0, max_bytes: int = DEFAULT_MAX_BYTES, batch_size: int | None = None,
           progress: Callable[[int], None] | None = None) -> Result:
    """Maximize each item of ``objective`` on ``model`` with ``recipe``; see :class:`Result`.

    ``objective`` may be its text, as for ``jaxviz.render``; ``key`` (default ``jax.random.key(0)``)
    seeds every item's start and transforms;
    ``start`` (N, ...) replaces the start parameters (:func:`initial`) (the raw images for the seed recipe);
    ``every`` > 0 keeps a snapshot every that many steps (and the start and final images);
    ``batch_size`` items per compiled call (default: as many as ``max_bytes`` allows), the last chunk
    padded to it; at most the number of items;
    ``progress(k)`` is called after each chunk with the number of items it finished.
    """
    if isinstance(objective, str):
        objective = objectives.parse(objective)
    check(model, objective, recipe)
    checks.integer("every", every, 0, checks.MAX_STEPS)  # -1 or "2" failed in Python's range, True took 1
    key = jax.random.key(0) if key is None else one_key(key)
    if batch_size is not None:  # -1 or 2.5 failed inside the engine or JAX
        checks.integer("batch_size", batch_size, 1)
    checks.integer("max_bytes", max_bytes, 1)
    if progress is not None and not callable(progress):
        raise JaxvizError(f"progress must be a function of the number of items finished, or None, not {type(progress).__name__}")
    if progress is not None and not checks.takes(progress, 1):  # it failed after the first chunk, its work lost
        raise JaxvizError(f"progress is called with one argument, the number of items finished, which "
                          f"{getattr(progress, '__name__', 'it')}{inspect.signature(progress)} cannot take; "
                          "give a function of one argument")
    n, d, s = len(objective), recipe.diversity, recipe.size
    snap_bytes = snapshot_count(recipe.steps, every) * n * d * s * s * 3 * 4  # float32, kept to the end
    if snap_bytes > (limit := checks.memory_limit(checks.device_memory())):
        raise JaxvizError(f"the snapshots of every={every} over {recipe.steps} steps ({n * d} image(s) of {s} px) "
                          f"need about {checks.gib(snap_bytes)} of memory, more than the {checks.gib(limit)} available; "
                          f"take one every more steps, or render fewer items")
    if n == 0:
        z = jnp.zeros((0, s, s, 3))
        return Result(z, jnp.zeros((0,)), jnp.zeros((0, recipe.steps)), None)
    ids = objective.key_ids(model)
    keys = item_keys(key, ids)
    args = objective.batched_args()
    if start is None:
        start = initial(recipe, keys)
    else:
        want = jax.eval_shape(lambda k: initial(recipe, k), keys).shape
        try:  # a ragged list fails already in iscomplexobj
            if np.iscomplexobj(start):  # cast, it would lose its imaginary part with only a warning
                raise JaxvizError(f"start holds complex numbers; give real start parameters of shape {want}")
            start = jnp.asarray(start, jnp.float32)
        except (TypeError, ValueError):
            raise JaxvizError(f"start must be an array of numbers of shape {want}; "
                              f"this {type(start).__name__} is not one") from None
        if not jnp.isfinite(start).all():  # said later that the images "came out" not finite
            raise JaxvizError("start holds NaN or infinity; give finite start parameters")
        if d != 1:
            raise JaxvizError(f"start replaces the start of one image per item: it needs diversity 1, not {d}")
        if start.shape != want:
            raise JaxvizError(f"start has shape {start.shape}; this objective and recipe start from shape {want} "
                              f"({n} items, each the recipe's parameters at {s} px; diversity 1)")
        stuck = saturated(recipe, start)
        if stuck:  # it rendered the start's flat white/black image, with only a notice that it never moved
            raise JaxvizError(f"start item {stuck[0]} makes an image whose every pixel is 0 or 1, where the "
                              f"{type(recipe.param).__name__} parameterization's sigmoid passes no gradient: its start "
                              "holds the parameterization's own values (about -3 to 3), not pixels; for Pixel(), "
                              "jaxviz.param.from_valid_rgb(rgb) gives those of RGB images in (0, 1)")
    # all items in one chunk: no padding (batch_size=64 for 3 items computed 64 images); a fixed
    # chunk shape, one compile, matters only across several chunks
    b = batch_for(model, objective, recipe, batch_size and min(batch_size, n), max_bytes, every)
    chunks = math.ceil(n / b)
    pad = chunks * b - n
    padded = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
    args = jax.tree.map(lambda a: padded(jnp.asarray(a)), args)
    keys, start = padded(keys), padded(start)
    static, (blank, hyper) = model.static(), _split_optimizer(recipe)
    layers, raw = objective.term.layers(), recipe.param.build(1).raw  # what a failed chunk's check traces
    outs = []
    for c in range(chunks):
        sl = slice(c * b, (c + 1) * b)
        with model_errors(model, layers, recipe.size, raw):
            outs.append(run_chunk(static, model.params, objective.term, blank, every, hyper,
                                  jax.tree.map(lambda a: a[sl], args), keys[sl], start[sl]))
        if progress is not None:
            jax.block_until_ready(outs[-1])
            progress(min(n, (c + 1) * b) - c * b)
    cat = lambda i: None if outs[0][i] is None else jnp.concatenate([o[i] for o in outs])[:n]
    images, values, trace, frames = (cat(i) for i in range(4))
    if d > 1:
        images = images.reshape((n * d,) + images.shape[2:])
        values = values.reshape(n * d)
        trace = jnp.swapaxes(trace, 1, 2).reshape(n * d, recipe.steps)
        if frames is not None:
            frames = jnp.swapaxes(frames, 1, 2).reshape((n * d,) + frames.shape[1:2] + frames.shape[3:])
    return Result(images, values, trace, frames)
