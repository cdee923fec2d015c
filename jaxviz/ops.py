"""Convolutions for the ascent: fast input gradients on XLA:CPU, optional bf16.

Only gradients with respect to the *input image* are ever needed, so each conv here
is a ``jax.custom_vjp`` whose backward pass is an ordinary forward convolution of
the cotangent with the kernel flipped spatially and its in/out channels swapped.
XLA:CPU lowers the automatic transpose of ``conv_general_dilated`` to a much slower
kernel (measured about 3x at block3_conv1). The kernel's cotangent is reported as
zero: these convs must not be used to train weights.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

Conv = Callable[[jax.Array, jax.Array], jax.Array]


def conv3x3_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME conv, NHWC x HWIO, through XLA's convolution."""
    return lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv3x3_rows(x: jax.Array, kernel: jax.Array, dtype=jnp.bfloat16) -> jax.Array:
    """3x3 SAME conv as three row-shifted 1x3 im2col matmuls.

    Inputs are cast to ``dtype`` (bf16 uses AMX on this CPU) and accumulated in
    float32 (``preferred_element_type``); the result is float32.
    """
    n, h, w, c = x.shape
    xp = jnp.pad(x.astype(dtype), ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = kernel.astype(dtype)
    out = None
    for dy in range(3):
        rows = xp[:, dy : dy + h]
        patches = jnp.concatenate([rows[:, :, dx : dx + w] for dx in range(3)], axis=-1)
        y = lax.dot_general(
            patches,
            k[dy].reshape(3 * c, -1),
            (((3,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        out = y if out is None else out + y
    return out


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


conv_f32 = with_input_vjp(conv3x3_xla)
conv_bf16_rows = with_input_vjp(conv3x3_rows)


def conv_for(precision: str, out_channels: int) -> Conv:
    """The conv used for a layer at a precision ("float32" or "bfloat16")."""
    if precision == "float32":
        return conv_f32
    if precision == "bfloat16":
        return conv_bf16_rows
    raise ValueError(f"precision must be 'float32' or 'bfloat16', not {precision!r}")
