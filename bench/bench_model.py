"""The shipped model under token reduction: every method's default ladder on fresh scenes.

What issue 23 asks the shipped model to show, measured on ``--per-class`` x 10 scenes of a
seed nobody trained or tuned on (default: one drawn now, printed): the full model's top-1,
ATS at K = all (GFLOPs saved, gap to full), how much ATS's K ladder moves the cost, whether
each method's ladder has a knee (its dearest setting within 1 point of full, its cheapest at
least 5 points below with disjoint 95% Wilson intervals), how the methods rank at equal cost
(each method's top-1 interpolated along its own curve at the GFLOPs of ATS's ladder), and how
ATS's per-image token count follows the number of objects in the scene; and by which block the
class token has its answer (top-1 with only 2 random patch tokens left from block b on): from
there on, dropping tokens costs little; and what merging costs, ToMe front-loaded down to one
patch token.

Usage (from the repository root; the package need not be installed):
    python -m bench.bench_model                         # 2,000 scenes of a fresh seed, shipped model
    python -m bench.bench_model --seed 26648 --per-class 20 --model embedded-ats
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ats_viz import synthetic, viz
from ats_viz.cost import fixed_counts
from ats_viz.data import load_dataset
from ats_viz.evaluate import make_settings, run_sweep
from ats_viz.methods import METHODS, parse_ladder
from ats_viz.models import load_model
from ats_viz.setting import ATSConfig, from_text
from ats_viz.stats import summarize, wilson


def spearman(a: pd.Series, b: pd.Series) -> float:
    return float(np.corrcoef(a.rank(), b.rank())[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--seed", type=int, help="the scenes' seed (default: drawn now)")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seed = secrets.randbelow(100_000) if args.seed is None else args.seed
    model = load_model(args.model)
    ladders = {name: parse_ladder(name, m.param.ladder) for name, m in METHODS.items() if m.param is not None}
    settings = make_settings(ladders)
    blocks = range(1, len(model.net.blocks))
    probes = [ATSConfig(method="random", stages=(b,), k=2) for b in blocks]
    # ToMe front-loaded (the authors' decreasing schedule, inflection -1: r x 2 merged at block 0,
    # falling to 0 at the last), down to one patch token: what merging, rather than dropping, costs.
    merges = [from_text("tome", "", value) for value in ("17:-1", "25:-1", "40:-1")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic.write_imagefolder(Path(tmp) / "scenes", args.per_class, seed)
        dataset = load_dataset(folder, model.class_names)
        t0 = time.perf_counter()
        result = run_sweep(model, dataset, [*settings, *probes, *merges], batch=50, cache=None)
        minutes = (time.perf_counter() - t0) / 60
    per_image = result.per_image()
    table = summarize(per_image, result.full_gflops).set_index("setting")
    summary = table.loc[[cfg.id for cfg in settings]]
    n = len(dataset.items)
    print(f"{model.name} ({model.card.get('name', '?')}), {n:,} scenes of seed {seed} (1 to "
          f"{synthetic.MAX_OBJECTS} objects), {len(settings)} settings and {len(probes) + len(merges)} probes, "
          f"{minutes:.1f} min, torch {torch.__version__}\n")
    print("| setting | top-1 (95% CI) | mean GFLOPs | saved | final patch tokens |")
    print("|---|---|---|---|---|")
    for setting, r in summary.iterrows():
        print(f"| {setting} | {r.top1:.1%} ({r.ci_low:.1%}-{r.ci_high:.1%}) | {r.gflops_mean:.4f} | "
              f"{r.gflops_saved:.1%} | {r.tokens_final_mean:.1f} |")

    full = summary.loc["full"]
    goals = [("full model top-1 >= 90%", f"{full.top1:.1%}", full.top1 >= 0.90)]
    ats = summary[summary["method"] == "ats"]
    first, last = ats.iloc[0], ats.iloc[-1]
    gap = full.top1 - first.top1
    goals.append((f"ATS {first.name}: saves 30-50% of GFLOPs", f"{first.gflops_saved:.1%}",
                  0.30 <= first.gflops_saved <= 0.50))
    goals.append((f"ATS {first.name}: within 1.5 points of full", f"{gap * 100:+.2f} points", gap <= 0.015))
    ladder = (first.gflops_mean - last.gflops_mean) / full.gflops_mean
    goals.append((f"ATS's ladder: {last.name} costs >= 15% of full less than {first.name}", f"{ladder:.1%}",
                  ladder >= 0.15))
    for method, g in summary.groupby("method", sort=False):
        if method == "full":
            continue
        g = g.sort_values("gflops_mean")
        cheap, dear = g.iloc[0], g.iloc[-1]
        top = full.top1 - dear.top1
        goals.append((f"{method}: dearest ({dear.name}) within 1 point of full", f"{top * 100:+.2f} points", top <= 0.01))
        drop = full.top1 - cheap.top1
        goals.append((f"{method}: cheapest ({cheap.name}) >= 5 points below, intervals disjoint",
                      f"{drop * 100:+.2f} points", drop >= 0.05 and cheap.ci_high < full.ci_low))
    print("\n| goal | measured | met |\n|---|---|---|")
    for goal, got, met in goals:
        print(f"| {goal} | {got} | {'yes' if met else 'NO'} |")

    # Equal cost: each method's top-1 along its own curve (linear between its settings, the full model
    # its dearest point) at shares of the full model's GFLOPs; '-' where its ladder does not reach that cost.
    shares = (0.4, 0.5, 0.6, 0.7)
    levels = [share * full.gflops_mean for share in shares]
    print("\nTop-1 at equal cost (each method's curve, the full model its dearest point, read at a share of "
          "the full model's GFLOPs; '-': its default ladder does not reach that cost):\n")
    print("| method | " + " | ".join(f"{share:.0%} of full" for share in shares) + " |")
    print("|---|" + "---|" * len(levels))
    for method, g in summary.groupby("method", sort=False):
        if method == "full":
            continue
        curve = pd.concat([g, summary.loc[["full"]]]).sort_values("gflops_mean")
        xs, ys = curve["gflops_mean"].to_numpy(), curve["top1"].to_numpy()
        cells = [f"{np.interp(x, xs, ys):.1%}" if xs[0] <= x <= xs[-1] else "-" for x in levels]
        print(f"| {method} | " + " | ".join(cells) + " |")

    # Adaptivity: ATS's tokens and GFLOPs per image against the scene's number of objects.
    rows = per_image[per_image["setting"] == first.name].copy()
    rows["objects"] = viz.objects_per_image(rows)
    print(f"\n{first.name}, per image, by the number of objects in the scene (mean and standard deviation):\n")
    print("| objects | scenes | final patch tokens | GFLOPs | top-1 (95% CI) | full model top-1 |")
    print("|---|---|---|---|---|---|")
    full_rows = per_image[per_image["setting"] == "full"].set_index("image")
    for count, g in rows.groupby("objects"):
        hits = int(g["correct"].sum())
        lo, hi = wilson(hits, len(g))
        full_hits = full_rows.loc[g["image"], "correct"].mean()
        print(f"| {count} | {len(g)} | {g.tokens_final.mean():.1f} ({g.tokens_final.std():.1f}) | "
              f"{g.gflops.mean():.4f} ({g.gflops.std():.4f}) | {hits / len(g):.1%} ({lo:.1%}-{hi:.1%}) | "
              f"{full_hits:.1%} |")
    print(f"\nSpearman correlation of objects with ATS's final tokens: {spearman(rows.objects, rows.tokens_final):.2f}, "
          f"with its GFLOPs: {spearman(rows.objects, rows.gflops):.2f}")
    # The scene behind each row, drawn again from its seed (class and index are in its file name):
    # how many objects and how much area are of the label's kind, and how many are of other kinds.
    scenes = [synthetic.draw((seed, kind, int(Path(name).name.split("_")[1])), label=kind)[1]
              for name, kind in zip(rows["image"], rows["target"])]
    rows["lead"] = [sum(o.label == s.label for o in s.objects) for s in scenes]
    rows["others"] = rows["objects"] - rows["lead"]
    rows["lead_area"] = [sum(o.radius ** 2 for o in s.objects if o.label == s.label) for s in scenes]
    print("Spearman correlation of ATS's final tokens with the label's kind: its objects "
          f"{spearman(rows.lead, rows.tokens_final):.2f}, their area {spearman(rows.lead_area, rows.tokens_final):.2f}; "
          f"with the objects of other kinds {spearman(rows.others, rows.tokens_final):.2f}")

    print("\nWhen the class token has its answer: top-1 with only 2 random patch tokens left from block b on "
          f"(full {full.top1:.1%}; blocks counted from 0, as stages are; the two positions are the random "
          "baseline's, one draw per block, the same for every image):\n")
    print("| b | " + " | ".join(str(b) for b in blocks) + " |\n|---|" + "---|" * len(blocks))
    print("| top-1 | " + " | ".join(f"{table.loc[cfg.id, 'top1']:.1%}" for cfg in probes) + " |")

    net = model.net
    print("\nMerging instead of dropping: ToMe front-loaded (inflection -1: twice r merged at block 0, "
          f"falling to none at the last; full {full.top1:.1%}):\n")
    print("| setting | top-1 (95% CI) | saved | patch tokens entering blocks 2, 4, 6, 8 | after the last |")
    print("|---|---|---|---|---|")
    for cfg in merges:
        r = table.loc[cfg.id]
        counts = [c - net.num_prefix_tokens for c in
                  fixed_counts(cfg, len(net.blocks), net.patch_embed.num_patches, net.num_prefix_tokens)]
        print(f"| {cfg.id} | {r.top1:.1%} ({r.ci_low:.1%}-{r.ci_high:.1%}) | {r.gflops_saved:.1%} | "
              f"{', '.join(str(counts[b]) for b in (2, 4, 6, 8))} | {counts[-1]} |")


if __name__ == "__main__":
    main()
