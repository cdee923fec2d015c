"""The one render engine: presets, parts mixed freely, chunking, snapshots, keys and errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxviz
from jaxviz import engine, optim
from jaxviz.ascent import AscentConfig, ascend
from jaxviz.engine import SEED, Recipe
from jaxviz.errors import JaxvizError
from jaxviz.models import vgg
from jaxviz.objectives import channel, deepdream, neuron
from jaxviz.param import Pixel
from jaxviz.transforms import Robustness

TINY = SEED._replace(size=16, steps=3)


@pytest.fixture(scope="module")
def model(params):
    return vgg(params)


def test_seed_preset_is_ascend_bit_for_bit(params, model):
    via_api = jaxviz.render(model, "block2_conv1:0,3,9", TINY, seed=4)
    direct = ascend(params, "block2_conv1", [0, 3, 9], seed=4, config=AscentConfig(size=16, steps=3))
    np.testing.assert_array_equal(via_api.images, direct.images)
    np.testing.assert_array_equal(via_api.values, direct.losses)
    assert via_api.tiles.dtype == np.uint8 and via_api.trace.shape == (3, 3)


def test_same_model_settings_share_one_compile(params):
    a, b = vgg(params), vgg(params)
    assert a.static() == b.static() and hash(a.static()) == hash(b.static())
    assert vgg(params, precision="bfloat16").static() != a.static()


def test_snapshots_every_k_steps_end_on_the_final_image(model):
    r = jaxviz.render(model, "block1_conv2:1,2", SEED._replace(size=16, steps=5), every=2)
    assert r.frames.shape == (2, 4, 16, 16, 3)  # start, after 2, after 4, final (5)
    np.testing.assert_array_equal(r.frames[:, -1], r.tiles)
    plain = jaxviz.render(model, "block1_conv2:1,2", SEED._replace(size=16, steps=5))
    np.testing.assert_array_equal(plain.images, r.images)  # snapshots change nothing
    assert plain.frames is None
    even = jaxviz.render(model, "block1_conv2:1", SEED._replace(size=16, steps=4), every=2)
    assert even.frames.shape[1] == 3  # start, after 2, after 4 = final
    assert engine.snapshot_count(5, 2) == 4 and engine.snapshot_count(4, 2) == 3 and engine.snapshot_count(4, 0) == 0


def test_parts_mix_freely(model):
    """Pixel parameterization with the seed's optimizer, and a plain optax optimizer: both ascend."""
    mixed = Recipe(param=Pixel(), optimizer=optim.SeedAscent(0.05), steps=6, size=16)
    r = jaxviz.render(model, "block2_conv1:5", mixed)
    assert r.trace[0, -1] > r.trace[0, 0] and 0 <= r.images.min() and r.images.max() <= 1
    sgd = Recipe(param=Pixel(), optimizer=optax.sgd(5.0), steps=6, size=16)
    r = jaxviz.render(model, "block2_conv1:5", sgd)
    assert np.isfinite(r.values).all() and r.trace[0, -1] > r.trace[0, 0]


