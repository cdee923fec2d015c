"""``python -m jaxviz.atlas``: every filter of every conv layer, as a static site.

The job is split into chunks: chunk = (layer, up to ``--chunk`` consecutive filters
of the selection). A chunk's PNGs are written one by one, atomically, and then its
record ``chunks/LAYER/cNNNN.json`` (filters, final activations, each PNG's sha256)
is written atomically: a chunk is done exactly when its record exists and its PNGs
match it. Re-running the same command skips done chunks, so a run killed at any
point (even by SIGKILL) and restarted finishes with every image intact, and no done
chunk is rendered again. ``manifest.json`` records the settings; a folder made with
other settings is refused unless ``--force`` (which replaces it).

Every chunk is rendered in rounds of ``--batch`` filters per local device, sharded
over a 1-D mesh of the devices (see jaxviz.shard); ``--batch auto`` (the default for a
new atlas) lets the model choose per layer, as ``jaxviz.engine.render`` does; with ``--coordinator``,
``--num-processes`` and ``--process-id`` (or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID) process p of P renders the chunks i with
i % P == p into the shared output folder, and process 0 builds the site once every
chunk record is there. The same filter gives the same image whatever the device or
process count.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
from typing import NamedTuple, Sequence

from jaxviz import checks, compile_cache
from jaxviz.checks import MAX_SEED, MAX_SIZE, MAX_STEPS, show
from jaxviz.cli_args import (
    OneLineParser, check_budget, check_clashes, check_layer_folder, check_out_dir, check_out_paths, filters_for,
    fit_default_size, home_path, make_out_dir, missing_folders, model_name, parse_filters, parse_layers,
    positive_int, rate, remove_if_empty, remove_stale_temporaries, split_layers, weights_file,
)
from jaxviz.cli_run import (
    WriteGate, exit_command, printer, restore_handlers, run_interruptible, stop_as_interrupt,
)
from jaxviz.folder_lock import FolderLock
from jaxviz.errors import JaxvizError, error_line, quiet_notices
from jaxviz.model import VGG16, conv_layers, layer_info, layers as all_layers, min_size

FORMAT = "jaxviz-atlas/1"
MANIFEST = "manifest.json"
LOG = "atlas.log"
CHUNKS = "chunks"
OWN_FILES = (MANIFEST, LOG, "index.html")  # the atlas's files at the top of --out (beside CHUNKS and the layers)
TEST_DELAY_ENV = "JAXVIZ_ATLAS_TEST_DELAY"  # tests only: seconds to sleep after each PNG
SEED_RECIPE = "seed"
UNSAID = {"dead_filter": "none"}  # settings a manifest holds only where they differ from this
AUTO = "auto"


class Chunk(NamedTuple):
    """Chunk ``index`` of the whole job: the ``k``-th slice of ``layer``'s selected filters."""

    index: int
    layer: str
    k: int
    filters: tuple[int, ...]


def plan(selection: dict[str, list[int]], chunk: int) -> list[Chunk]:
    """The job's chunks in order: layer by layer, ``chunk`` filters each (the last may be short)."""
    out: list[Chunk] = []
    for layer, filters in selection.items():
        for k, start in enumerate(range(0, len(filters), chunk)):
            out.append(Chunk(len(out), layer, k, tuple(filters[start : start + chunk])))
    return out


def unique_filters(layers):
    """A manifest's ``layers`` with each filter list deduplicated in order, as ``cli_args.filters_for``
    now does: an atlas made by an older version with ``--filters 9,0,5,5`` (stored as such) is the
    job ``9,0,5`` and resumes (its chunk records no longer match the chunks, so they are rendered
    again). Anything that is not a dict of integer lists comes back as it is."""
    if not isinstance(layers, dict):
        return layers
    ints = lambda fs: isinstance(fs, list) and all(isinstance(f, int) and not isinstance(f, bool) for f in fs)
    return {l: list(dict.fromkeys(fs)) if ints(fs) else fs for l, fs in layers.items()}


def share(chunks: Sequence[Chunk], process: int, count: int) -> list[Chunk]:
    """The chunks that process ``process`` of ``count`` renders: index % count == process."""
    return [c for c in chunks if c.index % count == process]


def png_name(f: int) -> str:
    return f"f{f:03d}.png"


def output_paths(selection: dict[str, list[int]], chunk: int, animate: bool = False,
                 examples=None) -> tuple[list[str], list[str]]:
    """(files, folders) relative to --out: every file the atlas writes for ``selection`` (its own
    files, each chunk's record, each filter's PNG, GIF with ``animate``, page and example patches,
    each layer's page) and every folder it makes (chunks/, each layer's folder, chunks/LAYER/ and
    their parents, LAYER/examples/): what ``check_out_paths`` checks before any work, so that a
    folder where a file goes (or a file where a folder goes) is one line, not a failure after rendering."""
    from jaxviz.site import filter_page_name
    from jaxviz.site_examples import patch_name

    names = Atlas("", {"chunk": chunk}, selection)  # out "": its paths relative to --out
    files = [*OWN_FILES, *(names.record_path(c) for c in names.chunks)]
    folders = [CHUNKS]
    for layer, fs in selection.items():
        parts = layer.split("/")  # "stem/conv": OUT/stem too
        folders += [os.path.join(top, *parts[:i]) for top in ("", CHUNKS) for i in range(1, len(parts) + 1)]
        files.append(os.path.join(layer, "index.html"))
        for f in fs:
            files += [names.image_path(layer, f), os.path.join(layer, filter_page_name(f))]
            files += [names.animation_path(layer, f)] if animate else []
        if examples is not None and layer in examples.thumbs:
            folders.append(os.path.join(layer, "examples"))
            files += [os.path.join(layer, patch_name(f, j)) for f in fs if f < examples.thumbs[layer].shape[0]
                      for j, _ in examples.shown(layer, f)]
    return files, folders


