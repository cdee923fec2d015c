"""jaxviz.optim: the optimizer specs refuse rates that would not ascend, at construction."""
import math

import numpy as np
import pytest

import jaxviz
from jaxviz import optim
from jaxviz.errors import JaxvizError


@pytest.mark.parametrize("spec, name", [(optim.Adam, "lr"), (optim.SeedAscent, "step_size")])
@pytest.mark.parametrize("value, message", [
    (-1.0, "must be more than 0"), (0.0, "must be more than 0"), (1e300, "at most 3.4028235e+38"),
    (math.nan, "must be a finite number"), (-math.inf, "must be a finite number"), ("0.1", "must be a number"),
    (1e-46, "at least 1.1754944e-38"),  # 0 in float32: the images never moved
])
def test_a_rate_that_would_not_ascend_is_refused_at_construction(spec, name, value, message):
    with pytest.raises(JaxvizError) as e:
        spec(value)
    text = str(e.value)
    assert text.startswith(f"{name} must be") and message in text and "\n" not in text


def test_good_specs_stay_plain_hashable_named_tuples():
    a = optim.Adam(np.float32(0.5))
    assert a == optim.Adam(0.5) and hash(a) == hash(optim.Adam(0.5)) and a.lr == 0.5 and a._asdict() == {"lr": 0.5}
    assert optim.SeedAscent() == (1.0,) and optim.SeedAscent(2)._replace(step_size=3.0).step_size == 3.0


def test_a_bad_rate_slipped_in_by_replace_is_refused_by_render():
    """_replace makes a copy without the constructor's check: the engine checks the spec again."""
    from tests.tiny_model import build

    recipe = jaxviz.SEED._replace(size=16, steps=1, optimizer=optim.SeedAscent()._replace(step_size=-1.0))
    with pytest.raises(JaxvizError, match="step_size must be more than 0"):
        jaxviz.render(build(), "conv:0", recipe)
    recipe = jaxviz.LUCID._replace(size=16, steps=1, optimizer=optim.Adam()._replace(lr=-0.05))
    with pytest.raises(JaxvizError, match="lr must be more than 0"):
        jaxviz.render(build(), "conv:0", recipe)


def test_an_optax_transformation_that_cannot_step_is_refused_before_the_render():
    """An update returning the updates alone, or a transformation of non-functions, failed inside
    the compiled step with Python's ValueError or TypeError; by tracing, one line names it first."""
    import optax

    from tests.tiny_model import build

    updates_alone = optax.GradientTransformation(lambda p: optax.EmptyState(), lambda u, s, p=None: u)
    reshaping = optax.GradientTransformation(lambda p: optax.EmptyState(), lambda u, s, p=None: (u[None, None], s))
    for bad, message in [(updates_alone, "update returned an array, not"), (optax.GradientTransformation(1, 2), "'int' object is "
                         "not callable"), (reshaping, "updates change the parameters' shape (16, 16, 3)")]:
        with pytest.raises(JaxvizError) as e:
            jaxviz.render(build(), "conv:0", jaxviz.SEED._replace(size=16, steps=1, optimizer=bad))
        assert message in str(e.value) and "(updates, new_state)" in str(e.value) and "\n" not in str(e.value)
    r = jaxviz.render(build(), "conv:0", jaxviz.SEED._replace(size=16, steps=1, optimizer=optax.sgd(1.0)))
    assert r.tiles.shape == (1, 16, 16, 3)


def test_an_optax_transformation_stepping_against_the_objective_is_refused():
    """optax.sgd(-1.0) descended the objective silently (images darkening from the start); a warm-up
    from a rate of 0 (a first step of nothing) and ordinary optimizers still run."""
    import optax

    from tests.tiny_model import build

    for bad in (optax.sgd(-1.0), optax.chain(optax.adam(0.05), optax.scale(-1.0))):
        with pytest.raises(JaxvizError, match=r"steps the images against the objective .*positive learning rate"):
            jaxviz.render(build(), "conv:0", jaxviz.LUCID._replace(size=16, steps=1, optimizer=bad))
    for good in (optax.sgd(1.0), optax.adam(optax.linear_schedule(0.0, 0.05, 10)), optax.adamw(0.05)):
        assert jaxviz.render(build(), "conv:0", jaxviz.LUCID._replace(size=16, steps=1, optimizer=good)).tiles.shape \
            == (1, 16, 16, 3)


def test_an_optax_transformation_with_a_rate_of_nan_or_infinity_is_refused_before_the_render(monkeypatch):
    """optax.sgd(nan) ran the whole render, then said only that the images "came out not finite"."""
    import optax

    from jaxviz import engine
    from tests.tiny_model import build

    monkeypatch.setattr(engine, "run_chunk", lambda *a: pytest.fail("rendered"))
    for bad in (optax.sgd(math.nan), optax.adam(math.inf), optax.chain(optax.sgd(1.0), optax.scale(math.nan))):
        with pytest.raises(JaxvizError, match=r"recipe.optimizer's first step is not finite .*give a finite one") as e:
            jaxviz.render(build(), "conv:0", jaxviz.SEED._replace(size=16, steps=1, optimizer=bad))
        assert "\n" not in str(e.value)
