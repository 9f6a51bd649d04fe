"""Sweeps: a dataset through a ladder of settings of each method, with a disk cache.

Every pruning stage of every setting comes after the same unpruned first blocks, so each
batch runs those blocks once and forks the tokens per setting (``sweep_batch``). Results are
cached per (model weights, preprocessing, setting, image files), one JSON file each: widening
the ladder computes only the new settings, and a changed image file or weight recomputes.
A cache file that does not read back cleanly is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .data import Dataset, cache_root, read_image
from .errors import InputError
from .models import LoadedModel, model_hash
from .methods import METHODS, Value, get, parse_ladder
from .vit import ATSConfig, ATSResult, embed, finish, fork, resolve, run_blocks

CACHE_VERSION = 1
RESULT_FILES = ("per_image.csv", "summary.csv", "curve.html", "curve.png", "results.json")
MANIFEST = "results.json"
Z95 = 1.959963984540054


# ---------------------------------------------------------------------------- settings


def make_settings(ladders: Mapping[str, Sequence[Value]], stages: tuple[int, ...] | None = None,
                  seed: int = 0, fuse_token: bool = True) -> list[ATSConfig]:
    """The full model, then every method at every value of its ladder ({method: values},
    values as ``methods.parse_ladder`` gives them). ``stages`` None: each method's own blocks."""
    settings = [ATSConfig(method="full")]
    for name, values in ladders.items():
        param = get(name).param
        if param is not None:
            settings += [ATSConfig(method=name, stages=stages, seed=seed, fuse_token=fuse_token, **{param.field: v})
                         for v in values]
    return settings


def default_ladders(names: Sequence[str]) -> dict[str, list[Value]]:
    """Each method's default ladder: together they span about the same GFLOPs."""
    return {n: parse_ladder(n, get(n).param.ladder) for n in names if get(n).param is not None}


# ---------------------------------------------------------------------------- the sweep


def sweep_batch(net: torch.nn.Module, images: Tensor, settings: Sequence[ATSConfig]) -> list[ATSResult]:
    """Run one batch under every setting, sharing the blocks before the first pruning stage."""
    depth, patches = len(net.blocks), net.patch_embed.num_patches
    first = min((min(p) for p in (resolve(c, depth, patches) for c in settings) if p), default=depth)
    shared = run_blocks(net, embed(net, images), ATSConfig(method="full"), stop=first)
    return [finish(net, run_blocks(net, fork(shared), cfg), cfg) for cfg in settings]


@dataclass
class SettingRun:
    """One setting's results over a dataset's readable images, in dataset order."""

    config: ATSConfig
    names: list[str] = field(default_factory=list)
    pred: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    gflops: list[float] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)  # patch tokens entering each block, then leaving the last

    def add(self, names: list[str], res: ATSResult) -> None:
        prob = res.logits.float().softmax(dim=1).max(dim=1)
        self.names += names
        self.pred += prob.indices.tolist()
        self.confidence += prob.values.tolist()
        self.gflops += res.gflops.tolist()
        self.tokens += res.patch_counts.tolist()


