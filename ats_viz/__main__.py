"""The command line: python -m ats_viz <command> (synth, train, ...)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import InputError
from .methods import METHODS, REDUCERS, SWEEP_DEFAULT, parse_ladder, parse_methods, parse_stages


def _synth(args: argparse.Namespace) -> None:
    from .synthetic import HELDOUT_PER_CLASS, HELDOUT_SEED, write_imagefolder

    per_class = args.per_class or HELDOUT_PER_CLASS
    seed = HELDOUT_SEED if args.seed is None else args.seed
    out = write_imagefolder(args.out, per_class, seed)
    print(f"wrote {per_class} images per class (seed {seed}) to {out}")


# What the cards say about the model's task and training; why the task is what it is.
PLAIN_NOTE = ("Trained plainly on scenes of 1 to 8 shapes, each labelled by the kind it shows most often "
              "(ats_viz.synthetic); ATS is plugged in afterwards (no training with ATS). Why scenes: with one "
              "textured shape per image (the previous task) the evidence sat in a few patches, so a handful of "
              "tokens sufficed and every budget looked free; here it lies in several places and its amount "
              "varies from scene to scene, as a photo's does under a pretrained ViT. The objects cover 20-50% "
              "of the image for one object, more for a busy scene (a photo's subject fills much of it): with "
              "smaller ones the class token read a handful of patches.")
TUNED_NOTE = "The plain model fine-tuned with ATS active at blocks 3-11 (K = all patches)."
_COMPILE_HELP = ("time the settings through torch.compile (each compiles first, seconds to minutes); the full "
                 "model stays timm's eager forward. Needs a C++ compiler on the CPU, Triton on a GPU")


def _train(args: argparse.Namespace) -> None:
    import torch

    from .arch import build
    from .devices import check_device
    from .models import ASSETS
    from .train import (Recipe, default_workers, heldout_metrics, load_weights, rescore, shapes_spec, train,
                        write_checkpoint)

    torch.set_num_threads(args.threads)
    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    workers = default_workers() if args.workers is None else args.workers
    out = Path(args.out) if args.out else ASSETS
    spec = shapes_spec(args.width, args.depth, args.heads)
    command = "python -m ats_viz " + " ".join(sys.argv[1:])
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.rescore:
        for stem in (args.name, args.name + "-ats"):
            if (out / f"{stem}.json").is_file():
                log(f"{stem}: {rescore(out, stem, args.eval_per_class)}")
        return
    plain = Recipe(steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup, seed=args.seed,
                   drop_path=args.drop_path)
    net = build(spec).to(device)  # initialised on the CPU: every device starts from the same weights
    if args.resume:
        load_weights(net, Path(args.resume))
        log(f"starting from {args.resume}")
    else:
        start = time.monotonic()
        done = train(net, plain, log=log, stop_after_s=args.max_minutes * 60, workers=workers)
        minutes = (time.monotonic() - start) / 60
        metrics = heldout_metrics(net, args.eval_per_class)
        log(f"plain: {metrics}")
        write_checkpoint(net, spec, out, args.name, plain, done, minutes, command, metrics,
                         PLAIN_NOTE)
    if args.ats_steps:
        tuned = Recipe(steps=args.ats_steps, batch=args.batch, lr=args.lr * 0.2, warmup=20,
                       seed=args.seed + 1, ats=True, curriculum=0.0)
        start = time.monotonic()
        done = train(net, tuned, log=log, workers=workers)
        minutes = (time.monotonic() - start) / 60
        metrics = heldout_metrics(net, args.eval_per_class)
        log(f"ats-tuned: {metrics}")
        write_checkpoint(net, spec, out, args.name + "-ats", tuned, done, minutes, command, metrics,
                         TUNED_NOTE)


def _evaluate(args: argparse.Namespace) -> None:
    import logging

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from . import distributed
    from .atomic import why_not
    from .data import heldout_folder, heldout_path, load_dataset
    from .devices import autocast, check_device
    from .evaluate import CHUNK, Progress, make_settings, run_sweep
    from .sweepcache import DEFAULT
    from .models import load_model
    from .results import check_out, write_results
    from .setting import resolve

    world = distributed.from_env()

    def say(*text: object, **where: object) -> None:
        if world.main:  # under torchrun only rank 0 speaks
            print(*text, **where)

    # Typos, and a results folder that cannot be written, are refused before loading. (The
    # cache is checked by run_sweep: one that cannot be written costs a warning, not the run.)
    settings = make_settings(_ladders(args), parse_stages(args.stages), seed=args.seed, fuse_token=args.fuse_token)
    if world.main:  # rank 0 alone writes the results
        try:
            check_out(args.out)
        except InputError as err:
            raise InputError(f"--out: {err}") from None
    device = distributed.device_for(world, args.device)
    autocast(args.precision, check_device(device))  # refuses fp16 on the CPU before loading
    model = load_model(args.model, arch=args.arch)
    for cfg in settings:
        resolve(cfg, len(model.net.blocks), model.net.patch_embed.num_patches)
    try:
        data = args.data or heldout_folder()
    except OSError as err:  # the cache folder cannot take the bundled set
        raise InputError(f"The bundled held-out set cannot be written to '{heldout_path()}': {why_not(err)}. Set "
                         "ATS_VIZ_CACHE to a folder you can write to, or give --data.") from None
    dataset = load_dataset(data, model.class_names, args.csv, args.subset, args.seed)
    for note in dataset.notes():
        say(note, file=sys.stderr)
    processes = f" in {world.size} processes" if world.size > 1 else ""
    say(f"{model.name}: {len(dataset.items)} images from {data} x {len(settings)} settings{processes}",
        file=sys.stderr)
    # The library's warnings (a cache that cannot be written or read) print above the bar, not into it.
    with distributed.process_group(world, device), logging_redirect_tqdm([logging.getLogger("ats_viz")]), \
            tqdm(unit="img", desc="evaluate" + (" (rank 0's share)" if world.size > 1 else ""),
                 disable=not world.main) as bar:
        def show(p: Progress) -> None:
            bar.total = p.total
            bar.update(p.done - bar.n)

        part = run_sweep(model, dataset, settings, batch=args.batch, device=device,
                         cache=None if args.no_cache else (args.cache or DEFAULT), progress=show,
                         precision=args.precision, workers=args.workers,
                         chunk=CHUNK if args.chunk is None else args.chunk,
                         shard=(world.rank, world.size))
        result = distributed.gather_sweep(world, part)
    if result is None:  # not rank 0: it has handed over its shard
        return
    if result.cached:
        say(f"from the cache: {', '.join(result.cached)}", file=sys.stderr)
    for name, why in result.skipped:
        say(f"skipped {name}: {why}", file=sys.stderr)
    columns = ["setting", "images", "top1", "ci_low", "ci_high", "gflops_mean", "tokens_final_mean"]
    timed = None
    if args.time:  # on rank 0 alone, after the sweep: the others have finished
        from .timing import add_timing, machine, time_dataset

        say(f"timing every setting on {machine(device)}", file=sys.stderr)
        with tqdm(unit="run", desc="time") as bar:
            def tick(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            timed = time_dataset(model, dataset, settings, args.batch, device, progress=tick,
                                 compile=_compile(args.compile, device))
        columns += ["ms_per_image", "images_per_s"]
    try:
        paths = write_results(result, args.out, timed)
    except InputError as err:  # the folder stopped being writable during the sweep
        cached = "" if args.no_cache else (" Unless the cache warned above, the sweep's results are in it: the same "
                                           "command with a writable --out writes them without computing again.")
        raise InputError(f"{err}{cached}") from None
    table = result.summary() if timed is None else add_timing(result.summary(), timed)
    say(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    say(f"wrote {', '.join(str(p) for p in paths.values())}")


def _benchmark(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from . import timing
    from .atomic import unwritable
    from .data import heldout_folder
    from .devices import check_device
    from .evaluate import make_settings
    from .models import EMBEDDED, load_model
    from .viz import speed_figure, speed_png

    # Every refusal before the model loads: typos cost nothing.
    settings = make_settings(_ladders(args), parse_stages(args.stages), fuse_token=args.fuse_token)
    sizes = timing.parse_batch_sizes(args.batch)
    if args.repeats < 1:
        raise InputError(f"--repeats {args.repeats}: give at least 1 timed run per setting (10 or more for a record).")
    if args.warmup < 0:
        raise InputError(f"--warmup {args.warmup}: give 0 or more warm-up runs.")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads}: give at least 1 thread.")
    check_device(args.device)
    why = unwritable(Path(args.out).expanduser(), keep=False)  # made, a file written, removed again
    if why is not None:
        raise InputError(f"--out: Cannot write the benchmark to '{args.out}': {why}. Give a folder you can write to.")
    if args.data and not Path(args.data).expanduser().is_dir():
        raise InputError(f"--data '{args.data}' is not a folder: give an ImageFolder of images to time on.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model = load_model(args.model, arch=args.arch)
    pool_size = 2 * max(sizes)  # a large batch's repetitions alternate between two batches of images
    folder = args.data or (heldout_folder() if args.model in EMBEDDED else None)
    if folder is None:
        pool = timing.random_images(pool_size, model.input_size)
        source = "random normalised tensors (give --data FOLDER for real images: ATS's cost follows them)"
    else:
        pool = timing.folder_images(folder, pool_size, model)
        source = f"{len(pool)} images from {folder}"
    where = timing.machine(args.device)
    compile = _compile(args.compile, args.device)
    print(f"{model.name} on {where}, torch {torch.__version__}; inputs: {source}"
          f"{'; settings compiled first (seconds to minutes each)' if compile else ''}", file=sys.stderr)
    with tqdm(unit="run", desc="benchmark") as bar:
        def show(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        table = timing.benchmark(model.net, pool, settings, sizes, args.warmup, args.repeats, args.device, show,
                                 compile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table[timing.CSV_COLUMNS].to_csv(out / "benchmark.csv", index=False)
    title = f"{model.name} on {where}{'; settings compiled' if compile else ''}; median of {args.repeats} runs"
    speed_figure(table, title).write_html(out / "benchmark.html", include_plotlyjs=True)
    speed_png(table, out / "benchmark.png", title)
    shown = table.assign(ms_iqr=table["ms_q1"].map("{:.2f}".format) + "-" + table["ms_q3"].map("{:.2f}".format))
    print(shown[["setting", "batch", "ms_per_image", "ms_iqr", "images_per_s", "gflops", "speedup", "gflops_ratio"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"inputs: {source}")
    print(f"wrote {out / 'benchmark.csv'}, {out / 'benchmark.png'}, {out / 'benchmark.html'}")


def _compile(wanted: bool, device: str) -> bool:
    """--compile where something can compile; else the sentence why not, and eager timing."""
    from .compiled import why_not

    why = why_not(device) if wanted else None
    if why is not None:
        print(f"--compile: {why} Timing without it.", file=sys.stderr)
    return wanted and why is None


def _ladders(args: argparse.Namespace) -> dict:
    """{method: its ladder} from --methods and each method's own ladder option (--k, --r, --keep-rate)."""
    def text(name: str) -> str:
        given = getattr(args, METHODS[name].param.field)
        return METHODS[name].param.ladder if given is None else given

    return {name: parse_ladder(name, text(name)) for name in parse_methods(args.methods) if METHODS[name].param}


