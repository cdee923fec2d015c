"""``python -m jaxviz.grid``: the seed's filter grids from one command.

With no options it reproduces the book: block1_conv1, block2_conv1, block3_conv1 and
block4_conv1, filters 0-63 as 8x8 grids of 64 px tiles with 5 px black margins, 40
steps of size 1.0, on the embedded VGG16 ImageNet weights. One PNG per layer.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from jaxviz.checks import MAX_SEED, MAX_SIZE, MAX_STEPS
from jaxviz.cli_args import (
    OneLineParser, check_budget, check_out_dir, filters_for, make_out_dir, number, parse_filters, parse_layers,
    positive_int, remove_if_empty, remove_stale_temporaries,
)
from jaxviz.cli_run import WriteGate, run_interruptible
from jaxviz.errors import JaxvizError
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
    p.add_argument("--layers", default=SEED_LAYERS, help=f"conv layers, comma-separated, or 'all' (default {SEED_LAYERS})")
    p.add_argument("--filters", default="0-63", help="filters per layer: a range 0-63, a list 0,5,9, or 'all' (default 0-63)")
    p.add_argument("--cols", type=positive_int("--cols", 1), default=8, help="tiles per grid row (default 8)")
    p.add_argument("--size", type=positive_int("--size", 1, MAX_SIZE), default=None,
                   help="tile size in pixels (default 64; 128 with --recipe lucid)")
    p.add_argument("--margin", type=positive_int("--margin", 0), default=5, help="black margin between tiles in pixels (default 5)")
    p.add_argument("--steps", type=positive_int("--steps", 0, MAX_STEPS), default=None,
                   help=f"gradient ascent steps (default 40; {LUCID_STEPS} with --recipe lucid)")
    p.add_argument("--step-size", type=number("--step-size"), default=1.0, help="step size of each ascent step (default 1.0)")
    p.add_argument("--recipe", choices=("seed", "lucid"), default="seed",
                   help="seed: the book's gradient ascent (default); lucid: the quality recipe of Distill's "
                   "Feature Visualization (Fourier parameterization, decorrelated colours, transformation "
                   "robustness, Adam)")
    q = p.add_argument_group("quality recipe (--recipe lucid only)")
    q.add_argument("--lr", type=number("--lr", positive=True), default=None, help="Adam's learning rate (default 0.05)")
    q.add_argument("--param", choices=("fourier", "pixel"), default=None,
                   help="image parameterization (default fourier)")
    q.add_argument("--dead-filter", choices=("none", "preact", "redirect"), default=None,
                   help="for filters that never fire: maximize the pre-relu activation, or use a redirected "
                   "relu whose gradient passes while the relu blocks it all (default none)")
    q.add_argument("--diversity", type=positive_int("--diversity", 1, 1024), default=None,
                   help="images per filter, pushed apart by Lucid's diversity term; tiles go filter by filter "
                   "(default 1)")
    q.add_argument("--no-transforms", action="store_true", default=None,
                   help="turn off transformation robustness (pad, jitter, scale, rotate)")
    p.add_argument("--seed", type=positive_int("--seed", 0, MAX_SEED), default=0, help="random seed of the start images (default 0)")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="compute precision; bfloat16 uses bf16 matmuls with f32 accumulation (default float32)")
    p.add_argument("--conv", choices=("auto", "winograd", "xla"), default="auto",
                   help="convolution algorithm of the seed recipe: winograd (Winograd F(4x4,3x3), the default "
                   "in float32 on CPU), xla (XLA's own conv, the default elsewhere) (default auto)")
    p.add_argument("--weights", default=None, help="Keras VGG16 h5 weights file (default: JAXVIZ_WEIGHTS, then the embedded file)")
    p.add_argument("--out", default="jaxviz-out", help="output folder (default jaxviz-out/)")
    p.add_argument("--tiles", action="store_true", help="also save each tile as its own PNG in OUT/LAYER/")
    p.add_argument("--npz", action="store_true", help="also save raw float results and the settings used as OUT/LAYER.npz")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


LUCID_OPTIONS = ("lr", "param", "dead_filter", "diversity", "no_transforms")


def _lucid_config(args):
    """The LucidConfig of the command line (None for the seed's recipe)."""
    if args.recipe != "lucid":
        return None
    from jaxviz.lucid import LucidConfig

    given = dict(lr=args.lr, param=args.param, dead_filter=args.dead_filter, diversity=args.diversity)
    config = LucidConfig(size=args.size, steps=args.steps, precision=args.precision,
                         **{k: v for k, v in given.items() if v is not None})
    return config._replace(transforms=False) if args.no_transforms else config


def _validate(args) -> tuple[list[str], dict[str, list[int]]]:
    if args.recipe == "seed":
        for name in LUCID_OPTIONS:
            if getattr(args, name) is not None:
                raise JaxvizError(f"--{name.replace('_', '-')} applies to --recipe lucid only")
    if args.recipe == "lucid" and args.conv != "auto":
        raise JaxvizError("--conv applies to --recipe seed only")
    if args.conv == "winograd" and args.precision != "float32":
        raise JaxvizError("--conv winograd runs in float32 only; drop --precision bfloat16 or use --conv xla")
    if args.size is None:
        args.size = 128 if args.recipe == "lucid" else 64
    if args.steps is None:
        args.steps = LUCID_STEPS if args.recipe == "lucid" else 40
    if args.recipe == "lucid" and args.lr is not None and not args.lr > 0:
        raise JaxvizError(f"--lr must be positive, not {args.lr}")
    layers = parse_layers(args.layers)
    wanted = parse_filters(args.filters)
    filters = {l: filters_for(l, wanted) for l in layers}
    if args.steps < 0:
        raise JaxvizError(f"--steps must be 0 or more, not {args.steps}")
    for l in layers:
        if args.size < min_size(l):
            raise JaxvizError(f"--size {args.size} is too small for {l}; the minimum is {min_size(l)} px")
    for l in layers:
        _check_memory(args, l, len(filters[l]))
    check_out_dir(args.out)
    return layers, filters


def _check_memory(args, layer: str, n: int) -> None:
    """Refuse a layer whose estimated memory exceeds the limit, before any work (jaxviz.checks)."""
    from jaxviz.ascent import chunk_size

    config = _lucid_config(args)
    if config is None:
        check_budget(layer, args.size, n, chunk_size(layer, args.size, n))
    else:
        from jaxviz.lucid import filters_per_batch

        d = config.diversity
        work = config.size + (2 * config.pad if config.transforms else 0)
        check_budget(layer, work, n * d, filters_per_batch(layer, config, n) * d)


def _save_layer(args, layer, filters, images, raw, losses, gate=None) -> list[str]:
    import numpy as np

    from jaxviz.image import atomic_write, make_grid, save_png

    gate = gate or WriteGate()
    paths = []
    if args.tiles:
        folder = os.path.join(args.out, layer)
        os.makedirs(folder, exist_ok=True)
        per = len(images) // max(1, len(filters))  # images per filter (--diversity)
        for i, tile in enumerate(images):
            f = filters[i // per]
            name = f"{layer}_f{f:03d}.png" if per == 1 else f"{layer}_f{f:03d}_{i % per}.png"
            with gate:
                paths.append(save_png(os.path.join(folder, name), tile))
    if args.npz:
        settings = dict(layer=layer, size=args.size, steps=args.steps, step_size=args.step_size, seed=args.seed,
                        precision=args.precision, conv=args.conv, weights=str(args.weights_path),
                        recipe=args.recipe)
        config = _lucid_config(args)
        if config is not None:
            settings.update({f"lucid_{k}": ("none" if v is None else v) for k, v in config._asdict().items()})
        npz = os.path.join(args.out, f"{layer}.npz")
        with gate:
            atomic_write(npz, lambda fh: np.savez_compressed(
                fh, images=raw, uint8=images, losses=losses, filters=np.asarray(filters),
                **{k: np.asarray(v) for k, v in settings.items()}))
        paths.append(npz)
    grid = make_grid(images, args.cols, args.margin)
    with gate:
        paths.append(save_png(os.path.join(args.out, f"{layer}.png"), grid))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 done, 2 bad input (one line on stderr), 130 interrupted."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the work started (parsing, setting up handlers): nothing to clean
        print("jaxviz.grid: interrupted; completed layers: none", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    old = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        args = build_parser().parse_args(argv)
    except BaseException:
        signal.signal(signal.SIGTERM, old)
        raise
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    done: list[str] = []
    created = [False]  # whether this run made --out (removed again, when empty, after a failure)
    gate = WriteGate()

    def work() -> int:
        layers, filters = _validate(args)
        import jaxviz
        from jaxviz.weights import resolve_weights

        args.weights_path = resolve_weights(args.weights, progress=not args.quiet)
        params = jaxviz.load_params(args.weights_path)
        created[0] = not os.path.isdir(args.out)
        make_out_dir(args.out)
        remove_stale_temporaries(args.out, [os.path.join(args.out, l) for l in layers], time.time())
        timings = []
        for layer in layers:
            t0 = time.perf_counter()
            images, raw, losses = _render_with_progress(jaxviz, params, layer, filters[layer], args)
            for path in _save_layer(args, layer, filters[layer], images, raw, losses, gate):
                say(path)
            timings.append(f"{layer} {time.perf_counter() - t0:.1f} s")
            done.append(layer)
        say("done: " + ", ".join(timings))
        return 0

    def interrupted() -> None:
        print(f"\njaxviz.grid: interrupted; completed layers: {', '.join(done) or 'none'}", file=sys.stderr)
        if created[0]:
            remove_if_empty(args.out)

    try:
        return run_interruptible(work, gate, interrupted)
    except JaxvizError as e:
        print(f"jaxviz.grid: error: {e}", file=sys.stderr)
        if created[0]:
            remove_if_empty(args.out)
        return 2
    except KeyboardInterrupt:
        print(f"jaxviz.grid: interrupted; completed layers: {', '.join(done) or 'none'}", file=sys.stderr)
        if created[0]:
            remove_if_empty(args.out)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)


def _render_with_progress(jaxviz, params, layer, filters, args):
    """Render one layer in chunks, with a progress bar on a terminal."""
    import numpy as np

    from jaxviz.ascent import chunk_size

    show = not args.quiet and sys.stderr.isatty()
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(filters), desc=layer, unit="filter", file=sys.stderr, leave=True)
    config = _lucid_config(args)
    if config is None:
        chunk = chunk_size(layer, args.size, len(filters))
        chunk = -(-len(filters) // -(-len(filters) // chunk))  # equal chunks: one compile
    else:
        from jaxviz.lucid import filters_per_batch

        chunk = filters_per_batch(layer, config, len(filters))
    outs = []
    try:
        for i in range(0, len(filters), chunk):
            part = filters[i : i + chunk]
            if config is None:
                outs.append(jaxviz.render(params, layer, part, size=args.size, steps=args.steps,
                                          step_size=args.step_size, seed=args.seed, precision=args.precision,
                                          conv=args.conv, return_raw=True))
            else:
                outs.append(jaxviz.render(params, layer, part, seed=args.seed, return_raw=True, recipe="lucid",
                                          lucid_config=config))
            if bar:
                bar.update(len(part))
    finally:
        if bar:
            bar.close()
    return tuple(np.concatenate([o[k] for o in outs]) for k in range(3))


def main_exit() -> None:
    """Entry point of the ``jaxviz-grid`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
