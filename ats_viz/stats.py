"""Statistics of a sweep: per setting, top-1 with its confidence interval and the mean costs.

Kept apart from the sweep that produces the per-image table: a results folder read back, a
Dataset page filtering rows and a training card all summarise the same way, without running
or importing anything of the sweep.
"""

from __future__ import annotations

import math

import pandas as pd

Z95 = 1.959963984540054


def summarize(per_image: pd.DataFrame, full_gflops: float) -> pd.DataFrame:
    """Per setting: top-1 with its 95% Wilson interval, mean GFLOPs and mean final tokens."""
    rows = []
    for setting, g in per_image.groupby("setting", sort=False):
        n, hits = len(g), int(g["correct"].sum())
        lo, hi = wilson(hits, n)
        rows.append({
            "setting": setting, "method": g["method"].iloc[0], "value": g["value"].iloc[0], "images": n,
            "correct": hits, "top1": hits / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "gflops_mean": float(g["gflops"].mean()), "gflops_saved": 1 - float(g["gflops"].mean()) / full_gflops,
            "tokens_final_mean": float(g["tokens_final"].mean()),
        })
    return pd.DataFrame(rows, columns=["setting", "method", "value", "images", "correct", "top1", "ci_low",
                                      "ci_high", "gflops_mean", "gflops_saved", "tokens_final_mean"])


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval: honest near 0% and 100% and for small n, unlike p +- z*se."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if hits == 0 else centre - half), (1.0 if hits == n else centre + half)
