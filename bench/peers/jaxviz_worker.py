"""Peer: jaxviz itself, through its public API.

Runs in the project's .venv. Per request it calls::

    model = jaxviz.models.vgg(params, precision=precision)
    r = jaxviz.engine.render(model, jaxviz.objectives.channel(layer, range(n)),
                             jaxviz.SEED._replace(size=size, steps=steps), start=...)

with ``params = jaxviz.load_params(weights)`` loaded once at start. By default
(``--start shared``) it also passes ``start=`` the same numpy start images every
other peer uses (bench/peers/_protocol.py ``start_images``), so final images
and losses are comparable image by image; ``--start jaxviz`` lets jaxviz draw
its own start images from ``seed`` (its RNG) instead.

    .venv/bin/python bench/peers/jaxviz_worker.py --weights weights/vgg16_imagenet_notop.h5 --precision float32

Speaks the line protocol of bench/peers/_protocol.py.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# Import the working tree's jaxviz even when it is not installed in the venv.
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))

import numpy as np  # noqa: E402

from _protocol import Worker, start_images  # noqa: E402


class JaxvizWorker(Worker):
    impl = "jaxviz"

    def __init__(self, weights, precision, max_bytes=None, start="shared"):
        self.weights = weights
        self.start = start
        self.precision = precision
        self.mode = {"float32": "f32", "bfloat16": "bf16"}[precision]
        self.max_bytes = max_bytes

    def setup(self):
        import jax

        import jaxviz

        self.jax = jax
        self.jaxviz = jaxviz
        self.params = jaxviz.load_params(self.weights)
        jax.block_until_ready(self.params)
        versions = {"jax": jax.__version__, "jaxlib": _version("jaxlib"), "numpy": np.__version__}
        versions["jaxviz"] = getattr(jaxviz, "__version__", None) or _version("jaxviz")
        try:
            import flax

            versions["flax"] = flax.__version__
        except ImportError:
            pass
        from jaxviz import ops

        versions["convs"] = "/".join(ops.choice(self.precision)[:2])  # small/large layers' convs
        if "onednn" in versions["convs"]:
            from jaxviz import onednn

            versions["onednn"] = onednn.implementation((16, 32, 32, 128), 128, self.precision)
        return versions

    def threads(self):
        return os.cpu_count()

    def grid(self, layer, n, size, steps, seed):
        from jaxviz import engine, models, objectives
        from jaxviz.api import to_uint8

        jax, recipe = self.jax, self.jaxviz.SEED._replace(size=size, steps=steps)
        kwargs = dict(key=jax.random.key(seed))
        if self.max_bytes:
            kwargs["max_bytes"] = self.max_bytes
        if self.start == "shared":
            kwargs["start"] = start_images(n, size, seed)
        model = models.vgg(self.params, precision=self.precision)
        r = engine.render(model, objectives.channel(layer, range(n)), recipe, **kwargs)
        jax.block_until_ready(r)
        return to_uint8(recipe, r.images), np.asarray(r.values)


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="Keras VGG16 notop h5 file")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--plan", choices=("on", "off"), default="on",
                   help="off: the built-in constants instead of this machine's plan (jaxviz.plan)")
    p.add_argument("--max-bytes", type=int, default=None, help="passed to jaxviz.engine.render(max_bytes=...)")
    p.add_argument("--start", choices=("shared", "jaxviz"), default="shared",
                   help="start images: the peers' shared numpy ones (default) or jaxviz's own from its seed")
    a = p.parse_args()
    if a.plan == "off":
        os.environ["JAXVIZ_PLAN"] = "off"  # read by jaxviz.plan when render runs
    JaxvizWorker(a.weights, a.precision, a.max_bytes, a.start).serve()


if __name__ == "__main__":
    main()
