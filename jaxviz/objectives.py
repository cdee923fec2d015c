"""Objectives: what to maximize, as composable pure functions (Lucid's algebra).

An :class:`Objective` is a hashable *term* (what to compute: ``Channel("block4_conv1")``)
and its *args* (data: which channels, vectors, ...), whose leaves have a leading batch
axis N: a batch of filters is a batch of args, ``vmap``ped, so one compile serves every
filter of a layer. ``+``, ``-`` and scalar ``*`` combine objectives into weighted sums.

    channel(layer, n, dead_filter="none")  mean over H, W of channel n (post-relu)
    neuron(layer, n, y=None, x=None)       channel n at one position (the centre by default)
    direction(layer, vectors)              mean over H, W of <activation, vector>
    deepdream(layer)                       mean of the squared activation
    class_logit(n)                         the pre-softmax logit n (a model with a classifier)
    total_variation(), l2(c)               image penalties (subtract them)
    diversity(layer)                       minus the mean Gram similarity between an objective's images

A term sees one image through a :class:`Probe` (the model's activations, computed on
demand and shared by the terms); ``diversity`` sees all images of one objective.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import zlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz import checks
from jaxviz.errors import JaxvizError
from jaxviz.models.base import LOGITS, Model
from jaxviz.models.vgg import IMAGENET_BGR_MEANS, deprocess, preprocess  # noqa: F401  (VGG16's input transform)

DEAD_FILTER = ("none", "preact", "redirect")


# ---------------------------------------------------------------- what a term sees

class Probe:
    """One image as the objective sees it during a step (used while tracing; not a pytree).

    ``image`` is the parameterization's image after the transforms (what ``total_variation``
    and ``l2`` penalize), ``x`` the model's input; ``layer(name)`` and ``preact(name, n)``
    compute activations once per name. ``step`` is the optimizer step (traced), ``final``
    is True for the evaluation after the last step.
    """

    def __init__(self, model: Model, params, image, x, step=0, final: bool = False, batched: bool = False):
        self.model, self.params, self.image, self.x = model, params, image, x
        self.step, self.final, self.batched = step, final, batched
        self._acts: dict = {}

    def layer(self, name: str) -> jax.Array:
        if name not in self._acts:
            # jnp: a layer the model returns as a numpy constant fails numpy's indexing with a traced n
            acts = lambda x: jnp.asarray(self.model.activations(self.params, x, (name,))[name])
            self._acts[name] = jax.vmap(acts)(self.x) if self.batched else acts(self.x)
        return self._acts[name]

    def _preact(self, name: str, n):
        if self.model.preact is None or self.batched:
            return None
        return self.model.preact(self.params, self.x, name, n)

    def preact(self, name: str, n) -> jax.Array:
        """Channel n of ``name`` before its relu, (h, w): the model's fast path."""
        pre = self._preact(name, n)
        if pre is None:
            raise JaxvizError(f"model {self.model.name} gives no pre-activation for {name}; use dead_filter='none'")
        return pre

    def channel(self, name: str, n) -> jax.Array:
        """Channel n of ``name`` (post-activation), by the fast path where the model has one."""
        pre = None if name in self._acts else self._preact(name, n)
        return self.layer(name)[..., n] if pre is None else jax.nn.relu(pre)


def _no_preact(model: Model, layer: str) -> bool:
    """Whether ``model`` has no pre-activation path for ``layer`` (asked by tracing, nothing runs)."""
    x = jax.ShapeDtypeStruct((model.min_size(layer),) * 2 + (3,), jnp.float32)
    try:
        return jax.eval_shape(lambda p, x: model.preact(p, x, layer, 0), model.params, x) is None
    except Exception:
        return True


# ---------------------------------------------------------------- terms (hashable)

@dataclasses.dataclass(frozen=True)
class Term:
    """Base of the terms: ``value(probe, args)`` for one image; ``batch_value`` for an objective's D images."""

    def value(self, probe: Probe, args) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    def batch_value(self, probe: Probe, args) -> jax.Array:
        return jnp.zeros((), jnp.float32)

    def layers(self) -> tuple[str, ...]:
        return ()

    def check(self, model: Model, args) -> None:
        """Raise a one-line JaxvizError if the term cannot apply to ``model`` with ``args``."""
        for name in self.layers():
            _layer(model, name)


