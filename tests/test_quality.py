"""The quality recipe (jaxviz.param, jaxviz.transforms, jaxviz.objectives, jaxviz.lucid), kept small and fast.

The whole-run tests share one tiny LucidConfig (block1/block2 at 16 px, a few steps)
so that the compiled run is reused across them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import objectives, param, transforms
from jaxviz.errors import JaxvizError
from jaxviz.lucid import LucidConfig, lucid

TINY = LucidConfig(size=16, steps=4, pad=2, jitter=2, jitter2=1)


# ------------------------------------------------------------------ parameterization

def test_fourier_round_trips():
    t = jax.random.normal(jax.random.key(0), (12, 10, 3))
    c = param.fourier_from_image(t)
    assert c.shape == (2, 12, 6, 3)
    np.testing.assert_allclose(param.fourier_to_image(c, 12, 10), t, atol=1e-5)
    # the real-matmul irfft2 is numpy's
    a, b = np.random.default_rng(0).normal(size=(2, 7, 5, 3))
    want = np.fft.irfft2(a + 1j * b, s=(7, 9), axes=(0, 1), norm="ortho")
    np.testing.assert_allclose(param.irfft2_real(jnp.asarray(a), jnp.asarray(b), 7, 9), want, atol=1e-5)


def test_fourier_spectrum_decays_as_one_over_f():
    scale = param.fourier_scale(64, 64)
    f = param.rfft_freqs(64, 64)
    assert scale[0, 0] == pytest.approx(64.0)  # DC gets the lowest frequency's weight
    np.testing.assert_allclose(scale[1:, 1:] * f[1:, 1:], 1.0, rtol=1e-5)
    # an image from white coefficients has amplitude ~ 1/f: fit the log-log slope
    c = jax.random.normal(jax.random.key(1), (2, 64, 33, 3))
    amp = np.abs(np.fft.rfft2(np.asarray(param.fourier_to_image(c, 64, 64)), axes=(0, 1), norm="ortho")).mean(-1)
    bins = np.geomspace(1 / 32, 0.5, 9)
    idx = np.digitize(f, bins)
    fm = [f[idx == i].mean() for i in range(1, 8)]
    am = [amp[idx == i].mean() for i in range(1, 8)]
    slope = np.polyfit(np.log(fm), np.log(am), 1)[0]
    assert -1.15 < slope < -0.85


def test_colour_decorrelation_is_invertible():
    x = jax.random.normal(jax.random.key(2), (5, 4, 3))
    np.testing.assert_allclose(param.correlate(param.decorrelate(x)), x, atol=1e-5)
    np.testing.assert_allclose(param.decorrelate(param.correlate(x)), x, atol=1e-5)
    assert np.linalg.norm(param.COLOR_SQRT, axis=0).max() == pytest.approx(1.0)
    img = param.to_valid_rgb(x * 3)
    assert float(img.min()) > 0 and float(img.max()) < 1
    np.testing.assert_allclose(param.from_valid_rgb(img), x * 3, atol=1e-3)


@pytest.mark.parametrize("name", ["fourier", "pixel"])
def test_parameterizations_give_valid_images(name):
    p = param.parameterization(name, 16)
    x = p.to_image(p.init(jax.random.key(3)))
    assert x.shape == (16, 16, 3) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert abs(float(x.mean()) - 0.5) < 0.05  # small random start: a grey image
    with pytest.raises(ValueError):
        param.parameterization("wavelet", 16)


# ------------------------------------------------------------------ transforms

def _img(h=20, w=20):
    return jax.random.uniform(jax.random.key(4), (h, w, 3))


def test_transforms_keep_shape_and_are_deterministic_per_key():
    x, k1, k2 = _img(), jax.random.key(5), jax.random.key(6)
    assert transforms.pad(x, 3).shape == (26, 26, 3)
    for t in [lambda k, x: transforms.jitter(k, x, 3), lambda k, x: transforms.scale(k, x, 0.1),
              lambda k, x: transforms.rotate(k, x, 10.0)]:
        t = jax.jit(t)
        y = t(k1, x)
        assert y.shape == x.shape
        np.testing.assert_array_equal(y, t(k1, x))
        assert not np.array_equal(y, t(k2, x))
    r = jax.jit(transforms.robust(transforms.Robustness(pad=3)))
    assert r(k1, x).shape == (26, 26, 3)
    np.testing.assert_array_equal(r(k1, x), r(k1, x))


def test_transform_pieces_are_exact():
    x = _img(6, 7)
    np.testing.assert_allclose(transforms.warp(x, 1.0, 0.0), x, atol=1e-6)  # identity resample
    np.testing.assert_array_equal(transforms.translate(x, 1, -2, 2)[1:, :5], x[:-1, 2:])
    rot = transforms.warp(_img(5, 5), 1.0, np.pi / 2)  # a quarter turn of a square is a permutation
    np.testing.assert_allclose(rot, jnp.rot90(_img(5, 5), k=-1), atol=1e-5)  # clockwise on screen


def test_transform_and_colour_helpers_refuse_absurd_settings_in_one_line():
    """rotate by NaN degrees made every pixel NaN, and scale by -1 or jitter by -3 did nothing, silently;
    pad by -2, a 2-D image, decorrelate of 4 channels and fourier(0) failed inside JAX or NumPy."""
    k, x = jax.random.key(0), _img(8, 8)
    for call, message in [(lambda: transforms.rotate(k, x, float("nan")), "rotate must be a finite number"),
                          (lambda: transforms.rotate(k, x, -5.0), "rotate must be from 0 to 360"),
                          (lambda: transforms.scale(k, x, -1.0), "scale must be from 0 to below 1"),
                          (lambda: transforms.scale(k, x, 1.5), "scale must be from 0 to below 1"),
                          (lambda: transforms.jitter(k, x, -3), "jitter must be 0 or more"),
                          (lambda: transforms.pad(x, -2), "pad width must be 0 or more"),
                          (lambda: transforms.robust()(k, x[..., 0]), r"one \(H, W, C\) image, not .* \(8, 8\)"),
                          (lambda: param.decorrelate(jnp.zeros((4, 4, 4))), r"3 channels of RGB .* \(4, 4, 4\)"),
                          (lambda: param.to_valid_rgb(jnp.zeros((4, 4, 1))), "decorrelated=False"),
                          (lambda: param.fourier(0), "size must be 1 to"),
                          (lambda: param.pixel(-1), "size must be 1 to")]:
        with pytest.raises(JaxvizError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    np.testing.assert_array_equal(transforms.pad(x, 0), x)  # 0 turns each one off
    np.testing.assert_array_equal(transforms.scale(k, x, 0), x)
    np.testing.assert_array_equal(transforms.rotate(k, x, 0), x)
    one = param.fourier(1)  # a 1 x 1 Fourier image is its DC term
    assert one.to_image(one.init(k)).shape == (1, 1, 3)


def test_transforms_are_differentiable():
    r = transforms.robust()
    g = jax.jit(jax.grad(lambda x: jnp.sum(r(jax.random.key(7), x) ** 2)))(_img())
    assert g.shape == (20, 20, 3) and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


# ------------------------------------------------------------------ objectives

def test_preprocess_is_keras_vgg16():
    x = jnp.asarray([[[1.0, 0.5, 0.0]]])  # R, G, B
    np.testing.assert_allclose(objectives.preprocess(x)[0, 0], [0 - 103.939, 127.5 - 116.779, 255 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(objectives.deprocess(objectives.preprocess(x)), x, atol=1e-6)


def test_redirected_relu_gradient():
    x = jnp.asarray([-2.0, -1.0, 3.0])
    loss = lambda x, r, w: jnp.sum(w * objectives.redirected_relu(x, r))
    np.testing.assert_array_equal(objectives.redirected_relu(x, 1.0), [0, 0, 3])
    w = jnp.asarray([-1.0, 1.0, -1.0])  # descent on -y raises x: cotangent -1
    np.testing.assert_array_equal(jax.grad(loss)(x, 1.0, w), [0, 0, -1])  # relu passes some: plain relu
    dead = jnp.asarray([-2.0, -1.0, -3.0])
    np.testing.assert_array_equal(jax.grad(loss)(dead, 0.0, w), [0, 0, 0])  # off: plain relu
    # on and blocked: passes through, except what pushes negatives further down
    np.testing.assert_array_equal(jax.grad(loss)(dead, 1.0, w), [-1, 0, -1])
    # under jit and vmap (each image decides for itself)
    g = jax.jit(jax.vmap(jax.grad(loss), (0, None, None)))(jnp.stack([x, dead]), 1.0, w)
    np.testing.assert_array_equal(g, [[0, 0, -1], [-1, 0, -1]])


def test_diversity_term():
    h = jax.random.uniform(jax.random.key(8), (3, 4, 4, 5))
    same = jnp.stack([h[0]] * 3)
    assert float(objectives.diversity(same)) == pytest.approx(2.0, rel=1e-5)  # (D - 1) cosines of 1
    assert float(objectives.diversity(h[:1])) == 0.0
    assert float(objectives.diversity(h)) < 2.0


def test_channel_fast_path_matches_the_full_layer(params):
    from jaxviz.ascent import activation
    from jaxviz.models import vgg

    x = objectives.preprocess(_img(16, 16))
    pre = activation(params, x, 3, "block2_conv1", preact=True)
    full = vgg(params).activations(params, x, ("block2_conv1",))["block2_conv1"][..., 3]
    tol = 2e-3 * float(jnp.abs(pre).max())  # GPUs multiply float32 in TF32 by default
    np.testing.assert_allclose(jax.nn.relu(pre), full, atol=tol)


# ------------------------------------------------------------------ the whole run

def test_run_is_deterministic_per_seed_and_batched_equals_per_filter(params):
    a = lucid(params, "block2_conv1", [3, 5, 9], seed=1, config=TINY)
    assert a.images.shape == (3, 16, 16, 3) and a.trace.shape == (3, 4)
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    assert float(a.losses.min()) > 0 and bool(jnp.all(a.trace[:, -1] > a.trace[:, 0]))  # it ascends
    b = lucid(params, "block2_conv1", [3, 5, 9], seed=1, config=TINY)
    np.testing.assert_array_equal(a.images, b.images)
    c = lucid(params, "block2_conv1", [3, 5, 9], seed=2, config=TINY)
    assert not np.allclose(a.images, c.images)
    # each filter alone, and in chunks of one: the same images as in the batch, up to rounding
    # (oneDNN's AVX2 matmul sums a block's last rows in another order, and a batch of one has
    # other blocks than a batch of three: 1.03e-5 apart at most on a Zen 3, 0.003 grey levels)
    alone = lucid(params, "block2_conv1", [5], seed=1, config=TINY)
    np.testing.assert_allclose(alone.images[0], a.images[1], atol=1e-4)
    chunks = lucid(params, "block2_conv1", [3, 5, 9], seed=1, config=TINY, batch_size=1)
    np.testing.assert_allclose(chunks.images, a.images, atol=1e-4)


def test_dead_filter_starts_with_the_option(params):
    """block4_conv1 filter 81 stays at 0 under the seed recipe at 32 px (and under the quality
    recipe's plain relu: 0 at its start too); pre-relu or redirected relu objectives bring it to life."""
    import jaxviz

    seed_loss = jaxviz.render(params, "block4_conv1:81", jaxviz.SEED._replace(size=32, steps=20)).values
    assert seed_loss[0] == 0.0
    small = LucidConfig(size=32, steps=12, pad=4, jitter=2, jitter2=1)
    for dead in ("redirect", "preact"):
        r = lucid(params, "block4_conv1", [81], config=small._replace(dead_filter=dead))
        assert float(r.losses[0]) > 0, dead
        if dead == "redirect":  # the trace is the relu's: dead at the start
            assert float(r.trace[0, 0]) == 0.0


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_diversity_gives_different_images_per_filter(params, precision):
    """In bfloat16 too: lucid() refused it, a leftover of the engine before, while the grid ran it."""
    cfg = TINY._replace(diversity=2, steps=6, diversity_weight=1e3, precision=precision)
    r = lucid(params, "block1_conv1", [0, 4], config=cfg)
    assert r.images.shape == (4, 16, 16, 3) and r.losses.shape == (4,)
    assert not np.allclose(r.images[0], r.images[1], atol=1e-3)


def test_bad_settings_are_one_line_errors(params):
    with pytest.raises(JaxvizError, match="param must be"):
        lucid(params, "block1_conv1", [0], config=TINY._replace(param="wavelet"))
    with pytest.raises(JaxvizError, match="dead_filter"):
        lucid(params, "block1_conv1", [0], config=TINY._replace(dead_filter="zombie"))
    with pytest.raises(JaxvizError, match="out of range"):
        lucid(params, "block1_conv1", [64], config=TINY)


def test_settings_that_ran_silently_wrong_or_failed_deep_are_one_line(params):
    """A negative diversity_weight pulled a filter's images together; rotate=1e9, jitter=1000 (the
    image shifted out of view: it stayed the start) and decay_power=30 (NaN images) ran; a config
    of the wrong kind, a negative batch size or a float seed failed inside Python, the engine or JAX."""
    for cfg, message in [(TINY._replace(diversity=2, diversity_weight=-100.0), "diversity_weight must be 0 or more"),
                         (TINY._replace(rotate=1e9), "rotate must be from 0 to 360"),
                         (TINY._replace(jitter=1000), "jitter 1000 px shifts the 16 px image past its 2 px padding"),
                         (TINY._replace(decay_power=30.0), "decay_power must be from 0 to 2"),
                         (None, "config must be a jaxviz.lucid.LucidConfig"), (tuple(TINY), "LucidConfig")]:
        with pytest.raises(JaxvizError, match=message) as e:
            lucid(params, "block1_conv1", [0], config=cfg)
        assert "\n" not in str(e.value)
    for kw, message in [(dict(batch_size=-2), "batch_size must be 1 or more"),
                        (dict(seed=1.5), "seed must be an integer"), (dict(key=5), "key must be one JAX random key")]:
        with pytest.raises(JaxvizError, match=message):
            lucid(params, "block1_conv1", [0, 1], config=TINY, **kw)


# ------------------------------------------------------------------ API and command line

def test_render_lucid_api(params):
    import jaxviz

    from jaxviz.lucid import recipe

    u8, raw, losses, trace, _ = jaxviz.render(params, "block2_conv1:3,5,9", recipe(TINY), seed=1)
    ref = lucid(params, "block2_conv1", [3, 5, 9], seed=1, config=TINY)
    assert u8.dtype == np.uint8 and u8.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(raw, ref.images)
    np.testing.assert_array_equal(u8, np.round(np.asarray(ref.images) * 255).astype(np.uint8))
    np.testing.assert_array_equal(losses, ref.losses)
    assert trace.shape == (3, TINY.steps)
    with pytest.raises(JaxvizError, match="recipe"):
        jaxviz.render(params, "block1_conv1:0", "deepdream")


def test_cli_recipe_lucid(tmp_path, capsys):
    from jaxviz import grid

    out = tmp_path / "out"
    argv = ["--recipe", "lucid", "--layers", "block1_conv1", "--filters", "3,5", "--size", "8", "--steps", "2",
            "--param", "pixel", "--out", str(out), "--npz", "--tiles", "--quiet"]
    assert grid.main(argv) == 0
    data = np.load(out / "block1_conv1.npz")
    assert data["uint8"].shape == (2, 8, 8, 3) and str(data["recipe"]) == "lucid"
    assert int(data["steps"]) == 2 and float(data["lucid_lr"]) == pytest.approx(0.05)
    assert str(data["lucid_param"]) == "pixel"
    assert (out / "block1_conv1" / "block1_conv1_f005.png").exists() and (out / "block1_conv1.png").exists()
    assert grid.main(["--lr", "0.1", "--out", str(out)]) == 2
    assert "--lr applies to --recipe lucid only" in capsys.readouterr().err


def test_cli_lucid_defaults(tmp_path):
    from jaxviz import grid

    args = grid.build_parser().parse_args(["--recipe", "lucid", "--dead-filter", "redirect", "--diversity", "2",
                                           "--out", str(tmp_path)])
    grid._validate(args)
    cfg = grid._lucid_config(args)
    assert (args.steps, args.size) == (512, 128)
    assert (cfg.steps, cfg.size, cfg.dead_filter, cfg.diversity) == (512, 128, "redirect", 2)
    args = grid.build_parser().parse_args(["--out", str(tmp_path)])
    grid._validate(args)
    assert (args.steps, args.size, args.recipe) == (40, 64, "seed") and grid._lucid_config(args) is None
