"""Keras h5 weight files to a params pytree keyed by Keras layer names.

Three layouts are read:

* the legacy weights file (``save_weights`` in Keras 1/2, and the official
  ``vgg16_weights_tf_dim_ordering_tf_kernels*.h5``): root attribute ``layer_names``,
  each layer group with attribute ``weight_names`` naming its datasets, such as
  ``block1_conv1_W_1:0`` or ``block1_conv1/kernel:0`` (flat or nested);
* a whole model saved by Keras 2 (``model.save("m.h5")``): the same, under ``model_weights``;
* Keras 3's ``.weights.h5``: ``layers/<name>/vars/0`` (kernel) and ``vars/1`` (bias), where
  Keras 3 itself names the layers by class in model order (``conv2d``, ``conv2d_1``, ...,
  ``dense``, ...): a VGG's get their Keras names back (``block1_conv1``, ..., ``fc1``, ...).

Every shape is checked against the architecture and every value must be finite (a
NaN kernel would give black images); any problem raises one JaxvizError
naming the file, the layer and the fix.
"""
from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from jaxviz.errors import JaxvizError
from jaxviz.model import TOP_LAYERS, VGG16, VGG19, VGGSpec, conv_layers, layers

_CONV = re.compile(r"^block(\d+)_conv(\d+)$")
_KERNEL_HINTS = ("kernel", "_w_", "_w:", "/w")
_KERAS3_NAME = re.compile(r"^(conv2d|dense)(?:_(\d+))?$")  # how Keras 3 names a .weights.h5 file's layers


def _decode(names) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def _read_layer_groups(f) -> dict[str, list]:
    """Layer name -> its weight datasets in file order, for any supported layout. Not read yet:
    a file can declare a dataset of terabytes, so ``_checked`` reads each once its shape is right. Only
    groups are looked into: ``in`` on a dataset iterates its rows (2**40 of them in a bad file)."""
    import h5py

    root = f["model_weights"] if isinstance(f.get("model_weights"), h5py.Group) else f
    if "layer_names" in root.attrs:
        out = {}
        for name in _decode(root.attrs["layer_names"]):
            g = root[name]
            wnames = _decode(g.attrs.get("weight_names", []))
            if wnames:
                out[name] = [_dataset(g, w) for w in wnames]
        return out
    if isinstance(root.get("layers"), h5py.Group):  # Keras 3 .weights.h5
        out = {}
        for name, g in root["layers"].items():
            v = g.get("vars") if isinstance(g, h5py.Group) else None
            if isinstance(v, h5py.Group) and len(v):
                out[name] = [_dataset(v, k) for k in sorted(v, key=int)]
        return _keras3_names(out)
    raise KeyError("no 'layer_names' attribute, 'model_weights' group or 'layers' group")


def _keras3_names(groups: dict) -> dict:
    """A Keras 3 file's layers, named by class in model order (``conv2d``, ``conv2d_1``, ..., ``dense``,
    ...), under their VGG names where their count is a VGG's; otherwise as they are."""
    if any(_CONV.match(n) for n in groups):
        return groups

    def in_order(kind):
        found = [(int(m.group(2) or 0), n) for n in groups if (m := _KERAS3_NAME.match(n)) and m.group(1) == kind]
        return [n for _, n in sorted(found)]

    convs, dense = in_order("conv2d"), in_order("dense")
    spec = next((s for s in (VGG16, VGG19) if len(convs) == len(conv_layers(s))), None)
    if spec is None:
        return groups
    names = dict(zip(convs, conv_layers(spec)))
    if len(dense) == len(TOP_LAYERS):
        names.update(zip(dense, TOP_LAYERS))
    return {names.get(n, n): v for n, v in groups.items()}


def _dataset(group, name: str):
    import h5py

    d = group[name]
    if not isinstance(d, h5py.Dataset) or d.shape is None:  # a group, or a dataset of no shape (h5py.Empty)
        raise TypeError(f"{d.name} is not an array")
    return d