def test_chunks_and_batch_equal_each_item_alone(model):
    obj = channel("block1_conv2", [3, 5, 9, 11, 12])
    whole = engine.render(model, obj, TINY)
    chunked = engine.render(model, obj, TINY, batch_size=2)
    alone = engine.render(model, channel("block1_conv2", [9]), TINY)
    np.testing.assert_allclose(chunked.images, whole.images, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(alone.images[0], whole.images[2], rtol=1e-5, atol=1e-3)


def test_batch_size_past_the_items_is_not_padded(model, monkeypatch):
    """batch_size=64 for 3 items computed 64 images (61 of padding): one chunk is capped at the items,
    with the same images as the engine's own chunk, and as 2 padded chunks up to the last bits."""
    obj = channel("block1_conv2", [3, 5, 9])
    chunks = []
    run = engine.run_chunk
    monkeypatch.setattr(engine, "run_chunk", lambda *a: chunks.append(len(a[-2])) or run(*a))
    big = engine.render(model, obj, TINY, batch_size=64)
    assert chunks == [3]
    np.testing.assert_array_equal(big.images, engine.render(model, obj, TINY).images)
    np.testing.assert_allclose(big.images, engine.render(model, obj, TINY, batch_size=2).images, rtol=1e-5, atol=1e-3)
    assert chunks[-1] == 2


def test_diversity_gives_several_different_images(model):
    from jaxviz.objectives import diversity_term

    r = engine.render(model, channel("block1_conv2", [0, 4]) + 1e3 * diversity_term("block1_conv2"),
                      Recipe(param=Pixel(), optimizer=optim.Adam(0.05), steps=4, size=16, diversity=2))
    assert r.images.shape == (4, 16, 16, 3) and r.trace.shape == (4, 4)
    assert not np.allclose(r.images[0], r.images[1], atol=1e-3)


def test_start_replaces_the_seeded_images(model):
    x0 = jnp.full((1, 16, 16, 3), 128.0) + jax.random.uniform(jax.random.key(3), (1, 16, 16, 3))
    r = jaxviz.render(model, "block1_conv1:0", TINY._replace(steps=0), start=x0)
    np.testing.assert_array_equal(r.images, x0)


def test_objective_without_args_renders_one_image(model):
    r = engine.render(model, deepdream("block2_conv1"), TINY)
    assert r.images.shape == (1, 16, 16, 3) and np.isfinite(r.values).all()


def test_bad_requests_are_one_line_errors(model):
    with pytest.raises(JaxvizError, match="valid layers: block1_conv1"):
        engine.render(model, channel("block9_conv1", [0]), TINY)
    with pytest.raises(JaxvizError, match="out of range for block1_conv1, which has 64"):
        engine.render(model, channel("block1_conv1", [64]), TINY)
    with pytest.raises(JaxvizError, match="too small for block4_conv1"):
        engine.render(model, channel("block4_conv1", [0]), TINY._replace(size=4))
    with pytest.raises(JaxvizError, match="recipe must be"):
        jaxviz.render(model, "block1_conv1:0", "dream")
    with pytest.raises(JaxvizError, match="malformed objective"):
        jaxviz.render(model, ":3", TINY)


def test_prepared_weights_change_no_bit(model):
    assert model.prepare is not None
    ahead = jaxviz.render(model, "block3_conv1:0,5", TINY, seed=2)
    plain = jaxviz.render(model._replace(prepare=None), "block3_conv1:0,5", TINY, seed=2)
    np.testing.assert_array_equal(ahead.images, plain.images)
    np.testing.assert_array_equal(ahead.values, plain.values)


def test_neuron_positions_are_checked_at_the_size_rendered(model):
    """At 16 px block2_conv1 is 8x8: y=7 runs, y=12 is refused (XLA would clamp it to 7)."""
    engine.render(model, neuron("block2_conv1", [0], y=7, x=7), TINY._replace(steps=1))
    with pytest.raises(JaxvizError, match=r"neuron y=12 is outside block2_conv1 \(8x8 at 16 px\)"):
        engine.render(model, neuron("block2_conv1", [0], y=12, x=0), TINY)
    # the lucid recipe pads 16 px to 40 in its steps, but the final value is taken at 16 px
    lucid = jaxviz.LUCID._replace(size=16, steps=1)
    with pytest.raises(JaxvizError, match=r"neuron y=12 is outside block2_conv1 \(8x8 at 16 px\)"):
        engine.render(model, neuron("block2_conv1", [0], y=12, x=0), lucid)


def test_a_fixed_size_model_at_another_size_is_one_line():
    from jaxviz.models import from_function

    w = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 4))
    m = from_function(lambda p, x: {"img": x, "fc": x.reshape(-1) @ p}, w, input_size=8)
    engine.render(m, deepdream("fc"), TINY._replace(size=8, steps=1))
    with pytest.raises(JaxvizError, match="failed on a 12x12x3 input .* render at a size it accepts") as e:
        engine.render(m, deepdream("fc"), TINY._replace(size=12, steps=1))
    assert "\n" not in str(e.value)


