"""Convolutions for the ascent: fast input gradients on XLA:CPU, optional bf16.

Only gradients with respect to the *input image* are ever needed, so each conv here
is a ``jax.custom_vjp`` whose backward pass is an ordinary forward convolution of
the cotangent with the kernel flipped spatially and its in/out channels swapped.
XLA:CPU lowers the automatic transpose of ``conv_general_dilated`` to a much slower
kernel (measured about 3x at block3_conv1). The kernel's cotangent is reported as
zero: these convs must not be used to train weights.

All convs are 3x3, stride 1, SAME, NHWC input, HWIO kernel, float32 output. Several
formulations of the same conv are provided; ``conv_for`` picks the one measured
fastest (bench/engine/variants.py) for a precision and a kernel shape:

* ``conv3x3_xla``: XLA's own convolution.
* ``conv3x3_gemm(..., taps=...)``: the conv as matmuls (``dot_general``) over
  shifted views of the zero-padded input, with inputs cast to ``dtype`` and float32
  accumulation (``preferred_element_type``):
  ``"full"`` one im2col matmul with K = 9 C; ``"rows"`` three row-shifted 1x3 im2col
  matmuls with K = 3 C; ``"taps"`` nine matmuls with K = C, no im2col copy.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Conv = Callable[[jax.Array, jax.Array], jax.Array]

PRECISIONS = ("float32", "bfloat16")

# Layers with fewer input channels than this stay in float32 in "bfloat16" mode:
# block1_conv1 sees raw pixels (~128 +- 10), where bf16's 8-bit mantissa rounds the
# start noise away, and the small layers are cheap anyway.
BF16_MIN_IN_CHANNELS = 128


def conv3x3_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME conv, NHWC x HWIO, through XLA's convolution (float32 result)."""
    y = lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32 if x.dtype != jnp.float32 else None,
    )
    return y.astype(jnp.float32)


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """(..., K) x (K, O) -> (..., O), accumulated in float32."""
    return lax.dot_general(
        a, b, (((a.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )


def conv3x3_gemm(x: jax.Array, kernel: jax.Array, *, taps: str = "rows", dtype=jnp.float32) -> jax.Array:
    """3x3 SAME conv as matmuls over shifted views of the padded input (see module doc)."""
    n, h, w, c = x.shape
    o = kernel.shape[-1]
    xp = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = kernel.astype(dtype)
    if taps == "full":
        patches = jnp.concatenate(
            [xp[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=-1
        )
        return _dot(patches, k.reshape(9 * c, o))
    out = None
    for dy in range(3):
        if taps == "rows":
            rows = xp[:, dy : dy + h]
            patches = jnp.concatenate([rows[:, :, dx : dx + w] for dx in range(3)], axis=-1)
            terms = [_dot(patches, k[dy].reshape(3 * c, o))]
        elif taps == "taps":
            terms = [_dot(xp[:, dy : dy + h, dx : dx + w], k[dy, dx]) for dx in range(3)]
        else:
            raise ValueError(f"taps must be 'full', 'rows' or 'taps', not {taps!r}")
        for y in terms:
            out = y if out is None else out + y
    return out


def conv3x3_rows(x: jax.Array, kernel: jax.Array, dtype=jnp.bfloat16) -> jax.Array:
    """3x3 SAME conv as three row-shifted 1x3 im2col matmuls (inputs cast to ``dtype``)."""
    return conv3x3_gemm(x, kernel, taps="rows", dtype=dtype)


def _flip(kernel: jax.Array) -> jax.Array:
    """The kernel whose forward conv is the input gradient of ``kernel``'s conv."""
    return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)


def with_input_vjp(conv: Conv) -> Conv:
    """``conv`` with its input gradient computed by ``conv`` itself on a flipped kernel."""

    @jax.custom_vjp
    def f(x, kernel):
        return conv(x, kernel)

    def fwd(x, kernel):
        return conv(x, kernel), kernel

    def bwd(kernel, g):
        return conv(g, _flip(kernel)).astype(g.dtype), None

    f.defvjp(fwd, bwd)
    return f


# Every formulation with the fast input gradient, by name (the benchmark's variants).
VARIANTS: dict[str, Conv] = {
    "xla": with_input_vjp(conv3x3_xla),
    "xla_bf16": with_input_vjp(lambda x, k: conv3x3_xla(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16))),
}
for _taps in ("full", "rows", "taps"):
    VARIANTS[f"{_taps}_f32"] = with_input_vjp(partial(conv3x3_gemm, taps=_taps, dtype=jnp.float32))
    VARIANTS[f"{_taps}_bf16"] = with_input_vjp(partial(conv3x3_gemm, taps=_taps, dtype=jnp.bfloat16))

conv_f32 = VARIANTS["xla"]
conv_bf16_rows = VARIANTS["rows_bf16"]



def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AMX-bf16 or AVX512-bf16)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


# The choice per precision: (variant for small layers, variant for layers with at
# least BF16_MIN_IN_CHANNELS input channels). From bench/engine/variants.py:
# in float32 XLA's conv (with the flipped-kernel input gradient) beat every matmul
# formulation by 1.4-2.5x. In bfloat16 the row-shifted bf16 GEMMs pay only where the
# CPU has native bf16 (AMX: docs notes/cpu-speed.md); elsewhere (e.g. AVX2-only
# hosts) XLA's conv on bf16 inputs with f32 accumulation is the fastest bf16 form,
# about as fast as float32.
CHOICE = {
    "float32": ("xla", "xla"),
    "bfloat16": ("xla", "rows_bf16" if native_bf16() else "xla_bf16"),
}


def dispatch(small: str, large: str, min_in_channels: int | None = None) -> Conv:
    """A conv that picks a variant from the kernel's static input-channel count.

    ``min_in_channels`` defaults to ``BF16_MIN_IN_CHANNELS`` as read at trace time.
    """
    a, b = VARIANTS[small], VARIANTS[large]
    if a is b:
        return a

    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        m = BF16_MIN_IN_CHANNELS if min_in_channels is None else min_in_channels
        return (b if kernel.shape[2] >= m else a)(x, kernel)

    return conv


_CONVS: dict[str, Conv] = {}


def conv_for(precision: str, out_channels: int = 0) -> Conv:
    """The conv for a precision ("float32" or "bfloat16"); it dispatches per layer shape.

    ``out_channels`` is accepted for compatibility and ignored: the returned callable
    chooses per call from the kernel's static shape.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'float32' or 'bfloat16', not {precision!r}")
    key = (precision, CHOICE[precision])
    if key not in _CONVS:
        _CONVS[key] = dispatch(*CHOICE[precision])
    return _CONVS[key]
