"""The line protocol every benchmark worker speaks, plus the maths they share.

Stdlib + numpy only: this file is imported by workers running in three different
virtual environments (bench/.venvs/tf, bench/.venvs/torch, the project's .venv).

Protocol
    The worker starts, loads its library and weights, then writes one *hello*
    line on stdout::

        {"hello": true, "impl": "torch_batched", "mode": "f32",
         "versions": {"torch": "2.13.0+cpu", ...}, "threads": 2, "pid": 123,
         "load_seconds": 0.8}

    After that, for each JSON request read from one stdin line it writes exactly
    one JSON reply line on stdout::

        request: {"layer": "block3_conv1", "filters": 64, "size": 64, "steps": 40,
                  "save": "/tmp/x.npz" (optional), "seed": 0 (optional)}
        reply:   {"seconds": 12.3, "first": true, "loss_mean": 41.2,
                  "rss_mb": 812.0, "layer": ..., "filters": ..., ...}

    ``seconds`` is the wall time of the grid only (not of saving). ``first`` is
    true on the first request for that layer in this process (graph building,
    tracing, compilation or warm-up happen then). ``loss_mean`` is the mean over
    filters of the final loss, evaluated on the final image (after the last
    update) by one extra forward pass inside the timed region, the way
    ``jaxviz.render(..., return_raw=True)`` defines its final losses, so every
    peer does the same work. ``rss_mb`` is the process's peak RSS so far
    (ru_maxrss / 1024).
    A failing request gets ``{"error": "..."}`` and the worker keeps serving.
    The request ``{"quit": true}`` (or end of stdin) stops the worker.

    Logs go to stderr. Anything a library prints on stdout is redirected to
    stderr too, so the protocol stream stays clean.

With ``save`` the worker writes an .npz with ``images`` (uint8, n x size x size
x 3, the book's deprocess of the final images) and ``losses`` (float32, n).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

import numpy as np

# VGG16's convolutional base: (name, in_channels, out_channels, pools_before).
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_convs():
    """[(name, cin, cout, pools_before)] for the 13 conv layers of VGG16, in order."""
    out, cin = [], 3
    for b, (n, c) in enumerate(zip(VGG16_BLOCKS, VGG16_CHANNELS), start=1):
        for i in range(1, n + 1):
            out.append((f"block{b}_conv{i}", cin, c, b - 1))
            cin = c
    return out


def convs_up_to(layer):
    """The conv layers a model needs to compute ``layer``'s output (inclusive)."""
    convs = vgg16_convs()
    names = [c[0] for c in convs]
    if layer not in names:
        raise ValueError(f"unknown conv layer {layer!r}; valid: {', '.join(names)}")
    return convs[: names.index(layer) + 1]


def load_h5_weights(path, layer=None):
    """{conv name: (kernel HWIO float32, bias float32)} from the legacy Keras h5 file.

    Only the convs up to ``layer`` when it is given. Reads the groups' own
    ``weight_names`` attribute, so both ``block1_conv1_W_1:0`` and
    ``block1_conv1/kernel:0`` spellings work.
    """
    import h5py

    wanted = [c[0] for c in (convs_up_to(layer) if layer else vgg16_convs())]
    out = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        for name in wanted:
            g = root[name]
            wnames = [w.decode() if isinstance(w, bytes) else str(w) for w in g.attrs["weight_names"]]
            arrays = [np.asarray(g[w], dtype=np.float32) for w in wnames]
            kernel, bias = sorted(arrays, key=lambda a: -a.ndim)
            out[name] = (kernel, bias)
    return out


def start_images(n, size, seed=0):
    """The seed's start images for a whole grid: uniform[0,1) x 20 + 128, float32.

    Image i is the start for filter i. Every peer uses this (jaxviz through
    ``render(start=...)``), so all peers start from identical images and their
    final images and losses are comparable image by image.
    """
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32) * 20.0 + 128.0)


def deprocess(x):
    """The book's deprocess_image, per image of a batch (n, h, w, 3) -> uint8."""
    x = np.array(x, dtype=np.float64, copy=True)
    axes = tuple(range(1, x.ndim))
    x -= x.mean(axis=axes, keepdims=True)
    x /= x.std(axis=axes, keepdims=True) + 1e-5
    x *= 0.1
    x += 0.5
    x = np.clip(x, 0, 1)
    x *= 255
    return np.clip(x, 0, 255).astype(np.uint8)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def _claim_stdout():
    """Keep the real stdout for replies; send fd 1 (and sys.stdout) to stderr."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", buffering=1)


class Worker:
    """Subclass and implement ``setup()`` (returns versions dict) and ``grid()``.

    ``grid(layer, n, size, steps, seed)`` returns ``(uint8 images, losses)`` and
    must finish all its work (block until ready) before returning; the timing
    wraps that call only.
    """

    impl = "worker"
    mode = ""

    def setup(self) -> dict:
        raise NotImplementedError

    def grid(self, layer, n, size, steps, seed):
        raise NotImplementedError

    def threads(self):
        return None

    def serve(self):
        out = _claim_stdout()
        t0 = time.perf_counter()
        try:
            versions = self.setup()
        except Exception as e:  # report, then exit non-zero
            traceback.print_exc()
            out.write(json.dumps({"hello": False, "impl": self.impl, "error": f"{type(e).__name__}: {e}"}) + "\n")
            out.flush()
            sys.exit(1)
        hello = {
            "hello": True,
            "impl": self.impl,
            "mode": self.mode,
            "versions": versions,
            "python": sys.version.split()[0],
            "threads": self.threads(),
            "pid": os.getpid(),
            "load_seconds": time.perf_counter() - t0,
            "rss_mb": peak_rss_mb(),
        }
        out.write(json.dumps(hello) + "\n")
        out.flush()
        seen = set()
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
                if req.get("quit"):
                    break
                layer = req["layer"]
                n, size, steps = int(req["filters"]), int(req["size"]), int(req["steps"])
                seed = int(req.get("seed", 0))
                first = layer not in seen
                log(f"[{self.impl}{'-' + self.mode if self.mode else ''}] {layer} n={n} size={size} steps={steps} first={first}")
                t = time.perf_counter()
                images, losses = self.grid(layer, n, size, steps, seed)
                seconds = time.perf_counter() - t
                seen.add(layer)
                losses = np.asarray(losses, dtype=np.float32).reshape(-1)
                images = np.asarray(images)
                if req.get("save"):
                    np.savez(req["save"], images=images.astype(np.uint8), losses=losses)
                reply = {
                    "layer": layer,
                    "filters": n,
                    "size": size,
                    "steps": steps,
                    "seconds": seconds,
                    "first": first,
                    "loss_mean": float(losses.mean()),
                    "rss_mb": peak_rss_mb(),
                }
                log(f"[{self.impl}] {seconds:.3f} s, loss_mean {reply['loss_mean']:.5g}")
            except Exception as e:
                traceback.print_exc()
                reply = {"error": f"{type(e).__name__}: {e}"}
            out.write(json.dumps(reply) + "\n")
            out.flush()