def _layer(model: Model, layer: str):
    """The layer's LayerInfo, if it has an output to maximize; else one line (an empty
    output's mean is NaN, which would only surface as images that "came out not finite")."""
    info = model.layer(layer)
    if 0 in info.shape:
        raise JaxvizError(f"layer {layer} of model {model.name} has an empty output (shape {info.shape} at "
                          f"{model.input_size} px), nothing to maximize; give the model a larger input_size or "
                          "pick another layer")
    return info


def _per_image(model: Model, layer: str):
    """The layer's LayerInfo, if its shape is one image's (C,) or (H, W, C); else one line."""
    info = _layer(model, layer)
    if len(info.shape) not in (1, 3):
        fix = ("make the model return one image's activations (no batch axis)" if len(info.shape) == 4 and
               info.shape[0] == 1 else "pick a dense (C,) or conv (H, W, C) layer, or reshape this one in the model")
        raise JaxvizError(f"layer {layer} has shape {info.shape} for one image; objectives need (C,) or (H, W, C): "
                          f"{fix}")
    return info


def _channels(model: Model, layer: str, ns, what: str) -> None:
    info = _per_image(model, layer)
    ns = np.asarray(ns).reshape(-1)
    bad = ns[(ns < 0) | (ns >= info.channels)]
    if bad.size:
        raise JaxvizError(f"{what} {int(bad[0])} is out of range for {layer}, which has {info.channels} "
                          f"channels (0-{info.channels - 1})")


@dataclasses.dataclass(frozen=True)
class Channel(Term):
    layer: str
    dead_filter: str = "none"
    redirect_steps: Optional[int] = None  # redirect only in the first N steps (None: always)

    def value(self, probe, n):
        if self.dead_filter == "none" or probe.final:
            return probe.channel(self.layer, n).mean()
        redirect = 1.0 if self.redirect_steps is None else (probe.step < self.redirect_steps).astype(jnp.float32)
        return apply_dead(probe.preact(self.layer, n), self.dead_filter, redirect).mean()

    def layers(self):
        return (self.layer,)

    def check(self, model, n):
        info = _per_image(model, self.layer)
        if not info.spatial:
            raise JaxvizError(f"layer {self.layer} is not spatial (shape {info.shape}): use neuron({self.layer!r}, n)"
                              f" or class_logit(n) instead of channel")
        if self.dead_filter not in DEAD_FILTER:
            raise JaxvizError(f"dead_filter must be one of {', '.join(DEAD_FILTER)}, not {self.dead_filter!r}")
        if self.redirect_steps is not None:
            checks.integer("redirect_steps", self.redirect_steps, 0, checks.MAX_STEPS)
        if self.dead_filter != "none" and (model.preact is None or _no_preact(model, self.layer)):
            raise JaxvizError(f"dead_filter={self.dead_filter!r} needs a model with a pre-activation path "
                              f"(model {model.name} has none); use dead_filter='none'")
        _channels(model, self.layer, n, "channel")


