"""Sweeps: a dataset through a ladder of settings of each method, with a disk cache.

Every pruning stage of every setting comes after the same unpruned first blocks, so each
batch runs those blocks once and forks the tokens per setting (``sweep_batch``). Results are
cached per (model weights, preprocessing, precision, setting, chunk of image files), one JSON
file each: widening the ladder computes only the new settings, a changed image file or weight
recomputes its chunk or everything, and an interrupted sweep resumes from its last chunk. A
cache file that does not read back cleanly is recomputed, never trusted. The chunks are also
what the processes of a torchrun share out (``distributed.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import socket
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .data import Dataset, DatasetItem, Decoded, cache_root, collate_decoded, fingerprint
from .errors import InputError
from .models import LoadedModel, model_hash, on_device
from .methods import METHODS, Value, get
from .vit import ATSConfig, ATSResult, embed, finish, fork, resolve, run_blocks

CACHE_VERSION = 2  # 2: one file per setting and chunk of images, precision in the key
CHUNK = 256  # images per cache file and per unit of work handed to a process
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
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

    @classmethod
    def of(cls, config: ATSConfig, names: list[str], res: ATSResult) -> SettingRun:
        """One batch's rows."""
        prob = res.logits.float().softmax(dim=1).max(dim=1)
        return cls(config, list(names), prob.indices.tolist(), prob.values.tolist(), res.gflops.tolist(),
                   res.patch_counts.tolist())

    def extend(self, other: SettingRun) -> None:
        self.names += other.names
        self.pred += other.pred
        self.confidence += other.confidence
        self.gflops += other.gflops
        self.tokens += other.tokens

    def sort(self, order: Mapping[str, int]) -> None:
        """Rows in dataset order (``order``: image name -> its place)."""
        rows = sorted(range(len(self.names)), key=lambda i: order[self.names[i]])
        for name in ("names", "pred", "confidence", "gflops", "tokens"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in rows])


