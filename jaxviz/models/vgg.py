"""VGG16/VGG19 from Keras h5 as a jaxviz Model, with the fast paths of the seed engine.

Layers: every conv and pool of the base (``block1_conv1`` ... ``block5_pool``), and with
a classifier top ``fc1``, ``fc2``, ``logits`` (pre-softmax) and ``predictions``. The
images are fed as Keras' VGG16 expects them (BGR, 0-255, ImageNet means subtracted);
the seed recipe feeds its raw pixel images directly. ``preact`` computes one channel
of a conv layer from the layer's input only (the rest of the layer is never computed),
with the convs of ``jaxviz.ops`` (fast custom-VJP input gradients; Winograd on CPU).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

from jaxviz import ops
from jaxviz.errors import JaxvizError
from jaxviz.model import TOP_LAYERS, VGG16, VGG19, VGGSpec, check_spec, layers, max_pool2
from jaxviz.models.base import LOGITS, LayerInfo, Model

IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)


def preprocess(x: jax.Array) -> jax.Array:
    """RGB (..., 3) in [0, 1] -> what Keras' VGG16 expects: BGR, 0-255, ImageNet means subtracted."""
    return x[..., ::-1] * 255.0 - jnp.asarray(IMAGENET_BGR_MEANS, x.dtype)


def deprocess(x: jax.Array) -> jax.Array:
    """The inverse of :func:`preprocess`."""
    return (x + jnp.asarray(IMAGENET_BGR_MEANS, x.dtype))[..., ::-1] / 255.0


# From this many input channels the target conv reads the image once, for all nine taps: XLA
# copied each of the nine shifted views out (4 MB each at block2_conv1, 16 images). With the
# colour layer's 3 channels the 27-column matmul was slower (bench/README.md, Zen 5).
TAPS_MIN_CHANNELS = 16