def _method_options(p: argparse.ArgumentParser, ladder: bool) -> None:
    """One option per method parameter, from the registry (a ladder for sweeps, a value for one run)."""
    for param in {m.param.field: m.param for m in METHODS.values() if m.param}.values():
        users = ", ".join(m.label for m in METHODS.values() if m.param and m.param.field == param.field)
        what = f"the {param.symbol} ladder of {users}, comma-separated (default: each method's own)" if ladder else \
            f"{param.symbol} for {users} (default: each method's own)"
        p.add_argument(f"--{param.field.replace('_', '-')}", dest=param.field, help=what)
    p.add_argument("--stages", default="", help="blocks that reduce, such as 3-11 or 3,6,9 (default: each method's own)")
    p.add_argument("--no-fuse", dest="fuse_token", action="store_false", help="EViT drops tokens instead of fusing them")


def _writable(csv: str | None, mp4: str | None) -> None:
    """Refuse output files that cannot be written before the work (the model, the frames),
    not after it: each must be a file path in an existing folder that can be written (a file
    is written there and removed), and the video's must end in .mp4."""
    from .atomic import unwritable

    given = [(flag, f) for flag, f in (("--csv", csv), ("--out", mp4)) if f]
    for flag, f in given:
        path = Path(f).expanduser()
        if flag == "--out" and path.suffix.lower() != ".mp4":
            raise InputError(f"Cannot write '{f}' ({flag}): the annotated video is an MP4, so its name must end "
                             "in .mp4.")
        if path.is_dir():
            raise InputError(f"Cannot write '{f}' ({flag}): it is a folder; give a file path in an existing folder.")
        folder = path.resolve().parent
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise InputError(f"Cannot write '{f}' ({flag}): its folder '{folder}' {what}; give a file path "
                             "in an existing folder.")
        why = unwritable(folder)
        if why is not None:
            raise InputError(f"Cannot write '{f}' ({flag}): in '{folder}', {why}. Give a file path in a folder "
                             "you can write to.")
    if len(given) == 2 and Path(csv).expanduser().resolve() == Path(mp4).expanduser().resolve():
        raise InputError(f"--csv and --out both name '{csv}': give each its own file.")


