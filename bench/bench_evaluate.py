"""A sweep of M settings against M separate runs, side by side in one process.

The sweep decodes each image once and runs the blocks before the first pruning stage once
per batch, then forks the tokens per setting; separate runs repeat both. The goal is
sweep_time / single_run_time <= 0.7 * M (3.5 for M = 5), where single_run_time is the mean
of the separate runs. Measured for the embedded model and for timm's deit_small_patch16_224
(random weights: speed does not depend on what the weights learned), on a seeded subset of
the bundled held-out set, with no cache.

Usage (from the repository root; the package need not be installed):
    python -m bench.bench_evaluate                      # 100 images, batch 32, CPU, both models
    python -m bench.bench_evaluate --images 20 --models embedded
    python -m bench.bench_evaluate --device cuda --images 500 --batch 64
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from ats_viz.data import Dataset, heldout_folder, load_dataset
from ats_viz.evaluate import make_settings, run_sweep
from ats_viz.models import LoadedModel, load_model, wrap_net
from ats_viz.synthetic import CLASSES
from ats_viz.vit import ATSConfig

LADDER = (196, 147, 98, 49)  # with the full model: M = 5 settings


def deit_small() -> LoadedModel:
    torch.manual_seed(0)
    net = timm.create_model("deit_small_patch16_224", pretrained=False)
    return wrap_net(net, "deit_small_patch16_224 (random weights)", [f"class {i}" for i in range(net.num_classes)])


def timed(model: LoadedModel, ds: Dataset, settings: list[ATSConfig], batch: int, device: str) -> float:
    t0 = time.perf_counter()
    run_sweep(model, ds, settings, batch=batch, device=device, cache=None)
    return time.perf_counter() - t0


def bench(model: LoadedModel, ds: Dataset, batch: int, device: str) -> None:
    settings = make_settings({"ats": LADDER})
    m, n = len(settings), len(ds.items)
    warm = Dataset(ds.root, ds.items[:2], ds.class_names, 2)
    timed(model, warm, settings, batch, device)  # first-call costs (FLOP probe, allocator) out of the way
    sweep = timed(model, ds, settings, batch, device)
    singles = {cfg.id: timed(model, ds, [cfg], batch, device) for cfg in settings}
    single = sum(singles.values()) / m
    print(f"\n{model.name}: {n} images, batch {batch}, {device}, M = {m} settings")
    for label, t in singles.items():
        print(f"  alone  {label:<10} {t:7.2f} s  {n / t:7.1f} images/s")
    print(f"  sweep  all {m:<6} {sweep:7.2f} s  {n * m / sweep:7.1f} image-settings/s")
    print(f"  separate runs together {sum(singles.values()):.2f} s: the sweep is "
          f"{sum(singles.values()) / sweep:.2f}x faster")
    ratio = sweep / single
    print(f"  sweep / single run = {ratio:.2f} (goal <= {0.7 * m:.1f}): {'met' if ratio <= 0.7 * m else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="embedded,deit_small")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    ds = load_dataset(heldout_folder(), CLASSES, subset=args.images, seed=0)
    loaders = {"embedded": lambda: load_model("embedded"), "deit_small": deit_small}
    for name in args.models.split(","):
        bench(loaders[name.strip()](), ds, args.batch, args.device)


if __name__ == "__main__":
    main()