@dataclass
class Progress:
    """Where a sweep stands; ``partial`` holds the results so far (complete for cached settings)."""

    done: int  # image x setting evaluations finished, cached ones included
    total: int
    per_setting: dict[str, tuple[int, int]]  # setting label -> (images done, images to do)
    computed: int  # evaluations computed (not cached) so far
    to_compute: int
    elapsed_s: float
    partial: SweepResult

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace so far; None before the first batch."""
        if self.computed == 0:
            return None if self.to_compute else 0.0
        return self.elapsed_s / self.computed * (self.to_compute - self.computed)


@dataclass
class SweepResult:
    """A dataset through several settings: raw runs plus the tables and figures drawn from them."""

    dataset: Dataset
    model_name: str
    model_hash: str
    settings: list[ATSConfig]
    runs: dict[str, SettingRun]  # by setting label
    full_gflops: float
    depth: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why it could not be read)
    computed: list[str] = field(default_factory=list)  # setting labels computed in this call
    cached: list[str] = field(default_factory=list)  # setting labels read from the cache
    seconds: float = 0.0

    def per_image(self) -> pd.DataFrame:
        """One row per image and setting: label, prediction, correctness, GFLOPs, tokens per block."""
        items = {it.name: it for it in self.dataset.items}
        names = self.dataset.class_names
        frames = []
        for cfg in self.settings:
            run = self.runs.get(cfg.label())
            if run is None or not run.names:
                continue
            target = [items[n].target for n in run.names]
            tokens = np.asarray(run.tokens, dtype=np.int64).reshape(len(run.names), self.depth + 1)
            frame = pd.DataFrame({
                "image": run.names,
                "label": [items[n].label for n in run.names],
                "target": target,
                "setting": cfg.label(),
                "method": cfg.method,
                "value": _value_of(cfg, self.depth, int(tokens[0, 0])),
                "pred": run.pred,
                "pred_name": [names[p] if p < len(names) else str(p) for p in run.pred],
                "correct": np.asarray(run.pred) == np.asarray(target),
                "confidence": run.confidence,
                "gflops": run.gflops,
            })
            for b in range(self.depth):
                frame[f"tokens_in_{b}"] = tokens[:, b]
            frame["tokens_final"] = tokens[:, self.depth]
            frames.append(frame)
        if not frames:
            return pd.DataFrame(columns=["image", "label", "target", "setting", "method", "value", "pred",
                                         "pred_name", "correct", "confidence", "gflops", "tokens_final"])
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> pd.DataFrame:
        return summarize(self.per_image(), self.full_gflops)


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


def _value_of(cfg: ATSConfig, depth: int, num_patches: int) -> float:
    """The method's number (K, r, keep rate) when every stage shares it; NaN for the full
    model or one value per stage."""
    values = set(resolve(cfg, depth, num_patches).values())
    return float(values.pop()) if len(values) == 1 else math.nan


def _setting_key(cfg: ATSConfig, depth: int, num_patches: int) -> dict:
    plan = resolve(cfg, depth, num_patches)
    key = {"method": cfg.method, "plan": {str(b): k for b, k in sorted(plan.items())},
           "seed": cfg.seed if cfg.method == "random" else 0}
    if cfg.method == "evit":
        key["fuse_token"] = cfg.fuse_token
    return key


class _Cache:
    """One JSON file per (model, preprocessing, setting, image files); bad files are ignored."""

    def __init__(self, folder: Path | None, base: dict) -> None:
        self.folder, self.base = folder, base

    def _key(self, setting: dict) -> tuple[dict, Path | None]:
        key = {**self.base, "setting": setting}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
        return key, (self.folder / f"{digest}.json" if self.folder else None)

    def load(self, cfg: ATSConfig, setting: dict, depth: int) -> tuple[SettingRun, list] | None:
        key, path = self._key(setting)
        if path is None or not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            if doc["key"] != key:
                return None
            n = len(doc["names"])
            run = SettingRun(cfg, [str(x) for x in doc["names"]], [int(x) for x in doc["pred"]],
                             [float(x) for x in doc["confidence"]], [float(x) for x in doc["gflops"]],
                             [[int(t) for t in row] for row in doc["tokens"]])
            if not (len(run.pred) == len(run.confidence) == len(run.gflops) == len(run.tokens) == n) \
                    or any(len(row) != depth + 1 for row in run.tokens):
                return None
            skipped = [(str(a), str(b)) for a, b in doc["skipped"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return run, skipped

    def save(self, run: SettingRun, setting: dict, skipped: list[tuple[str, str]]) -> None:
        key, path = self._key(setting)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"key": key, "names": run.names, "pred": run.pred, "confidence": run.confidence,
               "gflops": run.gflops, "tokens": run.tokens, "skipped": [list(s) for s in skipped]}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one, never half


def default_cache() -> Path:
    return cache_root() / "sweeps"


def check_device(device: str) -> torch.device:
    """The torch device for ``device`` ("cpu", "cuda", "cuda:1"), or a sentence saying why not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"'{device}' is not a device: use 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine: use device 'cpu'.")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"Device '{device}' is not supported: use 'cpu' or 'cuda'.")
    return dev