def _owner(selection, kind: str, path: str) -> str:
    """Whose ``path`` (a file or folder relative to --out) is: "layer NAME", or the atlas's own."""
    path = path[len(CHUNKS) + 1:] if path.startswith(CHUNKS + "/") else path
    mine = [l for l in selection if kind == "folder" and (path == l or l.startswith(path + "/"))]
    mine = mine or sorted((l for l in selection if path.startswith(l + "/")), key=len, reverse=True)
    return f"layer {show(mine[0])}" if mine else f"the atlas's own {path}"


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def valid_record(rec, c: Chunk) -> bool:
    """Whether ``rec`` (parsed JSON) is a complete record of chunk ``c``: its layer and filters,
    one finite loss, one PNG name and one sha256 per filter."""
    if not isinstance(rec, dict) or rec.get("layer") != c.layer:
        return False
    filters, losses, files, digests = (rec.get(k) for k in ("filters", "losses", "files", "sha256"))
    if not all(isinstance(v, list) and len(v) == len(c.filters) for v in (filters, losses, files, digests)):
        return False
    if any(isinstance(f, bool) or not isinstance(f, int) for f in filters) or tuple(filters) != c.filters:
        return False
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in losses):
        return False
    if files != [png_name(f) for f in c.filters]:
        return False
    return all(isinstance(d, str) and len(d) == 64 for d in digests)


def relative_cost(layer: str, size: int) -> float:
    """Multiply-accumulates of one ascent step of one image at ``layer`` (forward + input gradient).

    Used to weigh the progress bar (deep layers cost more per filter) and to model the
    time of layers an --estimate run did not measure.
    """
    if layer not in conv_layers(VGG16):
        return 1.0  # other models: every filter weighs the same
    total, s = 0.0, size
    for l in all_layers(VGG16):
        if l.kind == "pool":
            s //= 2
            continue
        cout = 1 if l.name == layer else l.out_channels
        total += s * s * 9 * l.in_channels * cout
        if l.name == layer:
            break
    return 2.0 * total