@jax.custom_vjp
def single_channel_conv(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME conv of one (H, W, C) image with one (3, 3, C) filter -> (H, W).

    The target layer only needs each image's own filter: one matmul of the padded image
    with the nine taps (C -> 9 columns) and a shifted sum of the taps, instead of the
    layer's full conv (under vmap, batched dots); nine shifted mat-vecs for colour inputs. The
    gradient is written by hand: JAX's own makes nine outer-product dots of the
    image's size and sums them in a separate pass; this one is one elementwise pass
    over shifted views of the padded cotangent, with the same products added in the
    same order (XLA may fuse a product and its sum into one FMA, a last-bit change;
    the seed's cotangent 1/(H W) is a power of two and its grids stayed
    bit-identical). block2_conv1 grid 0.70x the time on an AMX Xeon (bench/README.md).
    """
    hh, ww, c = h.shape
    hp = jnp.pad(h, ((1, 1), (1, 1), (0, 0)))
    out = 0.0
    if c < TAPS_MIN_CHANNELS:
        for dy in range(3):
            for dx in range(3):
                out = out + jnp.dot(hp[dy : dy + hh, dx : dx + ww], kernel[dy, dx], preferred_element_type=jnp.float32)
        return out
    z = jnp.dot(hp, kernel.reshape(9, c).T, preferred_element_type=jnp.float32)  # every tap at every pixel
    for dy in range(3):
        for dx in range(3):
            out = out + z[dy : dy + hh, dx : dx + ww, 3 * dy + dx]
    return out


def _single_channel_conv_fwd(h, kernel):
    return single_channel_conv(h, kernel), (h, kernel)


def _single_channel_conv_bwd(res, g):
    h, kernel = res
    hh, ww, _ = h.shape
    k = kernel.astype(jnp.float32)
    # g padded once and kept (small: no channels), so the pass below reads shifted views of it
    gp = lax.optimization_barrier(jnp.pad(g, 1))
    dh = None
    for i in reversed(range(9)):  # JAX's backward pass adds the taps' cotangents last tap first
        dy, dx = divmod(i, 3)
        c = gp[2 - dy : 2 - dy + hh, 2 - dx : 2 - dx + ww, None] * k[dy, dx]
        dh = c if dh is None else dh + c
    hp = jnp.pad(h, ((1, 1), (1, 1), (0, 0))).astype(jnp.float32)
    dk = jnp.stack([jnp.einsum("yx,yxc->c", g, hp[dy : dy + hh, dx : dx + ww]) for dy in range(3) for dx in range(3)])
    return dh.astype(h.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


single_channel_conv.defvjp(_single_channel_conv_fwd, _single_channel_conv_bwd)


def channel_preact(params: dict, x: jax.Array, layer: str, f, spec: VGGSpec = VGG16, precision: str = "float32",
                   conv: str = "auto") -> jax.Array:
    """Channel ``f`` of conv ``layer`` before its relu, for one unbatched image ``x`` -> (h, w)."""
    names = [l.name for l in layers(spec)]
    i = names.index(layer)
    h = x if i == 0 else _forward(params, x, (names[i - 1],), spec, ops.conv_for(precision, algorithm=conv))[names[i - 1]]
    kernel = ops.raw(params[layer]["kernel"])[..., f]
    if precision == "bfloat16" and kernel.shape[-1] >= ops.BF16_MIN_IN_CHANNELS:
        h, kernel = h.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return single_channel_conv(h, kernel) + params[layer]["bias"][f]


def _has_top(params: dict) -> bool:
    return all(name in params for name in TOP_LAYERS)


def _layer_table(spec: VGGSpec, top: bool, size: int) -> tuple[LayerInfo, ...]:
    out, s = [], size
    for l in layers(spec):
        if l.kind == "pool":
            s //= 2
        out.append(LayerInfo(l.name, (s, s, l.out_channels)))
    if top:
        out += [LayerInfo(n, (w,)) for n, w in zip(TOP_LAYERS[:-1], spec.fc)]
        out += [LayerInfo(LOGITS, (spec.classes,)), LayerInfo(TOP_LAYERS[-1], (spec.classes,))]
    return tuple(out)


def _forward(params: dict, x: jax.Array, names: tuple[str, ...], spec: VGGSpec, conv) -> dict:
    """The named layers' outputs for one image, stopping after the deepest one."""
    wanted, out = set(names), {}
    h = x[None]
    ls = layers(spec)
    pooled = False  # the pool made with the conv before it (one fused call, ops.conv_bias_relu)
    x_bias = None  # the bias of the conv before, its relu left to this one (its own conv has no fused form)
    for i, l in enumerate(ls):
        if not wanted - out.keys():
            return out
        if l.kind == "conv":
            p = params[l.name]
            then_conv = l.name not in wanted and i + 1 < len(ls) and ls[i + 1].kind == "conv"
            if then_conv and x_bias is None and not ops.runs_fused(conv, h, p["kernel"]):
                h, x_bias = conv(h, p["kernel"]), p["bias"]
                continue
            pooled = l.name not in wanted and i + 1 < len(ls) and ls[i + 1].kind == "pool"
            h = ops.conv_bias_relu(conv, h, p["kernel"], p["bias"], pool=pooled, x_bias=x_bias)
            x_bias = None
        elif not pooled:
            h = max_pool2(h)
        if l.name in wanted:
            out[l.name] = h[0]
    if not wanted - out.keys():
        return out
    h = h.reshape(-1)  # NHWC flatten, as Keras' Flatten does
    for name in TOP_LAYERS[:-1]:
        h = jax.nn.relu(h @ params[name]["kernel"] + params[name]["bias"])
        out[name] = h
    logits = h @ params[TOP_LAYERS[-1]]["kernel"] + params[TOP_LAYERS[-1]]["bias"]
    out[LOGITS], out[TOP_LAYERS[-1]] = logits, jax.nn.softmax(logits)
    return out


@functools.lru_cache(maxsize=None)
def _functions(spec: VGGSpec, precision: str, conv: str, convs: tuple):
    """The model's functions for one setting, made once, so that equal settings share compiles
    (``convs``: ``ops.choice`` for the setting, which can change with the environment)."""
    kinds = {l.name: l for l in layers(spec)}
    conv_fn = ops.conv_for(precision, algorithm=conv)

    def activations(p, x, names):
        return _forward(p, x, tuple(names), spec, conv_fn)

    def preact(p, x, layer, f):
        if layer not in kinds or kinds[layer].kind != "conv":
            return None
        return channel_preact(p, x, layer, f, spec, precision, conv)

    def min_size(layer):
        if layer in kinds:
            l = kinds[layer]
            return 2 ** (l.pools_before + (1 if l.kind == "pool" else 0))
        return spec.top_input

    def chunk(layer, size, n, max_bytes):
        from jaxviz.ascent import chunk_size

        return chunk_size(layer if layer in kinds else layers(spec)[-1].name, size, n, max_bytes, spec)

    winograd = {l.name for l in layers(spec) if l.kind == "conv" and ops.uses_winograd(precision, conv, l.in_channels)}
    dtype = ops.winograd_dtype(precision, conv)

    def prepare(p):
        """The Winograd transforms of the layers that run Winograd, made once (ops.Prepared, in
        the type its matmuls take); under jit, those of layers an objective never reaches are
        dropped as dead code."""
        return {k: ({**v, "kernel": ops.prepare(v["kernel"], dtype)} if k in winograd else v) for k, v in p.items()}

    return activations, preact, min_size, chunk, (prepare if winograd else None)


def vgg(params: dict | None = None, spec: VGGSpec | None = None, *, weights: str | os.PathLike | None = None,
        precision: str = "float32", conv: str = "auto") -> Model:
    """A VGG Model from a params pytree (``jaxviz.load_params``) or a Keras h5 file.

    ``precision`` ("float32" or "bfloat16") and ``conv`` ("auto", "winograd", "xla")
    choose the convolutions (``jaxviz.ops``); the defaults reproduce the book.

    >>> m = vgg()                        # the embedded VGG16 ImageNet weights
    >>> m.layer("block3_conv1").shape
    (56, 56, 256)
    """
    if why := ops.why_not(precision, conv):
        raise JaxvizError(why)
    if params is None:
        from jaxviz.api import load_params

        params = load_params(weights)
    from jaxviz.checks import params_for
    from jaxviz.convert import detect_spec
    from jaxviz.model import conv_layers

    params_for(params, "block1_conv1", ("block1_conv1",))
    found = detect_spec([k for k in params if k.startswith("block") and "conv" in k])
    if spec is not None and check_spec(spec).blocks != found.blocks:
        raise JaxvizError(f"these weights are {found.name}'s, not {spec.name}'s; choose the model that matches them")
    spec = spec or found
    params_for(params, conv_layers(spec)[-1], conv_layers(spec))
    for name in conv_layers(spec):  # integer weights gave every filter a zero gradient, silently
        kind = getattr(params[name]["kernel"], "dtype", None)
        if kind is not None and not jnp.issubdtype(kind, jnp.floating):
            raise JaxvizError(f"the weights of {name} are {kind}, not floating point; load them with "
                              "jaxviz.load_params() (dtype jnp.float32 or jnp.bfloat16)")
    activations, preact, min_size, chunk, prepare = _functions(spec, precision, conv, ops.choice(precision, conv))
    table = _layer_table(spec, _has_top(params), spec.top_input)
    return Model(spec.name, params, activations, table, preprocess, min_size, spec.top_input, preact, chunk, prepare)


def vgg16(weights: str | os.PathLike | None = None, **kw) -> Model:
    """VGG16 with the embedded ImageNet weights (or ``weights``, a Keras h5 file)."""
    return vgg(None, VGG16, weights=weights, **kw)


def vgg19(weights: str | os.PathLike | None = None, **kw) -> Model:
    """VGG19 from a Keras h5 file (``weights``; only VGG16's weights ship with jaxviz)."""
    if weights is None:
        raise JaxvizError("VGG19 needs its weights: give a Keras VGG19 h5 file (--weights FILE); "
                          "only VGG16's ship with jaxviz")
    return vgg(None, VGG19, weights=weights, **kw)
