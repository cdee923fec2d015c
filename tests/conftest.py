import os
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

# Tests never read or write the user's plan cache (jaxviz.plan): built-in constants only.
os.environ["JAXVIZ_PLAN"] = "off"
# Nor the commands' compilation cache (jaxviz.compile_cache; tests/test_compile_cache.py turns it on).
os.environ["JAXVIZ_COMPILE_CACHE"] = "0"

# The oneDNN library compiled (once per machine, about 30 s) before any test: a command run by a
# test then never says so on its stderr.
from jaxviz import onednn  # noqa: E402

onednn.available()

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "weights" / "vgg16_imagenet_notop.h5"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def params():
    """The embedded VGG16 weights as device arrays, loaded once per test session."""
    from jaxviz.convert import load_keras_h5

    return jax.tree.map(jnp.asarray, load_keras_h5(EMBEDDED))


def interrupt(argv, delay: float, sig, **popen) -> tuple[int, str, float]:
    """Run ``argv``, send ``sig`` after ``delay`` s; (exit status, stderr, seconds from the signal to the exit)."""
    import subprocess
    import time

    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    try:
        time.sleep(delay)
        t0 = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        return p.returncode, err, time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