@dataclasses.dataclass(frozen=True)
class Neuron(Term):
    layer: str
    y: Optional[int] = None
    x: Optional[int] = None

    def value(self, probe, n):
        a = probe.channel(self.layer, n)
        if a.ndim == 0:
            return a
        h, w = a.shape
        return a[h // 2 if self.y is None else self.y, w // 2 if self.x is None else self.x]

    def layers(self):
        return (self.layer,)

    def check(self, model, n):
        info = _per_image(model, self.layer)
        _channels(model, self.layer, n, "channel")
        if not info.spatial and (self.y, self.x) != (None, None):  # it has no positions: y, x were ignored
            raise JaxvizError(f"layer {self.layer} is not spatial (shape {info.shape}), so a neuron there has no "
                              f"position; drop y and x")
        if info.spatial:
            h, w = info.shape[:2]
            for v, lim, axis in ((self.y, h, "y"), (self.x, w, "x")):
                if v is not None and not 0 <= v < lim:
                    raise JaxvizError(f"neuron {axis}={v} is outside {self.layer} ({h}x{w} at {model.input_size} px)")


@dataclasses.dataclass(frozen=True)
class Direction(Term):
    layer: str

    def value(self, probe, v):
        a = probe.layer(self.layer)
        return jnp.tensordot(a, v, axes=1).mean()

    def layers(self):
        return (self.layer,)

    def check(self, model, v):
        c = _per_image(model, self.layer).channels
        if np.shape(v)[-1] != c:
            raise JaxvizError(f"direction vectors have {np.shape(v)[-1]} entries but {self.layer} has {c} channels")


@dataclasses.dataclass(frozen=True)
class DeepDream(Term):
    layer: str

    def value(self, probe, _):
        return jnp.mean(jnp.square(probe.layer(self.layer)))

    def layers(self):
        return (self.layer,)


@dataclasses.dataclass(frozen=True)
class ClassLogit(Term):
    def value(self, probe, n):
        return probe.layer(LOGITS)[n]

    def layers(self):
        return (LOGITS,)

    def check(self, model, n):
        if LOGITS not in [l.name for l in model.layers]:
            raise JaxvizError(f"model {model.name} has no classifier ({LOGITS!r} layer); class_logit needs one: "
                              f"{_classifier_hint(model)}")
        info = _per_image(model, LOGITS)
        if info.spatial:  # its value per class was a map, not a number: a TypeError from inside the gradient
            raise JaxvizError(f"layer {LOGITS} of model {model.name} has shape {info.shape}; class_logit needs the "
                              "classifier's vector of pre-softmax logits (C,): name that layer as logits")
        _channels(model, LOGITS, n, "class")


def _classifier_hint(model: Model) -> str:
    """How to give ``model`` the classifier class_logit needs: VGG's is in its weights (the
    top), any other model names its pre-softmax layer ``logits`` through its adapter."""
    from jaxviz.model import VGG16, VGG19

    if model.name in (VGG16.name, VGG19.name):
        return "load VGG weights with the classifier top (fc1, fc2, predictions)"
    return (f"expose the model's pre-softmax layer as {LOGITS!r} (from_linen / from_nnx: logits=LAYER; "
            f"from_function: return it under {LOGITS!r}; Keras: a model ending in a softmax Dense layer, "
            "e.g. include_top=True)")


@dataclasses.dataclass(frozen=True)
class TotalVariation(Term):
    def value(self, probe, _):
        x = probe.image
        return jnp.abs(x[1:] - x[:-1]).mean() + jnp.abs(x[:, 1:] - x[:, :-1]).mean()


@dataclasses.dataclass(frozen=True)
class L2(Term):
    constant: float = 0.5

    def value(self, probe, _):
        return jnp.sqrt(jnp.mean(jnp.square(probe.image - self.constant)))


@dataclasses.dataclass(frozen=True)
class Diversity(Term):
    layer: str

    def batch_value(self, probe, _):
        return -diversity(probe.layer(self.layer)) if probe.batched else jnp.zeros((), jnp.float32)

    def layers(self):
        return (self.layer,)


@dataclasses.dataclass(frozen=True)
class Sum(Term):
    terms: tuple
    weights: tuple

    def value(self, probe, args):
        return sum(w * t.value(probe, a) for t, w, a in zip(self.terms, self.weights, args))

    def batch_value(self, probe, args):
        return sum(w * t.batch_value(probe, a) for t, w, a in zip(self.terms, self.weights, args))

    def layers(self):
        return tuple(dict.fromkeys(n for t in self.terms for n in t.layers()))

    def check(self, model, args):
        for t, a in zip(self.terms, args):
            t.check(model, a)


def _leaf_terms(term: Term, args) -> list:
    """(term, args) of every term that is not a Sum, in order (depth first)."""
    if isinstance(term, Sum):
        return [p for t, a in zip(term.terms, args) for p in _leaf_terms(t, a)]
    return [(term, args)]


# ---------------------------------------------------------------- objectives

@dataclasses.dataclass(frozen=True)
class Objective:
    """A term and its args (leaves with a leading batch axis of 1 or N). Maximized by the engine."""

    term: Term
    args: Any = dataclasses.field(default=None, compare=False, hash=False)

    def __len__(self) -> int:
        sizes = [np.shape(a)[0] for a in jax.tree.leaves(self.args)]
        return max(sizes, default=1)

    def batched_args(self):
        """``args`` with every leaf broadcast to the batch size N."""
        n = len(self)
        return jax.tree.map(lambda a: np.broadcast_to(a, (n,) + np.shape(a)[1:]), self.args)

    def key_ids(self, model: Model) -> np.ndarray:
        """(N, 2) ints from which each item's key is folded: (layer index, channel) of its first
        channel, neuron or class term; without one, (the first term's layer index, a digest of
        the item's own args). Either way an item's randomness does not depend on the batch."""
        n = len(self)
        parts = _leaf_terms(self.term, self.args)
        named = [(t, a) for t, a in parts if isinstance(t, (Channel, Neuron, ClassLogit))]
        term, args = (named or parts)[0]
        layers = [l for l in term.layers() if l in {i.name for i in model.layers}]  # an unknown one: engine.check says so
        index = model.layer_index(layers[0]) if layers else len(model.layers)
        if named:
            ch = np.broadcast_to(np.asarray(args).reshape(-1), (n,))
        else:
            leaves = [np.asarray(a) for a in jax.tree.leaves(self.batched_args())]
            ch = [zlib.crc32(b"".join(np.ascontiguousarray(a[i]).tobytes() for a in leaves)) & 0x7FFFFFFF for i in range(n)]
        return np.stack([np.full(n, index), ch], axis=1).astype(np.int32)

    def terms(self) -> list:
        """Every term of the objective that is not a Sum, in order."""
        return [t for t, _ in _leaf_terms(self.term, self.args)]

    def _parts(self):
        if isinstance(self.term, Sum):
            return list(zip(self.term.terms, self.term.weights, self.args))
        return [(self.term, 1.0, self.args)]

    __array_ufunc__ = None  # np.array([1, 2]) * obj made a numpy array of objectives: __rmul__ refuses it

    def __radd__(self, other) -> "Objective":
        """``0 + objective``: Python's ``sum(objectives)`` starts from 0."""
        return self if type(other) is int and other == 0 else NotImplemented

    def __add__(self, other: "Objective") -> "Objective":
        if not isinstance(other, Objective):
            return NotImplemented
        a, b = len(self), len(other)
        if a != b and 1 not in (a, b):
            raise JaxvizError(f"cannot add objectives of {a} and {b} items; give one of them 1 or the same count")
        parts = self._parts() + other._parts()
        return Objective(Sum(tuple(p[0] for p in parts), tuple(p[1] for p in parts)), tuple(p[2] for p in parts))

    def __mul__(self, w: float) -> "Objective":
        if not isinstance(w, (str, bytes)) and np.ndim(w) > 0:
            raise TypeError(f"an objective's weight must be one number, not an array of shape {np.shape(w)}")
        kind = np.asarray(w).dtype if np.ndim(w) == 0 and not isinstance(w, (bool, np.bool_, str, bytes)) else None
        if kind is None or not (jnp.issubdtype(kind, jnp.integer) or jnp.issubdtype(kind, jnp.floating)):
            return NotImplemented
        checks.real("an objective's weight", float(w))  # NaN or inf: every image non-finite, told only at the end
        parts = self._parts()
        weights = tuple(_weight(float(w) * p[1]) for p in parts)
        return Objective(Sum(tuple(p[0] for p in parts), weights), tuple(p[2] for p in parts))

    __rmul__ = __mul__

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-other) if isinstance(other, Objective) else NotImplemented