def test_fitted_takes_a_fixed_size_model_to_its_size_and_no_padding():
    from jaxviz.models import from_function

    w = jax.random.normal(jax.random.key(1), (8 * 8 * 3, 4))
    fixed = from_function(lambda p, x: {"img": x, "fc": x.reshape(-1) @ p}, w, input_size=8)
    any_size = from_function(lambda p, x: {"img": x * p}, jnp.float32(1.0), input_size=8)
    lucid = engine.LUCID._replace(size=12)
    assert engine.fitted(any_size, deepdream("img"), lucid) == lucid  # it runs: unchanged
    fit = engine.fitted(fixed, deepdream("fc"), lucid)
    assert fit == lucid._replace(size=8, transforms=lucid.transforms._replace(pad=0))
    assert engine.render(fixed, deepdream("fc"), fit._replace(steps=1)).images.shape == (1, 8, 8, 3)
    assert engine.fitted(fixed, deepdream("fc"), SEED) == SEED._replace(size=8)
    with pytest.raises(JaxvizError, match="unknown layer"):  # nothing fits: the first error
        engine.fitted(fixed, deepdream("nope"), SEED)
    large = from_function(lambda p, x: {"img": x * p}, jnp.float32(1.0), input_size=40, min_size=lambda name: 30)
    assert engine.fitted(large, deepdream("img"), SEED._replace(size=16)) == SEED._replace(size=40)
    assert engine.fitted(large, deepdream("img"), lucid._replace(size=16)) == lucid._replace(size=40)  # padded still


def test_start_and_objective_types_are_checked(model):
    obj = channel("block1_conv1", [0, 3])
    with pytest.raises(JaxvizError, match=r"start has shape \(2, 24, 24, 3\); .* \(2, 16, 16, 3\)"):
        engine.render(model, obj, TINY, start=np.full((2, 24, 24, 3), 128.0))
    with pytest.raises(JaxvizError, match="start must be an array"):
        engine.render(model, obj, TINY, start="abc")
    with pytest.raises(JaxvizError, match="start must be an array"):  # numpy's ValueError from iscomplexobj
        engine.render(model, obj, TINY, start=[[1.0, 2.0], [3.0]])
    with pytest.raises(JaxvizError, match="start holds complex numbers"):  # cast to real with only a warning
        engine.render(model, obj, TINY, start=np.full((2, 16, 16, 3), 128 + 1j))
    with pytest.raises(JaxvizError, match="start holds NaN or infinity"):  # said the images "came out" not finite
        engine.render(model, obj, TINY, start=np.full((2, 16, 16, 3), np.nan))
    with pytest.raises(JaxvizError, match="objective must be a jaxviz.objectives objective"):
        engine.render(model, 5, TINY)
    with pytest.raises(JaxvizError, match="progress must be a function"):
        jaxviz.render(model, obj, TINY, progress=5)


def test_recipe_parts_of_the_wrong_kind_are_one_line(model):
    """None, a name or a class in a recipe's part was an AttributeError from deep in the engine."""
    from jaxviz.param import Fourier

    obj = channel("block1_conv1", [0])
    for bad, what in [(dict(param=None), "recipe.param"), (dict(param=Fourier), "recipe.param"),
                      (dict(transforms="x"), "recipe.transforms"), (dict(optimizer="adam"), "recipe.optimizer"),
                      (dict(optimizer=optim.Adam), "recipe.optimizer"), (dict(optimizer=optax.adam), "recipe.optimizer"),
                      (dict(transforms=Robustness(scale=5.0)), "scale"), (dict(transforms=Robustness(scale=-0.1)), "scale"),
                      (dict(transforms=Robustness(scale="0.1")), "scale")]:
        with pytest.raises(JaxvizError, match=what):
            engine.render(model, obj, TINY._replace(**bad))


def test_raw_recipes_check_positions_without_the_models_preprocess():
    """The layer table is taken through ``preprocess`` (here it doubles the image); the seed
    recipe feeds raw pixels, so at 16 px the layer is 16x16, not the table's 32x32."""
    from jaxviz.models import from_function

    double = lambda x: jnp.repeat(jnp.repeat(x, 2, 0), 2, 1)
    m = from_function(lambda p, x: {"c1": x * p}, jnp.float32(1.0), preprocess=double, input_size=16)
    assert m.layer("c1").shape == (32, 32, 3)
    engine.render(m, neuron("c1", [0], y=15, x=15), TINY._replace(steps=1))
    with pytest.raises(JaxvizError, match=r"neuron y=20 is outside c1 \(16x16 at 16 px\)"):
        engine.render(m, neuron("c1", [0], y=20, x=0), TINY._replace(steps=1))


