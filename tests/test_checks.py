"""jaxviz.checks, alone and where the library calls it: every bad number is one JaxvizError
before any work (issue 12, items 2, 3, 4 and 8)."""
import jax.numpy as jnp
import numpy as np
import pytest

import jaxviz
from jaxviz import checks, optim
from jaxviz.errors import JaxvizError
from jaxviz.lucid import LucidConfig


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("value,message", [
    (True, "must be an integer, not True"),
    (np.bool_(False), "must be an integer"),
    (2.5, "must be an integer, not 2.5"),
    (64.0, "must be an integer"),
    ("10", "must be an integer, not '10'"),
    (None, "must be an integer"),
    (10**30, "must be 1 to 100"),
    (0, "must be 1 to 100"),
])
def test_integer_refuses(value, message):
    with pytest.raises(JaxvizError) as e:
        checks.integer("size", value, 1, 100)
    assert message in one_line(e)


def test_integer_accepts_python_and_numpy_ints():
    assert checks.integer("size", 7, 1, 100) == 7
    v = checks.integer("size", np.int64(7), 1, 100)
    assert v == 7 and type(v) is int


@pytest.mark.parametrize("value,message", [
    (float("nan"), "finite number, not nan"), (float("inf"), "finite number, not inf"),
    (-float("inf"), "finite number, not -inf"), (True, "must be a number"), ("1", "must be a number"),
])
def test_real_refuses_non_finite_and_non_numbers(value, message):
    with pytest.raises(JaxvizError) as e:
        checks.real("step_size", value)
    assert message in one_line(e)


def test_real_positive_and_range():
    assert checks.real("lr", np.float32(0.5), positive=True) == 0.5
    with pytest.raises(JaxvizError, match="must be positive"):
        checks.real("lr", 0.0, positive=True)
    with pytest.raises(JaxvizError, match="must be -1 to 1"):
        checks.real("x", 2.0, -1, 1)


@pytest.mark.parametrize("value", [1e300, 0.0, -1.0, -1e300])
def test_rate_names_its_true_range(value):
    """A learning rate or step size is more than 0 and at most float32's largest: the message says
    that range (for 1e300 it named -3.4e38 to 3.4e38)."""
    with pytest.raises(JaxvizError) as e:
        checks.rate("lr", value)
    assert f"lr must be more than 0 and at most 3.4028235e+38 (the largest float32), not {value}" == one_line(e)
    assert checks.rate("lr", np.float32(0.5)) == 0.5 and checks.rate("lr", checks.F32_MAX) == checks.F32_MAX


def test_lucid_settings_refuse_a_learning_rate_past_float32():
    with pytest.raises(JaxvizError, match="lr must be more than 0 and at most"):
        checks.lucid_settings(LucidConfig(lr=1e300))


@pytest.mark.parametrize("filters,message", [
    ([1.5], "must be an integer, not 1.5"),
    ("10", "not the string '10'"),
    (np.array([True, False]), "not a bool array"),
    ([True], "must be an integer, not True"),
    (np.zeros((2, 2), int), "flat list"),
    (5, "list of integers"),
    ([64], "filter 64 is out of range for block1_conv1, which has 64 filters (0-63)"),
    ([-1], "filter -1 is out of range"),
])
def test_filter_list_refuses(filters, message):
    with pytest.raises(JaxvizError) as e:
        checks.filter_list(filters, 64, "block1_conv1")
    assert message in one_line(e)


def test_filter_list_accepts_ranges_and_int_arrays():
    assert checks.filter_list(range(3), 64) == [0, 1, 2]
    assert checks.filter_list(np.arange(3, dtype=np.int32), 64) == [0, 1, 2]
    assert checks.filter_list(jnp.arange(3), 64) == [0, 1, 2]  # JAX arrays too (were "must be an integer")
    assert checks.filter_list([jnp.int32(4)], 64) == [4]
    with pytest.raises(JaxvizError, match="not a bool array"):
        checks.filter_list(jnp.array([True, False]), 64)
    assert checks.filter_list([np.int64(5)], 64) == [5]


def test_finite():
    checks.finite("x", np.ones(3), np.zeros(0), np.arange(3))
    with pytest.raises(JaxvizError, match="not finite .* lower the step size"):
        checks.finite("the images", np.ones(3), np.array([1.0, np.nan]))


