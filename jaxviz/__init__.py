"""jaxviz: what the units of a convolutional network respond to, by gradient ascent in JAX.

>>> import jaxviz
>>> model = jaxviz.models.vgg16()                          # the embedded VGG16 ImageNet weights
>>> tiles = jaxviz.render(model, "block3_conv1:0-63").tiles  # (64, 64, 64, 3) uint8, the book's recipe
>>> jaxviz.save_png("block3_conv1.png", jaxviz.make_grid(tiles, cols=8, margin=5))

Parts: ``jaxviz.models`` (the model interface and adapters), ``jaxviz.objectives``
(channel, neuron, direction, deepdream, class_logit, penalties, + - *), ``jaxviz.engine``
(``Recipe``, ``SEED``, ``LUCID``: parameterization, transforms, optimizer, steps).
"""
from jaxviz.cli_run import install_startup_handlers

install_startup_handlers()  # only in a `python -m jaxviz.grid` / `jaxviz-atlas` process: Ctrl-C during imports
from jaxviz import models, objectives  # noqa: E402
from jaxviz.api import Rendered, load_params, render  # noqa: E402
from jaxviz.engine import LUCID, SEED, Recipe  # noqa: E402
from jaxviz.errors import JaxvizError
from jaxviz.image import deprocess, make_grid, save_png
from jaxviz.model import VGG, VGG16, VGG19, VGGSpec, conv_layers

__all__ = [
    "JaxvizError", "LUCID", "Recipe", "Rendered", "SEED", "VGG", "VGG16", "VGG19", "VGGSpec", "conv_layers",
    "deprocess", "load_params", "make_grid", "models", "objectives", "render", "save_png",
]
__version__ = "0.2.0"
