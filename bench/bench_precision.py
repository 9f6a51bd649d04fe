"""Mixed precision against fp32: how often the kept tokens change, and how often the top-1 does.

A pruning or merging stage decides from scores; bf16 or fp16 rounds those scores, so near a
tie another token can win, and from there the run goes another way. For each method at a
middle setting of its default ladder, this runs the same batches at fp32 and under autocast
(bf16; fp16 too on CUDA) through the sweep's own path (``evaluate.sweep_batch``) and counts,
per image: whether any stage sent any patch elsewhere (kept, dropped or merged into another
token), whether the final token count changed, how far the patches that leave the last stage
as themselves overlap (intersection over union), and whether the top-1 class agrees.

Shipped model, bundled held-out set (seeded subset). Usage, from the repository root:
    python -m bench.bench_precision                        # 200 images, CPU: bf16
    python -m bench.bench_precision --device cuda --images 500 --batch 64   # bf16 and fp16
"""

from __future__ import annotations

import argparse
import time

import torch

from ats_viz.data import heldout_folder, load_dataset, read_image
from ats_viz.devices import autocast, check_device
from ats_viz.evaluate import sweep_batch
from ats_viz.models import load_model, on_device
from ats_viz.synthetic import CLASSES
from ats_viz.vit import ATSConfig

SETTINGS = [ATSConfig(method="ats", k=0.5), ATSConfig(method="tome", r=12),
            ATSConfig(method="evit", keep_rate=0.5), ATSConfig(method="topk", k=0.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dev = check_device(args.device)
    precisions = ["bf16", "fp16"] if dev.type == "cuda" else ["bf16"]
    model = load_model("embedded")
    net = on_device(model, dev).net
    ds = load_dataset(heldout_folder(), CLASSES, subset=args.images, seed=0)
    x_all = torch.stack([model.transform(read_image(it.path.read_bytes(), it.name)) for it in ds.items])
    # per (precision, setting): images moved at a stage, final count changed, last-stage IoU summed, top-1 agreed, n
    counts = {(p, c.id): [0, 0, 0.0, 0, 0] for p in precisions for c in SETTINGS}
    seconds = dict.fromkeys(["fp32", *precisions], 0.0)
    with torch.inference_mode():
        for start in range(0, len(x_all), args.batch):
            x = x_all[start:start + args.batch].to(dev)
            t0 = time.perf_counter()
            ref = sweep_batch(net, x, SETTINGS, traces=True)
            seconds["fp32"] += time.perf_counter() - t0
            for p in precisions:
                t0 = time.perf_counter()
                with autocast(p, dev):
                    low = sweep_batch(net, x, SETTINGS, traces=True)
                seconds[p] += time.perf_counter() - t0
                for cfg, a, b in zip(SETTINGS, ref, low):
                    tally = counts[(p, cfg.id)]
                    moved = torch.zeros(len(x), dtype=torch.bool)
                    for sa, sb in zip(a.stages, b.stages):  # where each patch went, stage by stage
                        moved |= (sa.groups != sb.groups).any(dim=1)
                    tally[0] += int(moved.sum())
                    tally[1] += int((a.patch_counts[:, -1] != b.patch_counts[:, -1]).sum())
                    ka, kb = a.stages[-1].kept_mask, b.stages[-1].kept_mask
                    tally[2] += float(((ka & kb).sum(1) / (ka | kb).sum(1).clamp(min=1)).sum())
                    tally[3] += int((a.logits.argmax(1) == b.logits.argmax(1)).sum())
                    tally[4] += len(x)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"embedded model, {len(ds.items)} held-out images, batch {args.batch}, {name}, torch {torch.__version__}")
    print(f"{'precision':<10}{'setting':<14}{'tokens differ at a stage':>26}{'final count differs':>21}"
          f"{'last-stage IoU':>16}{'top-1 agrees':>14}")
    for (p, label), (moved, final, iou, agree, n) in counts.items():
        print(f"{p:<10}{label:<14}{moved / n:>26.1%}{final / n:>21.1%}{iou / n:>16.3f}{agree / n:>14.1%}")
    print("time for the 4 settings (warm-up included): " + ", ".join(f"{p} {s:.2f} s" for p, s in seconds.items()))


if __name__ == "__main__":
    main()