def test_params_for():
    with pytest.raises(JaxvizError, match="params has no kernel and bias for layer block1_conv1"):
        checks.params_for({}, "block1_conv2", ["block1_conv1", "block1_conv2"])
    with pytest.raises(JaxvizError, match="the dict of weights"):
        checks.params_for(None, "block1_conv1", ["block1_conv1"])
    ok = {"kernel": 0, "bias": 0}
    checks.params_for({"block1_conv1": ok}, "block1_conv1", ["block1_conv1", "block1_conv2"])


def test_memory_budget_names_the_estimate_and_the_limit():
    need = checks.estimate_bytes(10 * 1024**3, 64, 2, 1)
    assert need == 20 * 1024**3 + 64 * 64 * 3 * 5
    with pytest.raises(JaxvizError) as e:
        checks.memory_budget("block1_conv1", 10 * 1024**3, 64, 2, 1, 8 * 1024**3)
    msg = one_line(e)
    assert "needs about 20 GiB" in msg and "the 8 GiB available" in msg
    checks.memory_budget("block1_conv1", 1024, 64, 2, 1, 8 * 1024**3)


def test_memory_budget_counts_the_animation_frames():
    """The frames of --animate (41 an image, kept to the end of the run) were not in the estimate."""
    plain = checks.estimate_bytes(1024, 64, 2, 10)
    assert checks.estimate_bytes(1024, 64, 2, 10, 41) == plain + 10 * 41 * 64 * 64 * 3 * checks.FRAME_BYTES
    checks.memory_budget("conv", 1024, 64, 2, 10, plain)
    with pytest.raises(JaxvizError) as e:
        checks.memory_budget("conv", 1024, 64, 2, 10, plain, 41)
    assert "with 41 animation frames each" in one_line(e) and "or no animation" in one_line(e)


def test_memory_limit_and_env():
    assert checks.parse_bytes("8G") == 8 * 1024**3 and checks.parse_bytes("512MiB") == 512 * 1024**2
    assert checks.parse_bytes("1000") == 1000
    with pytest.raises(JaxvizError, match="JAXVIZ_MAX_MEMORY"):
        checks.parse_bytes("lots")
    assert checks.memory_limit(env={"JAXVIZ_MAX_MEMORY": "1M"}) == 1024**2
    assert checks.memory_limit(device_bytes=5, env={}) == 5
    assert 0 < checks.host_memory()


@pytest.mark.parametrize("text", ["1e300T", "1e-3", "0.0001K"])
def test_max_memory_overflowing_or_below_a_byte_is_not_a_size(text):
    with pytest.raises(JaxvizError, match="is not a size"):  # was an OverflowError, or a limit of 0 bytes
        checks.parse_bytes(text)


def test_run_budget_refuses_a_huge_size_at_once():
    with pytest.raises(JaxvizError) as e:
        checks.run_budget("block1_conv1", 100000, 64, 1, env={})
    assert "100000 px at block1_conv1" in one_line(e) and "GiB available" in str(e.value)


# the library: render, ascend, lucid ------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    (dict(size=2.5), "size must be an integer, not 2.5"),
    (dict(steps=2.5), "steps must be an integer, not 2.5"),
    (dict(steps=10**10), "steps must be 0 to 1000000"),
    (dict(seed=2**70), "seed must be 0 to 4294967295"),
    (dict(seed=True), "seed must be an integer"),
    (dict(step_size=float("nan")), "step_size must be a finite number"),
    (dict(step_size=float("-inf")), "step_size must be a finite number"),
    (dict(step_size=1e39), "step_size must be"),
    (dict(size=100000), "needs about"),
    (dict(filters=[1.5]), "must be an integer, not 1.5"),
    (dict(filters="10"), "not the string '10'"),
    (dict(filters=np.ones(3, bool)), "bool array"),
    (dict(recipe="lucid", lucid_config=LucidConfig(size=16, steps=2, lr=float("inf"))), "lr must be a finite"),
    (dict(recipe="lucid", lucid_config=LucidConfig(size=16, steps=2, scale=float("nan"))), "scale must be a finite"),
    (dict(recipe="lucid", filters=[0.5]), "must be an integer"),
])
def test_render_refuses_bad_numbers_with_one_line(params, kwargs, message):
    args = dict(filters=[0, 1], size=16, steps=2, seed=0, step_size=1.0, recipe="seed")
    args.update(kwargs)
    with pytest.raises(JaxvizError) as e:
        jaxviz.render(params, _channel("block1_conv1", args["filters"]), _recipe(**args), seed=args["seed"])
    assert message in one_line(e)


