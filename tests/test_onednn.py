"""jaxviz.onednn: oneDNN's conv through jax.ffi against XLA's, and its fallbacks."""
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import ROOT
from jaxviz import onednn

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN or a C++ compiler is missing here")


def reference(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=lax.Precision.HIGHEST)


def data(n, h, w, c, o, seed=0):
    kx, kk = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, h, w, c)) * 5.0, jax.random.normal(kk, (3, 3, c, o)) / (3.0 * c**0.5)


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return set(next(l for l in f if l.startswith("flags")).split(":", 1)[1].split())


def ops_native_bf16() -> bool:
    from jaxviz import ops

    return ops.native_bf16()


def rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


@needs_onednn
@pytest.mark.parametrize("shape", [(2, 7, 9, 3, 5), (1, 8, 8, 16, 32), (3, 5, 4, 64, 8)])
def test_float32_conv_matches_xla(shape):
    x, k = data(*shape)
    y = jax.jit(onednn.conv3x3)(x, k)
    assert y.dtype == jnp.float32 and y.shape == shape[:3] + (shape[4],)
    assert rel(y, reference(x, k)) <= 1e-5


@needs_onednn
def test_bfloat16_conv_rounds_its_inputs_and_accumulates_in_float32():
    x, k = data(2, 8, 8, 64, 16, seed=1)
    if onednn.why_not("bfloat16"):  # oneDNN 3.2 has no bf16 conv on an AVX2-only CPU: one clear error
        assert not {"avx512f", "amx_bf16"} & cpu_flags()
        with pytest.raises(RuntimeError, match="no bfloat16 conv on this CPU"):
            onednn.conv3x3(x.astype(jnp.bfloat16), k)
        return
    y = onednn.conv3x3(x.astype(jnp.bfloat16), k)
    assert y.dtype == jnp.float32
    want = reference(x.astype(jnp.bfloat16).astype(jnp.float32), k.astype(jnp.bfloat16).astype(jnp.float32))
    assert rel(y, want) <= 1e-5  # the same rounded inputs: only the sum order differs
    assert 1e-4 < rel(y, reference(x, k)) <= 2e-2


@needs_onednn
def test_winograd_runs_says_whether_the_call_takes_a_bfloat16_kernel_here():
    """winograd_runs(bfloat16) is True exactly where the call runs with a bf16 kernel (oneDNN 3.2
    has no bf16 matmul on AVX2 only); where it does not, the ops run the XLA form (its bits)."""
    from jaxviz import ops

    x, k = data(2, 12, 12, 16, 8, seed=3)
    u = ops.winograd_kernel(k, 4).astype(jnp.bfloat16)
    try:
        np.asarray(onednn.winograd4(x, u))
        works = True
    except jax.errors.JaxRuntimeError as e:
        assert "primitive descriptor" in str(e)
        works = False
    assert onednn.winograd_runs(jnp.bfloat16) is works
    assert onednn.winograd_runs(jnp.float32)
    if works:
        assert {"avx512f", "amx_bf16"} & cpu_flags()
        return
    y = jax.jit(lambda x, u: ops.conv3x3_winograd(x, ops.Prepared(k, u, u), 4))(x, u)
    np.testing.assert_array_equal(y, ops._winograd_xla(x, u, 4))


