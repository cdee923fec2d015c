import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxviz import topk
from jaxviz.errors import JaxvizError


def _stream(values, y, x, k, cuts):
    top = topk.empty(values.shape[1], k)
    for a, b in zip(cuts[:-1], cuts[1:]):
        top = topk.merge(top, values[a:b], np.arange(a, b), y[a:b], x[a:b])
    return top


def _reference(values, y, x, k):
    """Brute force by a plain sort per channel (no lexsort): score descending, then index."""
    n, c = values.shape
    out = topk.empty(c, k)
    for ch in range(c):
        order = sorted(range(n), key=lambda i: (-values[i, ch], i))[:k]
        for j, i in enumerate(order):
            out.values[ch, j], out.index[ch, j], out.y[ch, j], out.x[ch, j] = values[i, ch], i, y[i, ch], x[i, ch]
    return out


@pytest.mark.parametrize("cuts", [[0, 37], [0, 1, 2, 3, 10, 37], [0, 8, 16, 24, 32, 37]])
def test_streaming_equals_brute_force_with_ties(cuts):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, (37, 5)).astype(np.float32)  # many ties
    y, x = rng.integers(0, 9, (2, 37, 5))
    got = _stream(values, y, x, 7, cuts)
    want = _reference(values, y, x, 7)
    for f in topk.TopK._fields:
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
    np.testing.assert_array_equal(got.index, topk.brute_force(values, y, x, 7).index)


def test_fewer_images_than_k_leaves_unused_slots():
    top = topk.merge(topk.empty(2, 4), np.array([[1.0, 2.0], [3.0, 0.0]]), np.array([5, 9]), np.zeros((2, 2)),
                     np.zeros((2, 2)))
    np.testing.assert_array_equal(top.index, [[9, 5, -1, -1], [5, 9, -1, -1]])
    assert np.isneginf(top.values[:, 2:]).all()


def test_merge_rejects_wrong_channel_count():
    with pytest.raises(JaxvizError, match="merge"):
        topk.merge(topk.empty(3, 2), np.zeros((2, 4)), np.arange(2), np.zeros((2, 4)), np.zeros((2, 4)))


def test_spatial_max_position_is_the_first_maximum():
    a = np.zeros((2, 4, 5, 3), np.float32)
    a[0, 2, 3, 0] = 5
    a[0, 1, 4, 0] = 5  # the same value earlier in raster order wins
    a[1, 3, 0, 2] = 7
    v, y, x = (np.asarray(t) for t in topk.spatial_max(jnp.asarray(a)))
    assert (v[0, 0], y[0, 0], x[0, 0]) == (5, 1, 4)
    assert (v[1, 2], y[1, 2], x[1, 2]) == (7, 3, 0)
    assert (y[0, 1], x[0, 1]) == (0, 0)  # all zero: the first position


def test_box_is_clipped_to_the_image():
    f = topk.Field(2, 2, -5, -5, 10, 10)
    assert f.box(0, 0, 32) == (0, 0, 5, 5)
    assert f.box(4, 6, 32) == (3, 7, 10, 10)
    assert f.box(15, 15, 32) == (25, 25, 7, 7)


@pytest.fixture(scope="module")
def vgg():
    from jaxviz.models import vgg16

    return vgg16()


@pytest.mark.parametrize("layer, size, stride, offset", [("block1_conv1", 3, 1, -1), ("block2_conv1", 10, 2, -4)])
def test_vgg16_receptive_fields(vgg, layer, size, stride, offset):
    """VGG arithmetic: 3x3 convs add 2 px, 2x2 pools add 1 and double the stride."""
    f = topk.receptive_field(vgg, layer, 32)
    assert (f.height, f.width) == (size, size)
    assert (f.stride_y, f.stride_x) == (stride, stride)
    assert (f.offset_y, f.offset_x) == (offset, offset)


def test_receptive_field_grows_the_input_when_clipped():
    """block3_conv1 sees 24 px; at an 16 px input the support is clipped, so 32 px is used."""
    from jaxviz.models import vgg16

    f = topk.receptive_field(vgg16(conv="xla"), "block3_conv1", 16)
    assert (f.height, f.width, f.stride_y) == (24, 24, 4)


def test_receptive_field_of_a_dense_layer_is_an_error():
    from jaxviz.models.base import LayerInfo, Model, identity, unit_min_size

    m = Model("toy", {}, lambda p, x, n: {"v": x.mean((0, 1))}, (LayerInfo("v", (3,)),), identity, unit_min_size)
    with pytest.raises(JaxvizError, match="not a spatial layer"):
        topk.receptive_field(m, "v", 8, jax.random.key(0))


@pytest.mark.parametrize("k, message", [(-1, "k must be 0 or more"), (1.5, "k must be an integer"),
                                        (None, "k must be an integer"), (True, "k must be an integer")])
def test_empty_checks_k(k, message):
    """numpy's ValueError or TypeError from np.full before."""
    with pytest.raises(JaxvizError, match=message):
        topk.empty(3, k)


