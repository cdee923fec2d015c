"""Dataset examples: the images of a folder that excite each channel of some layers most.

``collect`` streams a folder (``jaxviz.imagefolder``) through any ``jaxviz.models.Model``
in jitted batches and keeps, per channel, the top-k images by the channel's maximum
spatial activation, the (y, x) of that maximum and the input patch it sees
(``jaxviz.topk``). With ``out`` it saves its state atomically every few batches (a
rerun with the same settings continues from it) and writes the summary:

    OUT/examples.npz   per layer L: L/values, L/image (index into ``images``, -1 unused),
                       L/y, L/x, L/boxes (top, left, height, width in the size x size input),
                       L/thumbs (C, k, T, T, 3) uint8 patches; ``images``: relative paths
    OUT/examples.json  the same without thumbnails, plus settings, fields and skipped files

``python -m jaxviz.examples --images DIR --layers block3_conv1 --out OUT`` runs it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import sys
import time
import tokenize
import zipfile
import zlib
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np

from jaxviz import checks, compile_cache
from jaxviz.cli_run import WriteGate, exit_command, printer, restore_handlers, run_interruptible, stop_signals
from jaxviz.errors import JaxvizError, error_line, notice, quiet_notices
from jaxviz.models.base import model_errors

SUMMARY_NPZ, SUMMARY_JSON, STATE = "examples.npz", "examples.json", ".examples-state.npz"
# what reading a damaged .npz raises: besides OSError and ValueError, zipfile's and zlib's errors, NumPy's
# header parser's (tokenize), a header's shape too large to allocate, a zip feature zipfile lacks
NPZ_ERRORS = (OSError, KeyError, ValueError, EOFError, MemoryError, NotImplementedError, zipfile.BadZipFile,
              zlib.error, tokenize.TokenError)


class Config(NamedTuple):
    """How the pass runs: top ``k`` per channel, input ``size``, images per ``batch``,
    thumbnail side ``thumb``, images with a shorter side below ``min_side`` skipped
    (None: the model's minimum for the layers), state saved every ``save_every`` batches."""

    k: int = 9
    size: int = 224
    batch: int = 16
    thumb: int = 48
    min_side: Optional[int] = None
    save_every: int = 20


class Summary(NamedTuple):
    """The result of ``collect``; ``layers[L]`` is a ``jaxviz.topk.TopK`` over image indices of ``names``."""

    folder: str
    names: list  # every image file of the folder, relative, in stream order
    layers: dict  # layer -> TopK
    fields: dict  # layer -> Field
    boxes: dict  # layer -> (C, k, 4) int32 clipped patch boxes
    thumbs: dict  # layer -> (C, k, T, T, 3) uint8
    images_used: int
    skipped: object  # jaxviz.imagefolder.Skipped
    settings: dict


def fingerprint(params) -> str:
    """A short hash of a params pytree (shapes and sums): tells resumed runs' weights apart."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        a = np.asarray(leaf)
        h.update(f"{a.shape}{a.dtype}{float(a.astype(np.float64).sum()):.9e}".encode())
    return h.hexdigest()[:16]


@functools.partial(jax.jit, static_argnums=(0, 2))
def _scores(model, params, layers: tuple, images):
    """Per layer: per image and channel, the max activation and its (y, x), for one batch."""
    from jaxviz.topk import spatial_max

    acts = jax.vmap(lambda x: model.activations(params, model.preprocess(x), layers))(images)
    return {l: spatial_max(acts[l]) for l in layers}


def _settings(model, folder, names, layers, config, min_side) -> dict:
    digest = hashlib.sha256("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return dict(model=model.name, weights=fingerprint(model.params), folder=os.path.abspath(folder),
                files=len(names), files_sha=digest, layers=list(layers), k=config.k, size=config.size,
                min_side=min_side, thumb=config.thumb)


def _load_state(path: str, settings: dict, blank: dict):
    """The saved (position, used, skipped, tops, fields) if ``path`` holds a state for these settings;
    None for an empty file or another run's state (start afresh). ``blank`` is the fresh top-k per
    layer; a state that cannot be read or used is a one-line JaxvizError."""
    from jaxviz.imagefolder import Skipped
    from jaxviz.topk import Field, TopK

    try:
        if os.path.getsize(path) == 0:  # nothing was saved in it
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if isinstance(meta, dict) and "settings" in meta and meta["settings"] != settings:
                old = meta["settings"] if isinstance(meta["settings"], dict) else {}
                said = {"files": "images", "files_sha": "images", "folder": "image folder", "min_side": "min-side"}
                changed = list(dict.fromkeys(said.get(k, k) for k in settings if old.get(k) != settings[k]))
                notice(f"jaxviz: the saved pass in {path} was of other {', '.join(changed) or 'settings'}; "
                       "starting over")  # a folder that gained one image started over silently
                return None
            arrays = {name: z[name] for name in z.files}
        problem = _state_problem(meta, arrays, blank, settings["files"])
    except NPZ_ERRORS as e:
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem:
        raise JaxvizError(f"state file {path} cannot be resumed: {problem}; delete it to start the pass over")
    tops = {l: TopK(*(arrays[f"{l}/{f}"] for f in TopK._fields)) for l in blank}
    fields = {l: Field(**f) for l, f in meta.get("fields", {}).items()}
    sk = meta["skipped"]
    return meta["position"], meta["used"], Skipped(sk["counts"], sk["names"]), tops, fields


def _state_problem(meta, arrays: dict, blank: dict, files: int) -> str | None:
    """What makes a loaded state unusable, or None: ``meta`` must have the form ``_save_state``
    writes (position in 0..files), ``arrays`` the dtypes and shapes of ``blank`` (the fresh
    top-k per layer), image indices in -1..files-1 and positions 0 or more."""
    from jaxviz.topk import Field, TopK

    def whole(v, lo=None, hi=None):
        return type(v) is int and (lo is None or v >= lo) and (hi is None or v <= hi)

    if not isinstance(meta, dict):
        return "its meta is not a JSON object"
    missing = [k for k in ("settings", "position", "used", "skipped") if k not in meta]
    if missing:
        return f"its meta has no {missing[0]!r}"
    if not whole(meta["position"], 0, files):
        return f"position {meta['position']!r} is not a whole number in 0..{files}"
    if not whole(meta["used"], 0, meta["position"]):
        return f"used {meta['used']!r} is not a whole number in 0..{meta['position']}"
    sk = meta["skipped"]
    if not (isinstance(sk, dict) and isinstance(sk.get("counts"), dict) and isinstance(sk.get("names"), dict)
            and all(whole(c, 0) for c in sk["counts"].values())
            and all(isinstance(n, list) and all(isinstance(s, str) for s in n) for n in sk["names"].values())
            and all(r in sk["names"] for r, c in sk["counts"].items() if c)):
        return "skipped is not counts and names per reason"
    fields = meta.get("fields", {})
    if not (isinstance(fields, dict) and all(
            l in blank and isinstance(f, dict) and sorted(f) == sorted(Field._fields)
            and all(whole(v, None if n.startswith("offset") else 1) for n, v in f.items())
            for l, f in fields.items())):
        return "fields are not receptive fields of its layers"
    for l, top in blank.items():
        for name, want in zip(TopK._fields, top):
            a = arrays.get(f"{l}/{name}")
            if a is None:
                return f"it has no {l}/{name} array"
            if a.shape != want.shape or a.dtype != want.dtype:
                return f"{l}/{name} is {a.dtype} {a.shape}, not {want.dtype} {want.shape}"
        index, y, x = (arrays[f"{l}/{n}"] for n in ("index", "y", "x"))
        if index.size and (index.min() < -1 or index.max() >= files or min(y.min(), x.min()) < 0):
            return f"{l} holds image indices or positions out of range"
    return None


def _save_state(path, settings, position, used, skipped, tops, fields=None) -> None:
    from jaxviz.image import atomic_write

    meta = json.dumps(dict(settings=settings, position=position, used=used,
                           skipped=dict(counts=skipped.counts, names=skipped.names),
                           fields={l: f._asdict() for l, f in (fields or {}).items()}))
    arrays = {f"{l}/{f}": getattr(t, f) for l, t in tops.items() for f in t._fields}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda fh: np.savez(fh, meta=np.asarray(meta), **arrays))


def check_layers(model, layers: Sequence[str], size: int) -> tuple[str, ...]:
    """The layers as a tuple, each spatial and with a layer output at ``size`` px (one-line errors)."""
    if isinstance(layers, (str, bytes)):  # "conv" was the layers "c", "o", ...
        raise JaxvizError(f"layers must be a list of layer names such as [{layers!r}], not the string {layers!r}")
    try:
        layers = [] if layers is None else list(layers)  # a generator was used up by the first look
    except TypeError:
        raise JaxvizError(f"layers must be a list of layer names such as ['block3_conv1'], "
                          f"not {checks.show(layers)}") from None
    size = checks.integer("size", size, 1, checks.MAX_SIZE)
    if not layers:
        raise JaxvizError("no layers given; name conv layers such as block3_conv1,block4_conv1")
    for l in layers:
        if not model.layer(l).spatial:
            raise JaxvizError(f"{l} is not a spatial layer; dataset examples need conv or pooling layers")
        if size < model.min_size(l):
            raise JaxvizError(f"--size {size} is too small for {l}; the minimum is {model.min_size(l)} px")
    return tuple(dict.fromkeys(layers))


def collect(model, folder: str, layers: Sequence[str], config: Config = Config(), out: str | None = None,
            progress: Callable[[int, int], None] | None = None, gate: WriteGate | None = None) -> Summary:
    """The top-``k`` dataset examples of every channel of ``layers`` over the images in ``folder``.

    One jitted, batched forward pass per batch (the last batch padded: one compile).
    With ``out`` (a folder, created if needed) the state is saved there every
    ``config.save_every`` batches, and by ``gate``'s final write on an interrupt, and the
    summary files are written at the end.
    ``progress(done, total)`` is called after every batch with file counts. Every write holds
    ``gate`` (``jaxviz.cli_run``): an interrupt waits for the one in progress and stops later
    ones, so the saved state always ends at a completed batch. ``model`` may be VGG params
    (``load_params``), as for ``jaxviz.render``; a bad setting, argument or ``out`` (a file in
    its way) is one JaxvizError before any work.
    """
    import jax.numpy as jnp

    from jaxviz import imagefolder, topk
    from jaxviz.api import as_model

    model, config = as_model(model), check_config(config)
    layers = check_layers(model, layers, config.size)
    check_memory(model, layers, config)
    gate = gate or WriteGate()
    if out is not None:  # checked before the pass: a file in the way failed after it, the summary half-written
        out = _check_out(out)
    if progress is not None and not checks.takes(progress, 2):
        raise JaxvizError(f"progress is called as progress(done, total) with file counts; give a function of two "
                          f"arguments, or None, not {checks.show(progress)}")
    names = imagefolder.list_images(folder)
    folder = os.fsdecode(folder)  # bytes: joined with str names below
    min_side = config.min_side if config.min_side is not None else max(model.min_size(l) for l in layers)
    settings = _settings(model, folder, names, layers, config, min_side)
    state = os.path.join(out, STATE) if out else None
    tops = {l: topk.empty(model.layer(l).channels, config.k) for l in layers}
    resumed = _load_state(state, settings, tops) if state and os.path.exists(state) else None
    if resumed:
        position, used, skipped, tops, fields = resumed
    else:
        fields = {}
        position, used, skipped = 0, 0, imagefolder.Skipped.empty()
    # before the pass, which may take hours: a layer whose units do not depend on the input, or that
    # jax.grad cannot take, fails here (the folder is made at the first write, so nothing is left)
    with model_errors(model, layers, config.size):
        fields = {l: fields.get(l) or topk.receptive_field(model, l, config.size) for l in layers}
    static, params = model.static(), model.params
    if progress:
        progress(position, len(names))
    batches = 0
    batch = min(config.batch, len(names))  # --batch 512 over 11 images: every pass was 501 padding images
    for b in imagefolder.stream(folder, names, config.size, batch, start=position, min_side=min_side,
                                skipped=skipped):
        n = len(b.indices)
        x = b.images if n == batch else np.concatenate(
            [b.images, np.zeros((batch - n,) + b.images.shape[1:], np.float32)])
        with model_errors(model, layers, config.size):
            scores = jax.device_get(_scores(static, params, layers, jnp.asarray(x)))
        for l in layers:
            v, y, xx = (a[:n] for a in scores[l])
            if not np.isfinite(v).all():  # NaN would rank anywhere in the top k, silently
                bad = names[b.indices[int(np.argmin(np.isfinite(v).all(axis=tuple(range(1, v.ndim)))))]]
                raise JaxvizError(f"layer {l} of model {model.name} gives NaN or infinite activations on "
                                  f"{os.path.join(folder, bad)}; check the model and its weights")
            tops[l] = topk.merge(tops[l], v, b.indices, y, xx)
        position, used, batches = b.end, used + n, batches + 1
        if state and batches % config.save_every == 0:
            with gate:
                _save_state(state, settings, position, used, skipped, tops, fields)
        if state:  # an interrupt saves the state at this batch (the gate's final write)
            gate.final_write = functools.partial(_save_state, state, settings, position, used, skipped.copy(),
                                                 dict(tops), fields)
        if progress:
            progress(position, len(names))
    position = len(names)
    if used == 0:
        raise JaxvizError(f"no usable image in {folder}: {skipped.describe()}; give JPEG/PNG images of at "
                          f"least {min_side} px")
    if state:  # a rerun after the end needs neither the images' pass nor the fields again
        gate.final_write = None
        with gate:
            _save_state(state, settings, position, used, skipped, tops, fields)
    boxes = {l: _boxes(tops[l], fields[l], config.size) for l in layers}
    thumbs = _thumbnails(folder, names, tops, boxes, fields, config)
    summary = Summary(os.path.abspath(folder), names, tops, fields, boxes, thumbs, used, skipped, settings)
    if out:
        os.makedirs(out, exist_ok=True)
        with gate:  # both summary files or neither
            write_summary(summary, out)
    return summary


def check_config(config) -> Config:
    """``config`` with each field checked (one-line errors) and made a Python int (a NumPy one failed in the
    state's JSON, after the pass)."""
    if not isinstance(config, Config):
        raise JaxvizError(f"config must be a jaxviz.examples.Config such as Config(k=9, size=224), "
                          f"not {checks.show(config)}")
    side = lambda name, v: checks.integer(name, v, 1, checks.MAX_SIZE)
    return Config(k=checks.integer("k", config.k, 1), size=side("size", config.size),
                  batch=checks.integer("batch", config.batch, 1), thumb=side("thumb", config.thumb),
                  min_side=None if config.min_side is None else side("min_side", config.min_side),
                  save_every=checks.integer("save_every", config.save_every, 1))


def _check_out(out) -> str:
    """``collect``'s ``out`` as a str, where its files can be written (nothing is made yet)."""
    from jaxviz.cli_args import check_out_dir, check_out_paths

    try:
        out = os.fsdecode(out)
    except TypeError:
        raise JaxvizError(f"out must be a folder path, or None to write no files, not {checks.show(out)}") from None
    if not out:  # was taken as None: nothing written, silently
        raise JaxvizError("out is empty; give a folder for the summary, or None to write no files")
    check_out_dir(out)
    check_out_paths(out, files=(SUMMARY_NPZ, SUMMARY_JSON, STATE))
    return out


def _boxes(top, field, size: int) -> np.ndarray:
    c, k = top.values.shape
    out = np.zeros((c, k, 4), np.int32)
    for i in range(c):
        for j in range(k):
            if top.index[i, j] >= 0:
                out[i, j] = field.box(top.y[i, j], top.x[i, j], size)
    return out


def _thumbnails(folder, names, tops, boxes, fields, config) -> dict:
    """Every kept patch as a T x T uint8 thumbnail; each image is read once.

    The patch is the unit's whole receptive field, grey where it runs past the image,
    so the unit always sits at the thumbnail's centre and nothing is stretched.
    """
    from PIL import Image

    from jaxviz import imagefolder

    t, size = config.thumb, config.size
    thumbs = {l: np.full(tops[l].index.shape + (t, t, 3), 128, np.uint8) for l in tops}
    wanted: dict[int, list] = {}
    for l, top in tops.items():
        for i, j in zip(*np.nonzero(top.index >= 0)):
            wanted.setdefault(int(top.index[i, j]), []).append((l, i, j))
    for idx in sorted(wanted):
        try:
            img = imagefolder.load(folder, names[idx], size)
        except imagefolder.Unusable:  # changed since the pass: leave its thumbnails grey
            continue
        for l, i, j in wanted[idx]:
            f, top = fields[l], tops[l]
            y0, x0 = int(top.y[i, j]) * f.stride_y + f.offset_y, int(top.x[i, j]) * f.stride_x + f.offset_x
            patch = np.full((f.height, f.width, 3), 128, np.uint8)
            bt, bl, bh, bw = boxes[l][i, j]
            patch[bt - y0: bt - y0 + bh, bl - x0: bl - x0 + bw] = img[bt: bt + bh, bl: bl + bw]
            resample = Image.Resampling.NEAREST if max(f.height, f.width) < t else Image.Resampling.BOX
            thumbs[l][i, j] = np.asarray(Image.fromarray(patch).resize((t, t), resample))
    return thumbs


def write_summary(summary: Summary, out: str) -> tuple[str, str]:
    """Write OUT/examples.npz and OUT/examples.json atomically; returns their paths."""
    from jaxviz.cli_args import check_out_paths
    from jaxviz.image import atomic_write

    check_out_paths(out, files=(SUMMARY_NPZ, SUMMARY_JSON))  # both files or neither: not the .npz alone
    used = sorted({int(i) for t in summary.layers.values() for i in t.index.ravel() if i >= 0})
    remap = {i: n for n, i in enumerate(used)}
    images = [summary.names[i] for i in used]
    arrays, layers_json = {"images": np.asarray(images, dtype=str)}, {}
    for l, top in summary.layers.items():
        image = np.vectorize(lambda i: remap.get(int(i), -1), otypes=[np.int64])(top.index)
        arrays.update({f"{l}/values": top.values, f"{l}/image": image, f"{l}/y": top.y, f"{l}/x": top.x,
                       f"{l}/boxes": summary.boxes[l], f"{l}/thumbs": summary.thumbs[l]})
        channels = []
        for c in range(top.values.shape[0]):
            channels.append([dict(image=images[image[c, j]], activation=float(top.values[c, j]),
                                  y=int(top.y[c, j]), x=int(top.x[c, j]), box=[int(v) for v in summary.boxes[l][c, j]])
                             for j in range(top.values.shape[1]) if image[c, j] >= 0])
        layers_json[l] = dict(field=summary.fields[l]._asdict(), channels=channels)
    meta = dict(folder=summary.folder, settings=summary.settings, images_used=summary.images_used,
                skipped=dict(counts=summary.skipped.counts, first=summary.skipped.names), layers=layers_json)
    npz = os.path.join(out, SUMMARY_NPZ)
    atomic_write(npz, lambda fh: np.savez_compressed(fh, **arrays))
    js = os.path.join(out, SUMMARY_JSON)
    text = json.dumps(meta, indent=1).encode()
    atomic_write(js, lambda fh: fh.write(text))
    return npz, js


# ---------------------------------------------------------------- command line

def build_parser():
    from jaxviz.cli_args import OneLineParser, home_path, model_name, positive_int, weights_file

    p = OneLineParser(prog="python -m jaxviz.examples",
                      description="Find the images of a folder that excite each channel of some layers most "
                      "(dataset examples), with the patch each maximum sees; writes OUT/examples.npz and "
                      "OUT/examples.json, which `python -m jaxviz.atlas --examples` shows beside the filters.")
    p.add_argument("--images", required=True, type=home_path("--images"),
                   help="folder of JPEG/PNG images, searched recursively")
    p.add_argument("--layers", default="block3_conv1,block4_conv1",
                   help="layers, comma-separated, or 'all' (every conv and pool layer) (default block3_conv1,block4_conv1)")
    p.add_argument("--out", default="examples", type=home_path("--out"), help="output folder (default examples/)")
    p.add_argument("--k", type=positive_int("--k", 1), default=9, help="examples kept per channel (default 9)")
    p.add_argument("--size", type=positive_int("--size", 1), default=None,
                   help="input size: shorter side resized to it, then centre-cropped (default 224; a model "
                   "that cannot take it: its input size)")
    p.add_argument("--batch", type=positive_int("--batch", 1), default=16, help="images per forward pass (default 16)")
    p.add_argument("--thumb", type=positive_int("--thumb", 1), default=48, help="thumbnail side in px (default 48)")
    p.add_argument("--min-side", type=positive_int("--min-side", 1), default=None,
                   help="skip images whose shorter side is below this (default: the layers' minimum input)")
    p.add_argument("--model", default="vgg16", type=model_name,
                   help="vgg16 (default), vgg19, keras:NAME or package.module:function (as python -m jaxviz.grid)")
    p.add_argument("--weights", default=None, type=weights_file, help="the model's weights (default: the embedded VGG16 weights)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def _validate(args):
    """Everything checkable before any work or any file is written."""
    from jaxviz import imagefolder
    from jaxviz.cli_args import check_out_dir, check_out_paths
    from jaxviz.model import VGG16, VGG19, layers as spec_layers, min_size

    args.size_given = args.size is not None
    args.size = 224 if args.size is None else args.size
    names = None if args.layers.strip() == "all" else [t.strip() for t in args.layers.split(",") if t.strip()]
    if names == []:
        raise JaxvizError("--layers is empty; give layer names such as block3_conv1,block4_conv1 or 'all'")
    vgg = args.model.strip().lower() in ("vgg16", "vgg19")
    if vgg:  # VGG's layers are known without loading it: check them before any work
        spec = VGG16 if args.model.strip().lower() == "vgg16" else VGG19
        valid = [l.name for l in spec_layers(spec)]
        for n in names or valid:
            if n not in valid:
                raise JaxvizError(f"unknown layer {n!r} for {args.model}; valid layers: {', '.join(valid)} or 'all'")
            if args.size < min_size(n, spec):
                raise JaxvizError(f"--size {args.size} is too small for {n}; the minimum is {min_size(n, spec)} px")
        names = names or valid
        if args.model.strip().lower() == "vgg19" and args.weights is None:
            raise JaxvizError("vgg19 needs its weights: give a Keras VGG19 h5 file with --weights")
    if vgg and args.weights is not None and not os.path.isfile(args.weights):  # a folder "did not exist"
        what = "does not exist" if not os.path.exists(args.weights) else "is not a file"
        raise JaxvizError(f"weights file {args.weights} {what}; give a Keras h5 file with --weights")
    imagefolder.list_images(args.images, warn=False)  # collect's listing says what it cannot read
    check_out_dir(args.out)
    check_out_paths(args.out, files=(SUMMARY_NPZ, SUMMARY_JSON, STATE))
    return names


def check_memory(model, layers: Sequence[str], config: Config) -> None:
    """Refuse, before any work, settings whose memory exceeds the limit (``jaxviz.checks``):
    the examples kept (k per channel, a thumb x thumb thumbnail each) and one batch's
    activations up to the deepest layer (float32, x2 for XLA's temporaries)."""
    kept = sum(model.layer(l).channels for l in layers) * config.k * (config.thumb ** 2 * 3 + 64)
    deepest = max(model.layer_index(l) for l in layers)
    scale = (config.size / model.input_size) ** 2
    per_image = config.size ** 2 * 3 + sum(float(np.prod(l.shape)) * scale for l in model.layers[: deepest + 1])
    need = int(kept + config.batch * per_image * 4 * 2)
    limit = checks.memory_limit(checks.device_memory())
    if need > limit:
        raise JaxvizError(f"--k {config.k}, --thumb {config.thumb}, --batch {config.batch} and --size {config.size} need "
                          f"about {checks.gib(need)} of memory, more than the {checks.gib(limit)} available; lower them")


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 done, 2 bad input (one line on stderr), 130 interrupted.

    The work runs through ``jaxviz.cli_run.run_interruptible``, as grid's and atlas's do: SIGINT,
    SIGTERM and SIGHUP exit 130 at once even inside a long compiled batch, after the state write in
    progress (the state saved so far, ending at a completed batch, stays), also in a process
    started with SIGINT ignored (a script's background job); the previous handlers come back
    when it returns. Pillow's DecompressionBombWarning is not shown (see jaxviz.imagefolder:
    such images are used; those over twice its limit are skipped, counted), nor its warnings
    about an image's damaged metadata."""
    import warnings

    from PIL import Image

    args = build_parser().parse_args(argv)
    old = {s: signal.getsignal(s) for s in stop_signals()}
    for s in old:
        signal.signal(s, signal.default_int_handler)
    try:
        with warnings.catch_warnings():  # entered here, in the main thread only: the worker's and decoders' too
            # images of 1-2x Pillow's pixel limit are used (jaxviz.imagefolder), not printed about raw
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # nor Pillow's about a damaged EXIF block ("Corrupt EXIF data"): the image is used all the same
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            return _run(args)
    finally:
        restore_handlers(old)


def _interrupted_line(out: str) -> str:
    """The one line of an interrupted run: where a rerun continues from, or that nothing was saved."""
    state = os.path.join(out, STATE)
    if os.path.exists(state):
        return f"jaxviz.examples: interrupted; rerun the same command to continue from {state}"
    return "jaxviz.examples: interrupted; nothing was saved yet; rerun the same command to start again"


def _run(args) -> int:
    """``main``'s work for parsed arguments, in a worker thread (``run_interruptible``)."""
    from jaxviz.cli_args import WRITING_S, missing_folders, remove_if_empty, remove_stale_temporaries
    from jaxviz.folder_lock import FolderLock

    say = printer(args.quiet)
    ui = {"bar": None, "created": [], "lock": None}
    gate = WriteGate()

    def close_bar():
        if ui["bar"] is not None:
            ui["bar"].close()

    def work() -> int:
        layers = _validate(args)
        ui["created"] = missing_folders(args.out)
        from jaxviz import models
        from jaxviz.cli_args import fit_default_size, make_out_dir, split_layers

        model = models.load(args.model, args.weights)
        if layers is None:  # 'all' of a model loaded here: its spatial layers
            layers = [l.name for l in model.layers if l.spatial]
        elif args.layers.strip() != "all":  # as the grid's: a model's layer "conv,3x3" is one layer, not two
            layers = split_layers(args.layers, {l.name for l in model.layers})
        if not (args.size_given or args.model.strip().lower() in ("vgg16", "vgg19")):
            from jaxviz.engine import SEED
            from jaxviz.objectives import channel

            args.size = fit_default_size(model, [channel(layer, [0]) for layer in layers],
                                         SEED._replace(size=args.size), say, verb="reading them").size
        layers = check_layers(model, layers, args.size)
        config = Config(k=args.k, size=args.size, batch=args.batch, thumb=args.thumb, min_side=args.min_side)
        check_memory(model, layers, config)
        make_out_dir(args.out)
        # one job per folder: a second one's summary would replace this one's, their states mixed
        with gate:  # an interrupt waits for it, or it never starts: no lock left behind by a racing exit
            lock = ui["lock"] = FolderLock(args.out, "jaxviz.examples").acquire()
        try:  # a killed run's half-written state or summary (.examples.npz.XXXXXXXX.tmp) stayed for good
            remove_stale_temporaries(args.out, before=time.time() - WRITING_S)
            return _collect(model, layers, config)
        finally:
            lock.release()

    def _collect(model, layers, config) -> int:
        progress = None
        if not args.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            bar = ui["bar"] = tqdm(desc="images", unit="file", file=sys.stderr)

            def progress(done, total):
                bar.total = total
                bar.n = done
                bar.refresh()
        t0 = time.perf_counter()
        s = collect(model, args.images, layers, config, out=args.out, progress=progress, gate=gate)
        close_bar()
        say(os.path.join(args.out, SUMMARY_NPZ))
        say(os.path.join(args.out, SUMMARY_JSON))
        say(f"done: {s.images_used} image{'s' if s.images_used != 1 else ''} in {time.perf_counter() - t0:.1f} s; "
            f"{s.skipped.describe()}")
        for layer, top in s.layers.items():
            seen = np.isfinite(top.values)  # -inf: a slot no image filled
            silent = int(np.sum(seen.any(axis=1) & ~(seen & (top.values != 0)).any(axis=1)))  # 0 on every image
            if silent:
                say(f"{layer}: {silent} of {len(top.values)} channels never fired on these images (their highest "
                    "activation 0): an atlas shows no examples for them")
        return 0

    def interrupted() -> None:  # main thread, the worker still running: the process exits 130 after this
        print("\n" + _interrupted_line(args.out), file=sys.stderr)
        if ui["lock"] is not None:
            ui["lock"].release()
        remove_if_empty(ui["created"])

    try:
        checks.backend()
        compile_cache.for_command()
        with quiet_notices(args.quiet):
            return run_interruptible(work, gate, interrupted)
    except JaxvizError as e:
        close_bar()
        remove_if_empty(ui["created"])  # nothing is left behind by a run that found no usable image
        print(error_line("jaxviz.examples", e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_bar()
        print(_interrupted_line(args.out), file=sys.stderr)
        remove_if_empty(ui["created"])
        return 130


def main_exit() -> None:
    """Entry point of the ``jaxviz-examples`` console script."""
    exit_command(main())


if __name__ == "__main__":
    main_exit()