@needs_onednn
def test_leading_dimensions_and_vmap_give_the_unbatched_results():
    x, k = data(6, 6, 6, 8, 4, seed=2)
    flat = onednn.conv3x3(x, k)
    np.testing.assert_allclose(onednn.conv3x3(x.reshape(2, 3, 6, 6, 8), k).reshape(flat.shape), flat, rtol=1e-6, atol=1e-6)
    per_image = jax.jit(jax.vmap(lambda xi: onednn.conv3x3(xi[None], k)[0]))(x)
    np.testing.assert_allclose(per_image, flat, rtol=1e-6, atol=1e-6)
    kernels = jnp.stack([k, 2 * k])  # one kernel per item: still right
    both = jax.vmap(onednn.conv3x3)(jnp.stack([x, x]), kernels)
    np.testing.assert_allclose(both[1], 2 * flat, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_the_implementation_is_named():
    name = onednn.implementation((2, 8, 8, 16), 16)
    assert name != "unavailable" and ":" in name, name


@pytest.mark.parametrize("value", ["0", "off"])  # off was read as on: the same words as JAXVIZ_COMPILE_CACHE's
def test_zero_in_the_environment_turns_it_off(value):
    code = "from jaxviz import onednn, ops; print(onednn.available(), ops.choice('float32', 'auto', 'cpu')[1])"
    env = dict(os.environ, JAXVIZ_ONEDNN=value, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "wino4"]


def test_a_failed_compile_falls_back_with_one_line(tmp_path):
    """No working compiler: one line on stderr, available() False, and the XLA convs run."""
    code = ("import jax.numpy as jnp; from jaxviz import onednn, ops; print(onednn.available()); "
            "print(float(ops.conv_for('float32')(jnp.ones((1, 4, 4, 16)), jnp.ones((3, 3, 16, 2))).sum()))")
    env = dict(os.environ, CXX="/bin/false", XDG_CACHE_HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    env.pop(onednn.ENV, None)
    env.pop("JAXVIZ_CACHE", None)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "False"
    assert float(r.stdout.split()[1]) > 0
    if onednn._prefix() is not None:  # the compiler was tried (a line), then why it gave up (one line)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2 and "compiling oneDNN's conv" in lines[0] and "oneDNN conv unavailable" in lines[1], lines
    assert not list(tmp_path.rglob("*.tmp"))


@needs_onednn
def test_batched_matmul_is_xlas_product_with_items_folded_into_rows():
    kx, kb = jax.random.split(jax.random.key(4))
    a = jax.random.normal(kx, (3, 36, 20, 16))
    b = jax.random.normal(kb, (36, 16, 8))
    want = jnp.stack([lax.dot_general(ai, b, (((2,), (1,)), ((0,), (0,)))) for ai in a])
    np.testing.assert_allclose(onednn.batched_matmul(a, b), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(onednn.batched_matmul, (0, None)))(a, b), want, rtol=1e-5, atol=1e-5)
    nested = jax.vmap(onednn.batched_matmul, (0, None))(a[:, None], b)  # items with a leading axis of their own
    np.testing.assert_allclose(nested[:, 0], want, rtol=1e-5, atol=1e-5)
    per_item_b = jax.vmap(onednn.batched_matmul)(a, jnp.stack([b, 2 * b, 3 * b]))
    np.testing.assert_allclose(per_item_b[2], 3 * want[2], rtol=1e-5, atol=1e-4)


@needs_onednn
def test_winograd_runs_its_matmuls_in_onednn_and_stays_a_winograd_conv():
    from jaxviz import ops

    x, k = data(2, 12, 12, 32, 16, seed=5)
    jaxpr = str(jax.make_jaxpr(lambda x: ops.conv3x3_winograd(x, k, 4))(x))
    assert "ffi_call" in jaxpr
    assert rel(ops.conv3x3_winograd(x, k, 4), reference(x, k)) <= 1e-5


@needs_onednn
def test_batched_matmul_and_the_winograd_conv_have_gradients():
    from jaxviz import ops

    kx, kb = jax.random.split(jax.random.key(6))
    a, b = jax.random.normal(kx, (2, 4, 6, 5)), jax.random.normal(kb, (4, 5, 3))
    xla = lambda a, b: jnp.einsum("...bmk,bkn->...bmn", a, b, precision=lax.Precision.HIGHEST)
    for got, want in zip(jax.grad(lambda a, b: jnp.sum(onednn.batched_matmul(a, b) ** 2), (0, 1))(a, b),
                         jax.grad(lambda a, b: jnp.sum(xla(a, b) ** 2), (0, 1))(a, b)):
        assert rel(got, want) <= 1e-5
    x, k = data(1, 8, 8, 16, 4, seed=7)
    dx = jax.grad(lambda x: jnp.sum(ops.conv3x3_winograd(x, k, 4) ** 2))(x)
    assert rel(dx, jax.grad(lambda x: jnp.sum(reference(x, k) ** 2))(x)) <= 1e-4


def test_the_winograd_conv_still_lowers_for_gpus():
    """oneDNN is a CPU custom call: a Winograd conv exported for CUDA must not contain it."""
    from jaxviz import ops

    x, k = data(1, 8, 8, 16, 4, seed=8)
    exported = jax.export.export(jax.jit(lambda x: ops.VARIANTS["wino4"](x, k)), platforms=["cuda"])(x)
    text = exported.mlir_module()
    assert "jaxviz_onednn" not in text and "jaxviz_winograd" not in text and "dot_general" in text
    on_cpu = jax.jit(lambda x: ops.VARIANTS["wino4"](x, k)).lower(x).as_text()
    assert "jaxviz_winograd4_f32" in on_cpu  # on CPU the whole conv is the C++ one
    # a whole layer with its pool, forward and input gradient
    layer = jax.jit(jax.grad(lambda x: ops.conv_bias_relu(ops.VARIANTS["wino4"], x, ops.prepare(k), jnp.ones(4), pool=True).sum()))
    text = jax.export.export(layer, platforms=["cuda"])(x).mlir_module()
    assert "jaxviz_" not in text and "dot_general" in text
    on_cpu = layer.lower(x).as_text()
    assert "jaxviz_winograd4_bias_relu_pool_f32" in on_cpu and "jaxviz_winograd4_pool_grad_f32" in on_cpu


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 13, 11, 40, 24), (4, 32, 32, 64, 16), (7, 13, 9, 20, 12)])  # channel tails of 8 and 16 lanes
def test_winograd4_gives_the_xla_forms_bits(shape, monkeypatch):
    """The C++ transforms add the same terms in the same order as ops' XLA form: in one block
    of tiles (the matmul then sees the same rows), the same floats, not merely close ones. In
    blocks (the last one shorter here) the transforms are the same, but oneDNN's AVX2 matmul
    sums a block's last 1-3 rows (past a multiple of 6) in another order than full rows, so
    only close there (bit-identical on AVX-512 and AMX, where it sums every row alike)."""
    from jaxviz import ops

    x, k = data(*shape, seed=9)
    u = ops.winograd_kernel(k, 4)
    want = jax.jit(lambda x, u: ops._winograd_xla(x, u, 4))(x, u)
    np.testing.assert_array_equal(jax.jit(onednn.winograd4)(x, u), want)
    monkeypatch.setattr(onednn, "BLOCK_BYTES", 50_000)
    tiles = shape[0] * -(-shape[1] // 4) * -(-shape[2] // 4)
    assert tiles % onednn._block(tiles, shape[3])[0] != 0  # several blocks, the last one shorter
    got = jax.jit(onednn.winograd4)(x, u)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    assert rel(got, reference(x, k)) <= 1e-4


@needs_onednn
@pytest.mark.parametrize("m", [4, 2])
@pytest.mark.parametrize("co", [(64, 64), (3, 21), (20, 37)])  # whole vectors and tails of 8 and 16 lanes
def test_the_kernel_transform_sums_as_the_einsum_did(m, co):
    """On CPU ops.winograd_kernel is a custom call (XLA's dots for its einsum were slow) that makes
    each sum as XLA's dot did on a Zen 5 (products rounded, added in order, zeros included, no
    FMA; the same bits as the einsum there): exactly numpy's sums so written, zeros, signed
    zeros, infinities, NaNs and subnormals included; the einsum itself to float32 rounding (its
    dot may use FMA on another CPU)."""
    from jaxviz import ops

    k = np.array(data(1, 1, 1, *co, seed=12)[1])
    k[0, 0, :2] = 0.0
    k[1, 1, -1] = -0.0
    k[2, 2, 0, :3] = [np.nan, np.inf, -np.inf]
    k[0, 1, 1, 1] = 1e-40  # subnormal
    g = np.asarray(ops.WINOGRAD[m][1], np.float32)
    dot = lambda c, t: (c[0] * t[0] + c[1] * t[1]) + c[2] * t[2]
    with np.errstate(all="ignore"):
        rows = [[dot(g[p], [k[i, j] for i in range(3)]) for j in range(3)] for p in range(m + 2)]
        want = np.stack([dot(g[q], rows[p]) for p in range(m + 2) for q in range(m + 2)])
    text = jax.jit(lambda k: ops.winograd_kernel(k, m)).lower(k).as_text()
    assert onednn.KERNEL in text and "dot_general" not in text
    got = np.asarray(jax.jit(lambda k: ops.winograd_kernel(k, m))(k))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(ops.winograd_kernel(k, m), got)  # and without jit
    finite = jnp.asarray(np.where(np.isfinite(k), k, 0.0))
    einsum = jax.jit(ops._winograd_kernel_xla)(jnp.asarray(g), finite)
    np.testing.assert_allclose(ops.winograd_kernel(finite, m), einsum, rtol=1e-6, atol=1e-7)


@needs_onednn
def test_the_kernel_transform_has_derivatives_and_runs_under_vmap():
    from jaxviz import ops

    ks = jnp.stack([data(1, 1, 1, 8, 5, seed=s)[1] for s in (13, 14)])
    g = jnp.asarray(ops.WINOGRAD[4][1], jnp.float32)
    np.testing.assert_array_equal(jax.vmap(lambda k: ops.winograd_kernel(k, 4))(ks),
                                  jnp.stack([ops.winograd_kernel(k, 4) for k in ks]))
    weights = jnp.arange(36 * 8 * 5, dtype=jnp.float32).reshape(36, 8, 5) / 1000
    f = lambda k: jnp.sum(ops.winograd_kernel(k, 4) * weights)
    f_xla = lambda k: jnp.sum(ops._winograd_kernel_xla(g, k) * weights)
    np.testing.assert_allclose(jax.grad(f)(ks[0]), jax.grad(f_xla)(ks[0]), rtol=1e-6)
    _, tangent = jax.jvp(lambda k: ops.winograd_kernel(k, 4), (ks[0],), (ks[1],))
    np.testing.assert_allclose(tangent, ops._winograd_kernel_xla(g, ks[1]), rtol=1e-6)


@needs_onednn
def test_winograd4_under_vmap_folds_the_items_into_its_batch():
    from jaxviz import ops

    x, k = data(4, 8, 8, 16, 8, seed=10)
    u = ops.winograd_kernel(k, 4)
    flat = onednn.winograd4(x, u)
    per_image = jax.jit(jax.vmap(lambda xi: onednn.winograd4(xi[None], u)[0]))(x)
    np.testing.assert_array_equal(per_image, flat)
    both = jax.vmap(onednn.winograd4)(jnp.stack([x, x]), jnp.stack([u, 2 * u]))  # per-item kernels
    np.testing.assert_allclose(both[1], 2 * flat, rtol=1e-5, atol=1e-5)


def _layer_data(shape, seed):
    n, h, w, c, o = shape
    x, k = data(n, h, w, c, o, seed=seed)
    from jaxviz import ops

    kb, kg = jax.random.split(jax.random.key(seed + 100))
    bias = jax.random.normal(kb, (o,))
    return x, ops.winograd_kernel(k, 4), ops.winograd_kernel(ops._flip(k), 4), bias, kg


@needs_onednn
@pytest.mark.parametrize("shape", [(2, 9, 7, 24, 40), (3, 16, 16, 64, 16)])  # odd edges, channel tails
def test_fused_layer_calls_give_the_bits_of_the_ops_apart(shape):
    """bias + relu (and its mask as bytes, or the pool and its hits) in the output transform, the
    relu's (and pool's) gradient in the input transform, from the mask or the hits: the floats of
    winograd4 and XLA's ops apart, ties and NaNs included; ops' XLA form of that gradient gives
    the same floats as max_pool2's own."""
    from jaxviz import ops
    from jaxviz.model import max_pool2

    x, u, u_flip, bias, kg = _layer_data(shape, seed=11)
    y = jax.jit(lambda x, u, b: jax.nn.relu(onednn.winograd4(x, u) + b))(x, u, bias)
    got, mask = jax.jit(onednn.winograd4_bias_relu)(x.at[0, 2, 2, :5].set(jnp.nan), u, bias)
    np.testing.assert_array_equal(mask, (got > 0).astype(jnp.uint8))  # every pixel, a NaN 0
    assert bool(jnp.isnan(got).any()) and mask.dtype == jnp.uint8
    got, mask = jax.jit(onednn.winograd4_bias_relu)(x, u, bias)
    np.testing.assert_array_equal(got, y)
    np.testing.assert_array_equal(mask, (y > 0).astype(jnp.uint8))
    pooled, hits = jax.jit(lambda x, u, b: onednn.winograd4_bias_relu(x, u, b, pool=True))(x, u, bias)
    np.testing.assert_array_equal(pooled, max_pool2(y))
    np.testing.assert_array_equal(hits, ops.pool_hits(y))
    assert hits.dtype == jnp.uint8 and 0 < int(jnp.count_nonzero(hits)) < hits.size

    g = jax.random.normal(kg, y.shape)
    want = jax.jit(lambda y, g, u: onednn.winograd4(jnp.where(y > 0, g, 0), u))(y, g, u_flip)
    np.testing.assert_array_equal(jax.jit(onednn.winograd4_relu_grad)(mask, g, u_flip), want)

    def pool_grad_apart(y, gp, u):
        return onednn.winograd4(jnp.where(y > 0, jax.vjp(max_pool2, y)[1](gp)[0], 0), u)

    ties = jnp.round(y * 2) / 2  # many windows with two or more equal maxima
    nans = y.at[0, 1, 1, :3].set(jnp.nan)
    for relu_out in (y, ties, nans):
        gp = jax.random.normal(kg, pooled.shape)
        hits = ops.pool_hits(relu_out)
        got = jax.jit(partial(onednn.winograd4_pool_grad, size=shape[1:3]))(hits, gp, u_flip)
        np.testing.assert_array_equal(got, jax.jit(pool_grad_apart)(relu_out, gp, u_flip))
        in_xla = jax.jit(lambda h, g: ops.relu_pool_grad(h, g, shape[1:3]))(hits, gp)
        spread = jax.jit(lambda y, gp: jnp.where(y > 0, jax.vjp(max_pool2, y)[1](gp)[0], 0))  # jit: XLA's form
        np.testing.assert_array_equal(in_xla, spread(relu_out, gp))
    assert not bool(jnp.isnan(got).any())  # as in XLA's ops, a window whose maximum is NaN passes no gradient


@needs_onednn
@pytest.mark.parametrize("shape", [(2, 9, 7, 24, 40), (3, 16, 16, 64, 16)])
def test_an_input_relu_in_the_fused_calls_gives_the_bits_of_the_ops_apart(shape):
    """With x_bias the layer's input relu(x + x_bias) is made as the input transform reads x,
    its mask kept as bytes (every pixel, odd edges too), and the gradient's mask applied as the
    output transform writes: the floats of XLA's relu and select around the calls without it, a
    NaN input passing on as NaN, its gradient 0."""
    x, u, u_flip, bias, kg = _layer_data(shape, seed=14)
    x = x.at[0, 1, 1, :3].set(jnp.nan)
    x_bias = jax.random.normal(jax.random.key(15), (shape[3],))
    outs = []
    for pool in (False, True):
        *got, keep = jax.jit(lambda x, b: onednn.winograd4_bias_relu(x, u, bias, pool, x_bias=b))(x, x_bias)
        want = jax.jit(lambda x, b: onednn.winograd4_bias_relu(jax.nn.relu(x + b), u, bias, pool))(x, x_bias)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
        assert keep.dtype == jnp.uint8
        np.testing.assert_array_equal(keep, (x + x_bias > 0).astype(jnp.uint8))
        outs.append(want)
    (y, y_mask), (pooled, hits) = outs
    assert bool(jnp.isnan(y).any())
    mask = lambda gx, keep: jnp.where(keep > 0, gx, 0)
    g = jax.random.normal(kg, y.shape)
    got = jax.jit(onednn.winograd4_relu_grad)(y_mask, g, u_flip, keep)
    want = jax.jit(lambda *a: mask(onednn.winograd4_relu_grad(*a[:3]), a[3]))(y_mask, g, u_flip, keep)
    np.testing.assert_array_equal(got, want)
    gp = jax.random.normal(kg, pooled.shape)
    pool_grad = partial(onednn.winograd4_pool_grad, size=shape[1:3])
    got = jax.jit(pool_grad)(hits, gp, u_flip, keep)
    np.testing.assert_array_equal(got, jax.jit(lambda *a: mask(pool_grad(*a[:3]), a[3]))(hits, gp, u_flip, keep))
    assert float(jnp.abs(got[0, 1, 1, :3]).max()) == 0.0 and float(jnp.abs(got).max()) > 0


@needs_onednn
@pytest.mark.skipif(not ops_native_bf16(), reason="needs a CPU with native bf16")
@pytest.mark.parametrize("own", [False, True])
def test_bfloat16_transforms_round_the_tiles_to_bfloat16(own, monkeypatch):
    """With a bfloat16 transformed kernel the call rounds each transformed tile to bfloat16 as it
    stores it and sums the products in float32: the XLA form with the same bfloat16 matmul
    inputs (ops._winograd_xla), within float32 rounding, shared or own blocks."""
    from jaxviz import ops

    if own:
        monkeypatch.setattr(onednn, "OWN_MIN_TILES", 1)
        monkeypatch.setattr(onednn, "OWN_TILES", 8)
        monkeypatch.setattr(onednn, "_threads", lambda: 2)
    x, u, u_flip, bias, kg = _layer_data((2, 9, 14, 24, 40), seed=21)
    ub = u.astype(jnp.bfloat16)
    got = jax.jit(onednn.winograd4)(x, ub)
    want = jax.jit(lambda x: ops._winograd_xla(x, ub, 4))(x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(jnp.abs(want).max()))
    assert rel(got, jax.jit(onednn.winograd4)(x, u)) > 1e-4  # not the float32 conv
    pooled, hits = jax.jit(lambda x: onednn.winograd4_bias_relu(x, ub, bias, pool=True))(x)
    want_y = jax.nn.relu(want + bias)
    np.testing.assert_allclose(pooled, ops.max_pool2(want_y), rtol=1e-6, atol=1e-6 * float(jnp.abs(want_y).max()))


@needs_onednn
@pytest.mark.parametrize("threads", [2, 3])
def test_own_blocks_give_the_shared_blocks_bits(threads, monkeypatch):
    """Each thread on whole blocks of its own (a one-thread matmul, a scratch slot each) gives
    the floats of every core on each block in turn: forward, fused, and both gradients, with
    a last block shorter."""
    from jaxviz import ops

    x, u, u_flip, bias, kg = _layer_data((3, 17, 15, 24, 40), seed=13)
    calls = {
        "plain": lambda x, y, gp, h: onednn.winograd4(x, u),
        "bias_relu_pool": lambda x, y, gp, h: onednn.winograd4_bias_relu(x, u, bias, pool=True),
        "relu_grad": lambda x, y, gp, h: onednn.winograd4_relu_grad((y > 0).astype(jnp.uint8), y - 0.5, u_flip),
        "pool_grad": lambda x, y, gp, h: onednn.winograd4_pool_grad(h, gp, u_flip, size=(17, 15)),
        "in_relu": lambda x, y, gp, h: onednn.winograd4_bias_relu(x, u, bias, x_bias=x_bias),
        "in_pool_grad": lambda x, y, gp, h: onednn.winograd4_pool_grad(h, gp, u_flip, (x > 0).astype(jnp.uint8), size=(17, 15)),
    }
    x_bias = jnp.linspace(-2, 2, 24)
    y = jax.nn.relu(onednn.winograd4(x, u) + bias)
    hits = ops.pool_hits(y)  # what the pool's gradient reads
    gp = jax.random.normal(kg, hits.shape)
    tiles = 3 * 5 * 4
    assert onednn._block(tiles, 40, threads)[1] == 1  # shared by default at this size
    shared = {k: jax.jit(f)(x, y, gp, hits) for k, f in calls.items()}
    monkeypatch.setattr(onednn, "OWN_MIN_TILES", 1)
    monkeypatch.setattr(onednn, "OWN_TILES", 8)
    monkeypatch.setattr(onednn, "_threads", lambda: threads)
    block, slots = onednn._block(tiles, 40, threads)
    assert slots == threads and tiles % block != 0 and -(-tiles // block) % threads == 0
    for k, f in calls.items():
        own = jax.jit(f)(x, y, gp, hits)
        for a, b in zip(jax.tree.leaves(own), jax.tree.leaves(shared[k])):
            np.testing.assert_array_equal(a, b, err_msg=k)


@needs_onednn
def test_fused_layer_calls_under_vmap_fold_the_items_into_their_batch():
    x, u, u_flip, bias, kg = _layer_data((4, 8, 8, 16, 8), seed=12)
    y, mask = onednn.winograd4_bias_relu(x, u, bias)
    pooled, hits = onednn.winograd4_bias_relu(x, u, bias, pool=True)
    vp, vh = jax.jit(jax.vmap(lambda xi: onednn.winograd4_bias_relu(xi[None], u, bias, pool=True)))(x)
    np.testing.assert_array_equal(vp[:, 0], pooled)
    np.testing.assert_array_equal(vh[:, 0], hits)
    gp = jax.random.normal(kg, pooled.shape)
    flat = onednn.winograd4_pool_grad(hits, gp, u_flip, size=(8, 8))
    one = lambda h, g: onednn.winograd4_pool_grad(h[None], g[None], u_flip, size=(8, 8))[0]
    per_image = jax.jit(jax.vmap(one))(hits, gp)
    np.testing.assert_array_equal(per_image, flat)
    one_mask = jax.jit(jax.vmap(lambda g: onednn.winograd4_relu_grad(mask[:1], g[None], u_flip)[0]))(y)  # mask unbatched
    np.testing.assert_array_equal(one_mask, onednn.winograd4_relu_grad(jnp.broadcast_to(mask[:1], y.shape), y, u_flip))


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_an_unwritable_cache_folder_is_named_not_a_missing_onednn(tmp_path, monkeypatch):
    """XDG_CACHE_HOME a regular file: the build fails naming the cache folder (it blamed oneDNN)."""
    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.delenv("JAXVIZ_CACHE", raising=False)
    monkeypatch.setenv("CXX", sys.executable)  # any existing program: nothing is compiled before the folder fails
    with pytest.raises(OSError) as e:
        onednn._build(onednn._prefix())
    message = str(e.value)
    assert str(blocker / "jaxviz" / "onednn") in message and "XDG_CACHE_HOME" in message and "\n" not in message
    # the library's own answer says the same (it said "pip install oneDNN")
    monkeypatch.setattr(onednn, "_load", lambda: (None, message))
    monkeypatch.setattr(onednn, "_library", lambda: None)
    assert onednn.why_not("float32") == message


def test_the_build_cache_is_jaxvizs_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    assert onednn._cache_dir() == tmp_path / "j" / "onednn"
    monkeypatch.delenv("JAXVIZ_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path))
    assert onednn._cache_dir() == tmp_path / ".cache" / "jaxviz" / "onednn"


def test_cpu_signature_holds_model_family_and_flags():
    # compiled code (-march=native tunes by family and model) is keyed by these lines
    try:
        with open("/proc/cpuinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    sig = onednn.cpu_signature()
    for prefix in (b"model name", b"model\t", b"cpu family", b"flags"):
        wanted = {l for l in lines if l.startswith(prefix)}
        assert all(l in sig for l in wanted), prefix


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_a_full_disk_is_named_not_the_linkers_last_line(tmp_path, monkeypatch):
    """A full cache folder: gcc's last line is "collect2: error: ld returned 1 exit status", which
    was all the notice said; the cause, and where to point instead, are named now."""
    cxx = tmp_path / "cxx"
    cxx.write_text("#!/bin/sh\necho '/usr/bin/ld: final link failed: No space left on device' >&2\n"
                   "echo 'collect2: error: ld returned 1 exit status' >&2\nexit 1\n")
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    with pytest.raises(OSError) as e:
        onednn._build(onednn._prefix())
    message = str(e.value)
    assert "no space left" in message and str(tmp_path / "j" / "onednn") in message and "JAXVIZ_CACHE" in message
    assert "collect2" not in message and "\n" not in message
    assert not list((tmp_path / "j").rglob("*.tmp"))
    cxx.write_text("#!/bin/sh\necho 'x.cc:1: error: expected ;' >&2\nexit 1\n")
    with pytest.raises(OSError, match=r"failed: x.cc:1: error: expected ;$"):  # other errors: the last line, as text
        onednn._build(onednn._prefix())


def _fake_compiler(folder: Path, library: Path, until: Path | None = None) -> tuple[Path, Path]:
    """A "compiler" that adds a line to its log as it starts, waits until the file ``until``
    exists (when given), then copies ``library`` (a whole ELF file) to its -o: (the program, its log)."""
    cxx, log = folder / "cxx", folder / "compiles"
    wait = f"while [ ! -e {until} ]; do sleep 0.05; done\n" if until else ""
    cxx.write_text(f'#!/bin/sh\necho >> {log}\nwhile [ "$1" != -o ]; do shift; done\n{wait}cp {library} "$2"\n')
    cxx.chmod(0o755)
    return cxx, log


@needs_onednn
def test_a_cut_short_cached_library_is_built_again_not_loaded(tmp_path, monkeypatch):
    """A cached library cut short (a crash before its data reached the disk, a bad copy): loading
    it killed every later process with SIGBUS ("Bus error") until the file was deleted by hand."""
    whole = Path(onednn._library()._name).read_bytes()
    source = tmp_path / "whole.so"
    source.write_bytes(whole)
    cxx, log = _fake_compiler(tmp_path, source)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    out = onednn._build(onednn._prefix())
    assert out.read_bytes() == whole and log.read_text().count("\n") == 1
    assert onednn._build(onednn._prefix()) == out and log.read_text().count("\n") == 1  # cached
    for cut in (len(whole) - 1, len(whole) // 2, 1000, 10, 0):
        out.write_bytes(whole[:cut])
        assert not onednn._whole(out)
        assert onednn._build(onednn._prefix()) == out and out.read_bytes() == whole
    assert log.read_text().count("\n") == 6
    out.write_bytes(whole[:1000])  # a whole process, started on the damaged file, builds and loads it
    code = "from jaxviz import onednn; print(onednn.available())"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, "True"), r.stderr
    assert out.read_bytes() == whole


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
@pytest.mark.parametrize("stop", ["the process alone", "Ctrl-C", "SIGTERM to the group"])
def test_a_command_stopped_during_the_compile_leaves_the_library_or_nothing(stop, tmp_path):
    """Stopped during the half-minute first compile, a command left a temporary file in the cache
    (cli_run's os._exit skips the clean-up), and on SIGTERM an orphaned compiler went on writing
    into it. Now the process alone stopped: the compile ends and its library is put in place;
    Ctrl-C or a SIGTERM to the whole process group: the compile stops, nothing is left."""
    import signal
    import time

    release = tmp_path / "release"  # the compile ends once the test has stopped the command
    cxx, started = _fake_compiler(tmp_path, Path(sys.executable), until=release)
    cache = tmp_path / "j" / "onednn"
    env = dict(os.environ, CXX=str(cxx), JAXVIZ_CACHE=str(tmp_path / "j"), JAX_PLATFORMS="cpu")
    exit_at_once = "[signal.signal(s, lambda *_: os._exit(130)) for s in (signal.SIGINT, signal.SIGTERM)]"  # cli_run's
    code = f"import os, signal; {exit_at_once}; from jaxviz import onednn; onednn._build(onednn._prefix())"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists() and list(cache.glob("*.tmp")), "the compile never started"
    if stop != "the process alone":
        os.killpg(p.pid, signal.SIGINT if stop == "Ctrl-C" else signal.SIGTERM)
    else:
        p.kill()  # as os._exit: no clean-up of its own
    p.wait()
    release.touch()
    deadline = time.monotonic() + 30
    while list(cache.glob("*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a compiler left running, released, would have written its -o again by now
    left = sorted(f.name for f in cache.iterdir())
    if stop != "the process alone":
        assert left == []
    else:
        assert len(left) == 1 and left[0].endswith(".so") and onednn._whole(cache / left[0])


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_a_program_interrupted_during_the_compile_leaves_nothing(tmp_path):
    """A KeyboardInterrupt of the program alone (a notebook's interrupt signals the process, not its
    group) killed the compile's helper outright, and the compiler it had started went on to write
    its temporary file into the cache. Now the helper is asked to stop: it stops the compiler and
    removes the file, and the KeyboardInterrupt reaches the program."""
    import time

    release = tmp_path / "release"  # the compile ends once the program has been interrupted
    cxx, started = _fake_compiler(tmp_path, Path(sys.executable), until=release)
    cache = tmp_path / "j" / "onednn"
    code = f"""
import os, signal, threading, time
from pathlib import Path
from jaxviz import onednn

signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, even where SIGINT came in ignored


def interrupt():
    while not Path({str(started)!r}).exists():
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
try:
    onednn._build(onednn._prefix())
except KeyboardInterrupt:
    print("interrupted")
"""
    env = dict(os.environ, CXX=str(cxx), JAXVIZ_CACHE=str(tmp_path / "j"), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "interrupted", r.stderr
    release.touch()
    time.sleep(0.5)  # a compiler left running, released, would have written its -o by now
    assert sorted(f.name for f in cache.iterdir()) == []


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_cxx_naming_no_program_is_said_and_cxx_with_options_compiles(tmp_path, monkeypatch):
    """``CXX=/no/such/g++``: the notice was the compile helper's last traceback line ("FileNotFoundError:
    ... '/no/such/g++'"), not naming $CXX; ``CXX="ccache g++"`` (a compiler with its options, as make
    and CMake take it) failed the same way, and the XLA convs ran."""
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    for cxx in (str(tmp_path / "no-such-g++"), str(tmp_path), "'unbalanced"):
        monkeypatch.setenv("CXX", cxx)
        with pytest.raises(OSError, match=r"^CXX=.* names no program here; set CXX to a C\+\+ compiler"):
            onednn._build(onednn._prefix())
    assert not list(tmp_path.rglob("*.tmp"))
    cxx, log = _fake_compiler(tmp_path, Path(sys.executable))
    monkeypatch.setenv("CXX", f"{cxx} -DJAXVIZ_WRAPPED")  # the first word the program, the rest its options
    out = onednn._build(onednn._prefix())
    assert onednn._whole(out) and log.read_text().count("\n") == 1


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_a_broken_link_as_the_cache_folder_is_named(tmp_path, monkeypatch):
    """The cache folder a symbolic link to nothing: the notice said only "(File exists)"."""
    (tmp_path / "j").mkdir()
    os.symlink(tmp_path / "nowhere", tmp_path / "j" / "onednn")
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    monkeypatch.setenv("CXX", sys.executable)
    with pytest.raises(OSError, match=r"onednn is a symbolic link to nothing \(or a loop\), not a folder\); point "
                                      r"JAXVIZ_CACHE"):
        onednn._build(onednn._prefix())


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_a_library_of_other_code_falls_back_not_a_traceback(tmp_path, monkeypatch):
    """A $CXX that "compiles" something else (a whole, loadable library without the handlers):
    every command ended in ctypes' AttributeError traceback, at each run (the library is cached)."""
    cxx, _ = _fake_compiler(tmp_path, (onednn._prefix() / "lib" / "libdnnl.so.3").resolve())
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    monkeypatch.delenv(onednn.ENV, raising=False)
    lib, error = onednn._load.__wrapped__()
    assert lib is None and "undefined symbol" in error and "not a build of onednn_conv.cc" in error, error
    assert "\n" not in error


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_a_killed_compiles_temporary_file_is_removed_by_a_later_build(tmp_path, monkeypatch):
    """A run killed with its process group (kill -9, an OOM kill) during the compile left its
    temporary file, a library's size each time, for good; one being written now is kept."""
    cxx, _ = _fake_compiler(tmp_path, Path(sys.executable))
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    cache = tmp_path / "j" / "onednn"
    cache.mkdir(parents=True)
    old, fresh, other = cache / "onednn_conv-0123.so.abc.tmp", cache / "onednn_conv-0123.so.def.tmp", cache / "x.tmp"
    for p in (old, fresh, other):
        p.write_bytes(b"\x7fELF")
    for p in (old, other):
        os.utime(p, (0, 0))
    out = onednn._build(onednn._prefix())
    assert sorted(cache.iterdir()) == sorted([out, fresh, other])


@pytest.mark.skipif(onednn._prefix() is None, reason="oneDNN is not installed here")
def test_a_compiler_that_hangs_is_stopped_at_the_limit_and_named(tmp_path, monkeypatch):
    """A $CXX that never ends (a wrapper waiting on a licence server, say) hung every first use."""
    cxx = tmp_path / "cxx"
    cxx.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 600\n")
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("JAXVIZ_CACHE", str(tmp_path / "j"))
    monkeypatch.setattr(onednn, "COMPILE_LIMIT_S", 2)
    with pytest.raises(OSError, match=r"took over 2 s and was stopped; check \$CXX .*JAXVIZ_ONEDNN=0$"):
        onednn._build(onednn._prefix())
    assert not list((tmp_path / "j").rglob("*.tmp"))
    pid = int((tmp_path / "pid").read_text())
    for _ in range(100):  # the compiler is ended too
        if not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the hung compiler still runs")
