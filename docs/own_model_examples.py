"""The README's "Your own model" examples: a linen, an NNX and a Keras model, each rendered
with the quality recipe. Each function runs as written (random weights stand in for yours)
and writes a grid PNG; tests/test_own_model_examples.py runs them at a tiny size.

    python docs/own_model_examples.py        # writes linen.png, nnx.png, keras.png here
"""


def linen_example(path="linen.png", size=128, steps=512):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import jaxviz
    from jaxviz.models import from_linen
    from jaxviz.objectives import channel

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Conv(32, (3, 3))(x))
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(nn.Conv(64, (3, 3), strides=2)(x))
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    cnn = CNN()
    variables = cnn.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))  # your trained variables here
    model = from_linen(cnn, variables, apply_kwargs={"train": False}, input_size=32, logits="output")
    print([(l.name, l.shape) for l in model.layers])  # Conv_0, BatchNorm_0, Conv_1, Dense_0, output, logits
    tiles = jaxviz.render(model, channel("Conv_1", range(8)), jaxviz.LUCID._replace(size=size, steps=steps)).tiles
    return jaxviz.save_png(path, jaxviz.make_grid(tiles, cols=8))


def nnx_example(path="nnx.png", size=128, steps=512):
    from flax import nnx

    import jaxviz
    from jaxviz.models import from_nnx
    from jaxviz.objectives import channel, neuron

    class CNN(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.conv1 = nnx.Conv(3, 32, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(32, rngs=rngs)
            self.conv2 = nnx.Conv(32, 64, (3, 3), strides=2, rngs=rngs)

        def __call__(self, x):
            return nnx.relu(self.conv2(nnx.relu(self.bn(self.conv1(x)))))

    model = from_nnx(CNN(nnx.Rngs(0)), input_size=32)  # your trained module here; run in eval mode
    objective = channel("conv2", range(4)) + 0.5 * neuron("conv2", range(4))  # the centre neuron too
    tiles = jaxviz.render(model, objective, jaxviz.LUCID._replace(size=size, steps=steps)).tiles
    return jaxviz.save_png(path, jaxviz.make_grid(tiles, cols=4))


def keras_example(path="keras.png", size=128, steps=512, weights=None):
    import jaxviz
    from jaxviz.models import keras_application
    from jaxviz.objectives import channel

    # weights: "imagenet" (Keras downloads them once) or a weights file; None: random, for a try offline
    model = keras_application("MobileNetV2", weights, input_size=size)
    tiles = jaxviz.render(model, channel("block_3_expand_relu", range(8)),
                          jaxviz.LUCID._replace(size=size, steps=steps)).tiles
    return jaxviz.save_png(path, jaxviz.make_grid(tiles, cols=8))


if __name__ == "__main__":
    for example in (linen_example, nnx_example, keras_example):
        print(example())
