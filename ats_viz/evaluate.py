"""Sweeps: a dataset through a ladder of settings of each method, computing only what is not cached.

Every pruning stage of every setting comes after the same unpruned first blocks, so each
batch runs those blocks once and forks the tokens per setting (``sweep_batch``). The images
are cut into chunks in dataset order; each chunk is read from the disk cache
(``sweepcache.py``) per setting, or computed and cached as soon as it is done, so an
interrupted sweep loses at most the chunk in hand. The chunks are also what the processes
of a torchrun share out (``distributed.py``). Statistics are ``stats.py``'s, results folders
``results.py``'s, devices and precisions ``devices.py``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Container, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .data import Dataset, Decoded, collate_decoded
from .devices import autocast, check_device, describe
from .errors import InputError
from .models import LoadedModel, on_device
from .methods import Value, get
from .stats import summarize
from .sweepcache import DEFAULT, ROWS, SweepCache, files_digest, setting_key
from .setting import FULL, ATSConfig, resolve
from .vit import ATSResult, embed, finish, fork, run_blocks

CHUNK = 256  # images per cache file and per unit of work handed to a process


# ---------------------------------------------------------------------------- settings


def make_settings(ladders: Mapping[str, Sequence[Value]], stages: tuple[int, ...] | None = None,
                  **options) -> list[ATSConfig]:
    """The full model, then every method at every value of its ladder ({method: values},
    values as ``methods.parse_ladder`` gives them). ``stages`` None: each method's own blocks;
    ``options`` (seed, fuse_token, ...) go to the methods that read them."""
    settings = [FULL]
    for name, values in ladders.items():
        param = get(name).param
        if param is not None:
            settings += [ATSConfig(method=name, stages=stages, **options, **{param.field: v})
                         for v in values]
    return settings


# ---------------------------------------------------------------------------- the sweep


def not_finite(results: Sequence[ATSResult], settings: Sequence[ATSConfig]) -> dict[int, str]:
    """The places in a batch whose logits are not finite (NaN or infinite) under some setting,
    each with why it is left out: such an output is no prediction, and scoring it (its argmax)
    would count it as one."""
    out: dict[int, str] = {}
    for res, cfg in zip(results, settings):
        for i in (~torch.isfinite(res.logits).all(dim=1)).nonzero().flatten().tolist():
            out.setdefault(i, f"the model's outputs for it are not numbers (NaN or infinite) under {cfg.label()}; "
                              "left out, not scored")
    return out


def sweep_batch(net: torch.nn.Module, images: Tensor, settings: Sequence[ATSConfig],
                traces: bool = False) -> list[ATSResult]:
    """Run one batch under every setting, sharing the blocks before the first pruning stage;
    ``traces``: keep each stage's trace (a sweep reads only logits, counts and costs)."""
    depth, patches = len(net.blocks), net.patch_embed.num_patches
    first = min((min(p) for p in (resolve(c, depth, patches) for c in settings) if p), default=depth)
    shared = run_blocks(net, embed(net, images, traced=traces), FULL, stop=first)
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
    def of(cls, config: ATSConfig, names: list[str], res: ATSResult, drop: Container[int] = ()) -> SettingRun:
        """One batch's rows, but those of the images at the places ``drop``."""
        prob = res.logits.float().softmax(dim=1).max(dim=1)
        run = cls(config, list(names), prob.indices.tolist(), prob.values.tolist(), res.gflops.tolist(),
                  res.patch_counts.tolist())
        if drop:
            run.keep(lambda i, name: i not in drop)
        return run

    def keep(self, wanted: Callable[[int, str], bool]) -> None:
        """Only the rows (place, image name) that ``wanted`` accepts."""
        rows = [i for i, name in enumerate(self.names) if wanted(i, name)]
        for name in ROWS:
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in rows])

    def extend(self, other: SettingRun) -> None:
        self.names += other.names
        self.pred += other.pred
        self.confidence += other.confidence
        self.gflops += other.gflops
        self.tokens += other.tokens

    def rows(self) -> dict[str, list]:
        """The columns (``sweepcache.ROWS``), as the cache keeps them."""
        return {name: getattr(self, name) for name in ROWS}

    def sort(self, order: Mapping[str, int]) -> None:
        """Rows in dataset order (``order``: image name -> its place)."""
        rows = sorted(range(len(self.names)), key=lambda i: order[self.names[i]])
        for name in ROWS:
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in rows])