class Atlas:
    """The files of one atlas folder: manifest, chunk records, PNGs, log."""

    def __init__(self, out: str, settings: dict, selection: dict[str, list[int]]):
        self.out = out
        self.settings = settings
        self.selection = selection
        self.chunks = plan(selection, settings["chunk"])

    # manifest -------------------------------------------------------------------------
    def manifest(self) -> dict:
        return {"format": FORMAT, "settings": self.settings, "layers": self.selection,
                "chunks": len(self.chunks)}

    def manifest_path(self) -> str:
        return os.path.join(self.out, MANIFEST)

    def read_manifest(self) -> dict | None:
        """The folder's manifest (None if absent); one JaxvizError if it is unreadable or not a manifest."""
        try:
            with open(self.manifest_path()) as f:
                old = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
            raise JaxvizError(f"{self.manifest_path()} is unreadable ({_one_line(e)}); pass --force to replace "
                              "the atlas") from None
        if not (isinstance(old, dict) and isinstance(old.get("settings"), dict) and isinstance(old.get("layers"), dict)):
            raise JaxvizError(f"{self.manifest_path()} is not an atlas manifest (it needs format, settings and "
                              "layers); pass --force to replace the atlas, or use another --out")
        return old

    def differences(self, old: dict) -> list[str]:
        """What differs between this job and a manifest found in the folder (its filter lists
        compared once deduplicated: see ``unique_filters``)."""
        if old.get("format") != FORMAT:
            return [f"format {old.get('format')!r}"]
        # settings kept only where not their default (dead_filter): absent is the default on either side
        theirs, mine = ({**UNSAID, **s} for s in (old.get("settings", {}), self.settings))
        diff = [f"{k} {theirs.get(k)!r} -> {v!r}" for k, v in mine.items()
                if theirs.get(k) != v and not (k == "batch" and v is None and valid_batch(theirs.get(k, AUTO)))]
        if unique_filters(old.get("layers")) != self.selection:
            diff.append("the layers or filters")
        return diff

    def adopt(self, old: dict | None) -> None:
        """A batch not given (None) becomes the folder's (an atlas resumes with the compiled shapes
        it began with), or 'auto' for a new atlas."""
        if self.settings["batch"] is None:
            self.settings["batch"] = old.get("settings", {}).get("batch", AUTO) if old else AUTO

    def prepare(self, force: bool) -> str:
        """Check the folder's manifest against this job (or replace it); returns 'new', 'resume' or 'replaced'."""
        old = self.read_manifest() if not force else None
        if old is not None:
            diff = self.differences(old)
            self.adopt(old)
            if diff:
                raise JaxvizError(
                    f"{self.out} holds an atlas made with other settings ({'; '.join(diff[:4])}); "
                    "use another --out, or --force to replace it"
                )
            if old.get("layers") != self.selection or old.get("chunks") != len(self.chunks):
                self._write_manifest()  # an older version's duplicate filters: the manifest of the chunks now planned
            return "resume"
        if not force and any(files for _, _, files in os.walk(os.path.join(self.out, CHUNKS))):
            # a deleted manifest, or an interrupted --force: the records of unknown settings counted as done
            raise JaxvizError(f"{self.out} holds chunk records ({CHUNKS}/) but no {MANIFEST}, so not the settings "
                              "they were made with; pass --force to replace them, or use another --out")
        self.adopt(None)
        state = "new"
        if force and os.path.exists(self.manifest_path()) or force and os.path.isdir(os.path.join(self.out, CHUNKS)):
            self.remove()
            state = "replaced"
        self._write_manifest()
        return state

    def _write_manifest(self) -> None:
        from jaxviz.image import atomic_write

        data = json.dumps(self.manifest(), indent=1).encode()
        atomic_write(self.manifest_path(), lambda f: f.write(data))

    def remove(self) -> None:
        """Delete what an atlas writes here (manifest, log, records, site, the layer folders of the
        manifest found here, of this job and VGG16's); nothing else, nothing outside the folder."""
        layers = set(conv_layers(VGG16)) | set(self.selection)
        try:
            with open(self.manifest_path()) as f:
                old = json.load(f)
            layers |= set(old["layers"]) if isinstance(old, dict) and isinstance(old.get("layers"), dict) else set()
        except (OSError, ValueError, RecursionError):
            pass
        for name in OWN_FILES:
            try:
                os.unlink(os.path.join(self.out, name))
            except FileNotFoundError:
                pass
        root = os.path.abspath(self.out)
        for name in [CHUNKS] + sorted(l for l in layers if isinstance(l, str)):
            path = os.path.abspath(os.path.join(root, name))
            if os.path.commonpath([root, path]) != root or path == root or not os.path.isdir(path):
                continue  # a layer name that would lead outside the folder is not ours to delete
            shutil.rmtree(path)
            parent = os.path.dirname(path)
            while parent != root and not os.listdir(parent):  # "blocks/0/conv": its emptied parents too
                os.rmdir(parent)
                parent = os.path.dirname(parent)

    # chunks ---------------------------------------------------------------------------
    def record_path(self, c: Chunk) -> str:
        return os.path.join(self.out, CHUNKS, c.layer, f"c{c.k:04d}.json")

    def image_path(self, layer: str, f: int) -> str:
        return os.path.join(self.out, layer, png_name(f))

    def animation_path(self, layer: str, f: int) -> str:
        return self.image_path(layer, f)[: -len(".png")] + ".gif"

    def read_record(self, c: Chunk) -> dict | None:
        """The chunk's record, or None when it is absent, unreadable or does not validate
        (then the chunk is not done and is rendered again)."""
        try:
            with open(self.record_path(c)) as f:
                rec = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return None
        return rec if valid_record(rec, c) else None

    def is_done(self, c: Chunk, verify: bool = True) -> bool:
        """The chunk's record exists and (with ``verify``) every PNG it names is there, unchanged
        (and, in an atlas with animations, every filter's GIF is there, unchanged where the record has its sha256)."""
        rec = self.read_record(c)
        if rec is None:
            return False
        if not verify:
            return True
        animate, gifs = self.settings.get("animate"), rec.get("gif_sha256")  # older records: the GIF need only be there
        if animate and gifs is not None and not (isinstance(gifs, list) and len(gifs) == len(c.filters)):
            return False
        for k, (f, digest) in enumerate(zip(c.filters, rec.get("sha256", ()))):
            path, gif = self.image_path(c.layer, f), self.animation_path(c.layer, f)
            try:
                if sha256_file(path) != digest:
                    return False
                if animate and gifs is not None and sha256_file(gif) != gifs[k]:  # a damaged or missing GIF
                    return False
            except OSError:
                return False
            if animate and not os.path.isfile(gif):
                return False
        return len(rec.get("sha256", ())) == len(c.filters)

    def write_chunk(self, c: Chunk, images, losses, seconds: float, devices: int, process: int,
                    gate: WriteGate | None = None, frames=None) -> dict:
        """Write the chunk's PNGs (and animations), then its record (each atomically, each inside ``gate``)."""
        from jaxviz.image import atomic_write, make_folder, save_animation, save_png

        gate = gate or WriteGate()
        delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
        make_folder(os.path.join(self.out, c.layer))
        digests, gifs = [], []
        for i, (f, img) in enumerate(zip(c.filters, images)):
            if frames is not None:
                with gate:
                    gifs.append(sha256_file(save_animation(self.animation_path(c.layer, f), frames[i])))
            with gate:
                path = save_png(self.image_path(c.layer, f), img)
            digests.append(sha256_file(path))
            if delay:
                time.sleep(delay)
        rec = {"layer": c.layer, "chunk": c.k, "index": c.index, "filters": list(c.filters),
               "losses": [float(x) for x in losses], "files": [png_name(f) for f in c.filters],
               "sha256": digests, "seconds": round(seconds, 4), "devices": devices, "process": process}
        if frames is not None:  # a damaged GIF makes the chunk not done, as a changed PNG does
            rec["gif_sha256"] = gifs
        path = self.record_path(c)
        make_folder(os.path.dirname(path))
        data = json.dumps(rec).encode()
        with gate:
            atomic_write(path, lambda fh: fh.write(data))
        return rec

    def log(self, line: str) -> None:
        """Append one line to atlas.log (one write call, O_APPEND: lines from processes do not mix);
        a full disk is one JaxvizError (the chunk before it is saved: a rerun resumes)."""
        from jaxviz.image import write_error

        path = os.path.join(self.out, LOG)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line.rstrip("\n") + "\n").encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise JaxvizError(write_error(path, e, "choose another folder")) from None

    def missing(self) -> list[Chunk]:
        """Chunks without a valid record."""
        return [c for c in self.chunks if self.read_record(c) is None]

    def clean_temporaries(self, before: float | None = None) -> int:
        """Remove our temporary files left by killed writers (older than ``before``, when given;
        only call when no writer of this folder is running)."""
        folders = [os.path.join(self.out, CHUNKS)] + [os.path.join(self.out, l) for l in self.selection] + [
            os.path.join(self.out, CHUNKS, l) for l in self.selection] + [
            os.path.join(self.out, l, "examples") for l in self.selection]  # the site's example patches
        return remove_stale_temporaries(self.out, folders, before)

    def build_site(self, examples=None) -> str:
        from jaxviz.site import FilterEntry, build_site

        by_layer: dict[str, list] = {l: [] for l in self.selection}
        for c in self.chunks:
            rec = self.read_record(c)
            if rec is None:
                raise JaxvizError(f"chunk {c.layer} #{c.k} has no record; rerun the same command to finish the atlas")
            for f, loss, name in zip(rec["filters"], rec["losses"], rec["files"]):
                by_layer[c.layer].append(FilterEntry(int(f), float(loss), name))
        title = f"jaxviz atlas: {self.settings.get('model', 'vgg16')}"
        return build_site(self.out, list(by_layer.items()), self.settings, title=title, examples=examples)