def _kernel_bias(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if len(arrays) != 2:
        raise ValueError(f"expected a kernel and a bias, found {len(arrays)} arrays")
    a, b = arrays
    return (a, b) if a.ndim >= b.ndim else (b, a)


def detect_spec(conv_names) -> VGGSpec:
    """VGG16 or VGG19 from the conv layer names found in a file."""
    counts: dict[int, int] = {}
    for n in conv_names:
        m = _CONV.match(n)
        if m:
            b = int(m.group(1))
            counts[b] = max(counts.get(b, 0), int(m.group(2)))
    blocks = tuple(counts.get(b, 0) for b in range(1, 6))
    for spec in (VGG16, VGG19):
        if blocks == spec.blocks:
            return spec
    return VGG19 if any(c >= 4 for c in blocks) else VGG16


def check_unlocked(path, error: Exception) -> None:
    """One line where ``error`` (opening ``path``) is HDF5's lock: another process has the file open for
    writing (it was said to be "truncated or damaged")."""
    if "unable to lock file" in str(error):
        raise JaxvizError(f"cannot read weights file {path}: another process has it open for writing; "
                          "wait until it is saved and closed, then run again") from None


def load_keras_h5(path: str | os.PathLike, spec: VGGSpec | None = None, dtype=np.float32) -> dict:
    """Read a Keras VGG h5 file into ``{layer: {"kernel", "bias"}}`` numpy arrays.

    ``spec`` defaults to the one the file's layer names imply (VGG16 or VGG19).
    The classifier top (``fc1``, ``fc2``, ``predictions``) is included when present.

    >>> params = load_keras_h5("weights/vgg16_imagenet_notop.h5")  # doctest: +SKIP
    >>> params["block1_conv1"]["kernel"].shape
    (3, 3, 3, 64)
    """
    import h5py

    fix = ("pass a Keras VGG16/VGG19 weights file (.h5): --weights or JAXVIZ_WEIGHTS on the command line, "
           "load_params(path) in Python")
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise JaxvizError(f"the weights path must be a str or os.PathLike, not {type(path).__name__}; {fix}")
    path = os.fsdecode(path)
    if not os.path.exists(path):
        raise JaxvizError(f"weights file {path} does not exist; {fix}")
    if os.path.isdir(path):
        raise JaxvizError(f"weights path {path} is a folder, not a file; {fix}")
    if not os.path.isfile(path):  # a fifo would wait for a writer forever; a device, read without end
        raise JaxvizError(f"weights path {path} is not a regular file; {fix}")
    try:
        f = h5py.File(path, "r")
    except PermissionError:
        raise JaxvizError(f"cannot read weights file {path}: permission denied; make it readable, or {fix}") from None
    except OSError as e:
        check_unlocked(path, e)
        try:
            reason = "truncated or damaged" if h5py.is_hdf5(path) else "not an HDF5 file"
        except OSError:  # is_hdf5 opens the file again
            reason = "unreadable"
        if reason == "not an HDF5 file" and zipfile.is_zipfile(path):
            raise JaxvizError(f"cannot read weights file {path}: a zip archive, such as a whole Keras 3 model "
                              f"(.keras), not an HDF5 weights file; save its weights with model.save_weights("
                              f"'vgg16.weights.h5'), or use it with --model keras:VGG16 --weights {path}") from None
        raise JaxvizError(f"cannot read weights file {path}: {reason} ({e}); {fix}") from None
    with f:
        try:
            groups = _read_layer_groups(f)
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # RuntimeError: h5py's, on damage
            raise JaxvizError(
                f"cannot read Keras layers from {path} ({e}); it may be truncated or not a Keras file; {fix}"
            ) from None
        return _params(path, groups, spec, dtype, fix)


def _params(path: str, groups: dict, spec: VGGSpec | None, dtype, fix: str) -> dict:
    """``load_keras_h5``'s params from the file's layer datasets (the file still open)."""
    convs = [n for n in groups if _CONV.match(n)]
    if not convs:
        found = ", ".join(list(groups)[:6]) or "none"
        raise JaxvizError(
            f"{path} holds no VGG conv layers (layers found: {found}); it is from another model; {fix}"
        )
    spec = spec or detect_spec(convs)
    params = {}
    for l in layers(spec):
        if l.kind != "conv":
            continue
        if l.name not in groups:
            raise JaxvizError(
                f"{path} has no weights for layer {l.name} ({spec.name} needs all of "
                f"{l.name.split('_')[0]}); the file is incomplete or from another model; {fix}"
            )
        params[l.name] = _checked(path, l.name, groups[l.name], (3, 3, l.in_channels, l.out_channels), dtype, fix)
    tops = [n for n in TOP_LAYERS if n in groups]
    if tops:
        if len(tops) != len(TOP_LAYERS):
            raise JaxvizError(f"{path} has only part of the classifier top ({', '.join(tops)}); {fix}")
        c = spec.channels[-1]
        s = spec.top_input // 2 ** len(spec.blocks)
        sizes = (s * s * c, *spec.fc, spec.classes)
        for name, n_in, n_out in zip(TOP_LAYERS, sizes[:-1], sizes[1:]):
            params[name] = _checked(path, name, groups[name], (n_in, n_out), dtype, fix)
    return params


def _checked(path, name, arrays, kshape, dtype, fix) -> dict:
    try:
        kernel, bias = _kernel_bias(arrays)
    except ValueError as e:
        raise JaxvizError(f"{path}: layer {name}: {e}; {fix}") from None
    want = (kshape, (kshape[-1],))
    got = (tuple(kernel.shape), tuple(bias.shape))
    if got != want:
        raise JaxvizError(
            f"{path}: layer {name} has kernel {got[0]} and bias {got[1]}, expected {want[0]} and "
            f"{want[1]}; the file is from another architecture; {fix}"
        )
    for what, a in (("kernel", kernel), ("bias", bias)):
        if not np.issubdtype(a.dtype, np.floating):
            raise JaxvizError(f"{path}: layer {name} has a non-float {what} ({a.dtype}); {fix}")
    try:
        kernel, bias = np.asarray(kernel), np.asarray(bias)
    except (OSError, RuntimeError) as e:
        raise JaxvizError(f"{path}: cannot read layer {name} ({e}); the file is damaged; {fix}") from None
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below, by layer
        kernel, bias = kernel.astype(dtype), bias.astype(dtype)
    for what, a in (("kernel", kernel), ("bias", bias)):
        if not np.isfinite(a).all():
            bad = int(a.size - np.isfinite(a).sum())
            raise JaxvizError(f"{path}: layer {name}'s {what} holds {bad} non-finite values (NaN or infinity); "
                              f"the file is damaged; {fix}")
    return {"kernel": kernel, "bias": bias}
