"""The conv variants of jaxviz.ops against plain lax.conv_general_dilated and its autodiff."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxviz import onednn, ops

HERE = [n for n in ops.VARIANTS  # oneDNN's where it runs: its bf16 conv needs AVX-512 or AMX
        if not n.startswith("onednn") or not onednn.why_not("bfloat16" if n.endswith("bf16") else "float32")]
F32 = [n for n in HERE if not n.endswith("bf16")]
BF16 = [n for n in HERE if n.endswith("bf16")]
SHAPES = [(2, 7, 9, 3, 5), (1, 8, 8, 16, 32), (2, 4, 4, 32, 3)]  # N, H, W, Cin, Cout


def reference(x, k):
    return lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST
    )


def data(shape, seed=0):
    n, h, w, ci, co = shape
    kx, kk, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, h, w, ci)) * 10.0 + 3.0
    k = jax.random.normal(kk, (3, 3, ci, co)) / (3.0 * ci**0.5)
    g = jax.random.normal(kg, (n, h, w, co))
    return x, k, g


def rel(a, b):
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def forward_and_input_grad(conv, x, k, g):
    y, vjp = jax.vjp(lambda x: conv(x, k), x)
    return y, vjp(g)[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", F32)
def test_f32_variants_match_autodiff(name, shape):
    x, k, g = data(shape)
    want_y, want_dx = forward_and_input_grad(reference, x, k, g)
    y, dx = forward_and_input_grad(ops.VARIANTS[name], x, k, g)
    assert y.dtype == jnp.float32 and dx.dtype == jnp.float32
    assert rel(y, want_y) <= 1e-5
    assert rel(dx, want_dx) <= 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", BF16)
def test_bf16_variants_close_to_autodiff(name, shape):
    x, k, g = data(shape, 1)
    want_y, want_dx = forward_and_input_grad(reference, x, k, g)
    y, dx = forward_and_input_grad(ops.VARIANTS[name], x, k, g)
    assert y.dtype == jnp.float32 and dx.dtype == jnp.float32
    # bf16 inputs (8-bit mantissa), f32 accumulation; Winograd's transforms amplify the rounding
    # of its bf16 inputs (its tiles' values cancel in the output transform): 4-9 % here, where
    # the ascent's losses and images still drift as the direct bf16 conv's (bench/README.md)
    bound = 0.1 if name == "wino4_bf16" else 2e-2
    assert rel(y, want_y) <= bound
    assert rel(dx, want_dx) <= bound


@pytest.mark.parametrize("name", F32 + BF16)
def test_variants_under_vmap_and_jit(name):
    x, k, g = data((3, 6, 6, 4, 8), 2)
    conv = ops.VARIANTS[name]
    batched = jax.jit(jax.vmap(lambda xi: conv(xi[None], k)[0]))(x)
    np.testing.assert_allclose(batched, conv(x, k), rtol=1e-5, atol=1e-4)


def test_kernel_cotangent_is_zero():
    x, k, g = data((1, 4, 4, 2, 2))
    dk = jax.grad(lambda k: ops.conv_f32(x, k).sum())(k)
    assert float(jnp.abs(dk).max()) == 0.0


def test_conv_for_dispatches_on_input_channels():
    for precision in ops.PRECISIONS:
        alg = "xla" if precision == "float32" else "auto"
        conv = ops.conv_for(precision, algorithm=alg)
        assert conv is ops.conv_for(precision, 64, algorithm=alg)
        x, k, g = data((1, 4, 4, 3, 8))
        # small layers stay float32 in every precision: exact to f32 rounding
        assert rel(conv(x, k), reference(x, k)) <= 1e-5
        x, k, g = data((1, 4, 4, ops.BF16_MIN_IN_CHANNELS, 8))
        tol = 1e-5 if precision == "float32" else _bf16_tolerance(precision, alg)
        assert rel(conv(x, k), reference(x, k)) <= tol
    with pytest.raises(ValueError):
        ops.conv_for("float16")


def _bf16_tolerance(precision, algorithm="auto"):
    """Relative error allowed a bf16 conv: 2 % for bf16 products, 10 % for bf16 Winograd (its
    transforms amplify the inputs' rounding, test_bf16_variants_close_to_autodiff)."""
    return 0.1 if ops.choice(precision, algorithm)[1] == "wino4_bf16" else 2e-2


def test_bf16_large_layers_really_round():
    x, k, g = data((1, 4, 4, ops.BF16_MIN_IN_CHANNELS, 8))
    err = rel(ops.conv_for("bfloat16")(x, k), reference(x, k))
    assert 1e-6 < err <= _bf16_tolerance("bfloat16")


@pytest.mark.parametrize("m", sorted(ops.WINOGRAD))
def test_winograd_at_vgg_scale_is_as_close_as_float32_allows(m):
    # block4_conv1's shape at 64 px input, pixel-scale inputs and VGG-sized weights
    kx, kk, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.uniform(kx, (2, 8, 8, 256)) * 30.0
    k = jax.random.normal(kk, (3, 3, 256, 64)) * 0.01
    g = jax.random.normal(kg, (2, 8, 8, 64))
    want_y, want_dx = forward_and_input_grad(reference, x, k, g)
    y, dx = forward_and_input_grad(ops.VARIANTS[f"wino{m}"], x, k, g)
    assert rel(y, want_y) <= 1e-5 and rel(dx, want_dx) <= 1e-5
    assert rel(y, want_y) > 0  # really a different algorithm, not XLA's conv


def test_auto_is_winograd_on_cpu_and_xla_elsewhere():
    colour = "onednn" if onednn.available() else "xla"  # the conv of layers with colour inputs
    assert ops.choice("float32", "auto", "cpu") == (colour, "wino4", ops.WINOGRAD_MIN_IN_CHANNELS)
    assert ops.choice("float32", "auto", "gpu") == ("xla", "xla", 0)
    assert ops.choice("float32", "xla", "cpu") == ("xla", "xla", 0)
    assert ops.choice("float32", "winograd", "gpu")[1] == "wino4"
    # bfloat16 Winograd: bf16 matmul inputs, its transforms prepared in bf16
    assert ops.choice("bfloat16", "winograd", "gpu") == ("xla", "wino4_bf16", ops.WINOGRAD_MIN_IN_CHANNELS)
    assert ops.winograd_dtype("bfloat16", "winograd") == jnp.bfloat16
    assert ops.uses_winograd("bfloat16", "winograd", 64) and not ops.uses_winograd("bfloat16", "winograd", 3)
    with pytest.raises(ValueError, match="conv must be one of"):
        ops.choice("float32", "fft")


def test_why_not_names_the_bad_setting_and_passes_good_ones():
    assert ops.why_not("float32", "auto") is None and ops.why_not("bfloat16", "xla") is None
    assert "precision must be" in ops.why_not("float16", "auto")
    assert "conv must be one of" in ops.why_not("float32", "fft")
    assert ops.why_not("bfloat16", "winograd") is None
    assert ops.why_not("bfloat16", "onednn") == onednn.why_not("bfloat16")


def test_winograd_dispatch_keeps_xla_for_colour_inputs():
    conv = ops.conv_for("float32", algorithm="winograd")
    x, k, _ = data((1, 8, 8, 3, 8))
    np.testing.assert_array_equal(conv(x, k), ops.conv3x3_xla(x, k))
    x, k, _ = data((1, 8, 8, ops.WINOGRAD_MIN_IN_CHANNELS, 8))
    np.testing.assert_array_equal(conv(x, k), ops.conv3x3_winograd(x, k, 4))


@pytest.mark.parametrize("name", ["wino4", "xla", "planned"])
def test_prepared_kernel_gives_the_same_bits_as_the_plain_one(name):
    x, k, g = data((2, 8, 8, 16, 32), seed=3)
    conv = ops.VARIANTS[name]
    plain = jax.jit(lambda x, k: forward_and_input_grad(conv, x, k, g))(x, k)
    ahead = jax.jit(lambda x, k: forward_and_input_grad(conv, x, ops.prepare(k), g))(x, k)
    for a, b in zip(plain, ahead):
        np.testing.assert_array_equal(a, b)


def test_prepared_kernel_is_winograd_f4_only():
    x, k, _ = data((1, 8, 8, 16, 4))
    p = ops.prepare(k)
    assert p.shape == k.shape and p.u.shape == (36, 16, 4)
    np.testing.assert_array_equal(ops.raw(p), k)
    with pytest.raises(ValueError, match="F\\(4x4"):
        ops.conv3x3_winograd(x, p, m=2)


@pytest.mark.parametrize("flags", [{"avx512_bf16"}, {"avx512_bf16", "amx_bf16"}, {"avx2"}])
def test_bfloat16_is_onednn_where_the_cpu_has_bf16_and_onednn_runs(flags, monkeypatch):
    """In bfloat16, where oneDNN runs: oneDNN's bf16 conv on AMX, bf16 Winograd where the CPU has
    AVX512-bf16 but no AMX; colour inputs stay float32 (oneDNN's conv)."""
    monkeypatch.setattr(ops, "_cpu_flags", lambda: flags)
    want = ("onednn", "onednn_bf16" if "amx_bf16" in flags else "wino4_bf16", ops.WINOGRAD_MIN_IN_CHANNELS)
    assert (ops.choice("bfloat16", "auto", "cpu") == want) == (ops.native_bf16() and onednn.available())
    assert ops.native_bf16() == ("avx512_bf16" in flags)
    bf16_winograd = ops.choice("bfloat16", "auto", "cpu")[1] == "wino4_bf16"
    assert (ops.winograd_dtype("bfloat16", "auto") == jnp.bfloat16) == bf16_winograd
    assert ops.winograd_dtype("float32", "auto") == jnp.float32
    want = ("onednn", "onednn_bf16", ops.WINOGRAD_MIN_IN_CHANNELS)
    if onednn.available():
        if onednn.why_not("bfloat16"):
            with pytest.raises(ValueError, match="no bfloat16 conv on this CPU"):
                ops.choice("bfloat16", "onednn", "cpu")
        else:
            assert ops.choice("bfloat16", "onednn", "cpu") == want
        assert ops.choice("float32", "onednn", "cpu") == ("onednn", "onednn", 0)
        with pytest.raises(ValueError, match="CPU only"):
            ops.choice("float32", "onednn", "gpu")
        assert not ops.uses_winograd("float32", "onednn", 64)
        assert onednn.why_not("bfloat16") or not ops.uses_winograd("bfloat16", "onednn", 64)
    else:
        with pytest.raises(ValueError, match="onednn conv is not available"):
            ops.choice("float32", "onednn")


@pytest.mark.skipif(not (onednn.available() and ops.native_bf16()), reason="needs oneDNN and a CPU with native bf16")
@pytest.mark.parametrize("pool", [False, True])
def test_bf16_winograd_layers_round_only_the_matmul_inputs(pool):
    """wino4_bf16: the fused layer with bfloat16 transforms gives the floats of the XLA form with
    the same bfloat16 matmul inputs (float32 sums), value and input gradient, within rounding; it
    lands within bfloat16's rounding of the float32 layer."""
    x, k, _ = data((2, 12, 16, 32, 24), 30)
    b = jax.random.normal(jax.random.key(31), (24,))
    wino = ops.VARIANTS["wino4_bf16"]
    pk = ops.prepare(k, jnp.bfloat16)
    assert pk.u.dtype == jnp.bfloat16 and ops._bf16_winograd(pk) is pk
    fused = jax.jit(lambda x: ops.conv_bias_relu(wino, x, pk, b, pool=pool))
    y, vjp = jax.vjp(fused, x)
    want = _layer(lambda x, k: ops._winograd_xla(x, pk.u, 4), pool)(x, k, b)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    f32, f32_vjp = jax.vjp(lambda x: _layer(reference, pool)(x, k, b), x)
    assert 0 < float(jnp.abs(y - f32).max()) < 0.1 * float(jnp.abs(f32).max())
    g = jax.random.normal(jax.random.key(32), y.shape)
    (gx,), (f32_gx,) = vjp(g), f32_vjp(g)
    # on average (a relu's mask flips where the bf16 rounding moves a pre-activation across 0)
    assert 0 < float(jnp.abs(gx - f32_gx).mean()) < 0.15 * float(jnp.abs(f32_gx).mean())
    assert "jaxviz_winograd4" in fused.lower(x).as_text()


def test_bfloat16_keeps_float32_winograd_below_the_bf16_layers(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)  # the pure-XLA choice
    small, large, m = ops.choice("bfloat16", "auto", "cpu")
    assert (small, m) == ("winograd", ops.BF16_MIN_IN_CHANNELS)
    assert large == ("taps_bf16" if ops.native_bf16() else "xla_bf16")
    assert ops.choice("bfloat16", "auto", "gpu") == ("xla", "xla_bf16", ops.BF16_MIN_IN_CHANNELS)
    assert ops.choice("bfloat16", "xla", "cpu")[0] == "xla"
    assert [ops.uses_winograd("bfloat16", "auto", c) for c in (3, 64, 256)] == [False, True, False]
    assert [ops.uses_winograd("float32", "auto", c) for c in (3, 64, 256)] == [False, True, True]
    assert not ops.uses_winograd("float32", "xla", 64)
    conv = ops.conv_for("bfloat16")
    x, k, _ = data((1, 8, 8, 64, 8))
    np.testing.assert_array_equal(conv(x, k), ops.conv3x3_winograd(x, k, 4))


def test_few_output_channels_as_one_matmul_and_a_shifted_sum():
    x, k, _ = data((2, 6, 5, 16, 3), seed=4)  # the colour layer's input gradient has 3 outputs
    assert rel(ops.conv3x3_few_out(x, k), reference(x, k)) <= 1e-5
    if onednn.available():  # the colour layer's variant takes this form for its input gradient
        kf = jax.random.normal(jax.random.key(6), (3, 3, 3, 16))
        dx = jax.vjp(lambda x: ops.VARIANTS["onednn"](x, kf), jnp.ones((2, 6, 5, 3)))[1](jnp.ones((2, 6, 5, 16)))[0]
        np.testing.assert_allclose(dx, ops.conv3x3_few_out(jnp.ones((2, 6, 5, 16)), ops._flip(kf)), rtol=1e-6)


def _layer(conv, pool):
    from jaxviz.model import max_pool2

    def f(x, k, b):
        y = jax.nn.relu(conv(x, k) + b)
        return max_pool2(y) if pool else y

    return f


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_fused_conv_layer_gives_the_bits_of_the_ops_apart(pool, jit):
    """ops.conv_bias_relu on Winograd (one custom call each way where oneDNN runs) against
    the same conv, relu and pool apart: value and input gradient bit for bit, bias gradient too."""
    x, k, _ = data((2, 9, 10, 16, 24), 5)
    b = jax.random.normal(jax.random.key(6), (24,))
    maybe_jit = jax.jit if jit else (lambda f: f)
    fused = maybe_jit(lambda x, k, b: ops.conv_bias_relu(ops.VARIANTS["wino4"], x, k, b, pool=pool))
    apart = maybe_jit(_layer(ops.VARIANTS["wino4"], pool))
    for kernel in (k, ops.prepare(k)):
        y, vjp = jax.vjp(lambda x, b: fused(x, kernel, b), x, b)
        want_y, want_vjp = jax.vjp(lambda x, b: apart(x, kernel, b), x, b)
        np.testing.assert_array_equal(y, want_y)
        g = jax.random.normal(jax.random.key(7), y.shape)
        (dx, db), (want_dx, want_db) = vjp(g), want_vjp(g)
        np.testing.assert_array_equal(dx, want_dx)
        np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-5)
    if onednn.available():
        text = jax.jit(fused).lower(x, k, b).as_text()
        assert ("jaxviz_winograd4_bias_relu_pool_f32" if pool else "jaxviz_winograd4_bias_relu_f32") in text