def _weight(w: float) -> float:
    """A term's weight as the engine computes with it, in float32: one past float32's range (1e300)
    was infinity there, every image NaN, told only at the end; a nonzero one under its smallest
    (1e-300) was 0, the term silently dropped."""
    if abs(w) > checks.F32_MAX or w != 0 and np.float32(w) == 0:
        raise JaxvizError(f"an objective's weight must be 0 or from {np.finfo(np.float32).smallest_subnormal:.3g} "
                          f"to {checks.F32_MAX:.8g} in size (float32), not {w:.3g}")
    return w


def _name(layer) -> str:
    """A layer's name, a str: a list of names was a TypeError (unhashable) from inside the engine."""
    if not isinstance(layer, str):
        raise JaxvizError(f"a layer is named by a str such as 'block4_conv1', not {checks.show(layer)}; for several "
                          "layers add one objective per layer (channel(a, 0) + channel(b, 0))")
    return layer


def _indices(n, what: str) -> np.ndarray:
    from jaxviz.checks import filter_list

    if np.ndim(n) == 0 and not isinstance(n, (str, bytes)):  # one index: 3, np.int64(3), jnp.int32(3)
        n = [n]
    out = filter_list(n)
    for i in out:  # past int32 (10**30) failed in numpy's conversion with OverflowError
        checks.integer(f"a {what} index", i, 0, np.iinfo(np.int32).max)
    return np.asarray(out, np.int32).reshape(-1)


def channel(layer: str, n, dead_filter: str = "none", redirect_steps: Optional[int] = None) -> Objective:
    """The mean over H, W of channel(s) ``n`` of ``layer`` (one item per channel).

    ``dead_filter``: "none" (post-relu), "preact" (before the relu) or "redirect" (a relu
    whose gradient passes while it blocks everything), for filters that never fire.
    """
    return Objective(Channel(_name(layer), dead_filter, redirect_steps), _indices(n, "channel"))