def run_sweep(model: LoadedModel, dataset: Dataset, settings: Sequence[ATSConfig], batch: int = 32,
              device: str = "cpu", cache: Path | str | None = "default",
              progress: Callable[[Progress], None] | None = None) -> SweepResult:
    """Evaluate every setting on every image of ``dataset``, computing only what is not cached.

    cache: a folder, "default" (``default_cache()``) or None (no cache). The model is moved to
    ``device`` for the sweep and back afterwards. Unreadable images are skipped and listed.
    """
    if batch < 1:
        raise InputError(f"The batch size must be at least 1 (got {batch}).")
    if not dataset.items:
        raise InputError("The dataset has no images to evaluate.")
    settings = list(settings)
    if not settings:
        raise InputError("Give at least one setting to evaluate.")
    dev = check_device(device)
    net = model.net
    depth, patches = len(net.blocks), net.patch_embed.num_patches
    keys = [_setting_key(cfg, depth, patches) for cfg in settings]  # refuses impossible K with a sentence
    labels = [cfg.label() for cfg in settings]
    if len(set(labels)) != len(labels):
        raise InputError("Two settings share a label; give each setting a different method, K or stages.")
    files = hashlib.sha256(json.dumps(dataset.fingerprint()).encode()).hexdigest()
    store = _Cache(None if cache is None else (default_cache() if cache == "default" else Path(cache)),
                   {"version": CACHE_VERSION, "model": model_hash(net), "transform": repr(model.transform),
                    "files": files})
    t0 = time.perf_counter()
    n = len(dataset.items)
    runs: dict[str, SettingRun] = {}
    skipped: list[tuple[str, str]] = []
    todo: list[tuple[ATSConfig, dict]] = []
    for cfg, key in zip(settings, keys):
        hit = store.load(cfg, key, depth)
        if hit is None:
            todo.append((cfg, key))
            runs[cfg.label()] = SettingRun(cfg)
        else:
            runs[cfg.label()], skipped = hit
    result = SweepResult(dataset, model.name, store.base["model"], settings, runs,
                         _full_gflops(model), depth, skipped,
                         computed=[c.label() for c, _ in todo],
                         cached=[lab for lab in labels if lab not in {c.label() for c, _ in todo}])

    def report(images_done: int) -> None:
        if progress is None:
            return
        per = {lab: (n if lab in result.cached else images_done, n) for lab in labels}
        result.seconds = time.perf_counter() - t0
        progress(Progress(sum(d for d, _ in per.values()), n * len(labels), per,
                          images_done * len(todo), n * len(todo), result.seconds, result))

    report(0)
    if todo:
        result.skipped = []
        original = next(net.parameters()).device
        net.to(dev)
        try:
            with torch.inference_mode():
                for start in range(0, n, batch):
                    chunk = dataset.items[start:start + batch]
                    names, tensors = [], []
                    for item in chunk:
                        try:
                            img = read_image(item.path.read_bytes(), item.name)
                        except (InputError, OSError) as err:
                            result.skipped.append((item.name, str(err)))
                            continue
                        names.append(item.name)
                        tensors.append(model.transform(img))
                    if tensors:
                        x = torch.stack(tensors).to(dev)
                        for (cfg, _), res in zip(todo, sweep_batch(net, x, [c for c, _ in todo])):
                            runs[cfg.label()].add(names, res)
                    report(start + len(chunk))
        finally:
            net.to(original)
        if len(result.skipped) == n:
            raise InputError(f"None of the {n} images could be read (the first: {result.skipped[0][0]}: "
                             f"{result.skipped[0][1]}). Check that the folder holds images.")
        for cfg, key in todo:
            store.save(runs[cfg.label()], key, result.skipped)
    result.seconds = time.perf_counter() - t0
    return result


