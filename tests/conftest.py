import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

# Tests never read or write the user's plan cache (jaxviz.plan): built-in constants only.
os.environ["JAXVIZ_PLAN"] = "off"

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "weights" / "vgg16_imagenet_notop.h5"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def params():
    """The embedded VGG16 weights as device arrays, loaded once per test session."""
    from jaxviz.convert import load_keras_h5

    return jax.tree.map(jnp.asarray, load_keras_h5(EMBEDDED))
