"""A tiny plain-function model for the command-line tests: ``--model tests.tiny_model:build``."""
import jax


def build():
    from jaxviz.models import from_function

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"conv": jax.random.normal(k1, (3, 3, 3, 4)) * 0.3, "dense": jax.random.normal(k2, (4, 5)) * 0.3}

    def fn(p, x):
        h = jax.lax.conv_general_dilated(x[None], p["conv"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
        h = jax.nn.relu(h)
        return {"conv": h, "dense": h.mean(axis=(0, 1)) @ p["dense"]}

    return from_function(fn, params, input_size=16)


def broken():
    """A --model function whose own code fails: the command lines say so in one line."""
    raise RuntimeError("no weights here")


def build_paths():
    """Layers named like module paths, one of them climbing out of a folder: grids land in --out."""
    from jaxviz.models import from_function

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 4)) * 0.3

    def fn(p, x):
        h = jax.nn.relu(jax.lax.conv_general_dilated(x[None], p, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0])
        return {"stem/conv": h, "../evil": 2 * h, "chunks": 3 * h}

    return from_function(fn, kernel, input_size=16)


def build_nan():
    """Layer "conv" is fine and layer "bad" is NaN everywhere: a grid of conv, then a non-finite one."""
    import jax.numpy as jnp

    model = build()
    fn = lambda p, x: {"conv": model.activations(p, x, ("conv",))["conv"],
                       "bad": model.activations(p, x, ("conv",))["conv"] * jnp.nan}
    from jaxviz.models import from_function

    return from_function(fn, model.params, input_size=16)


def build_half(out="float16"):
    """A conv computing in float16 (at most 65504) that overflows on the seed's 0-255 pixels, and on RGB
    in [0, 1] through its preprocess (x 1e4); ``out``: the dtype its layer is given back in."""
    import jax.numpy as jnp
    from jaxviz.models import from_function

    kernel = jnp.full((3, 3, 3, 4), 30.0, jnp.float16)
    conv = lambda p, x: jax.lax.conv_general_dilated(x.astype(jnp.float16)[None], p, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
    return from_function(lambda p, x: {"conv": conv(p, x).astype(out)}, kernel, input_size=8,
                         preprocess=lambda x: x * 1e4)


def build_colon():
    """A layer named with ':' (``stem:conv``), as user models may name theirs: objectives' text
    takes its channels after the last ':' (``stem:conv:0-3``)."""
    from jaxviz.models import from_function

    model = build()
    return from_function(lambda p, x: {"stem:conv": model.activations(p, x, ("conv",))["conv"]}, model.params,
                         input_size=16)


def build_comma():
    """Layers named with ',' (``conv,3x3``) beside ``conv``: --layers takes the name whole."""
    from jaxviz.models import from_function

    model = build()
    conv = lambda p, x: model.activations(p, x, ("conv",))["conv"]
    return from_function(lambda p, x: {"conv": conv(p, x), "conv,3x3": 2 * conv(p, x)}, model.params, input_size=16)


def build_fixed():
    """A classifier's shape: a flatten before a dense head, so it takes only its own 16 px input."""
    from jaxviz.models import from_function

    k1, k2 = jax.random.split(jax.random.key(1))
    params = {"conv": jax.random.normal(k1, (3, 3, 3, 4)) * 0.3, "dense": jax.random.normal(k2, (16 * 16 * 4, 5)) * 0.03}

    def fn(p, x):
        h = jax.nn.relu(jax.lax.conv_general_dilated(x[None], p["conv"], (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0])
        return {"conv": h, "logits": h.reshape(-1) @ p["dense"]}

    return from_function(fn, params, input_size=16)


def build_constant():
    """A layer that does not depend on the input: its objective never moves, the image never changes."""
    from jaxviz.models import from_function

    kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 4))
    return from_function(lambda p, x: {"conv": jax.numpy.ones((16, 16, 4)) + 0 * p.sum()}, kernel, input_size=16)


def build_clash():
    """Layers whose folders meet another's files ("a" and "a/index.html"), differ only in case, or whose
    name is too long for a folder."""
    from jaxviz.models import from_function

    model = build()
    names = ["a", "a/index.html", "a/f000.png", "a/c0000.json", "Conv", "conv", "y" * 300]
    conv = lambda p, x: model.activations(p, x, ("conv",))["conv"]
    return from_function(lambda p, x: {n: (i + 1) * conv(p, x) for i, n in enumerate(names)}, model.params,
                         input_size=16)