def neuron(layer: str, n, y: Optional[int] = None, x: Optional[int] = None) -> Objective:
    """Channel(s) ``n`` of ``layer`` at one position (y, x); the centre by default."""
    y, x = (None if v is None else checks.integer(name, v) for name, v in (("neuron y", y), ("neuron x", x)))
    return Objective(Neuron(_name(layer), y, x), _indices(n, "channel"))


def direction(layer: str, vectors) -> Objective:
    """The mean over H, W of the dot product of ``layer``'s activation with each vector (N, C) or (C,)."""
    try:
        v = np.asarray(vectors, np.float32)
    except (TypeError, ValueError):
        v = None
    if v is None or not 1 <= v.ndim <= 2 or v.size == 0 or not np.isfinite(v).all():
        raise JaxvizError(f"direction vectors must be finite numbers, (C,) or (N, C), not {checks.show(vectors)}")
    v = v.reshape((-1, v.shape[-1]))
    zero = np.flatnonzero(~v.any(axis=1))
    if zero.size:  # its objective is 0 for every image: nothing to ascend, the start image comes back
        raise JaxvizError(f"direction vector {zero[0]} is all zeros; give each direction a nonzero vector")
    return Objective(Direction(_name(layer)), v)


def deepdream(layer: str) -> Objective:
    """DeepDream's objective: the mean of the squared activation of ``layer``."""
    return Objective(DeepDream(_name(layer)))


def class_logit(n) -> Objective:
    """The pre-softmax logit(s) ``n`` of a model with a classifier."""
    return Objective(ClassLogit(), _indices(n, "class"))


def total_variation() -> Objective:
    """The mean absolute difference between neighbouring pixels (subtract it to smooth)."""
    return Objective(TotalVariation())


def l2(constant: float = 0.5) -> Objective:
    """The RMS distance of the image from ``constant`` (subtract it to keep values moderate)."""
    return Objective(L2(checks.real("l2's constant", constant)))


def diversity_term(layer: str) -> Objective:
    """Minus Lucid's diversity similarity of ``layer`` between the images of one objective
    (add it, weighted, to push an objective's several images apart: ``recipe.diversity`` > 1)."""
    return Objective(Diversity(_name(layer)))


# ---------------------------------------------------------------- Lucent-style spelling

KINDS = ("channel", "neuron", "deepdream", "logit")


def split_text(text: str) -> tuple[str, str, str | None]:
    """(kind, layer or class numbers, channel list or None) of an objective's text.

    The channel list is what follows the layer's LAST ':', so a layer whose own name holds ':'
    (``stem:conv`` in a user's model) is written whole: ``stem:conv:0-3``, ``neuron:stem:conv:5``;
    ``deepdream:`` and ``logit:`` take everything after their prefix."""
    text = text.strip()
    head, sep, rest = text.partition(":")
    kind, rest = (head.strip(), rest) if sep and head.strip() in KINDS else ("channel", text)
    # spaces around a part are spacing, not the name ("neuron: conv1 : 5"): no layer name has them
    if kind in ("deepdream", "logit"):
        layer, sep, tail = rest.rpartition(":")
        if kind == "logit" and sep:  # class numbers hold no ':'
            return kind, rest.partition(":")[0].strip(), rest.partition(":")[2]
        if kind == "deepdream" and sep and layer.strip() and re.fullmatch(r"[\d,\s-]+", tail):  # deepdream:L:3
            return kind, layer.strip(), tail
        return kind, rest.strip(), None
    layer, sep, ns = rest.rpartition(":")
    return (kind, layer.strip(), ns) if sep else (kind, rest.strip(), None)


def _plain(text: str) -> str:
    """Text suggested in an error line: as it is, or its repr where it holds a newline or the like."""
    return text if text.isprintable() else repr(text)