@dataclass
class Progress:
    """Where a sweep stands; ``partial`` holds the results so far (complete for cached settings)."""

    done: int  # image x setting evaluations finished, cached ones included (of this process's shard)
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
    precision: str = "fp32"
    world_size: int = 1  # processes that shared the sweep
    devices: list[dict] = field(default_factory=list)  # each process's device, its name and its host

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
    """One JSON file per (model, preprocessing, precision, setting, chunk of image files);
    files that do not read back cleanly are ignored."""

    def __init__(self, folder: Path | None, base: dict) -> None:
        self.folder, self.base = folder, base

    def _key(self, setting: dict, files: str) -> tuple[dict, Path | None]:
        key = {**self.base, "setting": setting, "files": files}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
        return key, (self.folder / f"{digest}.json" if self.folder else None)

    def load(self, cfg: ATSConfig, setting: dict, files: str, names: list[str],
             depth: int) -> tuple[SettingRun, list[tuple[str, str]]] | None:
        """The chunk of images ``names`` under one setting: its rows and its unreadable images."""
        key, path = self._key(setting, files)
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
            skipped = [(str(a), str(b)) for a, b in doc["skipped"]]
            if not (len(run.pred) == len(run.confidence) == len(run.gflops) == len(run.tokens) == n) \
                    or any(len(row) != depth + 1 for row in run.tokens) \
                    or sorted(run.names + [a for a, _ in skipped]) != sorted(names):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return run, skipped

    def save(self, run: SettingRun, setting: dict, files: str, skipped: list[tuple[str, str]]) -> None:
        key, path = self._key(setting, files)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"key": key, "names": run.names, "pred": run.pred, "confidence": run.confidence,
               "gflops": run.gflops, "tokens": run.tokens, "skipped": [list(s) for s in skipped]}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # sessions are threads
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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"There is no {dev}: this machine has {torch.cuda.device_count()} GPU(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return dev


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What a run at ``precision`` runs inside, or a sentence saying why it cannot."""
    if precision not in PRECISIONS:
        raise InputError(f"Precision '{precision}' is not one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 runs only on CUDA (the CPU has no fast float16 kernels): on the CPU use bf16 or fp32.")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _files_digest(items: Sequence[DatasetItem]) -> str:
    """Changes when any of these image files is replaced, rewritten or touched."""
    return hashlib.sha256(json.dumps(fingerprint(items)).encode()).hexdigest()


def _device_doc(dev: torch.device) -> dict:
    if dev.type == "cuda" and dev.index is None:  # "cuda" is the current GPU: record which one
        dev = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {"device": str(dev), "name": name, "host": socket.gethostname()}


def run_sweep(model: LoadedModel, dataset: Dataset, settings: Sequence[ATSConfig], batch: int = 32,
              device: str = "cpu", cache: Path | str | None = "default",
              progress: Callable[[Progress], None] | None = None, precision: str = "fp32",
              workers: int = 0, chunk: int = CHUNK, shard: tuple[int, int] = (0, 1)) -> SweepResult:
    """Evaluate every setting on every image of ``dataset``, computing only what is not cached.

    cache: a folder, "default" (``default_cache()``) or None (no cache). The images are split
    into chunks of ``chunk`` in dataset order; each chunk is cached per setting as soon as it
    is done, so an interrupted sweep loses at most the chunk in hand. Batches never straddle
    a chunk, so an image meets the same batch neighbours whatever the number of processes.
    ``shard`` (rank, world size): evaluate only the chunks rank, rank + world size, ... (one
    process of a torchrun; ``distributed.gather_sweep`` joins the shards).
    The model is never moved (``models.on_device``); images are decoded by ``workers``
    DataLoader processes (0: this one). Unreadable images are skipped and listed.
    """
    if batch < 1:
        raise InputError(f"The batch size must be at least 1 (got {batch}).")
    if workers < 0:
        raise InputError(f"The number of loading workers must be 0 or more (got {workers}).")
    if chunk < 1:
        raise InputError(f"The chunk size must be at least 1 image (got {chunk}).")
    if not dataset.items:
        raise InputError("The dataset has no images to evaluate.")
    settings = list(settings)
    if not settings:
        raise InputError("Give at least one setting to evaluate.")
    dev = check_device(device)
    precise = autocast(precision, dev)
    net = model.net
    depth, patches = len(net.blocks), net.patch_embed.num_patches
    keys = [_setting_key(cfg, depth, patches) for cfg in settings]  # refuses impossible K with a sentence
    labels = [cfg.label() for cfg in settings]
    if len(set(labels)) != len(labels):
        raise InputError("Two settings share a label; give each setting a different method, K or stages.")
    store = _Cache(None if cache is None else (default_cache() if cache == "default" else Path(cache)),
                   {"version": CACHE_VERSION, "model": model_hash(net), "transform": repr(model.transform),
                    "precision": precision})
    t0 = time.perf_counter()
    rank, world = shard
    items = dataset.items
    chunks = [range(s, min(s + chunk, len(items))) for s in range(0, len(items), chunk)][rank::world]
    mine = sum(len(c) for c in chunks)
    runs = {lab: SettingRun(cfg) for lab, cfg in zip(labels, settings)}
    done = dict.fromkeys(labels, 0)  # images finished per setting, cached ones included
    skipped: dict[str, str] = {}
    work: list[tuple[range, str, list[int]]] = []  # (chunk, its files' digest, settings to compute)
    for c in chunks:
        files = _files_digest(items[c.start:c.stop])
        names = [it.name for it in items[c.start:c.stop]]
        missing = []
        for j, (cfg, key) in enumerate(zip(settings, keys)):
            hit = store.load(cfg, key, files, names, depth)
            if hit is None:
                missing.append(j)
                continue
            runs[labels[j]].extend(hit[0])
            skipped.update(hit[1])
            done[labels[j]] += len(c)
        if missing:
            work.append((c, files, missing))
    computed = {labels[j] for _, _, missing in work for j in missing}
    result = SweepResult(dataset, model.name, store.base["model"], settings, runs, _full_gflops(model), depth,
                         computed=[lab for lab in labels if lab in computed],
                         cached=[lab for lab in labels if lab not in computed],
                         precision=precision, devices=[_device_doc(dev)])
    to_compute = sum(len(c) * len(missing) for c, _, missing in work)
    evaluations = 0  # image x setting evaluations computed so far

    def report() -> None:
        if progress is None:
            return
        result.skipped = sorted(skipped.items())
        result.seconds = time.perf_counter() - t0
        progress(Progress(sum(done.values()), mine * len(labels), {lab: (done[lab], mine) for lab in labels},
                          evaluations, to_compute, result.seconds, result))

    report()
    if work:
        net = on_device(model, dev).net
        batches, owner = [], []  # image indices of each batch, and the work entry (chunk) it belongs to
        for w, (c, _, _) in enumerate(work):
            for s in range(c.start, c.stop, batch):
                batches.append(list(range(s, min(s + batch, c.stop))))
                owner.append(w)
        loader = DataLoader(Decoded(items, model.transform), batch_sampler=batches, num_workers=workers,
                            collate_fn=collate_decoded, pin_memory=dev.type == "cuda")
        with torch.inference_mode(), precise:
            for b, (indices, x, bad) in enumerate(loader):
                c, files, missing = work[owner[b]]
                if b == 0 or owner[b] != owner[b - 1]:
                    part = {j: SettingRun(settings[j]) for j in missing}  # the chunk's rows, for the cache
                    part_skipped = []
                for i, why in bad:
                    skipped[items[i].name] = why
                    part_skipped.append((items[i].name, why))
                if x is not None:
                    names = [items[i].name for i in indices]
                    x = x.to(dev, non_blocking=True)
                    for j, res in zip(missing, sweep_batch(net, x, [settings[j] for j in missing])):
                        rows = SettingRun.of(settings[j], names, res)
                        part[j].extend(rows)
                        runs[labels[j]].extend(rows)
                for j in missing:
                    done[labels[j]] += len(batches[b])
                evaluations += len(batches[b]) * len(missing)
                if b + 1 == len(batches) or owner[b + 1] != owner[b]:
                    for j in missing:
                        store.save(part[j], keys[j], files, part_skipped)
                report()
    order = {it.name: i for i, it in enumerate(items)}
    for run in runs.values():
        run.sort(order)
    result.skipped = sorted(skipped.items(), key=lambda s: order[s[0]])
    if world == 1:
        check_readable(result)
    result.seconds = time.perf_counter() - t0
    return result


def check_readable(result: SweepResult) -> None:
    """Refuse a sweep in which no image could be read."""
    n = len(result.dataset.items)
    if len(result.skipped) == n:
        raise InputError(f"None of the {n} images could be read (the first: {result.skipped[0][0]}: "
                         f"{result.skipped[0][1]}). Check that the folder holds images.")


def merge_shards(dataset: Dataset, parts: Sequence[SweepResult]) -> SweepResult:
    """The shards of one sweep (``run_sweep(shard=...)`` in each process) as one result, rows
    in dataset order: what a single process would have returned."""
    order = {it.name: i for i, it in enumerate(dataset.items)}
    first = parts[0]
    runs = {}
    for cfg in first.settings:
        run = runs[cfg.label()] = SettingRun(cfg)
        for p in parts:
            run.extend(p.runs[cfg.label()])
        run.sort(order)
    labels = [cfg.label() for cfg in first.settings]
    computed = {lab for p in parts for lab in p.computed}
    result = dataclasses.replace(
        first, dataset=dataset, runs=runs,
        skipped=sorted((s for p in parts for s in p.skipped), key=lambda s: order[s[0]]),
        computed=[lab for lab in labels if lab in computed], cached=[lab for lab in labels if lab not in computed],
        seconds=max(p.seconds for p in parts), world_size=len(parts), devices=[d for p in parts for d in p.devices])
    check_readable(result)
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
        "precision": result.precision,
        "world_size": result.world_size,
        "devices": result.devices,
        "seconds": result.seconds,
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
