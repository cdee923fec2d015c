"""Peer: idiomatic eager TF2, the whole grid as one batch, the loop in one tf.function.

Runs in bench/.venvs/tf. The VGG16 base is built from raw ``tf.nn.conv2d`` /
``tf.nn.max_pool2d`` on the h5 arrays, only up to the target layer, float32,
NHWC. Image i of the batch ascends filter i: its loss is the spatial mean of
channel f_i of its own output (``tf.gather(..., batch_dims=1)``); the gradient
of the sum of the per-image losses gives every image its own gradient, which is
normalized per image (RMS + 1e-5). All ``steps`` steps run in a single
``tf.function`` (a ``tf.while_loop``), traced once per layer / shape.

    bench/.venvs/tf/bin/python bench/peers/tf_batched.py --weights weights/vgg16_imagenet_notop.h5

Speaks the line protocol of bench/peers/_protocol.py.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _protocol import Worker, convs_up_to, deprocess, load_h5_weights, start_images  # noqa: E402


class TFBatched(Worker):
    impl = "tf_batched"

    def __init__(self, weights):
        self.weights = weights
        self.fns = {}

    def setup(self):
        import tensorflow as tf

        self.tf = tf
        arrays = load_h5_weights(self.weights)
        self.params = {k: (tf.constant(w), tf.constant(b)) for k, (w, b) in arrays.items()}
        return {"tensorflow": tf.__version__, "numpy": np.__version__}

    def threads(self):
        return self.tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()

    def make_ascent(self, layer):
        tf = self.tf
        convs = convs_up_to(layer)
        params = self.params

        def forward(x):
            pools = 0
            for name, _cin, _cout, pools_before in convs:
                while pools < pools_before:
                    x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
                    pools += 1
                w, b = params[name]
                x = tf.nn.relu(tf.nn.conv2d(x, w, strides=1, padding="SAME") + b)
            return x

        @tf.function(reduce_retracing=True)
        def ascent(x, fidx, steps):
            def losses(x):
                out = forward(x)  # (n, h, w, c)
                chosen = tf.gather(out, fidx, axis=3, batch_dims=1)  # (n, h, w): channel f_i of image i
                return tf.reduce_mean(chosen, axis=[1, 2])

            def body(i, x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    total = tf.reduce_sum(losses(x))
                g = tape.gradient(total, x)
                g = g / (tf.sqrt(tf.reduce_mean(tf.square(g), axis=[1, 2, 3], keepdims=True)) + 1e-5)
                return i + 1, x + g * 1.0

            _, x = tf.while_loop(lambda i, _x: i < steps, body, (tf.constant(0), x))
            return x, losses(x)  # the final loss, on the final image

        return ascent

    def grid(self, layer, n, size, steps, seed):
        tf = self.tf
        if layer not in self.fns:
            self.fns[layer] = self.make_ascent(layer)
        x0 = tf.constant(start_images(n, size, seed))
        fidx = tf.range(n, dtype=tf.int32)
        x, loss = self.fns[layer](x0, fidx, tf.constant(steps))
        x, loss = x.numpy(), loss.numpy()
        return deprocess(x), loss


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="Keras VGG16 notop h5 file")
    a = p.parse_args()
    TFBatched(a.weights).serve()


if __name__ == "__main__":
    main()