def parse(text: str, filters=None) -> Objective:
    """An objective from text: ``LAYER:N`` or ``channel:LAYER:N`` (N: 5, 0-63, 0,5,9), ``neuron:LAYER:N``,
    ``deepdream:LAYER``, ``logit:N``. ``filters`` stands in for a missing N. N follows the layer's
    last ':' (``stem:conv:0-3`` for a layer named ``stem:conv``)."""
    from jaxviz.cli_args import expand_spans, parse_filters

    usage = "use LAYER:N, neuron:LAYER:N, deepdream:LAYER or logit:N (N: 5, 0-63 or 0,5,9)"
    if not isinstance(text, str):
        raise JaxvizError(f"an objective's text must be a str; {usage}; not {checks.show(text)}")

    def parse_filters_list(t):
        try:
            spans = parse_filters(t)
        except JaxvizError:
            head, _, tail = text.strip().partition(":")
            kind_typo = difflib.get_close_matches(head.lower(), KINDS, n=1, cutoff=0.6)
            if kind_typo and kind_typo[0] != head:  # dream:conv2 (not logit:-1 as "did you mean logit:-1?")
                named = f" (did you mean {_plain(kind_typo[0] + ':' + tail)}?)"
            elif re.search(r"[A-Za-z_]", t) and head != "logit":  # logit: takes class numbers, no layer
                named = " (a layer whose name holds ':' takes N after its last ':', e.g. stem:conv:0-3)"
            else:
                named = ""
            raise JaxvizError(f"malformed channel list {t!r} in objective {text!r}; {usage}{named}") from None
        if spans is None:
            raise JaxvizError(f"'all' is not an objective's channel list in {text!r}; give a range such as 0-63")
        return expand_spans(spans)

    kind, layer, ns = split_text(text)
    if not layer:
        raise JaxvizError(f"malformed objective {text!r}; {usage}")
    if kind in ("deepdream", "logit") and ns is not None:
        raise JaxvizError(f"{kind} takes {'a layer' if kind == 'deepdream' else 'class numbers'} only, not "
                          f"{ns!r}, in objective {text!r}; {usage}")
    if kind == "deepdream":
        return deepdream(layer)
    if kind == "logit":
        return class_logit(parse_filters_list(layer))
    picked = parse_filters_list(ns) if ns is not None else filters
    if picked is None:
        raise JaxvizError(f"objective {text!r} names no channel; add :N, e.g. {_plain(layer + ':0-15')}")
    return (neuron if kind == "neuron" else channel)(layer, picked)


# ---------------------------------------------------------------- the quality recipe's pieces

@jax.custom_vjp
def redirected_relu(x: jax.Array, redirect: jax.Array) -> jax.Array:
    """relu(x); its gradient is redirected where ``redirect`` (a 0/1 scalar) is 1 and the
    ordinary relu lets no gradient through at all: everything passes except what would push
    negative values further down (Lucid's redirected relu). Cotangents follow gradient
    *descent* on a loss. ``redirect`` receives no gradient."""
    return jnp.maximum(x, 0.0)


def _rr_fwd(x, redirect):
    return jnp.maximum(x, 0.0), (x, redirect)


def _rr_bwd(res, g):
    x, redirect = res
    relu_grad = jnp.where(x > 0, g, 0.0)
    passed = jnp.where((x < 0) & (g > 0), 0.0, g)
    blocked = jnp.sum(jnp.square(relu_grad)) == 0
    use = (redirect > 0) & blocked
    return jnp.where(use, passed, relu_grad), jnp.zeros_like(redirect)


redirected_relu.defvjp(_rr_fwd, _rr_bwd)


def apply_dead(pre: jax.Array, dead_filter: str = "none", redirect=0.0) -> jax.Array:
    """A pre-relu activation -> what is maximized: relu ("none"), itself ("preact") or :func:`redirected_relu`."""
    if dead_filter == "preact":
        return pre
    if dead_filter == "redirect":
        return redirected_relu(pre, jnp.asarray(redirect, jnp.float32))
    if dead_filter == "none":
        return jax.nn.relu(pre)
    raise ValueError(f"dead_filter must be one of {DEAD_FILTER}, not {dead_filter!r}")


def gram(h: jax.Array) -> jax.Array:
    """The Gram matrix (C, C) of a feature map (h, w, C), scaled to unit Frobenius norm."""
    flat = h.reshape(-1, h.shape[-1])
    g = jnp.matmul(flat.T, flat, precision=jax.lax.Precision.HIGHEST)
    return g / jnp.maximum(jnp.sqrt(jnp.sum(g * g)), 1e-10)


def diversity(features: jax.Array) -> jax.Array:
    """Lucid's diversity of a batch of feature maps (D, h, w, C): sum over pairs i != j of
    <gram_i, gram_j> (cosine similarity of Gram matrices), divided by D. 0 for D = 1."""
    g = jax.vmap(gram)(features).reshape(features.shape[0], -1)
    sim = jnp.matmul(g, g.T, precision=jax.lax.Precision.HIGHEST)
    d = features.shape[0]
    return (jnp.sum(sim) - jnp.trace(sim)) / d