@pytest.mark.parametrize("pool", [False, True])
def test_fused_conv_layer_without_onednn_is_xlas_ops(pool, monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    x, k, _ = data((2, 8, 8, 16, 8), 8)
    b = jnp.linspace(-1, 1, 8)
    f = jax.jit(lambda x: ops.winograd4_bias_relu(x, k, b, pool))
    assert "jaxviz_" not in f.lower(x).as_text()
    want = _layer(reference, pool)
    np.testing.assert_allclose(f(x), want(x, k, b), rtol=1e-5, atol=1e-4)
    dx = jax.grad(lambda x: f(x).sum())(x)
    np.testing.assert_allclose(dx, jax.grad(lambda x: want(x, k, b).sum())(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("available", [True, False])
def test_a_layers_input_relu_left_to_the_fused_layer_gives_the_bits_of_the_ops_apart(pool, available, monkeypatch):
    """conv_bias_relu(..., x_bias=b0) is the layer on relu(x + b0): the value and the gradients
    of x and both biases bit for bit, with oneDNN's calls (the input relu in them) or without."""
    if not available:
        monkeypatch.setattr(onednn, "available", lambda: False)
    x, k, _ = data((2, 9, 10, 16, 24), 10)
    b, b0 = jax.random.normal(jax.random.key(11), (24,)), jax.random.normal(jax.random.key(12), (16,))
    wino = ops.VARIANTS["wino4"]
    fused = jax.jit(lambda x, b, b0: ops.conv_bias_relu(wino, x, ops.prepare(k), b, pool=pool, x_bias=b0))
    apart = jax.jit(lambda x, b, b0: ops.conv_bias_relu(wino, jax.nn.relu(x + b0), ops.prepare(k), b, pool=pool))
    y, vjp = jax.vjp(fused, x, b, b0)
    want_y, want_vjp = jax.vjp(apart, x, b, b0)
    np.testing.assert_array_equal(y, want_y)
    g = jax.random.normal(jax.random.key(13), y.shape)
    for got, want in zip(vjp(g), want_vjp(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(vjp(g)[0], want_vjp(g)[0])
    text = fused.lower(x, b, b0).as_text()
    assert ("jaxviz_winograd4_in_relu" in text) == available


def test_runs_fused_names_the_layers_whose_bias_and_relu_are_made_in_their_call():
    conv = ops.dispatch("onednn" if onednn.available() else "xla", "wino4", ops.WINOGRAD_MIN_IN_CHANNELS)
    colour, wide = jnp.ones((1, 8, 8, 3)), jnp.ones((1, 8, 8, 16))
    assert not ops.runs_fused(conv, colour, jnp.ones((3, 3, 3, 16)))
    assert ops.runs_fused(conv, wide, jnp.ones((3, 3, 16, 16)))
    assert not ops.runs_fused(ops.VARIANTS["xla"], wide, jnp.ones((3, 3, 16, 16)))
    assert ops.runs_fused(ops.planned("wino4"), wide, jnp.ones((3, 3, 16, 16)))


def test_conv_layer_fuses_only_where_the_conv_has_a_fused_form():
    x, k, _ = data((1, 8, 8, 3, 16), 9)  # colour inputs: XLA's conv under the Winograd dispatch
    b = jnp.ones(16)
    conv = ops.dispatch("xla", "wino4", ops.WINOGRAD_MIN_IN_CHANNELS)
    got = ops.conv_bias_relu(conv, x, k, b, pool=True)
    np.testing.assert_allclose(got, _layer(reference, True)(x, k, b), rtol=1e-5, atol=1e-4)
    assert got.shape == (1, 4, 4, 16)
    if onednn.available():
        assert "jaxviz_winograd4" not in jax.jit(lambda x: ops.conv_bias_relu(conv, x, k, b)).lower(x).as_text()
        x16, k16, _ = data((1, 8, 8, 16, 16), 9)
        assert "jaxviz_winograd4_bias_relu" in jax.jit(lambda x: ops.conv_bias_relu(conv, x, k16, b)).lower(x16).as_text()
