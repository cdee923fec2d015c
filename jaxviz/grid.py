"""``python -m jaxviz.grid``: grids of what a model's units respond to, from one command.

With no options it reproduces the book: block1_conv1, block2_conv1, block3_conv1 and
block4_conv1, filters 0-63 as 8x8 grids of 64 px tiles with 5 px black margins, 40
steps of size 1.0, on the embedded VGG16 ImageNet weights. One PNG per layer (or per
``--objective``). ``--model`` picks another network (VGG19, any keras.applications
model, or a function returning a jaxviz Model); ``--list-layers`` shows its layers.
"""
from __future__ import annotations

import os
import sys
import time

from jaxviz.checks import MAX_SEED, MAX_SIZE, MAX_STEPS
from jaxviz.cli_args import (
    WRITING_S, OneLineParser, check_budget, check_clashes, check_out_dir, check_out_paths, filters_for,
    fit_default_size, home_path, make_out_dir, missing_folders, model_name, parse_filters, parse_layers,
    positive_int, rate, remove_if_empty, remove_stale_temporaries, split_layers, weights_file,
)
from jaxviz.cli_run import (
    WriteGate, exit_command, printer, restore_handlers, run_interruptible, show, stop_as_interrupt,
)
from jaxviz import checks, compile_cache
from jaxviz.errors import JaxvizError, error_line, quiet_notices
from jaxviz.model import min_size

LUCID_STEPS = 512  # jaxviz.lucid.LUCID_STEPS (not imported here: jax loads only after parsing)