def test_a_model_that_cannot_be_differentiated_is_one_line_and_other_errors_pass_through(monkeypatch):
    """A jax.pure_callback in the model raised JAX's ValueError from inside the step's tracing;
    it is the model's code, so one line names it. An error in a chunk that the model's own
    gradient does not explain (a bug of the engine's, say) still propagates as it was."""
    from jaxviz.models import from_function

    host = lambda a: np.asarray(a) * 2
    fn = lambda p, x: {"c": jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, jnp.float32), x * p)}
    m = from_function(fn, jnp.float32(2.0), input_size=8)
    for recipe in (SEED._replace(size=8, steps=1), jaxviz.LUCID._replace(size=8, steps=1)):
        message = r"model function, up to c, cannot be differentiated with respect to its input image \(ValueError"
        with pytest.raises(JaxvizError, match=message) as e:
            engine.render(m, channel("c", [0]), recipe)
        assert "\n" not in str(e.value)

    def broken(*args):
        raise RuntimeError("not the model's")

    monkeypatch.setattr(engine, "run_chunk", broken)
    fine = from_function(lambda p, x: {"c": x * p}, jnp.float32(2.0), input_size=8)
    with pytest.raises(RuntimeError, match="not the model's"):
        engine.render(fine, channel("c", [0]), SEED._replace(size=8, steps=1))


def test_a_diversity_term_with_one_image_per_objective_is_refused():
    """It pushes apart an objective's several images: with diversity 1 it silently did nothing."""
    from jaxviz.objectives import diversity_term
    from tests.tiny_model import build

    with pytest.raises(JaxvizError, match="set the recipe's diversity to 2 or more"):
        engine.render(build(), channel("conv", [0]) + diversity_term("conv"), TINY)
    r = engine.render(build(), channel("conv", [0]) + diversity_term("conv"), TINY._replace(diversity=2))
    assert r.images.shape == (2, 16, 16, 3)


def test_a_progress_function_that_cannot_take_the_count_is_refused_before_any_work():
    """One of no arguments raised Python's TypeError after the first compiled chunk, its work lost."""
    from tests.tiny_model import build

    calls = []
    for bad in (lambda: None, lambda a, b: None):
        with pytest.raises(JaxvizError, match="progress is called with one argument") as e:
            jaxviz.render(build(), "conv:0", TINY, progress=bad)
        assert "\n" not in str(e.value)
    jaxviz.render(build(), "conv:0-1", TINY, progress=lambda *k: calls.append(k))
    assert calls == [(2,)]


def test_recipe_part_numbers_out_of_range_are_one_line_and_numpy_scalars_pass():
    """Fourier's decay_power below 0 left the image grey noise and above 2 saturated it (NaN past
    about 20); a jitter past the padding showed the model only grey (10**6 px: XLA asked for
    192 TB); rotate=1e9 degrees ran; np.float32(0.1) was refused as a scale out of range."""
    from jaxviz.param import Fourier
    from tests.tiny_model import build

    m, obj, lucid = build(), channel("conv", [1]), jaxviz.LUCID._replace(size=16, steps=1)
    for part, message in [(Fourier(decay_power=-5.0), "decay_power must be from 0 to 2"),
                          (Fourier(decay_power=30.0), "decay_power must be from 0 to 2"),
                          (Robustness(rotate=1e9), "rotate must be from 0 to 360 degrees"),
                          (Robustness(rotate=-10.0), "rotate must be from 0 to 360 degrees"),
                          (Robustness(jitter=10**6), r"jitter 1000000 px shifts .* use at most size \+ pad \(28 px\)"),
                          (Robustness(pad=0, jitter2=17), r"jitter2 17 px .* \(16 px\)")]:
        with pytest.raises(JaxvizError, match=message) as e:
            engine.check(m, obj, lucid._replace(**{"param" if isinstance(part, Fourier) else "transforms": part}))
        assert "\n" not in str(e.value)
    for fine in [Robustness(scale=np.float32(0.1), rotate=np.float32(10.0)), Robustness(scale=np.int64(0)),
                 Robustness(rotate=360.0, jitter=28, jitter2=28)]:
        engine.check(m, obj, lucid._replace(transforms=fine))
    engine.check(m, obj, lucid._replace(param=Fourier(decay_power=np.float32(2.0))))
    engine.check(m, obj, lucid._replace(param=Fourier(decay_power=0)))