def test_empty_refuses_a_k_past_the_memory(monkeypatch):
    """64 channels x 10**9 slots was numpy's MemoryError (or the machine's swap)."""
    monkeypatch.setenv("JAXVIZ_MAX_MEMORY", "1M")
    with pytest.raises(JaxvizError, match=r"the top 1000000000 of 64 channels need about .* lower k"):
        topk.empty(64, 10**9)


_Z = np.zeros((2, 3), np.int32)


@pytest.mark.parametrize("top, values, index, y, message", [
    (None, np.ones((2, 3)), [0, 1], _Z, "top must be a TopK"),  # AttributeError
    ("ok", np.ones((1, 3)), 5, _Z[:1], r"index \(images,\), not .* and \(\)"),  # IndexError
    ("ok", np.ones((2, 3)), [[0], [1]], _Z, r"and \(2, 1\)"),  # ValueError from np.broadcast_to
    ("ok", np.ones((2, 3)), [0, 1], np.zeros((2, 4)), r"not \(2, 3\), \(2, 4\)"),  # from np.concatenate
    ("ok", np.array([["a"] * 3] * 2), [0, 1], _Z, "values must be numbers"),
    ("ok", np.ones((2, 3)), [0.5, 1.7], _Z, "image indices must be whole numbers"),  # taken as images 0 and 1
    ("ok", np.ones((2, 3)), [-5, 1], _Z, "image indices must be whole numbers"),  # dropped as an unused slot
    ("ok", np.ones((2, 3)), [4, 4], _Z, "image 4 is merged twice"),
    ("merged", np.ones((2, 3)), [0, 1], _Z, "image 0 is merged twice"),  # held two of the k slots
])
def test_merge_refuses_what_would_fail_or_rank_wrongly(top, values, index, y, message):
    top = {"ok": topk.empty(3, 2), "merged": topk.merge(topk.empty(3, 2), np.ones((2, 3)), [0, 1], _Z, _Z)}.get(top)
    with pytest.raises(JaxvizError, match=message):
        topk.merge(top, values, index, y, np.zeros(np.shape(y)))


def test_merge_takes_bfloat16_scores():
    import ml_dtypes

    top = topk.merge(topk.empty(3, 2), np.ones((2, 3), ml_dtypes.bfloat16), [0, 1], _Z, _Z)
    assert top.index.tolist() == [[0, 1]] * 3


def test_spatial_max_wants_a_batch_of_maps():
    with pytest.raises(JaxvizError, match=r"spatial_max: activations must be \(images, h, w, channels\)"):
        topk.spatial_max(jnp.zeros((4, 4, 3)))  # one unbatched map: "not enough values to unpack"


def _tiny(fn):
    from jaxviz.models import from_function

    return from_function(fn, jnp.float32(1.0), input_size=16)


@pytest.mark.parametrize("kwargs, message", [
    (dict(size=-5), "size must be 1 to"),  # taken as the layer's minimum: a 2 x 2 field for VGG's 3 x 3
    (dict(size=0), "size must be 1 to"),  # taken as the model's input size
    (dict(size=2.5), "size must be an integer"),  # JAX's TypeError
    (dict(tries=0), "tries must be 1 to"),  # "do not depend on the input (zero gradient everywhere)"
    (dict(key=0), r"key must be a JAX random key such as jax.random.key\(0\), not 0"),  # JAX's TypeError
])
def test_receptive_field_checks_its_settings(kwargs, message):
    model = _tiny(lambda p, x: {"c": x * p})
    with pytest.raises(JaxvizError, match=message):
        topk.receptive_field(model, "c", **kwargs)


def test_receptive_field_of_a_nan_or_integer_layer_is_one_line():
    """A layer NaN everywhere (or of NaN gradient) was said to "not depend on the input"; an integer layer
    failed in jax.grad with a TypeError."""
    with pytest.raises(JaxvizError, match="layer c of model function gives NaN or infinite gradients"):
        topk.receptive_field(_tiny(lambda p, x: {"c": x * p * jnp.nan}), "c", 16)
    with pytest.raises(JaxvizError, match="layer c of model function gives NaN or infinite gradients"):
        topk.receptive_field(_tiny(lambda p, x: {"c": jnp.sqrt(x - x) * p}), "c", 16)
    with pytest.raises(JaxvizError, match="the units of c do not depend on the input"):
        topk.receptive_field(_tiny(lambda p, x: {"c": (x * 255 * p).astype(jnp.int32)}), "c", 16)


def test_receptive_field_takes_vgg_params_as_a_model_and_refuses_none(vgg):
    """As jaxviz.render does (load_params() is a model too); both were AttributeErrors."""
    assert topk.receptive_field(vgg.params, "block1_conv1", 16) == topk.receptive_field(vgg, "block1_conv1", 16)
    with pytest.raises(JaxvizError, match="model must be a jaxviz Model"):
        topk.receptive_field(None, "block1_conv1", 16)
