"""Models the engine renders: the interface (``base``) and adapters for VGG, Flax and Keras models."""
from jaxviz.models.base import LOGITS, LayerInfo, Model
from jaxviz.models.vgg import vgg, vgg16, vgg19

__all__ = ["LOGITS", "LayerInfo", "Model", "vgg", "vgg16", "vgg19"]