def _channel(layer, filters):
    from jaxviz.objectives import channel

    return channel(layer, filters)


def _recipe(size, steps, step_size, recipe, lucid_config=None, **_):
    from jaxviz.lucid import recipe as lucid_recipe
    from jaxviz.optim import SeedAscent

    if recipe == "lucid":
        return lucid_recipe(lucid_config or LucidConfig(size=size, steps=steps))
    return jaxviz.SEED._replace(size=size, steps=steps, optimizer=SeedAscent(step_size))


def test_render_refuses_params_without_the_layers(params):
    for bad in ({}, {"block1_conv1": params["block1_conv1"]}):
        with pytest.raises(JaxvizError) as e:
            jaxviz.render(bad, "block1_conv2:0", jaxviz.SEED._replace(size=16, steps=1))
        assert "load_params" in one_line(e)


def test_non_finite_results_are_refused(params):
    bad = dict(params)  # finite weights whose activations overflow float32 (NaN weights are refused up front)
    bad["block1_conv1"] = {"kernel": params["block1_conv1"]["kernel"] * 1e37, "bias": params["block1_conv1"]["bias"]}
    with pytest.raises(JaxvizError) as e:
        jaxviz.render(bad, "block1_conv1:0,1", jaxviz.SEED._replace(size=16, steps=2))
    assert "not finite" in one_line(e)


def test_ascend_and_lucid_check_filters_before_converting(params):
    from jaxviz.ascent import AscentConfig, ascend
    from jaxviz.lucid import lucid

    with pytest.raises(JaxvizError, match="1.5"):
        ascend(params, "block1_conv1", [1.5], config=AscentConfig(size=16, steps=1))
    with pytest.raises(JaxvizError, match="string"):
        lucid(params, "block1_conv1", "10", config=LucidConfig(size=16, steps=1))


def test_recipe_fields_are_checked_as_the_kind_of_their_defaults(params):
    """A string flag counted as true ("no" turned the transforms on), a float pad reached jnp.pad."""
    from jaxviz.lucid import lucid
    from jaxviz.param import Fourier
    from jaxviz.transforms import Robustness

    for field in ("decorrelate", "transforms"):
        with pytest.raises(JaxvizError, match=f"{field} must be True or False, not 'no'"):
            lucid(params, "block1_conv1", [0], config=LucidConfig(size=16, steps=1, **{field: "no"}))
    for part, message in ((dict(param=Fourier(decorrelate=1)), "decorrelate must be True or False, not 1"),
                          (dict(transforms=Robustness(pad=2.5)), "pad must be an integer, not 2.5"),
                          (dict(transforms=Robustness(rotate="10")), "rotate must be a number, not '10'")):
        with pytest.raises(JaxvizError) as e:
            jaxviz.render(params, "block1_conv1:0", jaxviz.SEED._replace(size=16, steps=1, **part))
        assert message in one_line(e)
    assert checks.field("x", 3, None) == 3 and checks.field("x", 0.5, 1.0) == 0.5  # unchanged when right
    assert checks.field("name", "abc", "default") == "abc"  # other kinds: as they are


def test_finite_refuses_bfloat16_too():
    with pytest.raises(JaxvizError, match="not finite"):
        checks.finite("the values", np.array([1.0, np.inf], jnp.bfloat16))


def test_showable_refuses_images_the_seed_deprocess_would_flatten(params):
    """A huge but finite step size: the images are finite, but the deprocess's float32 variance
    is infinite and every pixel would come out the same grey (checked: all 127 before)."""
    checks.showable("x", np.full((2, 8, 8, 3), 1e15, np.float32) * np.arange(3))
    with pytest.raises(JaxvizError, match="too large to show .* lower the step size"):
        checks.showable("the images", np.arange(192, dtype=np.float32).reshape(1, 8, 8, 3) * 1e18)
    with pytest.raises(JaxvizError, match="too large to show"):  # nearly flat, but its float32 mean overflows
        checks.showable("the images", np.full((1, 64, 64, 3), 3e35, np.float32))
    recipe = jaxviz.SEED._replace(size=16, steps=2, optimizer=optim.SeedAscent(1e20))
    with pytest.raises(JaxvizError, match="too large to show"):
        jaxviz.render(params, "block1_conv1:0", recipe)


