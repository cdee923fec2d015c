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
* ``conv3x3_winograd(..., m=2|4)``: Winograd's minimal filtering F(m x m, 3 x 3),
  (m+2)^2 batched matmuls on transformed tiles: 2.25x (m=2) or 4x (m=4) fewer
  multiplies than the direct conv, in float32, with rounding of the same order as
  the direct conv's (tests/test_ops.py). The default in float32 on CPU. Where oneDNN
  runs, F(4x4, 3x3) on CPU is one custom call (``onednn.winograd4``: the tile transforms
  in C++, in cache-sized blocks of tiles, the matmuls in oneDNN's matmul) that runs the
  XLA form's operations in the same order (``_bt4``, ``_at4``), so the same bits
  (bench/README.md, "Winograd in one custom call"). ``wino4_bf16``: the same with its
  transformed tiles and kernels rounded to bfloat16 (float32 sums): the bfloat16 mode on
  CPUs with AVX512-bf16 but no AMX.
* ``onednn``, ``onednn_bf16``: oneDNN's conv (``jaxviz.onednn``, a custom call; on
  float32 or bf16 inputs, float32 output), where it runs: the default of the
  bfloat16 mode on CPUs with AMX. ``onednn`` runs convs with at most
  ``FEW_OUT_CHANNELS`` outputs (the colour layer's input gradient) as
  ``conv3x3_few_out``: one matmul to the nine taps' outputs and their shifted sum.

A whole conv layer, ``relu(conv + bias)`` and the 2x2 max pool after it where there is one, is
``conv_bias_relu``: on Winograd where oneDNN runs, one custom call forward and one for the
input gradient (``winograd4_bias_relu``), so that XLA makes no pass of its own over the layer's
output; the same bits as the ops apart. A pooled layer's own output is never written: its
gradient needs only the pool's hits (``pool_hits``), a byte per pooled value. A layer whose
conv has no such call (the colour layer's, oneDNN's direct conv) leaves its bias and relu to
the next layer's call (``x_bias``), which makes them, and their gradient, as it reads its input
and writes its input gradient.

A ``Prepared`` kernel carries its F(4x4, 3x3) transforms (forward and input gradient)
made once ahead (``prepare``; the VGG model's ``Model.prepare``): the ascent's step
loop then never repeats them. Every variant accepts one in place of a kernel.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxviz import onednn
from jaxviz.model import quarters, max_pool2

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


# Convs with at most this many output channels run as ``conv3x3_few_out``: the colour
# layer's input gradient (64 -> 3), where oneDNN's direct conv ran at 38 GFLOP/s.
FEW_OUT_CHANNELS = 4


def conv3x3_few_out(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 SAME conv with few output channels as one matmul, every pixel times the nine taps'
    kernels side by side (C -> 9 O columns), then the taps' shifted sum: 16 images of 64 px,
    64 -> 3, in 0.47x the time of oneDNN's conv on an AVX2 Zen 3 (bench/README.md). Each tap
    padded on its own, so that XLA fuses pads and sum in one pass (padding all nine at once wrote
    them out whole first: 1.13-1.17x this conv's time on a Zen 5); the same sums either way."""
    n, h, w, c = x.shape
    o = kernel.shape[-1]
    z = _dot(x.astype(jnp.float32), jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, 9 * o).astype(jnp.float32))
    z = z.reshape(n, h, w, 9, o)
    out = None
    for dy in range(3):
        for dx in range(3):
            t = jnp.pad(z[..., 3 * dy + dx, :], ((0, 0), (1, 1), (1, 1), (0, 0)))[:, dy : dy + h, dx : dx + w]
            out = t if out is None else out + t
    return out


def conv3x3_rows(x: jax.Array, kernel: jax.Array, dtype=jnp.bfloat16) -> jax.Array:
    """3x3 SAME conv as three row-shifted 1x3 im2col matmuls (inputs cast to ``dtype``)."""
    return conv3x3_gemm(x, kernel, taps="rows", dtype=dtype)


# Winograd minimal filtering F(m x m, 3 x 3) (Lavin & Gray 2015, "Fast Algorithms for
# Convolutional Neural Networks", arXiv:1509.09308): each m x m output tile comes from an
# (m+2) x (m+2) input tile with (m+2)^2 multiplies per channel pair instead of 9 m^2.
# Y = A^T [ (G g G^T) * (B^T d B) ] A, a cross-correlation as in deep-learning convs.
WINOGRAD = {
    2: (
        ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),  # B^T
        ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),  # G
        ((1, 1, 1, 0), (0, 1, -1, -1)),  # A^T
    ),
    4: (
        ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
         (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
        ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
         (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
        ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
    ),
}


def _combine(coeffs, terms):
    """sum_i coeffs[i] * terms[i], skipping zeros (unrolled: XLA fuses it)."""
    out = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        t = t if c == 1 else (-t if c == -1 else c * t)
        out = t if out is None else out + t
    return out


def _bt4(d):
    """B^T d for F(4x4, 3x3): the six rows of ``WINOGRAD[4][0]`` with shared terms.

    17 adds and multiplies instead of 27 (products by 2 and 4 are exact);
    native/onednn_conv.cc runs the same operations in the same order, for the same bits.
    """
    e, t3 = d[3] - d[1], d[4] - d[2]
    t1, t2, t4 = d[4] - 4 * d[2], d[3] - 4 * d[1], 2 * e
    return [4 * (d[0] - d[2]) + t3, t1 + t2, t1 - t2, t3 + t4, t3 - t4, (d[5] - d[3]) - 4 * e]


def _at4(m):
    """A^T m for F(4x4, 3x3): the four rows of ``WINOGRAD[4][2]`` with shared terms (13 operations, not 20)."""
    a, b, c, d = m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]
    return [(m[0] + a) + c, b + 2 * d, a + 4 * c, (b + 8 * d) + m[5]]


def _tile_transforms(m: int):
    """B^T and A^T of F(m x m, 3 x 3) as functions of a list of terms: F(4x4, 3x3)'s with shared terms."""
    if m == 4:
        return _bt4, _at4
    bt, _, at = WINOGRAD[m]
    return (lambda t: [_combine(row, t) for row in bt]), (lambda t: [_combine(row, t) for row in at])


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def winograd_kernel(kernel: jax.Array, m: int = 2) -> jax.Array:
    """The transformed kernel G g G^T, shape ((m+2)^2, C, O), float32: one einsum (HIGHEST
    precision); where oneDNN's handlers run, on CPU, a custom call that makes each sum as XLA's
    dot did for the einsum on a Zen 5 (the same bits there), as those dots took about 50 ms for
    a 512 x 512 kernel, paid by every compiled call that prepares one (bench/README.md)."""
    g, kernel = _g(m), kernel.astype(jnp.float32)
    if onednn.available():
        return lax.platform_dependent(g, kernel, cpu=onednn.winograd_kernel, default=_winograd_kernel_xla)
    return _winograd_kernel_xla(g, kernel)


def _g(m: int) -> jax.Array:
    return jnp.asarray(WINOGRAD[m][1], jnp.float32)


def _winograd_kernel_xla(g, kernel):
    u = jnp.einsum("pi,ijco,qj->pqco", g, kernel, g, precision=lax.Precision.HIGHEST)
    return u.reshape(-1, *kernel.shape[2:])


@winograd_kernel.defjvp
def _winograd_kernel_jvp(m, primals, tangents):
    return winograd_kernel(primals[0], m), _winograd_kernel_xla(_g(m), tangents[0].astype(jnp.float32))


def conv3x3_winograd(x: jax.Array, kernel: jax.Array, m: int = 2) -> jax.Array:
    """3x3 SAME conv by Winograd F(m x m, 3 x 3): (m+2)^2 batched matmuls, float32.

    ``kernel`` may be ``Prepared`` (its transform made ahead, m = 4 only). Where oneDNN
    runs, F(4x4, 3x3) on CPU is one custom call (``onednn.winograd4``: the tile transforms
    in C++, the matmuls in oneDNN) with the same sums in the same order as the XLA form
    here, so the same bits; elsewhere (and for m = 2) the XLA form runs.
    """
    if isinstance(kernel, Prepared):
        if m != 4:
            raise ValueError("a Prepared kernel holds the F(4x4, 3x3) transform only")
        u = kernel.u
    else:
        u = winograd_kernel(kernel, m)
    if m == 4 and onednn.winograd_runs(u.dtype):
        return lax.platform_dependent(x, u, cpu=_winograd4_onednn, default=partial(_winograd_xla, m=m))
    return _winograd_xla(x, u, m)


@jax.custom_vjp
def _winograd4_onednn(x: jax.Array, u: jax.Array) -> jax.Array:
    return onednn.winograd4(x, u)


def _winograd4_onednn_fwd(x, u):
    return onednn.winograd4(x, u), (x, u)


def _winograd4_onednn_bwd(res, g):
    # the XLA form's gradients (the same function): only for direct use, the ascent's convs
    # take their input gradient from with_input_vjp
    return jax.vjp(partial(_winograd_xla, m=4), *res)[1](g)


_winograd4_onednn.defvjp(_winograd4_onednn_fwd, _winograd4_onednn_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def winograd4_bias_relu(x: jax.Array, kernel, bias: jax.Array, pool: bool = False,
                        x_bias: jax.Array | None = None) -> jax.Array:
    """``relu(conv3x3_winograd(x, kernel, 4) + bias)``, a conv layer, with its input gradient;
    with ``pool``, the 2x2 max pool after it (``model.max_pool2``) too; with ``x_bias``, the
    layer's input is ``relu(x + x_bias)`` (the layer before, without its bias and relu).

    Where oneDNN runs, on CPU, forward and input gradient are one custom call each: bias, relu
    and pool made as the output transform writes the conv, the pool's and relu's gradients as the
    input transform reads the cotangent (``onednn.winograd4_bias_relu``,
    ``onednn.winograd4_relu_grad``, ``onednn.winograd4_pool_grad``), the input's relu and its
    gradient as the transforms read and write, so XLA makes no pass of its own over the layer's
    output or input either way; the same bits as the ops apart. The gradient keeps bytes, not the
    forward's floats: the pool's hits or the relu's mask in place of the layer's output, the input
    relu's mask in place of ``x``. The kernel's cotangent is zero, as in ``with_input_vjp``.
    """
    return _bias_relu_fwd(x, kernel, bias, pool, x_bias)[0]


def _u(kernel) -> jax.Array:
    return kernel.u if isinstance(kernel, Prepared) else winograd_kernel(kernel, 4)


def pool_hits(y: jax.Array) -> jax.Array:
    """The hits of ``model.max_pool2(y)`` on a relu's output ``y``: uint8, (N, H/2, W/2, C), bit
    k set where the window's k-th pixel (row-major) is its maximum and that maximum is positive.
    All the gradient of relu then pool needs (``relu_pool_grad``), a sixteenth of ``y``'s bytes."""
    top = max_pool2(y)
    bits = [((q == top) & (top > 0)).astype(jnp.uint8) << k for k, q in enumerate(quarters(y))]
    return (bits[0] | bits[1]) | (bits[2] | bits[3])


def relu_pool_grad(hits: jax.Array, g: jax.Array, size: tuple[int, int]) -> jax.Array:
    """The gradient of relu then ``model.max_pool2`` from the pool's cotangent ``g`` and hits
    (``pool_hits``), for an output of ``size`` (H, W): a window's cotangent split equally between
    its maxima, g / count at each hit, else 0 (odd edges 0), as XLA's ops give it."""
    n, h2, w2, c = g.shape
    bits = [(hits >> k) & 1 for k in range(4)]
    share = g / ((bits[0] + bits[1]) + (bits[2] + bits[3])).astype(g.dtype)
    q = [jnp.where(b > 0, share, 0) for b in bits]
    rows = [jnp.stack(pair, axis=3).reshape(n, h2, 2 * w2, c) for pair in (q[:2], q[2:])]
    gx = jnp.stack(rows, axis=2).reshape(n, 2 * h2, 2 * w2, c)
    return jnp.pad(gx, ((0, 0), (0, size[0] - 2 * h2), (0, size[1] - 2 * w2), (0, 0)))


def _bias_relu_fwd(x, kernel, bias, pool, x_bias):
    def unfused(x, u, b, *x_bias):
        pre = x + x_bias[0] if x_bias else x
        y = jax.nn.relu(_winograd_xla(jax.nn.relu(pre) if x_bias else pre, u, 4) + b)
        out = (max_pool2(y), pool_hits(y)) if pool else (y, (y > 0).astype(jnp.uint8))
        return out + ((pre > 0).astype(jnp.uint8),) if x_bias else out

    fused = lambda x, u, b, *xb: onednn.winograd4_bias_relu(x, u, b, pool, *xb)
    args = (x.astype(jnp.float32), _u(kernel), bias.astype(jnp.float32))
    args += () if x_bias is None else (x_bias.astype(jnp.float32),)
    runs = onednn.winograd_runs(args[1].dtype)
    out = lax.platform_dependent(*args, cpu=fused, default=unfused) if runs else unfused(*args)
    # kept for the gradient, as bytes: the pool's hits, or the relu's mask, not the layer's output;
    # the input relu's mask, not x; x's height and width in an array of no elements
    keep = out[2] if x_bias is not None else None
    return out[0], (out[1], keep, x[..., :0], kernel, x_bias)


def _bias_relu_bwd(pool, res, g):
    saved, keep, hw, kernel, x_bias = res  # saved: the pool's hits, or the relu's mask
    u = _u(_flip(kernel))
    size = hw.shape[-3:-1]

    grad_out = lambda saved, g: relu_pool_grad(saved, g, size) if pool else jnp.where(saved > 0, g, 0)

    def unfused(saved, g, u, *keep):
        gx = _winograd_xla(grad_out(saved, g), u, 4)
        return jnp.where(keep[0] > 0, gx, 0) if keep else gx

    fused = partial(onednn.winograd4_pool_grad, size=size) if pool else onednn.winograd4_relu_grad
    args = (saved, g, u) + (() if keep is None else (keep,))
    gx = lax.platform_dependent(*args, cpu=fused, default=unfused) if onednn.winograd_runs(u.dtype) else unfused(*args)
    # the biases' cotangents: dead code unless asked for
    gb = jnp.sum(grad_out(saved, g), axis=tuple(range(g.ndim - 1)))
    gxb = None if x_bias is None else jnp.sum(gx, axis=tuple(range(gx.ndim - 1))).astype(x_bias.dtype)
    return gx.astype(g.dtype), None, gb.astype(g.dtype), gxb


winograd4_bias_relu.defvjp(_bias_relu_fwd, _bias_relu_bwd)


def conv_bias_relu(conv: Conv, x: jax.Array, kernel, bias: jax.Array, pool: bool = False,
                   x_bias: jax.Array | None = None) -> jax.Array:
    """``relu(conv(x, kernel) + bias)``, a conv layer, then with ``pool`` the 2x2 max pool
    after it (``model.max_pool2``): in one fused call where ``conv`` has one for this kernel
    (its ``bias_relu`` attribute: ``winograd4_bias_relu``). With ``x_bias``, the layer's input
    is ``relu(x + x_bias)``: the layer before's bias and relu, left to this one (``runs_fused``)."""
    fused = getattr(conv, "bias_relu", None)
    if fused is not None:
        return fused(x, kernel, bias, pool, x_bias)
    if x_bias is not None:
        x = jax.nn.relu(x + x_bias)
    y = jax.nn.relu(conv(x, kernel) + bias)
    return max_pool2(y) if pool else y


def runs_fused(conv: Conv, x: jax.Array, kernel) -> bool:
    """Whether ``conv``'s layer (``conv_bias_relu``) runs as one fused call for this input and
    kernel; where it does not, the layer's bias and relu may be left to the next layer's."""
    while (pick := getattr(conv, "variant", None)) is not None:
        conv = pick(x, kernel)
    return getattr(conv, "bias_relu", None) is not None


def _winograd_xla(x: jax.Array, u: jax.Array, m: int) -> jax.Array:
    """Winograd F(m x m, 3 x 3) with the transformed kernel ``u`` in XLA's ops (oneDNN's
    matmul on CPU where it runs)."""
    bt, at = _tile_transforms(m)
    a = m + 2
    n, h, w, c = x.shape
    o = u.shape[-1]
    th, tw = -(-h // m), -(-w // m)
    # Tiles start every m pixels: with rows and columns folded as (tile, m), the i-th
    # row of every tile is a plain slice (strided slices ran slower on XLA:CPU).
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (1, (th + 1) * m - h - 1), (1, (tw + 1) * m - w - 1), (0, 0)))
    xr = xp.reshape(n, th + 1, m, (tw + 1) * m, c)
    rows = [xr[:, i // m : i // m + th, i % m] for i in range(a)]  # (n, th, W, c)
    r = jnp.stack(bt(rows)).reshape(a, n, th, tw + 1, m, c)
    cols = [r[:, :, :, j // m : j // m + tw, j % m] for j in range(a)]  # (a, n, th, tw, c)
    v = jnp.stack(bt(cols), axis=1)  # (a, a, n, th, tw, c)
    v = v.reshape(a * a, n * th * tw, c)
    xla_mm = lambda v, u: lax.dot_general(v.astype(u.dtype), u, (((2,), (1,)), ((0,), (0,))),
                                          preferred_element_type=jnp.float32)
    # oneDNN's matmul on CPU where it runs (a CPU custom call), XLA's elsewhere and for bfloat16
    # transforms (bfloat16 inputs, float32 sums)
    if onednn.available() and u.dtype == jnp.float32:
        mm = lax.platform_dependent(v, u, cpu=onednn.batched_matmul, default=xla_mm)
    else:
        mm = xla_mm(v, u)
    mm = mm.reshape(a, a, n, th, tw, o)
    # the output transform, written straight into (n, th, m, tw, m, o): no transpose
    s_ = at([mm[p] for p in range(a)])  # (a, n, th, tw, o) each
    y = jnp.stack([jnp.stack(at([su[q] for q in range(a)]), axis=3) for su in s_], axis=2)
    y = y.reshape(n, th * m, tw * m, o)
    return y[:, :h, :w]


class Prepared(NamedTuple):
    """A kernel with its Winograd F(4x4, 3x3) transforms made ahead (``prepare``).

    The ascent runs one kernel for all its steps: transformed once per compiled call,
    outside the step loop, instead of twice a step (XLA does not hoist the transform out
    of the loop by itself: it grows the array 9 -> 36 taps). Every conv here accepts a
    ``Prepared`` wherever it accepts a kernel; the non-Winograd ones use ``kernel``.
    """

    kernel: jax.Array
    u: jax.Array  # winograd_kernel(kernel, 4)
    u_flip: jax.Array  # winograd_kernel(_flip(kernel), 4): the input gradient's

    @property
    def shape(self) -> tuple[int, ...]:
        return self.kernel.shape


def prepare(kernel: jax.Array, dtype=jnp.float32) -> Prepared:
    """``kernel`` with its Winograd transforms (forward and input gradient) made now, in
    ``dtype`` (bfloat16: the matmul inputs of ``wino4_bf16``)."""
    return Prepared(kernel, winograd_kernel(kernel, 4).astype(dtype), winograd_kernel(_flip(kernel), 4).astype(dtype))


def _bf16_winograd(kernel) -> Prepared:
    """``kernel``'s transforms in bfloat16 (made now unless ``Prepared`` so ahead)."""
    if isinstance(kernel, Prepared) and kernel.u.dtype == jnp.bfloat16:
        return kernel
    return prepare(raw(kernel), jnp.bfloat16)


def raw(kernel) -> jax.Array:
    """The plain HWIO kernel of a kernel or a ``Prepared`` one."""
    return kernel.kernel if isinstance(kernel, Prepared) else kernel


def _flip(kernel):
    """The kernel whose forward conv is the input gradient of ``kernel``'s conv."""
    if isinstance(kernel, Prepared):
        return Prepared(_flip(kernel.kernel), kernel.u_flip, kernel.u)
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


def _plain(conv: Conv) -> Conv:
    """``conv`` taking a ``Prepared`` kernel too (it uses the plain kernel)."""
    return lambda x, kernel: conv(x, raw(kernel))


# Every formulation with the fast input gradient, by name (the benchmark's variants).
VARIANTS: dict[str, Conv] = {
    "xla": _plain(with_input_vjp(conv3x3_xla)),
    "xla_bf16": _plain(with_input_vjp(lambda x, k: conv3x3_xla(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)))),
}
for _taps in ("full", "rows", "taps"):
    VARIANTS[f"{_taps}_f32"] = _plain(with_input_vjp(partial(conv3x3_gemm, taps=_taps, dtype=jnp.float32)))
    VARIANTS[f"{_taps}_bf16"] = _plain(with_input_vjp(partial(conv3x3_gemm, taps=_taps, dtype=jnp.bfloat16)))

VARIANTS["wino2"] = _plain(with_input_vjp(partial(conv3x3_winograd, m=2)))
VARIANTS["wino4"] = with_input_vjp(partial(conv3x3_winograd, m=4))
VARIANTS["wino4"].bias_relu = winograd4_bias_relu
# Winograd with bfloat16 matmul inputs (the transformed tiles and kernels rounded to bfloat16,
# float32 sums), the rest float32: the bfloat16 mode on CPUs with AVX512-bf16 but no AMX.
VARIANTS["wino4_bf16"] = lambda x, kernel: VARIANTS["wino4"](x, _bf16_winograd(kernel))
VARIANTS["wino4_bf16"].bias_relu = lambda x, kernel, *a: winograd4_bias_relu(x, _bf16_winograd(kernel), *a)
VARIANTS["onednn"] = _plain(with_input_vjp(  # and the colour layer's input gradient as one matmul
    lambda x, k: conv3x3_few_out(x, k) if k.shape[-1] <= FEW_OUT_CHANNELS else onednn.conv3x3(x.astype(jnp.float32), k)))
VARIANTS["onednn_bf16"] = _plain(with_input_vjp(lambda x, k: onednn.conv3x3(x.astype(jnp.bfloat16), k)))



def planned(default: str) -> Conv:
    """``default``'s conv, or the one this machine's plan (jaxviz.plan) measured faster
    for the layer's shape (read at trace time from the static shapes)."""

    def name(x, kernel) -> str:
        from jaxviz import plan

        return plan.conv_choice(x.shape[1], kernel.shape[2], kernel.shape[3]) or default

    def variant(x: jax.Array, kernel) -> Conv:
        return VARIANTS[name(x, kernel)]

    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return variant(x, kernel)(x, kernel)

    conv.variant = variant
    conv.bias_relu = lambda x, kernel, *a: conv_bias_relu(variant(x, kernel), x, kernel, *a)
    return conv


VARIANTS["planned"] = planned("wino4")

conv_f32 = VARIANTS["xla"]
conv_bf16_rows = VARIANTS["rows_bf16"]

ALGORITHMS = ("auto", "winograd", "xla", "onednn")

# Layers with fewer input channels than this keep XLA's conv under "winograd":
# block1_conv1's three colour channels make Winograd's matmuls (K = 3) all overhead.
WINOGRAD_MIN_IN_CHANNELS = 16


@lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    """The flags every core of this CPU has (``onednn.cpu_signature``), read once: ``choice`` asks
    at every trace."""
    lines = onednn.cpu_signature().decode(errors="replace").splitlines()
    sets = [frozenset(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")]
    return frozenset.intersection(*sets) if sets else frozenset()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AMX-bf16 or AVX512-bf16)."""
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def why_not(precision: str, conv: str) -> str | None:
    """Why ``precision`` with ``conv`` cannot run here, in one line, or None when it can.

    The one check behind ``ops.choice``, ``models.vgg``, ``ascent.validate`` and the CLI."""
    if precision not in PRECISIONS:
        return f"precision must be float32 or bfloat16, not {precision!r}"
    if conv not in ALGORITHMS:
        return f"conv must be one of {', '.join(ALGORITHMS)}, not {conv!r}"
    if conv == "onednn":
        return onednn.why_not(precision)
    return None


def choice(precision: str, algorithm: str = "auto", platform: str | None = None) -> tuple[str, str, int]:
    """(variant for small layers, variant for large ones, input channels where "large" starts).

    Measured with bench/engine/variants.py (bench/README.md, "Engine"): in float32 on
    CPU, Winograd F(4x4, 3x3) with XLA's conv for block1_conv1 ran the grids of
    block2..4_conv1 1.5-1.7x faster than XLA's conv alone (in chunks of 16 filters,
    ascent.CPU_BATCH); XLA's conv in turn beat every im2col-style
    matmul formulation. Where oneDNN runs, its float32 conv takes block1_conv1 (colour
    inputs, too few channels for Winograd): 0.75-0.94x the time of XLA's there, in the
    grids of block2/3_conv1 on an AMX Xeon; and its input gradient (3 outputs) is one
    matmul and a shifted sum (``conv3x3_few_out``; 0.94x the block2_conv1 grid on an AVX2
    Zen 3). On CPU "auto" is Winograd; with a plan (jaxviz.plan,
    opt-in through JAXVIZ_PLAN) it is ``planned``: Winograd unless the plan timed XLA's
    conv faster for the layer's shape (only when built with ``--convs wino4,xla``). Off CPU ("auto") XLA's conv stays (cuDNN picks its own
    algorithm).

    In bfloat16 on a CPU with native bf16 (AMX, AVX512-bf16), where oneDNN runs
    (``jaxviz.onednn``), block1_conv1 runs oneDNN's float32 conv (half the image drift of
    running it in bf16 too) and every other layer, with AMX, oneDNN's bf16 conv (on an AMX Xeon
    0.59 / 0.39 / 0.32x the time of float32 Winograd at block2/3/4_conv1, bench/README.md,
    "oneDNN"); with AVX512-bf16 but no AMX, Winograd with bfloat16 matmul inputs
    (``wino4_bf16``: on a Zen 5 0.62-0.70x the time of oneDNN's bf16 conv and 0.76-0.87x
    float32's, final losses as close to float32's, bench/README.md); ``winograd`` asks for
    that anywhere (XLA's conv for colour inputs; the ops' XLA form where oneDNN has no bf16
    matmul, ``onednn.winograd_runs``, as on AVX2 only). ``onednn`` asks for the same
    in bfloat16 and oneDNN's float32 conv everywhere in float32 (slower than Winograd
    at block3/4 there). Otherwise, in bfloat16 layers with fewer than
    BF16_MIN_IN_CHANNELS inputs stay float32 and get the float32 choice (``winograd``:
    Winograd, XLA's conv for colour inputs); the others run bf16 matmuls: the nine-tap
    bf16 GEMMs (``taps_bf16``) where the CPU has native bf16, else XLA's conv on bf16
    inputs. Neither beats float32 Winograd: XLA upcasts bf16 im2col copies to float32
    and its batched bf16 dots do not reach AMX speeds (bench/README.md).
    """
    on_cpu = (platform or jax.default_backend()) == "cpu"
    if algorithm == "onednn" and not on_cpu:
        raise ValueError("the onednn conv runs on CPU only; use conv auto or xla")
    if why := why_not(precision, algorithm):
        raise ValueError(why)
    onednn_bf16 = ("onednn", "onednn_bf16", WINOGRAD_MIN_IN_CHANNELS)
    if algorithm == "onednn":
        return onednn_bf16 if precision == "bfloat16" else ("onednn", "onednn", 0)
    if precision == "bfloat16":
        if algorithm == "winograd":  # bf16 matmul inputs (oneDNN's call where it has a bf16 matmul, else XLA's dot)
            return ("xla", "wino4_bf16", WINOGRAD_MIN_IN_CHANNELS)
        if not on_cpu:
            return ("xla", "xla_bf16", BF16_MIN_IN_CHANNELS)
        if algorithm == "auto" and native_bf16() and onednn.available():
            if "amx_bf16" in _cpu_flags():
                return onednn_bf16
            return ("onednn", "wino4_bf16", WINOGRAD_MIN_IN_CHANNELS)
        small = "winograd" if algorithm == "auto" else "xla"
        return (small, "taps_bf16" if native_bf16() else "xla_bf16", BF16_MIN_IN_CHANNELS)
    if algorithm == "auto":
        if on_cpu:
            from jaxviz import plan

            small = "onednn" if onednn.available() else "xla"
            return (small, "planned" if plan.cache_path() else "wino4", WINOGRAD_MIN_IN_CHANNELS)
        algorithm = "xla"
    if algorithm == "winograd":
        return ("xla", "wino4", WINOGRAD_MIN_IN_CHANNELS)
    return ("xla", "xla", 0)


def dispatch(small: str, large: str, min_in_channels: int | None = None) -> Conv:
    """A conv that picks a variant from the kernel's static input-channel count.

    ``min_in_channels`` defaults to ``BF16_MIN_IN_CHANNELS`` as read at trace time.
    """
    a, b = VARIANTS[small], VARIANTS[large]
    if a is b:
        return a

    def pick(kernel) -> Conv:
        m = BF16_MIN_IN_CHANNELS if min_in_channels is None else min_in_channels
        return b if kernel.shape[2] >= m else a

    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return pick(kernel)(x, kernel)

    conv.variant = lambda x, kernel: pick(kernel)
    conv.bias_relu = lambda x, kernel, *a: conv_bias_relu(pick(kernel), x, kernel, *a)
    return conv


# Float32 Winograd with XLA's conv for colour inputs: the float32 layers of "bfloat16".
VARIANTS["winograd"] = dispatch("xla", "wino4", WINOGRAD_MIN_IN_CHANNELS)


def uses_winograd(precision: str, algorithm: str, in_channels: int) -> bool:
    """Whether ``conv_for(precision, algorithm=algorithm)`` may run Winograd F(4x4, 3x3) on a
    layer with ``in_channels`` inputs (then a ``Prepared`` kernel saves it work)."""
    small, large, min_in = choice(precision, algorithm)
    name = large if in_channels >= min_in else small
    if name == "winograd":
        name = "wino4" if in_channels >= WINOGRAD_MIN_IN_CHANNELS else "xla"
    return name in ("wino4", "planned", "wino4_bf16")


def winograd_dtype(precision: str, algorithm: str):
    """The type of the Winograd transforms ``conv_for(precision, algorithm=algorithm)`` runs
    (``prepare``'s ``dtype``): bfloat16 for ``wino4_bf16``, else float32."""
    return jnp.bfloat16 if choice(precision, algorithm)[1] == "wino4_bf16" else jnp.float32


_CONVS: dict[tuple, Conv] = {}


def conv_for(precision: str, out_channels: int = 0, algorithm: str = "auto") -> Conv:
    """The conv for a precision ("float32" or "bfloat16") and algorithm ("auto",
    "winograd" or "xla"); it dispatches per layer from the kernel's static shape.

    "auto" resolves on the default backend when called. ``out_channels`` is accepted
    for compatibility and ignored.
    """
    key = choice(precision, algorithm)
    if key not in _CONVS:
        _CONVS[key] = dispatch(*key)
    return _CONVS[key]
