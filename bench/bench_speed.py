"""Measured speed beside GFLOPs (issue 13): what each method's saving is worth on the clock.

DeiT-S (random weights, attention sharpened as in tests/conftest.py so images keep different
numbers of tokens; random normalised inputs) and the shipped model (the bundled held-out
images), at batch 1 (latency) and batch 32 (throughput), under ATS, top-K, ToMe and EViT,
the full model (timm's own forward) as the reference. Everything is timed by
``ats_viz.timing``: warm-up runs, then repetitions that run every setting in turn, medians
with their interquartile range. "quotient" is the speed-up divided by the GFLOPs ratio:
1 means the time saved is all the GFLOPs promised.

Run it alone on a quiet machine; it replaces its section of bench/README.md (one per device,
compiled or not, and precision):

    python bench/bench_speed.py                  # this machine's CPU
    python bench/bench_speed.py --compile        # the settings through torch.compile (ats_viz.compiled)
    python bench/bench_speed.py --device cuda --batch 1,32,256 --models deit_s,vit_b --dtype bf16
    python bench/bench_speed.py --repeats 1 --warmup 0 --no-readme   # does it work? (numbers meaningless)

bench/gpu.sh runs every GPU check and measurement in one command.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path

import timm
import torch

from ats_viz import timing
from ats_viz.data import heldout_folder
from ats_viz.evaluate import make_settings
from ats_viz.methods import parse_ladder
from ats_viz.models import load_model

README = Path(__file__).resolve().parent / "README.md"
# Two points per method where it has two, spanning about the same GFLOPs for every method.
LADDERS = {"ats": "all,0.5", "topk": "0.75,0.5", "tome": "8,13", "evit": "0.7,0.5", "pitome": "0.9125,0.9"}
BATCHES = (1, 32)  # the record's; a GPU run adds a larger batch, where a GPU fills up
MODELS = ("deit_s", "shipped")  # the record's; ViT-B on a GPU
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sharpen(net: torch.nn.Module, factor: float = 4.0) -> torch.nn.Module:
    """As tests/conftest.py: peaked random-weight attention, as trained attention is."""
    with torch.no_grad():
        for blk in net.blocks:
            d = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[: 2 * d] *= factor
    return net


def markers(device: str, compile: bool, dtype: str) -> tuple[str, str]:
    """Each device type, compiled or not, and precision fills its own section of bench/README.md."""
    kind = torch.device(device).type + (" compiled" if compile else "") + ("" if dtype == "fp32" else f" {dtype}")
    return f"<!-- bench_speed {kind}: start -->", f"<!-- bench_speed {kind}: end -->"


TIMM = {"deit_s": ("DeiT-S", "deit_small_patch16_224"), "vit_b": ("ViT-B/16", "vit_base_patch16_224")}


def models(names: list[str], batches: tuple[int, ...]) -> list[tuple[str, torch.nn.Module, torch.Tensor, str]]:
    """(name, net, image pool, where the images come from) of each of ``names`` (TIMM's keys, shipped)."""
    pool_size = 2 * max(batches)
    out = []
    for name in names:
        if name == "shipped":
            shipped = load_model("embedded")
            out.append(("shipped model (embedded)", shipped.net,
                        timing.folder_images(heldout_folder(), pool_size, shipped), "the bundled held-out images"))
            continue
        label, arch = TIMM[name]
        torch.manual_seed(0)
        out.append((f"{label} (random weights, sharpened)", sharpen(timm.create_model(arch).eval()),
                    timing.random_images(pool_size, (224, 224)), "random normalised tensors"))
    return out


def markdown(name: str, source: str, table) -> str:
    lines = [f"**{name}**, inputs: {source}", "",
             "| setting | batch | ms / image (IQR) | images / s | GFLOPs | speed-up | GFLOPs ratio | quotient |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.setting} | {r.batch} | {r.ms_per_image:.2f} ({r.ms_q1:.2f}-{r.ms_q3:.2f}) | "
                     f"{r.images_per_s:.1f} | {r.gflops:.3f} | {r.speedup:.2f} | {r.gflops_ratio:.2f} | "
                     f"{r.speedup / r.gflops_ratio:.2f} |")
    return "\n".join(lines)


def replace_section(readme: Path, body: str, device: str, compile: bool, dtype: str) -> None:
    START, END = markers(device, compile, dtype)
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"{readme} has no {START} ... {END} section to fill")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    readme.write_text(pattern.sub(lambda _: f"{START}\n{body}\n{END}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's own choice)")
    parser.add_argument("--batch", default=",".join(map(str, BATCHES)), help="batch sizes, comma-separated")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join([*TIMM, 'shipped'])}")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                        help="the weights and inputs in this precision (bf16: the model cast, not autocast)")
    parser.add_argument("--methods", default=",".join(LADDERS), help=f"comma-separated, of {', '.join(LADDERS)}")
    parser.add_argument("--compile", action="store_true", help="the settings through torch.compile; the full "
                                                               "model stays timm's eager forward")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(LADDERS):
        sys.exit(f"--methods: {', '.join(sorted(unknown))} is not one of {', '.join(LADDERS)}")
    settings = make_settings({m: parse_ladder(m, LADDERS[m]) for m in methods})
    batches = tuple(timing.parse_batch_sizes(args.batch))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    where = timing.machine(args.device)
    flags = (f" --device {args.device}" if args.device != "cpu" else "") + \
        (f" --batch {args.batch}" if batches != BATCHES else "") + \
        (f" --models {args.models}" if names != list(MODELS) else "") + \
        (f" --methods {args.methods}" if methods != list(LADDERS) else "") + \
        (f" --dtype {args.dtype}" if args.dtype != "fp32" else "") + (" --compile" if args.compile else "")
    parts = [f"`python bench/bench_speed.py{flags}`, "
             f"{datetime.date.today()}, {where}, torch {torch.__version__}; median of {args.repeats} timed runs "
             f"after {args.warmup} warm-up runs, every setting in turn."]
    for name, net, pool, source in models(names, batches):
        print(f"{name} on {where}...", file=sys.stderr, flush=True)
        dtype = DTYPES[args.dtype]
        table = timing.benchmark(net.to(dtype), pool.to(dtype), settings, batches, args.warmup, args.repeats,
                                 args.device, compile=args.compile)
        parts.append(markdown(name, source, table))
        print(parts[-1] + "\n", flush=True)
    if not args.no_readme:
        replace_section(README, "\n\n".join(parts), args.device, args.compile, args.dtype)
        print(f"wrote {README}")


if __name__ == "__main__":
    main()
