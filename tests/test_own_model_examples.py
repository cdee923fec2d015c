"""docs/own_model_examples.py (the README's "Your own model" examples) runs as written, at a tiny size."""
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

spec = importlib.util.spec_from_file_location("own_model_examples", ROOT / "docs" / "own_model_examples.py")
examples = importlib.util.module_from_spec(spec)
spec.loader.exec_module(examples)


@pytest.mark.parametrize("name, tiles", [("linen_example", 8), ("nnx_example", 4), ("keras_example", 8)])
def test_example_writes_its_grid(tmp_path, name, tiles):
    if name == "keras_example":
        os.environ.setdefault("KERAS_BACKEND", "jax")
        pytest.importorskip("keras")
    path = getattr(examples, name)(str(tmp_path / f"{name}.png"), size=16, steps=3)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (16, tiles * 16 + (tiles - 1) * 5, 3)
    assert grid.std() > 0  # not a blank image
