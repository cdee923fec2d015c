"""Any Flax NNX Module as a jaxviz Model, its layers named by module path.

The module is made functional with ``nnx.split`` (graphdef, state: the state is the
params pytree) and rebuilt with ``nnx.merge`` inside ``activations``, in eval mode
(``nnx.view(deterministic=True, use_running_average=True)``: batch norm on running
statistics, dropout off). A layer is the output of a submodule's ``__call__``, named by its
path ("conv1", "blocks/0/conv", ...; a module called twice gives "name" and "name@1"); the
root's output is "output". As ``nnx.capture(method_outputs=...)`` does, the module classes'
``__call__`` are wrapped for the duration of one forward pass (only the merged copy's
modules record); the pass stops once the deepest requested layer is computed, so nothing
after it is traced, under ``jit``, ``grad`` and ``vmap`` alike.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional

import flax.nnx as nnx
import jax

from jaxviz import checks
from jaxviz.errors import JaxvizError
from jaxviz.models.base import LOGITS, Model, eval_shapes, finite_weights, identity, user_min_size
from jaxviz.models.function import searched_min_size
from jaxviz.models.linen import Recorder, layer_table, unbatch


@contextlib.contextmanager
def _recording(root: nnx.Module, recorder: Recorder):
    """Wrap the ``__call__`` of every module class under ``root`` so that ``root``'s modules record their outputs."""
    paths = {id(m): path for path, m in nnx.iter_modules(root)}
    owned = {}
    for t in {type(m) for _, m in nnx.iter_modules(root)}:
        if not any("__call__" in c.__dict__ for c in t.__mro__[:-1]):  # not callable (a List, a container)
            continue
        owned[t] = t.__dict__.get("__call__")
        original = t.__call__

        @functools.wraps(original)
        def call(self, *args, _t=t, _original=original, **kwargs):
            out = _original(self, *args, **kwargs)
            if type(self) is _t and id(self) in paths:
                recorder.record(paths[id(self)], out)
            return out

        t.__call__ = call
    try:
        yield
    finally:
        for t, own in owned.items():
            if own is None:
                del t.__call__
            else:
                t.__call__ = own


def from_nnx(module: nnx.Module, *, preprocess: Callable = identity, input_size: int = 224,
             logits: Optional[str] = None, min_size: Optional[Callable] = None, name: Optional[str] = None) -> Model:
    """A Model from an NNX ``module`` that takes a batch (N, H, W, 3) of ``preprocess``'s output.

    ``logits`` names the layer (e.g. "output" or "head") to expose as ``logits`` for
    ``class_logit``. Layers: every submodule output that is an array, in the order they are
    computed, with shapes at ``input_size`` px. The user's module is not modified.
    """
    if not isinstance(module, nnx.Module):  # a linen Module too: from_linen takes those
        raise JaxvizError(f"from_nnx needs a flax.nnx Module, not {checks.show(module)}")
    evaluated = nnx.view(module, deterministic=True, use_running_average=True, raise_if_not_found=False)
    graphdef, state = nnx.split(evaluated)

    def forward(p, x, recorder: Recorder, changed: Optional[list] = None):
        before = [v.get_value() for _, v in nnx.to_flat_state(p)] if changed is not None else None
        m = nnx.merge(graphdef, p, copy=True)  # variables of this trace: an nnx.remat inside can write them back

        def go():
            with _recording(m, recorder):
                m(x[None])

        out = recorder.run(go)
        if changed is not None:  # the layer table's pass: the state it wrote
            changed.extend((path, v) for (path, v), b in zip(nnx.to_flat_state(nnx.state(m)), before)
                           if v.get_value() is not b)
        return out

    def activations(p, x, names):
        wanted = frozenset(logits if n == LOGITS and logits is not None else n for n in names)
        out = unbatch(forward(p, x, Recorder(wanted)), logits)
        return {n: out[n] for n in names}

    checks.integer("input_size", input_size, 1, checks.MAX_SIZE)
    checks.function("preprocess", preprocess)
    checks.function("min_size", min_size, optional=True)
    order: list = []  # the order layers are computed in (eval_shape's dicts come back sorted)
    dropped: list = []

    def every(p, x):
        changed: list = []
        out = unbatch(forward(p, preprocess(x), Recorder(None), changed), logits, dropped)
        if changed and not any(isinstance(v, nnx.Param) for _, v in changed):  # (an nnx.remat writes back all)
            # under jit, grad or vmap it failed in every render, said to be a gradient jaxviz cannot take
            path, v = changed[0]
            raise JaxvizError(f"{type(module).__name__} changes its state in a forward pass ({type(v).__name__} "
                              f"{'/'.join(map(str, path))}), as batch norm in training mode, dropout or a random draw "
                              "do; jaxviz renders in eval mode: make __call__'s defaults eval mode (train=False: "
                              "use_running_average=True, deterministic=True) and draw no random numbers in it")
        order.extend(out)
        return out

    finite_weights(state, type(module).__name__)
    shapes = eval_shapes(every, state, input_size, type(module).__name__, "check input_size and preprocess; "
                         "from_nnx calls module(x) with a batch x (N, H, W, 3) alone: give __call__'s other "
                         "arguments eval-mode defaults (train=False)")
    table = layer_table(shapes, order, logits, type(module).__name__, dropped)
    return Model(name or type(module).__name__, state, activations, table, preprocess,
                 user_min_size(min_size) if min_size
                 else searched_min_size(activations, state, table, input_size, preprocess), input_size)