# ---------------------------------------------------------------------------------------
# command line


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m jaxviz.atlas",
        description="Render every filter of every conv layer of a model (VGG16 by default, or a selection) and "
        "write a static site: "
        "an index of layers, one page per layer and one per filter. Re-running the same command resumes.",
        epilog="Multi-host: run one process per host with the same --out on a shared file system, "
        "--coordinator HOST:PORT (process 0's address), --num-processes N and --process-id I.",
    )
    p.add_argument("--model", default="vgg16", type=model_name,
                   help="vgg16 (default), vgg19, keras:NAME or package.module:function (see python -m jaxviz.grid)")
    p.add_argument("--layers", default="all",
                   help="layers, comma-separated, or 'all' (VGG: every conv layer; other models: every spatial layer)")
    p.add_argument("--filters", default="all", help="filters per layer: a range 0-63, a list 0,5,9, or 'all' (default all)")
    p.add_argument("--size", type=positive_int("--size", 1, MAX_SIZE), default=None,
                   help="image size in pixels (default 64; a model that cannot take it: its input size)")
    p.add_argument("--steps", type=positive_int("--steps", 0, MAX_STEPS), default=None,
                   help="gradient ascent steps (default 40 for the seed recipe, the recipe's own default otherwise)")
    p.add_argument("--step-size", type=rate("--step-size"), default=None,
                   help="step size of each ascent step (default 1.0 for the seed recipe, the recipe's own otherwise)")
    p.add_argument("--seed", type=positive_int("--seed", 0, MAX_SEED), default=0, help="random seed of the start images (default 0)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="compute precision; bfloat16 uses bf16 matmuls with f32 accumulation (default float32)")
    p.add_argument("--recipe", default=SEED_RECIPE,
                   help="rendering recipe: 'seed' (the book's, sharded over devices) or another recipe of "
                   "jaxviz.render, e.g. 'lucid', rendered on the default device (default seed)")
    p.add_argument("--dead-filter", choices=("none", "preact", "redirect"), default=None,
                   help="quality recipe only: for filters that never fire, the objective before the relu "
                   "(preact) or through a redirected relu (redirect), as python -m jaxviz.grid's (default none)")
    p.add_argument("--weights", default=None, type=weights_file, help="Keras VGG16 h5 weights file (default: JAXVIZ_WEIGHTS, then the embedded file)")
    p.add_argument("--out", default="atlas", type=home_path("--out"), help="output folder (default atlas/)")
    p.add_argument("--chunk", type=positive_int("--chunk", 1, 4096), default=64,
                   help="filters per chunk, the unit of saving and resuming (default 64)")
    p.add_argument("--batch", type=batch_arg, default=None,
                   help="filters per device per compiled call, or 'auto': per layer, the model's own choice "
                   "(on CPU the chunk measured fastest, elsewhere the memory bound). Default: the folder's "
                   "own when resuming an atlas, else auto. Part of the settings: it fixes the compiled shapes")
    p.add_argument("--force", action="store_true", help="replace an atlas made with other settings in --out")
    p.add_argument("--animate", action="store_true",
                   help="also save each filter's ascent as LAYER/fNNN.gif (about 40 frames), shown on its page")
    p.add_argument("--examples", default=None, type=home_path("--examples"),
                   help="dataset examples beside each filter: the --out folder of python -m jaxviz.examples, "
                   "or its examples.npz")
    p.add_argument("--coordinator", default=None, help="multi-process: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--num-processes", type=positive_int("--num-processes", 1, 1 << 16), default=None,
                   help="multi-process: number of processes (or JAX_NUM_PROCESSES)")
    p.add_argument("--process-id", type=positive_int("--process-id", 0, 1 << 16), default=None,
                   help="multi-process: this process's id, 0 to N-1 (or JAX_PROCESS_ID)")
    p.add_argument("--cluster", action="store_true",
                   help="multi-process: let JAX detect the cluster (SLURM, Open MPI, ...) for unset values")
    p.add_argument("--wait", type=positive_int("--wait", 1, 10**7), default=1800,
                   help="multi-process: seconds to wait for all processes to join (at least 300), and process 0 "
                   "for the other processes' chunks without progress before giving up on the site (default 1800)")
    p.add_argument("--estimate", action="store_true",
                   help="after the run, estimate the time of the full atlas (all 13 layers, 4,224 filters) "
                   "at these settings on these devices from the rounds timed in this run")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def batch_arg(text: str) -> int | str:
    """An argparse type: 'auto' or an integer 1-4096."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be an integer or 'auto', not {text!r}") from None
    return positive_int("--batch", 1, 4096)(text)


def valid_batch(b) -> bool:
    """'auto' or what --batch takes (a manifest's batch of 10**9 was adopted, and padded every round to it)."""
    return b == AUTO or (isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 4096)


def layer_batch(model, recipe, layer: str, n: int, devices: int, batch: int | str) -> int:
    """Filters per device in each round of a chunk of ``n`` filters of ``layer``: ``batch``, or
    with 'auto' the engine's choice for that many (``jaxviz.engine.chunk_for``), evened out so
    the last round pads least. A batch past a device's share of the chunk is cut to it: --batch 64 with
    --filters 0-3 padded every round to 64 images, 16 times the work for the same 4 images."""
    per_device = -(-n // devices)
    if batch != AUTO:
        return min(batch, per_device)
    from jaxviz import engine, objectives

    b = engine.chunk_for(model, objectives.channel(layer, [0]), recipe, per_device, engine.DEFAULT_MAX_BYTES)
    return -(-per_device // -(-per_device // b))


def _check_examples(examples, path: str, model, selection, say) -> None:
    """Dataset examples of another model, or of other weights, are refused (every plain-function
    model is named "function": their weights tell them apart); layers they do not cover are named."""
    from jaxviz.examples import fingerprint

    settings = examples.meta.get("settings", {})
    made_with = settings.get("model")
    if made_with is not None and made_with != model.name:
        raise JaxvizError(f"the dataset examples at {path} were made with model {made_with}, not {model.name}; "
                          "make them with the same --model and --weights")
    if settings.get("weights") is not None and settings["weights"] != fingerprint(model.params):
        raise JaxvizError(f"the dataset examples at {path} were made with other weights than this {model.name} "
                          "model's; make them with the same --model and --weights")
    missing = [l for l in selection if l not in examples.layers]
    if missing:
        say(f"note: the dataset examples at {path} have no {', '.join(missing)}; "
            f"{'those pages show' if len(missing) > 1 else 'its pages show'} none")


def _weights_id(path: str) -> str:
    return sha256_file(path)


def _check_recipe(recipe: str) -> None:
    from jaxviz.api import RECIPES

    if recipe not in RECIPES:  # checked before any work
        raise JaxvizError(f"unknown --recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")


def _is_vgg(args) -> bool:
    return args.model.strip().lower() == "vgg16"


def _select(args, model=None) -> dict[str, list[int]]:
    """The layers and filters to render: VGG16's from its static table, other models' from ``model``."""
    wanted = parse_filters(args.filters)
    if model is None:
        layers = parse_layers(args.layers)
        selection = {l: filters_for(l, wanted) for l in layers}
    else:
        names = [l.name for l in model.layers if l.spatial] if args.layers.strip() == "all" else \
            split_layers(args.layers, {l.name for l in model.layers})
        selection = {}
        for l in names:
            info = model.layer(l)
            check_layer_folder(l, (CHUNKS, *OWN_FILES))
            if not info.spatial:
                raise JaxvizError(f"layer {l} is not spatial (shape {info.shape}); the atlas renders channels of "
                                  "spatial layers")
            if args.size < model.min_size(l):
                raise JaxvizError(f"--size {args.size} is too small for {l}; the minimum is {model.min_size(l)} px")
            selection[l] = filters_for(l, wanted, channels=info.channels)
    selection = {l: fs for l, fs in selection.items() if fs}
    if not selection:
        raise JaxvizError("nothing to render: the selection of --layers and --filters is empty")
    return selection


def _validate(args) -> dict[str, list[int]] | None:
    """Check the settings before any work; VGG16's selection too (other models' once loaded: None)."""
    args.size_given = args.size is not None
    args.size = 64 if args.size is None else args.size
    if args.estimate and not _is_vgg(args):
        raise JaxvizError("--estimate models the full VGG16 atlas; drop it for other models")
    if args.examples is not None and not os.path.exists(args.examples):
        what = "is empty" if not args.examples else f"{args.examples}: no such file or folder"
        raise JaxvizError(f"--examples {what}; give the --out folder of python -m jaxviz.examples or its examples.npz")
    if not _is_vgg(args):
        if args.precision != "float32":
            raise JaxvizError(f"--precision applies to VGG16 only, not {args.model}")
        parse_filters(args.filters)
        selection = None
    else:
        selection = _select(args)
    if args.recipe == SEED_RECIPE:
        args.steps = 40 if args.steps is None else args.steps
        args.step_size = 1.0 if args.step_size is None else args.step_size
        if args.dead_filter is not None:
            raise JaxvizError("--dead-filter applies to the quality recipe only; add --recipe lucid")
    args.dead_filter = args.dead_filter or "none"
    if args.steps is not None and args.steps < 0:
        raise JaxvizError(f"--steps must be 0 or more, not {args.steps}")
    if args.step_size is not None:
        checks.rate("--step-size", args.step_size)
    for l in selection or ():
        if args.size < min_size(l):
            raise JaxvizError(f"--size {args.size} is too small for {l}; the minimum is {min_size(l)} px")
    for l, fs in (selection or {}).items():  # 'auto' (or the folder's batch) is checked once known
        n = min(args.chunk, len(fs))
        check_budget(l, args.size, n, min(args.batch, n) if isinstance(args.batch, int) else 1)
    _check_recipe(args.recipe)
    return selection


def _every(args, recipe) -> int:
    """Steps between the snapshots of an --animate run (about 40 frames); 0 without --animate."""
    from jaxviz.image import frames_every

    return frames_every(recipe.steps) if args.animate else 0


def _recipe(args):
    """The engine's recipe of these settings."""
    from jaxviz.engine import LUCID, SEED
    from jaxviz.optim import SeedAscent

    if args.recipe == SEED_RECIPE:
        return SEED._replace(size=args.size, steps=args.steps, optimizer=SeedAscent(args.step_size))
    if args.step_size is not None:
        raise JaxvizError(f"--step-size applies to the seed recipe only, not {args.recipe}")
    return LUCID._replace(size=args.size, steps=LUCID.steps if args.steps is None else args.steps)


def _load_model(args, progress: bool):
    """(model, weights name, weights id) of --model and --weights; nothing is written before this."""
    from jaxviz import models

    if _is_vgg(args):
        import jaxviz
        from jaxviz.weights import resolve_weights

        path = str(resolve_weights(args.weights, progress=progress))
        model = models.vgg(jaxviz.load_params(path, progress=False), precision=args.precision)
        return model, os.path.basename(path), _weights_id(path)
    model = models.load(args.model, args.weights)
    w = args.weights or "default"
    return model, os.path.basename(str(w)), _weights_id(w) if os.path.isfile(str(w)) else str(w)


class Timings:
    """Round times per layer, for the closing line and --estimate."""

    def __init__(self):
        self.rounds: dict[str, list[tuple[float, int]]] = {}
        self.write_seconds = 0.0
        self.filters = 0

    def add(self, layer: str, seconds: float, n: int) -> None:
        self.rounds.setdefault(layer, []).append((seconds, n))
        self.filters += n

    def per_layer(self) -> dict[str, tuple[float, float]]:
        """layer -> (seconds of one full round in steady state, one-off compile seconds); a layer of
        one round only gives that round and 0 (``steady`` leaves it out)."""
        out = {}
        for layer, rs in self.rounds.items():
            first = rs[0][0]
            steady = [s for s, _ in rs[1:]]
            if steady:
                steady.sort()
                t = steady[len(steady) // 2]
                out[layer] = (t, max(0.0, first - t))
            else:
                out[layer] = (first, 0.0)  # one round only: compile included, an upper bound
        return out

    def steady(self) -> set[str]:
        """The layers timed in two rounds or more: their steady round time is known."""
        return {layer for layer, rs in self.rounds.items() if len(rs) > 1}


def estimate_full(timings: Timings, settings: dict, round_sizes: dict[str, int]) -> tuple[float, list[str], list[str]]:
    """Seconds for the full atlas (every filter of every conv layer) at these settings.

    Per layer: compile + rounds x steady round time, with the rounds the full atlas
    would run (chunks of --chunk filters, each in rounds of ``round_sizes[layer]``: the
    layer's batch x devices).
    Layers not timed are modelled from the timed ones by their cost per step
    (relative_cost), from those timed in steady state where there are any (a first round
    carries its compile, which the cost ratio of a deep layer to a shallow one would
    multiply). PNG writing is added at the rate measured.
    """
    measured = timings.per_layer()
    size = settings["size"]
    if not measured:
        raise JaxvizError("nothing was rendered in this run, so there is nothing to estimate from; "
                          "use a new --out (or --force) with a few filters per layer")
    base = timings.steady() or set(measured)
    a = sum(measured[l][0] for l in base) / sum(relative_cost(l, size) * round_sizes[l] for l in base)
    compile_mean = sum(c for _, c in measured.values()) / len(measured)
    total, modelled = 0.0, []
    for layer in conv_layers(VGG16):
        n, round_size = layer_info(layer).out_channels, round_sizes[layer]
        rounds = sum(math.ceil(min(settings["chunk"], n - s) / round_size) for s in range(0, n, settings["chunk"]))
        if layer in measured:
            t, c = measured[layer]
        else:
            t, c = a * relative_cost(layer, size) * round_size, compile_mean
            modelled.append(layer)
        total += c + rounds * t
    per_filter_write = timings.write_seconds / max(1, timings.filters)
    total += per_filter_write * sum(layer_info(l).out_channels for l in conv_layers(VGG16))
    return total, sorted(measured, key=conv_layers(VGG16).index), modelled


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 done, 2 bad input (one line on stderr), 130 interrupted."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the work started (parsing, setting up handlers): nothing to clean
        print("jaxviz.atlas: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    t_start = time.perf_counter()
    started = time.time()
    args = build_parser().parse_args(argv)
    say = printer(args.quiet)
    state: dict = {"atlas": None, "proc": None, "lock": None, "created": []}
    gate = WriteGate()

    def work() -> int:
        selection = _validate(args)
        from jaxviz import shard

        proc = state["proc"] = shard.init_distributed(args.coordinator, args.num_processes, args.process_id,
                                                      auto=args.cluster, timeout=max(args.wait, 300))
        checks.backend()  # after joining a job, which must come before the devices start
        compile_cache.for_command()
        check_out_dir(args.out)
        examples = None
        if args.examples is not None:
            from jaxviz import site_examples

            examples = site_examples.load(args.examples)
        # the weights load before anything is written: a bad file leaves the folder as it was
        model, weights_name, weights_id = _load_model(args, not args.quiet and proc.index == 0)
        selection = selection or _select(args, model)
        paths = output_paths(selection, args.chunk, args.animate, examples)
        check_clashes(args.out, *paths, owner=lambda kind, path: _owner(selection, kind, path))
        check_out_paths(args.out, *paths)
        if examples is not None:
            _check_examples(examples, args.examples, model, selection, say if proc.index == 0 else (lambda *a: None))
        recipe = _recipe(args)
        if not (args.size_given or _is_vgg(args)):
            from jaxviz.objectives import channel

            recipe = fit_default_size(model, [channel(layer, fs[:1]) for layer, fs in selection.items()], recipe,
                                      say if proc.index == 0 else (lambda *a: None),
                                      unpadded=" and no padding in the transforms")
            args.size = recipe.size
        settings = {"model": args.model.strip(), "recipe": args.recipe, "size": args.size, "steps": args.steps,
                    "step_size": args.step_size, "seed": args.seed, "precision": args.precision,
                    "batch": args.batch, "chunk": args.chunk, "weights_name": weights_name,
                    "weights_sha256": weights_id, "animate": bool(args.animate)}
        if args.dead_filter != "none":  # only then in the settings: the atlases made before it resume as they were
            from jaxviz import engine, objectives

            settings["dead_filter"] = args.dead_filter
            for layer, fs in selection.items():  # a model with no pre-activation path: refused before any work
                engine.check(model, objectives.channel(layer, fs[:1], args.dead_filter), recipe)
        atlas = Atlas(args.out, settings, selection)
        import jax

        def batches_of(batch) -> dict[str, int]:
            """Each layer's filters per device per round, checked against the memory limit (other models'
            by the engine's estimate, as the grid's: a --size or --batch past memory was killed by the OS)."""
            from jaxviz import engine, objectives

            out = {l: layer_batch(model, recipe, l, min(args.chunk, len(fs)), len(jax.local_devices()), batch)
                   for l, fs in selection.items()}
            every = _every(args, recipe)  # a chunk's frames are kept until its GIFs are written
            for l, fs in selection.items():
                if _is_vgg(args):
                    check_budget(l, args.size, min(args.chunk, len(fs)), out[l],
                                 frames=engine.snapshot_count(recipe.steps, every))
                else:
                    engine.batch_for(model, objectives.channel(l, fs[: args.chunk]), recipe, out[l], every=every)
            return out

        asked = args.batch or AUTO
        batches = batches_of(asked)  # before anything is written
        # the manifest: process 0 takes the folder's lock, checks or writes it; the others wait for its word
        key = f"jaxviz/atlas/manifest/{os.path.abspath(args.out)}"
        if proc.index == 0:
            try:
                state["created"] = missing_folders(args.out)
                make_out_dir(args.out)
                with gate:  # an interrupt waits for it, or it never starts: no lock left behind by a racing exit
                    state["lock"] = FolderLock(args.out, "jaxviz.atlas").acquire()
                if proc.count == 1:  # no other writer can be running: our temporaries of killed runs go
                    atlas.clean_temporaries(before=started)
                st = atlas.prepare(args.force)
            except JaxvizError as e:
                shard.publish(key, "error: " + str(e))
                raise
            shard.publish(key, "ok")
            if st == "replaced":
                say(f"replaced the atlas in {args.out} (--force)")
        else:
            word = shard.receive(key, args.wait)
            if word is None:  # no key-value store: poll the folder for a matching manifest
                _wait_for_manifest(atlas, args.wait)
            elif word != "ok":
                raise JaxvizError(f"process 0 refused the job: {word[len('error: '):]}")
            old = atlas.read_manifest()
            if old is None:  # another --out, or a folder the processes do not share
                raise JaxvizError(f"process 0's {MANIFEST} is not in {args.out} here; give every process the same "
                                  "--out, on a file system they all share")
            diff = atlas.differences(old)
            if diff:  # this process's own options, not process 0's: its chunks would be another atlas's
                raise JaxvizError(f"process 0's atlas in {args.out} has other settings than this process's "
                                  f"({'; '.join(diff[:4])}); give every process the same options")
            atlas.adopt(old)
            shard.shutdown()  # the rest goes through the folder: process 0 ending (Ctrl-C) aborted this one in JAX
        state["atlas"] = atlas
        if atlas.settings["batch"] != asked:  # the folder's own batch, adopted on resuming
            batches = batches_of(atlas.settings["batch"])

        mine = share(atlas.chunks, proc.index, proc.count)
        todo = [c for c in mine if not atlas.is_done(c)]
        skipped = len(mine) - len(todo)
        devices = len(jax.local_devices())
        who = f"process {proc.index}/{proc.count}: " if proc.count > 1 else ""
        if skipped:
            say(f"{who}{skipped} of {len(mine)} chunks already done in {args.out}; rendering the other {len(todo)}")
        run_id = f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
        timings = Timings()
        _render(atlas, todo, model, recipe, args, batches, proc, devices, run_id, timings, say, gate)
        rendered = sum(len(c.filters) for c in todo)
        elapsed = time.perf_counter() - t_start
        say(f"{who}rendered {rendered} filter{'s' if rendered != 1 else ''} ({len(todo)} chunk"
            f"{'s' if len(todo) != 1 else ''}, {skipped} already done) on {devices} "
            f"{jax.default_backend()} device(s) in {elapsed:.1f} s total: {rendered / elapsed:.2f} filters/s")

        if args.estimate and proc.index == 0:
            sizes = {l: devices * layer_batch(model, recipe, l, min(args.chunk, layer_info(l).out_channels), devices,
                                              settings["batch"]) for l in conv_layers(VGG16)}
            total, measured, modelled = estimate_full(timings, settings, sizes)
            n_all = sum(layer_info(l).out_channels for l in conv_layers(VGG16))
            how = f"timed layers: {', '.join(measured)}" + (f"; modelled by cost: {', '.join(modelled)}" if modelled else "")
            bound = not timings.steady()  # every timed round was a layer's first: its compile in it
            say(f"estimate: the full atlas ({len(conv_layers(VGG16))} layers, {n_all} filters, {args.size} px, "
                f"{args.steps if args.steps is not None else 'default'} steps, batch {settings['batch']} x {devices} device(s)) "
                f"takes {'at most' if bound else 'about'} {total:.0f} s "
                f"({total / 60:.1f} min, {n_all / total:.2f} filters/s) here per process ({how})"
                + ("; an upper bound: each timed layer ran one round, its compile included (more filters than one "
                   "round of a layer, or a smaller --batch, time its steady rounds)" if bound else ""))

        if proc.index == 0:
            _wait_for_all(atlas, args.wait, say)
            atlas.clean_temporaries()
            with gate:
                index = atlas.build_site(examples)
            say(f"site: {index}")
        return 0

    def interrupted_line() -> str:
        atlas = state["atlas"]
        if atlas is None:
            return "jaxviz.atlas: interrupted"
        left = len(atlas.missing())
        if not left:  # every image is there: it was building the site
            return "jaxviz.atlas: interrupted; every chunk is done; rerun the same command to build the site"
        return (f"jaxviz.atlas: interrupted; {len(atlas.chunks) - left} of {len(atlas.chunks)} done; "
                "rerun the same command to resume")

    def release(failed: bool) -> None:
        if state["lock"] is not None:
            state["lock"].release()
        if failed:
            remove_if_empty(state["created"])

    def interrupted() -> None:
        print("\n" + interrupted_line(), file=sys.stderr)
        release(failed=True)

    old_handlers = stop_as_interrupt()
    failed = True
    try:
        with quiet_notices(args.quiet):
            code = run_interruptible(work, gate, interrupted)
        failed = False
        return code
    except JaxvizError as e:
        print(error_line("jaxviz.atlas", e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_line(), file=sys.stderr)
        return 130
    finally:
        release(failed)
        restore_handlers(old_handlers)
        if state["proc"] is not None and state["proc"].count > 1:
            from jaxviz import shard

            shard.shutdown()


def _wait_for_manifest(atlas: Atlas, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        old = atlas.read_manifest()
        if old is not None and not atlas.differences(old):
            return
        if time.monotonic() > deadline:
            raise JaxvizError(f"no matching {MANIFEST} from process 0 in {atlas.out} after {timeout:.0f} s")
        time.sleep(0.5)


def _wait_for_all(atlas: Atlas, timeout: float, say) -> None:
    """Poll until every chunk has its record; give up after ``timeout`` seconds without progress."""
    missing = atlas.missing()
    if not missing:
        return
    say(f"waiting for {len(missing)} chunks from the other processes")
    last, t_last = len(missing), time.monotonic()
    while missing:
        time.sleep(0.5)
        missing = atlas.missing()
        if len(missing) < last:
            last, t_last = len(missing), time.monotonic()
        elif time.monotonic() - t_last > timeout:
            raise JaxvizError(f"{len(missing)} chunks still missing after {timeout:.0f} s without progress; "
                              "rerun the same command to render them and build the site")


def progress_mark(done: float, whole: float, total: int = 1000) -> int:
    """Integer progress in [0, total] for ``done`` of ``whole`` cost units. A float bar summing
    float steps overshoots its total by rounding: tqdm's "clamping frac" warning, negative ETA."""
    return total if whole <= 0 else max(0, min(total, round(total * done / whole)))


def _render(atlas: Atlas, todo: list[Chunk], model, recipe, args, batches: dict[str, int], proc, devices: int,
            run_id: str, timings: Timings, say, gate: WriteGate | None = None) -> int:
    """Render and save each chunk of ``todo`` in rounds of ``batches[layer]`` filters per device;
    a progress bar weighted by cost gives the ETA."""
    import jax
    import numpy as np

    from jaxviz import objectives, shard
    from jaxviz.models.base import float16_cause

    if not todo:
        return 0
    total_filters = sum(len(c.filters) for c in todo)
    costs = {c.layer: relative_cost(c.layer, args.size) for c in todo}
    total_cost = sum(costs[c.layer] * len(c.filters) for c in todo)
    bar = None
    desc = f"atlas p{proc.index}" if proc.count > 1 else "atlas"
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=1000, desc=desc, unit="", file=sys.stderr, smoothing=0.0, dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        bar.set_description_str(f"{desc} 0/{total_filters} filters", refresh=False)
    done_cost = 0.0
    key = jax.random.key(args.seed)
    every = _every(args, recipe)
    runner = shard.ShardedRender(model, recipe, every=every)
    done_filters, n_done = 0, 0
    try:
        for c in todo:
            t0 = time.perf_counter()
            images, losses, frames = [], [], []
            objective = objectives.channel(c.layer, list(c.filters), args.dead_filter)
            for r in runner.rounds(objective, key, batches[c.layer]):
                images.append(r.images)
                losses.append(r.losses)
                frames.append(r.frames)
                timings.add(c.layer, r.seconds, r.stop - r.start)
                done_filters += r.stop - r.start
                if bar is not None:
                    bar.set_description_str(f"{desc} {done_filters}/{total_filters} filters, {c.layer}", refresh=False)
                    done_cost += costs[c.layer] * (r.stop - r.start)
                    bar.update(max(0, progress_mark(done_cost, total_cost) - bar.n))
            t_write = time.perf_counter()
            images, losses = np.concatenate(images), np.concatenate(losses)
            frames = np.concatenate(frames) if every else None
            try:
                checks.finite(f"the images of {c.layer} (filters {c.filters[0]}-{c.filters[-1]})", losses,
                              why=lambda: float16_cause(model, recipe))
            except JaxvizError as e:  # say what the folder keeps, and that a lower step size is a new atlas
                done = len(atlas.chunks) - len(atlas.missing())
                kept = f"{atlas.out} keeps the {done} of {len(atlas.chunks)} chunks done" if done else \
                    f"no chunk was written to {atlas.out}"
                raise JaxvizError(f"{e}; {kept} (other settings need another --out, or --force to replace "
                                  "the atlas)") from None
            atlas.write_chunk(c, images, losses, t_write - t0, devices, proc.index, gate, frames)
            timings.write_seconds += time.perf_counter() - t_write
            with gate:
                atlas.log(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} run={run_id} process={proc.index}/{proc.count} "
                          f"devices={devices} rendered {c.layer} chunk={c.k} index={c.index} "
                          f"filters={c.filters[0]}-{c.filters[-1]} seconds={time.perf_counter() - t0:.3f}")
            n_done += 1
    finally:
        if bar is not None:
            bar.close()
    return n_done


def main_exit() -> None:
    """Entry point of the ``jaxviz-atlas`` console script."""
    exit_command(main())


if __name__ == "__main__":
    main_exit()