def test_a_backend_jax_cannot_start_is_one_line_naming_jax_platforms(monkeypatch):
    """JAX_PLATFORMS=cuda on a machine without a visible NVIDIA GPU failed in the commands' first
    device call with a bare AssertionError from inside JAX; tpu without libtpu or a typo with
    JAX's RuntimeError: tracebacks, exit 1. checks.backend says it in one line with the fix."""
    import jax

    def fails(error):
        def devices(*a):
            raise error
        return devices

    monkeypatch.setattr(jax, "devices", fails(AssertionError()))
    with pytest.raises(JaxvizError, match=r"^JAX cannot start the backend JAX_PLATFORMS='cuda' asks for \(no such "
                                          r"device is visible\); unset JAX_PLATFORMS \(or set it to cpu\)"):
        checks.backend({"JAX_PLATFORMS": "cuda"})
    monkeypatch.setattr(jax, "devices", fails(RuntimeError(
        "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so (set JAX_PLATFORMS='' to "
        "automatically choose an available backend)")))
    with pytest.raises(JaxvizError) as e:
        checks.backend({"JAX_PLATFORMS": "tpu"})
    assert "JAX_PLATFORMS='tpu' asks for (INTERNAL: Failed to open libtpu.so);" in str(e.value)
    with pytest.raises(JaxvizError, match=r"JAX cannot start a backend \(INTERNAL.*check the jax and jaxlib"):
        checks.backend({})
    monkeypatch.setattr(jax, "devices", fails(RuntimeError(  # JAX_PLATFORMS=gpu where no GPU plugin is installed
        "Backend 'rocm' is not in the list of known backends: ['cpu', 'tpu'].")))
    with pytest.raises(JaxvizError, match=r"JAX_PLATFORMS='gpu' asks for \(this jax has no plugin for it; on an "
                                          r"NVIDIA GPU machine: pip install -U 'jax\[cuda13\]'\)"):
        checks.backend({"JAX_PLATFORMS": "gpu"})
    monkeypatch.undo()
    checks.backend({})  # this machine's own backend starts


def test_images_not_finite_from_an_own_optimizer_name_it_in_the_fix():
    """The hint said only "lower the step size ... check the weights", which does not fit an optax
    transformation of the user's that makes NaN (after its first step: a first one is refused before the render)."""
    import jax.numpy as jnp
    import optax

    from tests.tiny_model import build

    later = lambda u, s, p=None: (-u * jnp.where(s > 0, jnp.nan, 1.0), s + 1)
    nan = optax.GradientTransformation(lambda p: jnp.zeros((), jnp.int32), later)
    with pytest.raises(JaxvizError, match=r"came out not finite.*optax optimizer of your own"):
        jaxviz.render(build(), "conv:0", jaxviz.SEED._replace(size=16, steps=2, optimizer=nan))


def test_a_float16_model_that_overflows_is_named_with_the_fix():
    """A model computing in float16 (at most 65504) overflows on the seed's 0-255 pixels, and was told
    to lower the step size or learning rate, which cannot help."""
    from tests.tiny_model import build_half

    seed = jaxviz.SEED._replace(size=8, steps=1)
    with pytest.raises(JaxvizError) as e:
        jaxviz.render(build_half(), "conv:0", seed)
    msg = one_line(e)
    assert "not finite (NaN or infinity); layer conv of model function computes in float16" in msg, msg
    assert "float32 params and compute" in msg and "raw 0-255 pixels" in msg and "step size" not in msg
    with pytest.raises(JaxvizError, match=r"; model function has float16 params \(its one array\), and float16 over"):
        jaxviz.render(build_half("float32"), "conv:0", seed)  # float32 layers, float16 inside
    with pytest.raises(JaxvizError, match="float32 params and compute, or give preprocess a smaller input scale$"):
        jaxviz.render(build_half(), "conv:0", seed._replace(param=jaxviz.param.Pixel()))  # RGB, then preprocess


def test_takes_counts_positional_arguments():
    assert checks.takes(lambda a: a, 1) and not checks.takes(lambda: 0, 1) and not checks.takes(lambda a: a, 2)
    assert checks.takes(lambda *a: 0, 2) and checks.takes(lambda a, b=0: 0, 1) and not checks.takes(3, 0)
