"""Peer: the book's Keras code (Chollet, Deep Learning with Python §5.4), as written.

Runs in bench/.venvs/tf (tensorflow-cpu 2.21 + tf-keras 2.21). TF1 graph mode,
one tf_keras VGG16(include_top=False, weights=None) per process, loaded from the
h5 file. Per filter it builds a fresh loss, K.gradients, normalization and
K.function, then runs 40 Python-loop steps on one image, filter after filter.
The graph therefore grows with every filter, exactly like the book's
``generate_pattern``; that cost is part of what is measured. The only addition
is one forward-only evaluation of the loss on the final image (the protocol's
final loss, as jaxviz reports it).

    bench/.venvs/tf/bin/python bench/peers/keras_seed.py --weights weights/vgg16_imagenet_notop.h5

Speaks the line protocol of bench/peers/_protocol.py.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _protocol import Worker, deprocess, start_images  # noqa: E402


class KerasSeed(Worker):
    impl = "keras_seed"

    def __init__(self, weights):
        self.weights = weights

    def setup(self):
        import tensorflow as tf

        tf.compat.v1.disable_eager_execution()
        import tf_keras
        from tf_keras import backend as K

        self.K = K
        self.model = tf_keras.applications.VGG16(include_top=False, weights=None)
        self.model.load_weights(self.weights)
        return {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "numpy": np.__version__}

    def threads(self):
        return os.cpu_count()

    def generate_pattern(self, layer_name, filter_index, x0, steps):
        K = self.K
        layer_output = self.model.get_layer(layer_name).output
        loss = K.mean(layer_output[:, :, :, filter_index])
        grads = K.gradients(loss, self.model.input)[0]
        grads /= K.sqrt(K.mean(K.square(grads))) + 1e-5
        iterate = K.function([self.model.input], [loss, grads])
        input_img_data = x0[None].copy()
        step = 1.0
        for _ in range(steps):
            loss_value, grads_value = iterate([input_img_data])
            input_img_data += grads_value * step
        # Not in the book: the loss on the final image (forward only), which the
        # protocol reports; every peer pays for this one extra forward pass.
        (final_loss,) = K.function([self.model.input], [loss])([input_img_data])
        return input_img_data[0], float(final_loss)

    def grid(self, layer, n, size, steps, seed):
        x0 = start_images(n, size, seed)
        finals, losses = [], []
        for f in range(n):
            x, loss = self.generate_pattern(layer, f, x0[f], steps)
            finals.append(x)
            losses.append(loss)
        return deprocess(np.stack(finals)), np.asarray(losses, np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="Keras VGG16 notop h5 file")
    a = p.parse_args()
    KerasSeed(a.weights).serve()


if __name__ == "__main__":
    main()