def test_a_recipe_that_is_not_a_recipe_is_one_line():
    """engine.render(model, obj, "lucid") or None failed with AttributeError ('str' object has no attribute 'size')."""
    from tests.tiny_model import build

    for bad in ("lucid", None, (64, 40)):
        with pytest.raises(JaxvizError, match="recipe must be a jaxviz.Recipe such as jaxviz.SEED"):
            engine.render(build(), "conv:0", bad)


def test_render_checks_every():
    """engine.render(every=-1 or "2") failed in Python's TypeError; True was taken as 1."""
    from tests.tiny_model import build

    for bad in (-1, "2", True, 1.5):
        with pytest.raises(JaxvizError, match="every must be"):
            engine.render(build(), jaxviz.objectives.channel("conv", [1]), SEED._replace(size=8, steps=2), every=bad)


def test_snapshots_beyond_memory_are_refused_before_the_render(monkeypatch):
    """every=1 over a million steps kept every frame of every item to the end (about 49 GB an item at
    64 px): out of memory after hours; now one line first, naming the frames' size."""
    from tests.tiny_model import build

    monkeypatch.setenv("JAXVIZ_MAX_MEMORY", "64M")
    recipe = SEED._replace(size=16, steps=100_000)
    with pytest.raises(JaxvizError, match=r"the snapshots of every=1 over 100000 steps \(1 image\(s\) of 16 px\) "
                                          r"need about .* more than the .* available; take one every more steps"):
        engine.render(build(), jaxviz.objectives.channel("conv", [1]), recipe, every=1)
    r = engine.render(build(), jaxviz.objectives.channel("conv", [1]), SEED._replace(size=16, steps=4), every=2)
    assert r.frames.shape[1] == 3  # the start and steps 2 and 4


def test_transforms_pad_raw_pixels_with_their_own_grey():
    """SeedStart with a padded Robustness padded the raw 0-255 pixels with 0.5 (near black, not
    grey): the model saw a dark frame around every image."""
    from jaxviz.models.function import from_function
    from jaxviz.param import SeedStart
    from jaxviz.transforms import Robustness

    model = from_function(lambda p, x: {"input": x}, None, input_size=16)
    still = Robustness(pad=8, jitter=0, scale=0.0, rotate=0.0, jitter2=0)
    recipe = SEED._replace(size=16, steps=1, param=SeedStart(), transforms=still)
    r = engine.render(model, jaxviz.objectives.channel("input", [0]), recipe)
    assert 128 <= float(r.trace[0, 0]) <= 148  # the mean of the padded image's red: all of it 128-148


def test_render_checks_its_key_and_chunking_and_takes_text():
    """key=42 or a batch of keys failed inside JAX's fold_in, batch_size=-1 with an IndexError and 2.5
    inside JAX; the text of an objective, which the message offers, was refused."""
    from tests.tiny_model import build

    m, obj, recipe = build(), jaxviz.objectives.channel("conv", [1]), SEED._replace(size=8, steps=1)
    for bad, message in [(dict(key=42), "key must be one JAX random key"),
                         (dict(key=jax.random.split(jax.random.key(0), 2)), "key must be one JAX random key"),
                         (dict(batch_size=-1), "batch_size must be 1 or more"),
                         (dict(batch_size=2.5), "batch_size must be an integer"),
                         (dict(max_bytes=0), "max_bytes must be 1 or more")]:
        with pytest.raises(JaxvizError, match=message) as e:
            engine.render(m, obj, recipe, **bad)
        assert "\n" not in str(e.value)
    np.testing.assert_array_equal(engine.render(m, "conv:1", recipe, key=jax.random.PRNGKey(0)).images,
                                  engine.render(m, obj, recipe, key=jax.random.PRNGKey(0)).images)