SEED_LAYERS = "block1_conv1,block2_conv1,block3_conv1,block4_conv1"


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m jaxviz.grid",
        description="Render the patterns that VGG16 filters respond to (gradient ascent in input space) "
        "as grids of tiles. Defaults reproduce Chollet, Deep Learning with Python, section 5.4.",
        epilog="Tiles are in reading order: filter f sits at row f // cols, column f % cols "
        "(the book's loop fills columns first, i.e. its grid is the transpose of ours).",
    )
    p.add_argument("--model", default="vgg16", type=model_name,
                   help="vgg16 (default, embedded weights), vgg19, keras:NAME (a keras.applications model, e.g. "
                   "keras:ResNet50; --weights FILE, or 'random') or package.module:function returning a jaxviz Model")
    p.add_argument("--list-layers", action="store_true", help="print the model's layers with their shapes and exit")
    p.add_argument("--layers", default=None,
                   help=f"layers, comma-separated, or 'all' (VGG: its conv layers; default {SEED_LAYERS}; "
                   "other models: every spatial layer)")
    p.add_argument("--filters", default=None,
                   help="filters per layer: a range 0-63, a list 0,5,9, or 'all' (default 0-63, or fewer if the layer has fewer)")
    p.add_argument("--objective", action="append", default=None, metavar="TEXT",
                   help="render this objective instead of --layers/--filters (repeatable; one grid each): "
                   "LAYER:N (channels, e.g. block4_conv1:0-15), neuron:LAYER:N, deepdream:LAYER, logit:N")
    p.add_argument("--animate", action="store_true",
                   help="also write each grid's ascent as OUT/NAME.gif (and .webp where Pillow can), about 40 frames")
    p.add_argument("--cols", type=positive_int("--cols", 1), default=8, help="tiles per grid row (default 8)")
    p.add_argument("--size", type=positive_int("--size", 1, MAX_SIZE), default=None,
                   help="tile size in pixels (default 64; 128 with --recipe lucid; a model that cannot take it: "
                   "its input size)")
    p.add_argument("--margin", type=positive_int("--margin", 0), default=5, help="black margin between tiles in pixels (default 5)")
    p.add_argument("--steps", type=positive_int("--steps", 0, MAX_STEPS), default=None,
                   help=f"gradient ascent steps (default 40; {LUCID_STEPS} with --recipe lucid)")
    p.add_argument("--step-size", type=rate("--step-size"), default=None,
                   help="step size of each ascent step, more than 0 (default 1.0)")
    p.add_argument("--recipe", choices=("seed", "lucid"), default="seed",
                   help="seed: the book's gradient ascent (default); lucid: the quality recipe of Distill's "
                   "Feature Visualization (Fourier parameterization, decorrelated colours, transformation "
                   "robustness, Adam)")
    q = p.add_argument_group("quality recipe (--recipe lucid only)")
    q.add_argument("--lr", type=rate("--lr"), default=None, help="Adam's learning rate (default 0.05)")
    q.add_argument("--param", choices=("fourier", "pixel"), default=None,
                   help="image parameterization (default fourier)")
    q.add_argument("--dead-filter", choices=("none", "preact", "redirect"), default=None,
                   help="for filters that never fire: maximize the pre-relu activation, or use a redirected "
                   "relu whose gradient passes while the relu blocks it all (default none)")
    q.add_argument("--diversity", type=positive_int("--diversity", 1, 1024), default=None,
                   help="images per filter, pushed apart by Lucid's diversity term; tiles go filter by filter "
                   "(default 1)")
    q.add_argument("--pad", type=positive_int("--pad", 0, 4096), default=None,
                   help="grey padding (px) the transforms add on each side before the model sees an image "
                   "(default 12; 0 for a model that takes only its own input size)")
    q.add_argument("--no-transforms", action="store_true", default=None,
                   help="turn off transformation robustness (pad, jitter, scale, rotate)")
    p.add_argument("--seed", type=positive_int("--seed", 0, MAX_SEED), default=0, help="random seed of the start images (default 0)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="compute precision; bfloat16 uses bf16 matmuls with f32 accumulation (default float32)")
    p.add_argument("--conv", choices=("auto", "winograd", "xla", "onednn"), default="auto",
                   help="convolution algorithm of the seed recipe: winograd (Winograd F(4x4,3x3), the default "
                   "in float32 on CPU, and in bfloat16 with bf16 matmul inputs on CPUs with AVX512-bf16 and no AMX), "
                   "xla (XLA's own conv, the default elsewhere), onednn (oneDNN's, the default in bfloat16 on CPUs "
                   "with AMX) (default auto)")
    p.add_argument("--weights", default=None, type=weights_file, help="Keras VGG16 h5 weights file (default: JAXVIZ_WEIGHTS, then the embedded file)")
    p.add_argument("--out", default="jaxviz-out", type=home_path("--out"), help="output folder (default jaxviz-out/)")
    p.add_argument("--tiles", action="store_true", help="also save each tile as its own PNG in OUT/LAYER/")
    p.add_argument("--npz", action="store_true", help="also save raw float results and the settings used as OUT/LAYER.npz")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


LUCID_OPTIONS = ("lr", "param", "dead_filter", "diversity", "pad", "no_transforms")


def _lucid_config(args):
    """The LucidConfig of the command line (None for the seed's recipe)."""
    if args.recipe != "lucid":
        return None
    from jaxviz.lucid import LucidConfig

    given = dict(lr=args.lr, param=args.param, dead_filter=args.dead_filter, diversity=args.diversity, pad=args.pad)
    config = LucidConfig(size=args.size, steps=args.steps, precision=args.precision,
                         **{k: v for k, v in given.items() if v is not None})
    return config._replace(transforms=False) if args.no_transforms else config


VGG_MODELS = ("vgg16", "vgg19")


def _is_vgg(args) -> bool:
    return args.model.strip().lower() in VGG_MODELS


def _spec(args):
    """The VGGSpec of a VGG --model (VGG19's has block3/4/5_conv4, which VGG16's table refused)."""
    from jaxviz.model import VGG16, VGG19

    return VGG19 if args.model.strip().lower() == "vgg19" else VGG16


def _validate(args) -> list[tuple[str, object]]:
    """Check everything that needs no model; for VGG also layers, filters and memory.

    Returns the grids to make as (name, layer or objective text) pairs, resolved
    against the model in :func:`_jobs` once it is loaded.
    """
    if args.recipe == "seed":
        for name in LUCID_OPTIONS:
            if getattr(args, name) is not None:
                raise JaxvizError(f"--{name.replace('_', '-')} applies to --recipe lucid only")
    if args.no_transforms and args.pad is not None:
        raise JaxvizError("--pad is the transforms' padding, and --no-transforms turns them off; give one or the other")
    if args.recipe == "lucid" and (args.conv != "auto" or args.step_size is not None):
        raise JaxvizError(f"--{'conv' if args.conv != 'auto' else 'step-size'} applies to --recipe seed only")
    if args.step_size is None:
        args.step_size = 1.0
    if args.conv != "auto" or args.precision != "float32":
        if not _is_vgg(args):
            raise JaxvizError(f"--conv and --precision apply to the VGG models only, not {args.model}")
        from jaxviz import onednn, ops  # loads jax: only for a non-default conv or precision

        if args.conv == "onednn" and (error := onednn.build_error()):  # not "missing": the build failed
            raise JaxvizError(f"--conv onednn: oneDNN's conv could not be built here: {error}; or use --conv auto")
        if why := ops.why_not(args.precision, args.conv):
            raise JaxvizError(f"--conv {args.conv} --precision {args.precision}: {why}")
    args.size_given = args.size is not None
    if args.size is None:
        args.size = 128 if args.recipe == "lucid" else 64
    if args.steps is None:
        args.steps = LUCID_STEPS if args.recipe == "lucid" else 40
    if args.objective and (args.layers is not None or args.filters is not None):
        raise JaxvizError("--objective replaces --layers and --filters; give one or the other")
    if args.list_layers:
        return []
    if args.recipe == "lucid" and not args.no_transforms:
        _check_jitter(args.size, args.pad)
    check_out_dir(args.out)
    if args.objective:
        return _file_names(args.objective)
    if not _is_vgg(args):
        if args.filters is not None:
            parse_filters(args.filters)  # malformed text fails before the model loads
        return []  # layers are resolved once the model is loaded
    spec = _spec(args)
    layers = parse_layers(SEED_LAYERS if args.layers is None else args.layers, spec)
    wanted = parse_filters("0-63" if args.filters is None else args.filters)
    filters = {l: filters_for(l, wanted, spec) for l in layers}
    for l in layers:
        if args.size < min_size(l, spec):
            raise JaxvizError(f"--size {args.size} is too small for {l}; the minimum is {min_size(l, spec)} px")
    for l in layers:
        _check_memory(args, l, len(filters[l]))
    return [(l, (l, filters[l])) for l in layers]


def _check_jitter(size: int, pad: int | None) -> None:
    """Refuse a --size and --pad smaller than the quality recipe's jitter, which would shift the image out
    of view: the engine's line named the jitter, which the command line does not set."""
    from jaxviz.lucid import LucidConfig

    jitter, pad = LucidConfig().jitter, LucidConfig().pad if pad is None else pad
    if size + pad < jitter:
        raise JaxvizError(f"--size {size} with --pad {pad} is too small for the quality recipe's transforms, whose "
                          f"{jitter} px jitter would shift the image out of view; give --size plus --pad of at "
                          f"least {jitter} (--pad {jitter - size}), or --no-transforms")


def _file_name(text: str) -> str:
    """A file name for an objective's grid: its text with anything but letters, digits, '_' and '-' as '-'."""
    import re

    return re.sub(r"[^A-Za-z0-9_-]+", "-", text.strip()).strip("-") or "objective"


def _file_names(texts) -> list[tuple[str, str]]:
    """(file name, text) per distinct objective or layer; two texts that spell the same name
    (0-2 and 0,2; stem/conv and stem-conv) get -2, -3, ... rather than one grid overwriting the
    other, and no name leads out of --out ("../x" is "x")."""
    out, taken = [], set()
    for text in dict.fromkeys(t.strip() for t in texts):
        base = name = _file_name(text)
        k = 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        out.append((name, text))
    return out


def _jobs(args, model, planned) -> list[tuple[str, list[int], object]]:
    """(name, filters, objective) per grid, resolved against the loaded model."""
    from jaxviz import objectives

    config = _lucid_config(args)

    def for_layer(layer, fs):
        if config is not None:
            from jaxviz.lucid import objective

            return objective(layer, fs, config)
        return objectives.channel(layer, fs)

    if args.objective:
        jobs = []
        for name, text in planned:
            obj = objectives.parse(text)
            if config is not None and isinstance(obj.term, objectives.Channel):
                obj = for_layer(obj.term.layer, obj.args)
            n = len(obj)
            fs = [int(f) for f in obj.key_ids(model)[:, 1]] if n else []
            jobs.append((name, fs, obj))
        return jobs
    if planned:
        return [(layer, fs, for_layer(layer, fs)) for layer, (_, fs) in planned]  # VGG's names are file names
    names = [l.name for l in model.layers if l.spatial] if args.layers in (None, "all") else \
        split_layers(args.layers, {l.name for l in model.layers})
    if not names:
        raise JaxvizError("--layers is empty; give layer names (see --list-layers) or 'all'")
    wanted = parse_filters(args.filters) if args.filters is not None else None
    jobs = []
    for layer in names:
        info = model.layer(layer)
        if not info.spatial:
            raise JaxvizError(f"layer {layer} is not spatial (shape {info.shape}); its units are rendered with "
                              f"--objective neuron:{layer}:N or logit:N")
        fs = list(range(min(64, info.channels))) if wanted is None else filters_for(layer, wanted, channels=info.channels)
        jobs.append((layer, fs, for_layer(layer, fs)))
    files = dict((text, name) for name, text in _file_names(names))  # "stem/conv" -> stem-conv.png
    return [(files[layer], fs, obj) for layer, fs, obj in jobs]


def _recipe(args):
    """The engine's recipe of the command line."""
    from jaxviz.engine import SEED
    from jaxviz.optim import SeedAscent

    config = _lucid_config(args)
    if config is not None:
        from jaxviz.lucid import recipe

        return recipe(config)
    return SEED._replace(size=args.size, steps=args.steps, optimizer=SeedAscent(args.step_size))


def _load_model(args):
    """The model of --model: VGG from its h5 (the resolution order of jaxviz.weights), or models.load."""
    from jaxviz import models

    if _is_vgg(args):
        import jaxviz
        from jaxviz.model import VGG16, VGG19
        from jaxviz.weights import resolve_weights

        if args.model.strip().lower() == "vgg19" and args.weights is None:
            raise JaxvizError("--model vgg19 needs --weights FILE (a Keras VGG19 h5); only VGG16's ship with jaxviz")
        args.weights_path = resolve_weights(args.weights, progress=not args.quiet)
        spec = VGG19 if args.model.strip().lower() == "vgg19" else VGG16
        model = models.vgg(jaxviz.load_params(args.weights_path), spec, precision=args.precision, conv=args.conv)
        from jaxviz import ops

        args.conv_ran = _conv_text(ops.choice(args.precision, args.conv))  # what models.vgg resolved (--npz)
        return model
    args.weights_path = args.weights
    return models.load(args.model, args.weights)


def _print_layers(model) -> None:
    lines = [f"{model.name}: {len(model.layers)} layers (shapes at {model.input_size} px input)"]
    for l in model.layers:
        kind = "spatial" if l.spatial else "vector"
        lines.append(f"  {l.name:40s} {'x'.join(map(str, l.shape)):>16s}  {kind}, min size {model.min_size(l.name)} px")
    show("\n".join(lines))


def _check_memory(args, layer: str, n: int) -> None:
    """Refuse a layer whose estimated memory exceeds the limit, before any work (jaxviz.checks)."""
    from jaxviz.ascent import chunk_size

    config, spec = _lucid_config(args), _spec(args)
    if config is None:
        frames = _frames(args, args.steps)
        check_budget(layer, args.size, n, chunk_size(layer, args.size, n, spec=spec), spec, frames)
    else:
        from jaxviz.lucid import filters_per_batch

        d = config.diversity
        work = config.size + (2 * config.pad if config.transforms else 0)
        check_budget(layer, work, n * d, filters_per_batch(layer, config, n, spec=spec) * d, spec,
                     _frames(args, config.steps))


def _every(args, steps: int) -> int:
    """Steps between the snapshots of an --animate run of ``steps`` steps (about 40 frames); 0 without it."""
    from jaxviz.image import frames_every

    return frames_every(steps) if args.animate else 0


def _frames(args, steps: int) -> int:
    """The frames each image of the run keeps (``_every``): counted in its memory estimate."""
    from jaxviz.engine import snapshot_count

    return snapshot_count(steps, _every(args, steps))


def _conv_text(choice: tuple[str, str, int]) -> str:
    """``ops.choice``'s (small, large, min_in) as text: "wino4", or "onednn below 16 input channels, wino4 from 16"."""
    small, large, min_in = choice
    if small == large or min_in == 0:
        return large
    return f"{small} below {min_in} input channels, {large} from {min_in}"


def _npz_settings(args, layer: str) -> dict:
    """The settings an npz records: what ran (the conv ``auto`` resolved to), and only the
    settings its recipe uses (the seed's step size, or the quality recipe's lucid_*)."""
    settings = dict(layer=layer, size=args.size, steps=args.steps, seed=args.seed, precision=args.precision,
                    weights=str(args.weights_path), recipe=args.recipe, model=args.model)
    if getattr(args, "conv_ran", None) is not None:  # VGG: the conv that ran, and the option that chose it
        settings.update(conv=args.conv_ran, conv_option=args.conv)
    config = _lucid_config(args)
    if config is None:
        settings["step_size"] = args.step_size
    else:
        settings.update({f"lucid_{k}": ("none" if v is None else v) for k, v in config._asdict().items()})
    return settings


def _save_layer(args, layer, filters, images, raw, losses, gate=None, frames=None, paths=None) -> list[str]:
    """Write one grid's files (tiles, npz, animation, the grid PNG); returns their paths.

    Each path is appended to ``paths`` (a new list by default) as its file lands, so that
    a failure part-way still tells what is on disk."""
    import numpy as np

    from jaxviz.image import atomic_write, make_folder, make_grid, save_animation, save_png, webp_supported

    gate = gate or WriteGate()
    paths = [] if paths is None else paths
    if args.tiles:
        folder = os.path.join(args.out, layer)
        make_folder(folder)
        per = len(images) // max(1, len(filters))  # images per filter (--diversity)
        for name, tile in zip(_tile_names(layer, filters, per), images):
            with gate:
                paths.append(save_png(os.path.join(folder, name), tile))
    if args.npz:
        settings = _npz_settings(args, layer)
        npz = os.path.join(args.out, f"{layer}.npz")
        with gate:
            atomic_write(npz, lambda fh: np.savez_compressed(
                fh, images=raw, uint8=images, losses=losses, filters=np.asarray(filters),
                **{k: np.asarray(v) for k, v in settings.items()}))
        paths.append(npz)
    if frames is not None:
        grids = np.stack([make_grid(frames[:, k], args.cols, args.margin) for k in range(frames.shape[1])])
        for ext in ("gif", "webp") if webp_supported() else ("gif",):
            with gate:
                paths.append(save_animation(os.path.join(args.out, f"{layer}.{ext}"), grids))
    grid = make_grid(images, args.cols, args.margin)
    with gate:
        paths.append(save_png(os.path.join(args.out, f"{layer}.png"), grid))
    return paths


def _tile_names(layer: str, filters, per: int) -> list[str]:
    """The --tiles files of a grid, in its images' order: per filter, its ``per`` images (--diversity)."""
    return [f"{layer}_f{f:03d}.png" if per == 1 else f"{layer}_f{f:03d}_{k}.png" for f in filters for k in range(per)]


def _check_paths(args, grids: list[tuple[str, list[int]]], per: int) -> None:
    """Refuse, before any work, a folder or file in the way of what ``_save_layer`` writes for
    ``grids`` (name, filters) of ``per`` images a filter."""
    from jaxviz.image import webp_supported

    kinds = ["png"] + ["npz"] * bool(args.npz) + (["gif", "webp"] if webp_supported() else ["gif"]) * args.animate
    files = [f"{n}.{k}" for n, _ in grids for k in kinds]
    if args.tiles:
        files += [os.path.join(n, t) for n, fs in grids for t in _tile_names(n, fs, per)]
    folders = [n for n, _ in grids] if args.tiles else []
    check_clashes(args.out, files, folders, lambda kind, path: f"grid {checks.show(_grid_of(path))}",
                  f"rename one in the model, or leave it out of {'--objective' if args.objective else '--layers'}")
    check_out_paths(args.out, files=files, folders=folders)


def _grid_of(path: str) -> str:
    """The grid whose file or folder ``path`` (relative to --out) is: "conv" of conv.png, conv/conv_f000.png."""
    return os.path.splitext(path)[0] if "/" not in path else path.split("/")[0]


def _never_fired(name, filters, rendered, objective, model, args) -> str | None:
    """A line naming the filters whose objective was exactly 0 at every step: the unit never
    fired, no gradient reached the image, and the tile is the start image (6 of block1_conv1's
    first 64 in the book's grid); None when there are none. Names the option that wakes them
    where the objective and the model allow it. Else the filters whose objective stayed the same
    nonzero value, with its causes (``checks.FROZEN_CAUSES``)."""
    from jaxviz import objectives

    per = len(rendered.values) // max(1, len(filters))  # images per filter (--diversity)
    if not filters or per * len(filters) != len(rendered.values):
        return None
    stuck, frozen = ([filters[i] for i in items] for items in checks.unmoved(rendered.trace, rendered.values, per))
    if frozen and not stuck:
        one = len(frozen) == 1
        return (f"{name}: filter{'' if one else 's'} {', '.join(map(str, frozen))} kept the same objective at every "
                f"step, so {'its tile shows' if one else 'their tiles show'} the start image: {checks.FROZEN_CAUSES}")
    if not stuck:
        return None
    one = len(stuck) == 1
    line = (f"{name}: filter{'' if one else 's'} {', '.join(map(str, stuck))} never fired (objective 0 at every step, "
            f"so no gradient): {'its tile shows' if one else 'their tiles show'} the start image")
    term = getattr(objective, "term", None)
    if isinstance(term, objectives.Channel) and term.dead_filter != "redirect" and model.preact is not None:
        line += "; " + ("" if args.recipe == "lucid" else "--recipe lucid ") + "--dead-filter redirect wakes such filters"
    return line


def _written_so_far(done: list[str], failed: str, partial: list[str]) -> str:
    """What --out holds after grid ``failed`` went wrong: the grids ``done`` before it, and
    the ``partial`` files of ``failed`` itself written before the failure (tiles, say)."""
    if not done and not partial:
        return "nothing was written"
    parts = [f"the files of {', '.join(done)} were written"] if done else []
    parts.append(f"{len(partial)} file(s) of {failed} were written" if partial else f"nothing of {failed} was written")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 done, 2 bad input (one line on stderr), 130 interrupted."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the work started (parsing, setting up handlers): nothing to clean
        print("jaxviz.grid: interrupted; completed layers: none", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    old = stop_as_interrupt()
    try:
        args = build_parser().parse_args(argv)
    except BaseException:
        restore_handlers(old)
        raise
    say = printer(args.quiet)
    done: list[str] = []
    created = [[]]  # the folders this run made for --out (removed again, when empty, after a failure)
    gate = WriteGate()

    def work() -> int:
        from jaxviz import engine

        model = _load_model(args)
        if args.list_layers:
            _print_layers(model)
            return 0
        jobs = _jobs(args, model, planned)
        if not (args.size_given or args.pad is not None or (_is_vgg(args) and not args.objective)):  # VGG's top: 224
            recipe = _recipe(args)
            fit = fit_default_size(model, [objective for *_, objective in jobs], recipe, say)
            args.size, args.pad = fit.size, 0 if fit.transforms != recipe.transforms else args.pad
        recipe = _recipe(args)
        validated = _is_vgg(args) and not args.objective  # VGG's layers: sizes and memory checked in _validate
        for name, fs, objective in jobs:  # before any work, for every model: each grid can run and fits
            shape = checks.grid_shape(len(fs) * recipe.diversity, args.size, args.size, args.cols, args.margin)
            checks.grid_memory(*shape)
            if args.animate:
                from jaxviz.image import check_animation_size, webp_supported

                try:
                    check_animation_size(*shape[:2], ("gif", "webp") if webp_supported() else ("gif",))
                except JaxvizError as e:
                    raise JaxvizError(f"{name}: {e}; nothing was written") from None
            if len(objective) and not validated:
                try:
                    engine.check(model, objective, recipe)
                    engine.batch_for(model, objective, recipe, every=_every(args, recipe.steps))
                except JaxvizError as e:
                    raise JaxvizError(f"{name}: {e}; nothing was written") from None
        _check_paths(args, [(name, fs) for name, fs, _ in jobs], recipe.diversity)
        created[0] = missing_folders(args.out)
        make_out_dir(args.out)
        remove_stale_temporaries(args.out, [os.path.join(args.out, name) for name, _, _ in jobs],
                                 time.time() - WRITING_S)
        timings = []
        for name, fs, objective in jobs:
            t0 = time.perf_counter()
            written: list[str] = []
            try:
                r = _render_with_progress(model, objective, recipe, name, args)
                _save_layer(args, name, fs, r.tiles, r.images, r.values, gate, r.frames, written)
            except JaxvizError as e:
                raise JaxvizError(f"{name}: {e}; {_written_so_far(done, name, written)}") from None
            for path in written:
                say(path)
            note = _never_fired(name, fs, r, objective, model, args)
            if note:
                say(note)
            timings.append(f"{name} {time.perf_counter() - t0:.1f} s")
            done.append(name)
        say("done: " + ", ".join(timings))
        return 0

    def interrupted() -> None:
        print(f"\njaxviz.grid: interrupted; completed layers: {', '.join(done) or 'none'}", file=sys.stderr)
        remove_if_empty(created[0])

    try:
        checks.backend()  # a JAX_PLATFORMS this machine cannot start: one line, not JAX's traceback
        planned = _validate(args)  # before any work: bad values are told at once
        compile_cache.for_command()
        with quiet_notices(args.quiet):
            return run_interruptible(work, gate, interrupted)
    except JaxvizError as e:
        print(error_line("jaxviz.grid", e), file=sys.stderr)
        remove_if_empty(created[0])
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz.grid: interrupted; completed layers: {', '.join(done) or 'none'}", file=sys.stderr)
        remove_if_empty(created[0])
        return 130
    finally:
        restore_handlers(old)


def _render_with_progress(model, objective, recipe, name, args):
    """Render one grid (the engine chunks it), with a progress bar on a terminal; the grid names
    unmoved images itself (``_never_fired``), so without the library's notice of them."""
    from jaxviz.api import render_quiet

    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(objective) * recipe.diversity, desc=name, unit="image", file=sys.stderr, leave=True)
    try:
        return render_quiet(model, objective, recipe, seed=args.seed, every=_every(args, recipe.steps),
                            progress=(lambda k: bar.update(k * recipe.diversity)) if bar else None)
    finally:
        if bar:
            bar.close()


def main_exit() -> None:
    """Entry point of the ``jaxviz-grid`` console script."""
    exit_command(main())


if __name__ == "__main__":
    main_exit()
