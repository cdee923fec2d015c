"""jaxviz: what the filters of a convolutional network respond to, by gradient ascent in JAX.

>>> import jaxviz
>>> params = jaxviz.load_params()                      # the embedded VGG16 ImageNet weights
>>> tiles = jaxviz.render(params, "block3_conv1", range(64))  # (64, 64, 64, 3) uint8
>>> jaxviz.save_png("block3_conv1.png", jaxviz.make_grid(tiles, cols=8, margin=5))
"""
from jaxviz.cli_run import install_startup_handlers

install_startup_handlers()  # only in a `python -m jaxviz.grid` / `jaxviz-atlas` process: Ctrl-C during imports
from jaxviz.api import load_params, render  # noqa: E402
from jaxviz.ascent import AscentConfig, AscentResult, ascend
from jaxviz.errors import JaxvizError
from jaxviz.image import deprocess, make_grid, save_png
from jaxviz.lucid import LucidConfig, LucidResult, lucid
from jaxviz.model import VGG, VGG16, VGG19, VGGSpec, conv_layers

__all__ = [
    "AscentConfig", "AscentResult", "JaxvizError", "LucidConfig", "LucidResult", "VGG", "VGG16", "VGG19", "VGGSpec", "ascend",
    "conv_layers", "deprocess", "load_params", "lucid", "make_grid", "render", "save_png",
]
__version__ = "0.1.0"
