"""Any Flax linen Module as a jaxviz Model, its layers named by module path.

A layer is the output of a submodule's ``__call__``, named by its path from the root
("Conv_0", "block1/conv2", ...; a module called twice gives "name" and "name@1"); the
root's own output is "output" (one layer with a submodule named "output" whose array it
returns). Outputs are caught with ``nn.intercept_methods``, and the forward pass stops (a
private exception out of the interceptor) as soon as the deepest requested layer is
computed, so nothing after it is traced: the same under ``jit``, ``grad`` and ``vmap``,
since the stop happens while tracing, in Python.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax

from jaxviz import checks
from jaxviz.errors import JaxvizError, notice
from jaxviz.models.base import LOGITS, LayerInfo, Model, eval_shapes, finite_weights, identity, user_min_size
from jaxviz.models.function import OUTPUT, searched_min_size


class _Done(Exception):
    """Raised by the interceptor once every requested layer is captured."""


class Recorder:
    """Collects module outputs by path name during one forward pass; stops it when ``wanted`` is complete
    (``wanted`` None: record every array output, never stop)."""

    def __init__(self, wanted: Optional[frozenset]):
        self.wanted, self.out, self.calls, self.first = wanted, {}, {}, {}

    def record(self, path: tuple, value) -> None:
        base = "/".join(str(p) for p in path) or OUTPUT
        if not path and value is self.first.get(base):
            return  # the root returns its own submodule "output"'s array: one layer, not "output@1"
        k = self.calls.get(base, 0)
        self.calls[base] = k + 1
        self.first.setdefault(base, value)
        name = base if k == 0 else f"{base}@{k}"
        if self.wanted is None:
            if isinstance(value, jax.Array) and value.ndim >= 1:
                self.out[name] = value
        elif name in self.wanted:
            self.out[name] = value
            if not self.wanted - self.out.keys():
                raise _Done

    def run(self, forward: Callable[[], Any]) -> dict:
        try:
            forward()
        except _Done:
            pass
        if self.wanted is None:  # the layer table: not the outputs caught inside the model's own nn.scan
            self.out = {k: v for k, v in self.out.items() if _outside(v)}
        return self.out


def _outside(value: jax.Array) -> bool:
    """Whether ``value`` belongs to the pass's own trace, not to one of a JAX transformation inside the
    model (the body of an ``nn.scan``, say), whose tracers cannot be used outside it."""
    try:
        jax.numpy.negative(value)
    except jax.errors.UnexpectedTracerError:
        return False
    return True


def unbatch(out: dict, alias: Optional[str], dropped: Optional[list] = None) -> dict:
    """Drop the batch axis of 1; add the ``logits`` alias of layer ``alias``. With ``dropped`` (the
    layer table's pass), outputs whose first axis is not that batch of 1 are left out and named
    there: batch statistics or a transposed or stacked output, whose ``[0]`` is not the image's."""
    if dropped is not None:
        dropped.extend(k for k, v in out.items() if v.shape[0] != 1)
        out = {k: v for k, v in out.items() if v.shape[0] == 1}
    out = {k: v[0] for k, v in out.items()}
    if alias is not None and alias in out:
        out[LOGITS] = out[alias]
    return out


def layer_table(shapes: dict, order: list, logits: Optional[str], name: str,
                dropped: list = ()) -> tuple[LayerInfo, ...]:
    """The layers in the order they are computed, once ``logits`` is checked to name one of them;
    the ``dropped`` outputs (not per image) are named in a notice."""
    if logits is not None and logits in dropped:
        raise JaxvizError(f"logits={logits!r}: that output's first axis is not the batch (N, ...), so it is not "
                          f"one image's; name a layer whose output is (N, classes)")
    if dropped:
        notice(f"{name}: left out of its layers, as their first axis is not the batch (N, ...): "
               f"{', '.join(dict.fromkeys(dropped))}")
    if logits is not None and logits not in order:
        raise JaxvizError(f"logits={logits!r} names no layer of {name}; its layers: "
                          f"{', '.join(n for n in order if n != LOGITS)}")
    return tuple(LayerInfo(n, tuple(shapes[n].shape)) for n in order)


def from_linen(module: nn.Module, variables: Any, *, preprocess: Callable = identity, input_size: int = 224,
               method: Optional[str] = None, apply_kwargs: Optional[dict] = None, logits: Optional[str] = None,
               min_size: Optional[Callable] = None, name: Optional[str] = None) -> Model:
    """A Model from a linen ``module`` and its ``variables`` (``{"params": ..., "batch_stats": ...}``).

    The module takes a batch (N, H, W, 3) of ``preprocess``'s output; it is applied with
    ``mutable=False`` and ``apply_kwargs`` (e.g. ``{"train": False}``: pass what puts YOUR
    module in eval mode, batch norm on running statistics, dropout off). ``method`` names
    the method to apply (default ``__call__``). ``logits`` names the layer (e.g. "output" or
    "head") to expose as ``logits`` for ``class_logit``. Layers: every submodule output that
    is an array, in the order they are computed, with shapes at ``input_size`` px.
    """
    if not isinstance(module, nn.Module):
        raise JaxvizError(f"from_linen needs a flax.linen Module, not {checks.show(module)}")
    if apply_kwargs is not None and not isinstance(apply_kwargs, dict):
        raise JaxvizError(f"apply_kwargs must be a dict such as {{'train': False}}, not {checks.show(apply_kwargs)}")
    kwargs = dict(apply_kwargs or {})

    def forward(p, x, recorder: Recorder):
        def intercept(next_fun, args, kw, context):
            out = next_fun(*args, **kw)
            if context.method_name == "__call__" or (not context.module.path and context.method_name == method):
                recorder.record(context.module.path, out)
            return out

        def go():
            with nn.intercept_methods(intercept):
                module.apply(p, x[None], method=method, mutable=False, **kwargs)

        return recorder.run(go)

    def activations(p, x, names):
        wanted = frozenset(logits if n == LOGITS and logits is not None else n for n in names)
        out = unbatch(forward(p, x, Recorder(wanted)), logits)
        return {n: out[n] for n in names}

    order: list = []  # the order layers are computed in (eval_shape's dicts come back sorted)
    dropped: list = []

    def every(p, x):
        out = unbatch(forward(p, preprocess(x), Recorder(None)), logits, dropped)
        order.extend(out)
        return out

    checks.integer("input_size", input_size, 1, checks.MAX_SIZE)
    checks.function("preprocess", preprocess)
    checks.function("min_size", min_size, optional=True)
    if not isinstance(variables, Mapping):  # None failed as "not iterable", told to pass apply_kwargs
        raise JaxvizError(f"variables must be the dict that module.init returns ({{'params': ...}}), "
                          f"not {checks.show(variables)}")
    # it fails e.g. where batch norm, left in training mode, tries to update its statistics
    finite_weights(variables, type(module).__name__)
    shapes = eval_shapes(every, variables, input_size, type(module).__name__, "pass apply_kwargs that put it in "
                         "eval mode (e.g. {'train': False}) and check input_size" if "params" in variables else
                         "variables holds no 'params' collection: pass all that module.init returns "
                         "({'params': ..., 'batch_stats': ...}), not variables['params']")
    table = layer_table(shapes, order, logits, type(module).__name__, dropped)
    return Model(name or type(module).__name__, variables, activations, table, preprocess,
                 user_min_size(min_size) if min_size
                 else searched_min_size(activations, variables, table, input_size, preprocess), input_size)
