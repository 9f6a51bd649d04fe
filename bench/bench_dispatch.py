"""Operations dispatched per forward: what sets the time where the arithmetic is small (issue 22).

At batch 1 (and on a large GPU at batch 32) a forward's time is the number of operations it
launches times a fixed price each, not its FLOPs: on an H200, timm's DeiT-S forward takes 3 ms at
batch 1 for 188 operations that are not views, about 15 us apiece. So this counts, with torch's
dispatcher (``TorchDispatchMode``), every operation one forward dispatches, and those that are not
launch work (not views, not operations that hand back their input), for timm's full forward and each of bench_speed.py's settings,
at batch 1 (ATS's one-image path) and batch 8; with --tome and --evit, for the authors' releases
too. Counts are exact and the same on every machine with the same torch, so this runs on the CPU
in seconds; on a GPU each operation that is not a view is one kernel launch, bar the few on host
tensors (token counts).

    python bench/bench_dispatch.py [--tome ToMe --evit evit] [--no-readme]
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ats_viz import ATSConfig
from ats_viz.evaluate import make_settings
from ats_viz.methods import parse_ladder
from ats_viz.vit import run_logits
from bench_speed import LADDERS, README, sharpen

START, END = "<!-- bench_dispatch: start -->", "<!-- bench_dispatch: end -->"
BATCHES = (1, 8)


class Count(TorchDispatchMode):
    """Every operation dispatched, and those that launch work: not views, and not operations
    that hand back their input untouched (timm's dropout in eval mode; in-place ones do work)."""

    def __init__(self):
        super().__init__()
        self.all = self.launched = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.all += 1
        self.launched += not func.is_view and (func._schema.is_mutable or not any(out is a for a in args))
        return out


def count(forward, x: torch.Tensor) -> tuple[int, int]:
    """(all operations, those that launch work) of one forward, after one uncounted first call."""
    forward(x)
    with Count() as c:
        forward(x)
    return c.all, c.launched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tome", help="a checkout of facebookresearch/ToMe (its ToMe r=13 counted too)")
    parser.add_argument("--evit", help="a checkout of youweiliang/evit (its EViT keep 0.7 counted too)")
    parser.add_argument("--no-readme", action="store_true", help="print only; leave bench/README.md alone")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = sharpen(timm.create_model("deit_small_patch16_224").eval())
    forwards = {"full (timm)": lambda x: timm.models.vision_transformer.VisionTransformer.forward(net, x)}
    for cfg in make_settings({m: parse_ladder(m, text) for m, text in LADDERS.items()}):
        if cfg.method != "full":
            forwards[cfg.label()] = lambda x, cfg=cfg: run_logits(net, x, cfg)[0]
    if args.tome or args.evit:
        from bench_releases import official_evit, official_tome  # only where the releases are given

        weights = net.state_dict()
        if args.tome:
            tome_net = timm.create_model("deit_small_patch16_224").eval()
            tome_net.load_state_dict(weights)
            forwards["ToMe r=13, the release"] = official_tome(Path(args.tome), tome_net, 13)
        if args.evit:
            forwards["EViT keep 0.7, the release"] = official_evit(Path(args.evit), "deit_small_patch16_224", weights, 0.7)
    inputs = {b: torch.randn(b, 3, 224, 224, generator=torch.Generator().manual_seed(b)) for b in BATCHES}
    lines = [f"`python bench/bench_dispatch.py`, {datetime.date.today()}, torch {torch.__version__}, timm "
             f"{timm.__version__}; DeiT-S (random weights, sharpened), random inputs. Operations one forward "
             "dispatches, and those that launch work (not views, not an eval-mode dropout).", "",
             "| forward | " + " | ".join(f"batch {b}: all | batch {b}: launching" for b in BATCHES) + " |",
             "|---|" + "---:|---:|" * len(BATCHES)]
    with torch.inference_mode():
        for name, forward in forwards.items():
            cells = [f"{n}" for b in BATCHES for n in count(forward, inputs[b])]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    body = "\n".join(lines)
    if not args.no_readme:
        text = README.read_text()
        if START not in text or END not in text:
            sys.exit(f"{README} has no {START} ... {END} section to fill")
        head, rest = text.split(START, 1)
        README.write_text(f"{head}{START}\n{body}\n{END}{rest.split(END, 1)[1]}")
        print(f"wrote {README}")


if __name__ == "__main__":
    main()