def test_render_names_images_that_never_moved(caplog, model):
    """A layer that does not depend on the input, a unit that never fired or a rate of 0: the result
    was the start image, and the library (unlike the grid) said nothing."""
    from tests.tiny_model import build, build_constant

    with caplog.at_level("WARNING", logger="jaxviz"):
        jaxviz.render(build_constant(), "conv:0-1", TINY)
        assert "jaxviz: conv:0, conv:1 on model function kept the same objective at every step" in caplog.text
        assert "so their images never moved from the start: no gradient reached the image (a layer that ignores " \
               "the input, a saturated unit such as relu6 at 6, a stop_gradient), or the step size or learning rate " \
               "is too small to change its pixels" in caplog.text
        caplog.clear()
        jaxviz.render(build(), "conv:1", TINY, start=np.zeros((1, 16, 16, 3)))  # relu(conv(0)) = 0: no gradient
        assert "jaxviz: conv:1 on model function never fired (objective 0 at every step)" in caplog.text
        caplog.clear()
        jaxviz.render(model, "block1_conv1:5-6", TINY)  # 5 never fires (the grid's test), 6 does
        assert "jaxviz: block1_conv1:5 on model vgg16 never fired" in caplog.text and "dead_filter='redirect'" in caplog.text
        caplog.clear()
        jaxviz.render(build(), -jaxviz.objectives.channel("conv", [1, 2]), TINY._replace(optimizer=optax.sgd(0.0)))
        assert "items 0, 1 of the objective on model function kept the same objective" in caplog.text
        caplog.clear()
        jaxviz.render(build(), "conv:1-2", TINY)  # moved, or no steps: nothing said
        jaxviz.render(build_constant(), "conv:0", TINY._replace(steps=0))
        assert caplog.text == ""


def test_the_notice_of_unmoved_images_names_each_cause_it_can_have(caplog):
    """A saturated unit, a stop_gradient or a step so small it rounds away: the notice asked only "does
    the layer depend on the input?", which for a tiny step size pointed at the wrong fix."""
    from jaxviz.models import from_function
    from tests.tiny_model import build

    tiny = build()
    conv = lambda p, x: tiny.activations(p, x, ("conv",))["conv"]
    model = from_function(lambda p, x: {"sat": jax.nn.relu6(conv(p, x) + 1e4),
                                        "stop": jax.lax.stop_gradient(conv(p, x)) + 1.0}, tiny.params, input_size=16)
    small = TINY._replace(optimizer=optim.SeedAscent(1e-9))  # 128 + 1e-9 is 128 in float32
    cases = [(model, "sat:0", TINY, "a saturated unit such as relu6 at 6"), (model, "stop:0", TINY, "a stop_gradient"),
             (tiny, "conv:1", small, "step size or learning rate is too small")]
    for m, objective, recipe, cause in cases:
        caplog.clear()
        with caplog.at_level("WARNING", logger="jaxviz"):
            jaxviz.render(m, objective, recipe)
        assert "kept the same objective at every step" in caplog.text and cause in caplog.text, caplog.text
        assert "depend on the input?" not in caplog.text


def test_a_start_that_saturates_the_sigmoid_is_refused():
    """Pixel values given as a Pixel() start saturate its sigmoid (every pixel 1): no gradient, so the
    render returned a flat white image with only a notice that it never moved."""
    from tests.tiny_model import build

    recipe = Recipe(param=Pixel(), optimizer=optim.Adam(0.05), steps=2, size=16)
    with pytest.raises(JaxvizError, match=r"start item 1 makes an image whose every pixel is 0 or 1.*from_valid_rgb"):
        engine.render(build(), channel("conv", [0, 1]), recipe,
                      start=np.stack([np.zeros((16, 16, 3)), np.full((16, 16, 3), 128.0)]))
    from jaxviz.param import from_valid_rgb

    r = jaxviz.render(build(), "conv:0", recipe, start=from_valid_rgb(jnp.full((1, 16, 16, 3), 0.5)))
    assert r.tiles.shape == (1, 16, 16, 3)
