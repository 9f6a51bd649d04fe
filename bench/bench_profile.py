"""Where a forward's time goes, kernel by kernel: torch's profiler over the full model and some
settings, for the cases bench_speed.py cannot explain by its numbers alone (issue 22).

On a GPU (H200, 2026-11-30) ATS at batch 256 got 0.70 of its GFLOPs ratio on DeiT-S where
every fixed-rate method got 0.83-0.93; at batch 1 every method is launch-bound. This prints, for
each forward, the wall time per forward, the device time per forward (kernels alone: the rest of
the wall time is the host, launching or waiting) and the operations that take most device time.

    python bench/bench_profile.py --device cuda --batch 256 --settings ats:all,tome:13
    python bench/bench_profile.py --batch 8 --runs 2 --top 5     # does it work? (CPU: host times)
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from torch.profiler import ProfilerActivity, profile

from ats_viz import ATSConfig, timing
from ats_viz.methods import parse_ladder
from ats_viz.evaluate import make_settings
from ats_viz.vit import run_logits
from bench_speed import DTYPES, TIMM, sharpen


def parse_settings(text: str) -> list[ATSConfig]:
    """'ats:all,tome:13' -> one setting per method:value."""
    ladders: dict[str, list] = {}
    for part in text.split(","):
        method, value = part.split(":", 1)
        ladders.setdefault(method.strip(), []).extend(parse_ladder(method.strip(), value))
    return [c for c in make_settings(ladders) if c.method != "full"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="deit_s", choices=list(TIMM))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--settings", default="ats:all,topk:0.5,tome:13,evit:0.7", help="method:value, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="profiled forwards per setting, after 2 warm-ups")
    parser.add_argument("--top", type=int, default=12, help="operations listed per forward")
    args = parser.parse_args()
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    net = sharpen(timm.create_model(TIMM[args.model][1]).eval()).to(dev, dtype)
    x = timing.random_images(args.batch, (224, 224)).to(dev, dtype)
    forwards = {"full (timm)": lambda: timm.models.vision_transformer.VisionTransformer.forward(net, x)}
    for cfg in parse_settings(args.settings):
        forwards[cfg.label()] = lambda cfg=cfg: run_logits(net, x, cfg)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"{TIMM[args.model][0]}, batch {args.batch}, {args.dtype}, {timing.machine(args.device)}, torch {torch.__version__}")
    with torch.inference_mode():
        for name, forward in forwards.items():
            for _ in range(2):
                forward()
            sync()
            start = time.perf_counter()
            with profile(activities=activities) as prof:
                for _ in range(args.runs):
                    forward()
                sync()
            wall = (time.perf_counter() - start) / args.runs * 1e3
            # Each operation's own time, per forward: on a GPU its kernels' (the kernels are
            # events of their own), on the CPU its host time.
            def own(e) -> float:
                return (e.self_device_time_total if dev.type == "cuda" else e.self_cpu_time_total) / args.runs / 1e3

            events = sorted(prof.key_averages(), key=own, reverse=True)
            head = f"\n## {name}: {wall:.2f} ms per forward (profiled)"
            if dev.type == "cuda":
                head += f", of which kernels {sum(map(own, events)):.2f} ms (the rest: the host launching or waiting)"
            print(head)
            for e in events[:args.top]:
                print(f"  {own(e):8.3f} ms  {e.count // args.runs:5d} x  {e.key[:90]}")


if __name__ == "__main__":
    main()