def _full_gflops(model: LoadedModel) -> float:
    from .flops import full_gflops

    net = model.net
    h, w = model.input_size
    return full_gflops(net, net.patch_embed.num_patches + net.num_prefix_tokens, h, w)


# ---------------------------------------------------------------------------- result folders


def _setting_doc(cfg: ATSConfig) -> dict:
    doc = {"label": cfg.label(), "method": cfg.method,
           "stages": None if cfg.stages is None else list(cfg.stages), "seed": cfg.seed}
    param = METHODS[cfg.method].param
    if param is not None:
        value = getattr(cfg, param.field)
        doc[param.field] = list(value) if isinstance(value, tuple) else value
    if cfg.method == "evit":
        doc["fuse_token"] = cfg.fuse_token
    return doc


def write_results(result: SweepResult, out: Path | str, timed: pd.DataFrame | None = None) -> dict[str, Path]:
    """per_image.csv, summary.csv, curve.html, curve.png and the results.json manifest;
    ``timed`` (``timing.time_dataset``) adds measured ms_per_image and images_per_s to the summary."""
    # Imported here: sweeping (evaluate's import) must not load plotly, matplotlib and OpenCV.
    from .viz import curve_figure, curve_png
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_image = result.per_image()
    summary = summarize(per_image, result.full_gflops)
    if timed is not None:
        from .timing import add_timing  # timing imports this module

        summary = add_timing(summary, timed)
    paths = {name: out / name for name in RESULT_FILES}
    per_image.to_csv(paths["per_image.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False)
    curve_figure(summary).write_html(paths["curve.html"], include_plotlyjs=True)
    curve_png(summary, paths["curve.png"])
    manifest = {
        "version": CACHE_VERSION,
        "model": result.model_name,
        "model_hash": result.model_hash,
        "dataset": str(result.dataset.root),
        "images": len(result.dataset.items),
        "found": result.dataset.found,
        "unmatched": result.dataset.unmatched,
        "skipped": [list(s) for s in result.skipped],
        "class_names": result.dataset.class_names,
        "full_gflops": result.full_gflops,
        "depth": result.depth,
        "settings": [_setting_doc(c) for c in result.settings],
        "files": list(RESULT_FILES),
    }
    paths[MANIFEST].write_text(json.dumps(manifest, indent=2))
    return paths


@dataclass
class SavedSweep:
    """A results folder read back: the tables and the manifest."""

    per_image: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict


def load_results(folder: Path | str) -> SavedSweep:
    """Open a folder written by ``write_results`` (or ``python -m ats_viz evaluate``)."""
    folder = Path(folder).expanduser()
    missing = [n for n in ("per_image.csv", "summary.csv", MANIFEST) if not (folder / n).is_file()]
    if missing:
        raise InputError(f"'{folder}' is not a results folder: {', '.join(missing)} missing. "
                         "Make one with 'python -m ats_viz evaluate --out FOLDER'.")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        # Folders from before ToMe and EViT name the parameter column "k".
        per_image = pd.read_csv(folder / "per_image.csv").rename(columns={"k": "value"})
        summary = pd.read_csv(folder / "summary.csv").rename(columns={"k": "value"})
    except (ValueError, OSError) as err:
        raise InputError(f"The results in '{folder}' could not be read ({str(err)[:120]}). Run the sweep again.") from None
    return SavedSweep(per_image, summary, manifest)


def results_zip(result: SweepResult, timed: pd.DataFrame | None = None) -> bytes:
    """The results folder as a ZIP, for a download that the Dataset page can open again."""
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="ats-viz-") as tmp, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, path in write_results(result, tmp, timed).items():
            z.write(path, name)
    return buf.getvalue()
