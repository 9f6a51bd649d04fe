"""Our ToMe and EViT timed beside their authors' releases, in one run, on the same weights (issue 22).

The releases are not part of this project: fetch them yourself and give their folders.

    git clone https://github.com/facebookresearch/ToMe   # tested at af95e4b
    git clone https://github.com/youweiliang/evit        # tested at 5ca95a7
    python bench/bench_releases.py --tome ToMe --evit evit [--device cuda] [--batch 1,32,256] [--dtype bf16]

DeiT-S (and, with --models deit_s,vit_b, ViT-B) with seeded random weights, attention sharpened as
in bench_speed.py, random normalised inputs. Settings: ToMe r = 13 (proportional attention on, as
the release evaluates models off the shelf) and EViT keep 0.7 at blocks 3, 6, 9 with the inattentive
tokens fused (the release's DeiT-S setting). Before timing, each pair's logits are compared (the
largest difference is printed: the same computation, to float noise). Timed by ``ats_viz.timing``'s
rules (warm-up, every forward in turn, medians with their IQR), the full model as timm's forward.
Prints a markdown table; paste it into bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import types
from pathlib import Path

import numpy as np
import timm
import torch

from ats_viz import ATSConfig, timing
from ats_viz.vit import run_logits
from bench_speed import DTYPES, TIMM, sharpen


def official_tome(path: Path, net: torch.nn.Module, r: int) -> torch.nn.Module:
    sys.path.insert(0, str(path))
    import tome.patch  # noqa: E402 (the release, from the folder given)

    tome.patch.timm(net)  # prop_attn on: its setting for models evaluated off the shelf
    net.r = r
    return net


def official_evit(path: Path, arch: str, weights: dict, keep: float) -> torch.nn.Module:
    # evit.py imports helpers.py, which imports torchprofile for a FLOP count this script does
    # not use: an empty stand-in keeps the import from failing.
    sys.modules.setdefault("torchprofile", types.SimpleNamespace(profile_macs=None))
    sys.path.insert(0, str(path))
    import evit  # noqa: E402 (the release; registering its models renames nothing we use after)

    spec = {"deit_small_patch16_224": dict(embed_dim=384, num_heads=6),
            "vit_base_patch16_224": dict(embed_dim=768, num_heads=12)}[arch]
    keep_rate = tuple(keep if i in (3, 6, 9) else 1 for i in range(12))
    net = evit.EViT(patch_size=16, depth=12, keep_rate=keep_rate, fuse_token=True, **spec).eval()
    net.load_state_dict(weights)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tome", required=True, help="a checkout of facebookresearch/ToMe")
    parser.add_argument("--evit", required=True, help="a checkout of youweiliang/evit")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--models", default="deit_s")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    batches = timing.parse_batch_sizes(args.batch)
    ours_tome, ours_evit = ATSConfig(method="tome", r=13), ATSConfig(method="evit", keep_rate=0.7)
    print(f"`python bench/bench_releases.py --device {args.device} --batch {args.batch} --models {args.models} "
          f"--dtype {args.dtype}`, {datetime.date.today()}, {timing.machine(args.device)}, torch {torch.__version__}, "
          f"timm {timm.__version__}; median of {args.repeats} timed runs after {args.warmup} warm-up runs, every "
          "forward in turn.\n")
    print("| model | batch | forward | ms / image (IQR) | speed-up over full | largest logit difference from ours |")
    print("|---|---:|---|---:|---:|---:|")
    for name in args.models.split(","):
        label, arch = TIMM[name]
        torch.manual_seed(0)
        ours = sharpen(timm.create_model(arch).eval())
        weights = ours.state_dict()
        tome_net = timm.create_model(arch).eval()
        tome_net.load_state_dict(weights)
        nets = {"full (timm)": ours, "ToMe r=13, ours": ours, "ToMe r=13, release": official_tome(Path(args.tome), tome_net, 13),
                "EViT keep 0.7, ours": ours, "EViT keep 0.7, release": official_evit(Path(args.evit), arch, weights, 0.7)}
        for net in nets.values():
            net.to(dev, dtype)
        runs = {"full (timm)": lambda x: timm.models.vision_transformer.VisionTransformer.forward(ours, x),
                "ToMe r=13, ours": lambda x: run_logits(ours, x, ours_tome)[0],
                "ToMe r=13, release": nets["ToMe r=13, release"],
                "EViT keep 0.7, ours": lambda x: run_logits(ours, x, ours_evit)[0],
                "EViT keep 0.7, release": nets["EViT keep 0.7, release"]}
        pairs = {"ToMe r=13, release": "ToMe r=13, ours", "EViT keep 0.7, release": "EViT keep 0.7, ours"}
        for size in batches:
            pool = timing.random_images(2 * size, (224, 224)).to(dev, dtype)
            inputs = timing.batches_of(pool, size)
            with torch.inference_mode():
                gap = {k: float((runs[k](inputs[0]).float() - runs[v](inputs[0]).float()).abs().max())
                       for k, v in pairs.items()}
            seconds, _ = timing.time_runs(list(runs.values()), inputs, args.warmup, args.repeats, dev)
            ms = {k: np.quantile(s, [0.25, 0.5, 0.75]) * 1e3 / size for k, s in zip(runs, seconds)}
            for k, (q1, med, q3) in ms.items():
                print(f"| {label} | {size} | {k} | {med:.2f} ({q1:.2f}-{q3:.2f}) | {ms['full (timm)'][1] / med:.2f} | "
                      f"{'' if k not in gap else f'{gap[k]:.1e}'} |", flush=True)


if __name__ == "__main__":
    main()