@dataclass
class Progress:
    """Where a sweep stands; ``partial`` holds the results so far (complete for cached settings)."""

    done: int  # image x setting evaluations finished, cached ones included (of this process's shard)
    total: int
    per_setting: dict[str, tuple[int, int]]  # setting id -> (images done, images to do)
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
    runs: dict[str, SettingRun]  # by setting id
    full_gflops: float
    depth: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why it could not be read)
    computed: list[str] = field(default_factory=list)  # setting ids computed in this call
    cached: list[str] = field(default_factory=list)  # setting ids read from the cache
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
            run = self.runs.get(cfg.id)
            if run is None or not run.names:
                continue
            target = [items[n].target for n in run.names]
            tokens = np.asarray(run.tokens, dtype=np.int64).reshape(len(run.names), self.depth + 1)
            frame = pd.DataFrame({
                "image": run.names,
                "label": [items[n].label for n in run.names],
                "target": target,
                "setting": cfg.id,
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


def _value_of(cfg: ATSConfig, depth: int, num_patches: int) -> float:
    """The method's number (K, r, keep rate) when every stage shares it; NaN for the full
    model or one value per stage."""
    values = set(resolve(cfg, depth, num_patches).values())
    return float(values.pop()) if len(values) == 1 else math.nan


def run_sweep(model: LoadedModel, dataset: Dataset, settings: Sequence[ATSConfig], batch: int = 32,
              device: str = "cpu", cache: Path | str | None = DEFAULT,
              progress: Callable[[Progress], None] | None = None, precision: str = "fp32",
              workers: int = 0, chunk: int = CHUNK, shard: tuple[int, int] = (0, 1)) -> SweepResult:
    """Evaluate every setting on every image of ``dataset``, computing only what is not cached.

    cache: a folder, ``sweepcache.DEFAULT`` (``default_cache()``) or None (no cache). The images
    are split into chunks of ``chunk`` in dataset order; each chunk is cached per setting as
    soon as it is done, so an interrupted sweep loses at most the chunk in hand. Batches never
    straddle a chunk, so an image meets the same batch neighbours whatever the number of
    processes. ``shard`` (rank, world size): evaluate only the chunks rank, rank + world size,
    ... (one process of a torchrun; ``distributed.gather_sweep`` joins the shards).
    The model is never moved (``models.on_device``); images are decoded by ``workers``
    DataLoader processes (0: this one). Unreadable images are skipped and listed.
    """
    settings, dev, precise, keys = _checked(model, dataset, settings, batch, device, precision, workers, chunk)
    store = SweepCache.open(cache, model, precision)
    tally = _Tally(SweepResult(dataset, model.name, store.model_hash, settings,
                               {cfg.id: SettingRun(cfg) for cfg in settings}, _full_gflops(model),
                               len(model.net.blocks), precision=precision, devices=[describe(dev).doc()]), progress)
    chunks = shard_chunks(len(dataset.items), chunk, shard)
    work = _read_cache(store, keys, chunks, tally)
    tally.report()
    if work:
        _compute(model, dev, precise, work, batch, workers, store, keys, tally)
    return _finish(tally, world=shard[1])


def _checked(model: LoadedModel, dataset: Dataset, settings: Sequence[ATSConfig], batch: int, device: str,
             precision: str, workers: int, chunk: int
             ) -> tuple[list[ATSConfig], torch.device, contextlib.AbstractContextManager, list[dict]]:
    """A sweep's arguments refused with a sentence where impossible; otherwise the settings as a
    list, the device, what the runs run inside (the precision) and each setting's cache key."""
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
    depth, patches = len(model.net.blocks), model.net.patch_embed.num_patches
    keys = [setting_key(cfg, depth, patches) for cfg in settings]  # refuses impossible K with a sentence
    ids = [cfg.id for cfg in settings]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise InputError(f"The setting {twice[0]} is given twice; give each setting once.")
    return settings, dev, precise, keys


def shard_chunks(images: int, chunk: int, shard: tuple[int, int]) -> list[range]:
    """The chunks (dataset indices) of ``images`` that process ``shard`` = (rank, world size)
    evaluates: chunks rank, rank + world size, ... of ``chunk`` images each, in dataset order."""
    rank, world = shard
    return [range(s, min(s + chunk, images)) for s in range(0, images, chunk)][rank::world]


@dataclass
class _Work:
    """A chunk the cache could not give whole: its images (dataset indices), its files'
    digest, and the settings (places in the sweep's list) to compute on it."""

    images: range
    files: str
    missing: list[int]

    def batches(self, size: int) -> list[list[int]]:
        """The chunk's images in batches of ``size``: a batch never straddles two chunks."""
        return [list(range(s, min(s + size, self.images.stop))) for s in range(self.images.start, self.images.stop, size)]


class _Tally:
    """A sweep in progress: the result so far (runs filled as rows arrive) and how far it has
    come, reported to ``progress`` after the cache is read and after every batch."""

    def __init__(self, result: SweepResult, progress: Callable[[Progress], None] | None) -> None:
        self.result, self.progress = result, progress
        self.t0 = time.perf_counter()
        self.ids = [cfg.id for cfg in result.settings]
        self.mine = 0  # images in this process's shard
        self.done = dict.fromkeys(self.ids, 0)  # images finished per setting, cached ones included
        self.skipped: dict[str, str] = {}  # image -> why it could not be read
        self.evaluations = 0  # image x setting evaluations computed so far
        self.to_compute = 0

    def add(self, j: int, rows: SettingRun) -> None:
        """Rows of setting ``j`` (its place in the list), cached or computed."""
        self.result.runs[self.ids[j]].extend(rows)

    def finished(self, j: int, images: int) -> None:
        self.done[self.ids[j]] += images

    def report(self) -> None:
        if self.progress is None:
            return
        result = self.result
        result.skipped = sorted(self.skipped.items())
        result.seconds = time.perf_counter() - self.t0
        self.progress(Progress(sum(self.done.values()), self.mine * len(self.ids),
                               {lab: (self.done[lab], self.mine) for lab in self.ids},
                               self.evaluations, self.to_compute, result.seconds, result))


def _read_cache(store: SweepCache, keys: list[dict], chunks: list[range], tally: _Tally) -> list[_Work]:
    """Take every (chunk, setting) the cache holds into ``tally``; the rest is the work left."""
    items, settings = tally.result.dataset.items, tally.result.settings
    work = []
    for c in chunks:
        files = files_digest(items[c.start:c.stop])
        names = [it.name for it in items[c.start:c.stop]]
        missing = []
        for j, (cfg, key) in enumerate(zip(settings, keys)):
            hit = store.load(key, files, names, tally.result.depth)
            if hit is None:
                missing.append(j)
                continue
            tally.add(j, SettingRun(cfg, **hit.rows))
            tally.skipped.update(hit.skipped)
            tally.finished(j, len(c))
        if missing:
            work.append(_Work(c, files, missing))
    computed = {j for w in work for j in w.missing}
    tally.result.computed = [lab for j, lab in enumerate(tally.ids) if j in computed]
    tally.result.cached = [lab for j, lab in enumerate(tally.ids) if j not in computed]
    tally.mine = sum(len(c) for c in chunks)
    tally.to_compute = sum(len(w.images) * len(w.missing) for w in work)
    return work


def _compute(model: LoadedModel, dev: torch.device, precise: contextlib.AbstractContextManager, work: list[_Work],
             batch: int, workers: int, store: SweepCache, keys: list[dict], tally: _Tally) -> None:
    """Compute the work chunk by chunk, each batch under all of its chunk's missing settings at
    once, and cache each chunk as soon as it is done."""
    items, settings = tally.result.dataset.items, tally.result.settings
    net = on_device(model, dev).net
    plan = [w.batches(batch) for w in work]
    # One loader for the whole run, not one per chunk: its worker processes start once and
    # decode ahead across chunks. It yields the batches in the order of its batch sampler.
    loader = DataLoader(Decoded(items, model.transform), batch_sampler=[b for bs in plan for b in bs],
                        num_workers=workers, collate_fn=collate_decoded, pin_memory=dev.type == "cuda")
    loaded = iter(loader)
    with torch.inference_mode(), precise:
        for w, batches in zip(work, plan):
            part = {j: SettingRun(settings[j]) for j in w.missing}  # this chunk's rows, for the cache
            part_skipped: list[tuple[str, str]] = []  # unreadable: the same under every setting
            # Not finite under one setting: cached with that setting alone, so a later sweep of
            # another setting still scores the image (this sweep leaves it out of all, in _finish).
            part_broken: dict[int, list[tuple[str, str]]] = {j: [] for j in w.missing}
            for n, wanted in enumerate(batches, start=1):
                indices, x, bad = next(loaded)
                if sorted([*indices, *(i for i, _ in bad)]) != wanted:
                    raise RuntimeError(f"The loader gave images {indices} where {wanted} were asked for.")
                for i, why in bad:
                    tally.skipped[items[i].name] = why
                    part_skipped.append((items[i].name, why))
                if x is not None:
                    names = [items[i].name for i in indices]
                    x = x.to(dev, non_blocking=True)
                    missing = [settings[j] for j in w.missing]
                    for j, res in zip(w.missing, sweep_batch(net, x, missing)):
                        broken = not_finite([res], [settings[j]])  # skipped like an unreadable image, with why
                        for p, why in broken.items():
                            tally.skipped.setdefault(names[p], why)
                            part_broken[j].append((names[p], why))
                        rows = SettingRun.of(settings[j], names, res, drop=broken)
                        part[j].extend(rows)
                        tally.add(j, rows)
                for j in w.missing:
                    tally.finished(j, len(wanted))
                tally.evaluations += len(wanted) * len(w.missing)
                if n == len(batches):  # the chunk is whole: cache it before reporting it done
                    for j in w.missing:
                        store.save(keys[j], w.files, part[j].rows(), part_skipped + part_broken[j])
                tally.report()


def _finish(tally: _Tally, world: int) -> SweepResult:
    """Rows and skipped images in dataset order; a lone process refuses a sweep of nothing."""
    result = tally.result
    order = {it.name: i for i, it in enumerate(result.dataset.items)}
    for run in result.runs.values():
        run.sort(order)
        if tally.skipped:  # skipped under one setting (its outputs not finite): out of every setting's rows
            run.keep(lambda i, name: name not in tally.skipped)
    result.skipped = sorted(tally.skipped.items(), key=lambda s: order[s[0]])
    if world == 1:
        check_readable(result)
    result.seconds = time.perf_counter() - tally.t0
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
        run = runs[cfg.id] = SettingRun(cfg)
        for p in parts:
            run.extend(p.runs[cfg.id])
        run.sort(order)
    labels = [cfg.id for cfg in first.settings]
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