def _write_output(f: str, write) -> str:
    """Run ``write`` (which writes ``f``); an OSError midway (the disk filled) becomes a sentence."""
    from .atomic import why_not

    try:
        return str(write() or f)
    except OSError as err:
        raise InputError(f"Writing '{f}' failed: {why_not(err)}.") from None


def _video(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .atomic import atomic_write
    from .models import load_model
    from .video import DEFAULT_MAX_FRAMES, analyse_video, plan, probe, write_annotated
    from .setting import from_text, resolve

    param = METHODS[args.method].param
    given = (getattr(args, param.field) if param else None) or ""  # "": the method's default
    config = from_text(args.method, args.stages, given, fuse_token=args.fuse_token)
    _writable(args.csv, args.out)
    max_frames = DEFAULT_MAX_FRAMES if args.max_frames is None else args.max_frames
    info = probe(args.input)  # refuse a bad file before loading the model
    plan(info, args.stride, max_frames)
    model = load_model(args.model, arch=args.arch)
    resolve(config, len(model.net.blocks), model.net.patch_embed.num_patches)
    with tqdm(unit="frame", desc="video") as bar:
        def show(done: int, expected: int | None) -> None:
            bar.total = expected
            bar.update(done - bar.n)

        result = analyse_video(model, info.path, config, args.stride, max_frames, progress=show)
    s = result.summary()
    print(f"{s.frames} frames (stride {result.stride}, of {info.frame_count or '?'}; {info.width} x {info.height} "
          f"{info.codec}): GFLOPs per frame mean {s.mean_gflops:.4f}, min {s.min_gflops:.4f}, max "
          f"{s.max_gflops:.4f} (full {s.full_gflops:.4f}); {s.saved_gflops:.3f} GFLOPs saved "
          f"({s.saved_fraction:.1%}); {s.class_changes} top-1 changes")
    if args.csv:
        print(f"wrote {_write_output(args.csv, lambda: atomic_write(Path(args.csv).expanduser(), result.to_csv()))}")
    if args.out:
        print(f"wrote {_write_output(args.out, lambda: write_annotated(result, Path(args.out).expanduser()))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ats_viz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic scenes dataset as an ImageFolder")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=int, help="images per class (default: as many as the bundled held-out set)")
    p.add_argument("--seed", type=int, help="default: the bundled held-out set's; another seed gives a set nobody has scored")
    p.set_defaults(func=_synth)

    p = sub.add_parser("train", help="train the embedded model (plain, then fine-tuned with ATS)")
    p.add_argument("--out", help="the folder for weights and cards (default: the package's own, which "
                   "load_model('embedded') reads)")
    p.add_argument("--name", default="scenes-vit")
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth of the last block while "
                   "training plainly (DeiT's 0.1; 0: none)")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--ats-steps", type=int, default=300, help="fine-tuning steps with ATS active (0: none)")
    p.add_argument("--eval-per-class", type=int, help="held-out images per class to score (default: all of the bundled set)")
    p.add_argument("--max-minutes", type=float, default=70.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", help="cpu or cuda (default: cuda where there is a GPU)")
    p.add_argument("--workers", type=int, help="processes drawing the scenes (default: the cores but one, "
                   "at least 1 and at most 8; the weights do not depend on it)")
    p.add_argument("--resume", help="skip plain training and start from these weights")
    p.add_argument("--rescore", action="store_true", help="train nothing: score the checkpoints NAME and "
                   "NAME-ats in --out on the bundled held-out set as it is now and rewrite their cards")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="sweep a dataset over K and the baselines: tables and an accuracy curve")
    p.add_argument("--model", default="embedded", help="embedded, embedded-ats, timm:NAME or a checkpoint file")
    p.add_argument("--arch", help="the timm architecture of a checkpoint file")
    p.add_argument("--data", help="an ImageFolder (or, with --csv, any folder); default: the bundled held-out set")
    p.add_argument("--csv", help="a CSV of filename,label (filenames relative to --data)")
    p.add_argument("--methods", default=",".join(SWEEP_DEFAULT),
                   help=f"comma-separated, of {', '.join(REDUCERS)} (full is always in)")
    _method_options(p, ladder=True)
    p.add_argument("--subset", type=int, help="evaluate this many images, chosen at random (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset and the random baseline")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", help="cpu or cuda (default cpu; under torchrun each process takes cuda:LOCAL_RANK "
                                     "where CUDA is there)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision: bf16 on the CPU or CUDA, fp16 on CUDA only (default fp32)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes decoding images (default 0: the main process; on a GPU machine 4 to 8 "
                        "per GPU keep it busy)")
    p.add_argument("--chunk", type=int,
                   help="images per cache file and per share handed to a process (default 256): an "
                        "interrupted run recomputes at most one chunk per process")
    p.add_argument("--out", default="results")
    p.add_argument("--cache", help="the cache folder (default: $ATS_VIZ_CACHE/sweeps or ~/.cache/ats-viz/sweeps)")
    p.add_argument("--no-cache", action="store_true", help="compute everything and cache nothing")
    p.add_argument("--time", action="store_true",
                   help="also time every setting on a few batches of the dataset's images: ms_per_image and "
                        "images_per_s in summary.csv")
    p.add_argument("--compile", action="store_true", help=f"with --time: {_COMPILE_HELP}")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("benchmark", help="time settings on this machine: measured speed-up beside the GFLOPs ratio")
    p.add_argument("--model", default="embedded", help="embedded, embedded-ats, timm:NAME or a checkpoint file")
    p.add_argument("--arch", help="the timm architecture of a checkpoint file")
    p.add_argument("--data", help="an ImageFolder to time on (default: the bundled held-out set for the shipped "
                                  "models, random normalised tensors otherwise)")
    p.add_argument("--methods", default=",".join(SWEEP_DEFAULT),
                   help=f"comma-separated, of {', '.join(METHODS)} (full is always in: the reference)")
    _method_options(p, ladder=True)
    p.add_argument("--batch", default="1,32", help="batch sizes, comma-separated: 1 for latency, more for throughput")
    p.add_argument("--repeats", type=int, default=10, help="timed runs of each setting at each batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs of each setting first")
    p.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="benchmark", help="the folder for benchmark.csv, .png and .html")
    p.add_argument("--compile", action="store_true", help=_COMPILE_HELP)
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("video", help="run a video through ATS frame by frame: annotated MP4 and per-frame CSV")
    p.add_argument("input", help="an MP4, AVI, MOV, WebM or MKV file")
    p.add_argument("--out", help="write the annotated MP4 here")
    p.add_argument("--csv", help="write the per-frame table here")
    p.add_argument("--model", default="embedded", help="embedded, embedded-ats, timm:NAME or a checkpoint file")
    p.add_argument("--arch", help="the timm architecture of a checkpoint file")
    p.add_argument("--stride", type=int, help="process every n-th frame (default: spread --max-frames over the clip)")
    p.add_argument("--max-frames", type=int, help="process at most this many frames (default 90)")
    p.add_argument("--method", default="ats", choices=list(METHODS))
    _method_options(p, ladder=False)
    p.set_defaults(func=_video)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except InputError as err:
        rank = os.environ.get("RANK", "0")  # under torchrun, say which process refused
        print(f"error{'' if rank == '0' else f' (rank {rank})'}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
