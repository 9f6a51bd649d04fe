"""Measured speed beside GFLOPs: settings timed on this machine, fairly against each other.

GFLOPs say what a setting should save; the clock says what it saves here, where small
operations (ATS's scoring and sampling, gathering the kept rows) cost more than their
multiply-accumulates. Every timing follows the same rules:

- warm-up runs first, not counted (allocations, caches and lazy set-up settle);
- then repetitions, each running every setting once in turn (interleaved), so a drift in the
  machine's speed hits every setting alike; the order rotates each repetition, so no setting
  always runs right after the same one (whose large products leave the caches cold);
- the median of the timed runs, the interquartile range as the spread;
- on CUDA, whose kernels are asynchronous, the device is synchronised before and after a run;
- everything under ``torch.inference_mode()``;
- the full model is always timed in the same run, as timm's own forward (the model as it runs
  without this project), and every speed-up is over it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from . import compiled
from .data import Dataset, load_dataset, read_image
from .devices import check_device, describe
from .errors import InputError
from .flops import full_gflops
from .methods import format_value, get
from .models import LoadedModel, net_on_device
from .setting import FULL, ATSConfig, resolve
from .vit import check_vit, run_ats

REFERENCE = FULL
# benchmark.csv, in this order: what a person compares across machines and settings. "value" is
# the method's parameter (K, r, the keep rate) as summary.csv names it.
CSV_COLUMNS = ["setting", "method", "value", "batch", "ms_per_image", "images_per_s", "gflops", "speedup",
               "gflops_ratio"]
_clock = time.perf_counter  # a module attribute, so tests can count with a fake clock


@dataclass(frozen=True)
class Machine:
    """Where a timing ran: a number means little without it."""

    device: str
    name: str  # the GPU's or the CPU's model name
    threads: int  # torch's intra-op threads

    def __str__(self) -> str:
        return f"{self.device} ({self.name}), {self.threads} thread{'' if self.threads == 1 else 's'}"


def machine(device: str = "cpu") -> Machine:
    """``device`` as a results folder describes it (``devices.describe``), with torch's threads."""
    where = describe(check_device(device))
    return Machine(where.device, where.name, torch.get_num_threads())


@dataclass
class Measured:
    """One setting's timed runs at one batch size."""

    config: ATSConfig
    batch: int
    seconds: list[float]  # each timed run of a whole batch
    gflops: float  # mean per image over the timed runs (each image's own)

    @property
    def id(self) -> str:
        return self.config.id

    def ms(self, q: float = 0.5) -> float:
        """Milliseconds per image at quantile ``q`` of the timed runs (0.5: the median)."""
        return float(np.quantile(self.seconds, q)) * 1e3 / self.batch

    @property
    def ms_per_image(self) -> float:
        return self.ms(0.5)

    @property
    def images_per_s(self) -> float:
        return 1e3 / self.ms_per_image


# ---------------------------------------------------------------------------- timing


def _runner(net: VisionTransformer, config: ATSConfig, compile: bool) -> Callable[[Tensor], Tensor | None]:
    """One run of a setting: each image's GFLOPs, or None for the reference (timm's eager
    forward, compiled or not: the model as it runs without this project)."""
    if not get(config.method).reduces:
        def reference(x: Tensor) -> None:
            VisionTransformer.forward(net, x)  # the base class's: a net patched by patch_vit would run its setting
        return reference
    if compile:
        run = compiled.forward(net, config)
        return lambda x: run(x)[1]
    return lambda x: run_ats(net, x, config, traces=False).gflops


def time_settings(net: VisionTransformer, inputs: Sequence[Tensor], configs: Sequence[ATSConfig],
                  warmup: int = 3, repeats: int = 10, device: str = "cpu",
                  progress: Callable[[int, int], None] | None = None, compile: bool = False) -> list[Measured]:
    """Time the full model and every setting of ``configs`` on ``inputs`` (batches of one size,
    normalised; each repetition, warm-up included, runs every setting on the next batch, in turn).

    Returns one Measured per setting, the full model first. ``progress(done, total)`` is
    called after every run, warm-up included. ``net`` itself is never moved: on another
    device a copy runs (``models.net_on_device``), so a shared model stays where it is.
    ``compile``: the settings run compiled (``compiled.py``; each is compiled by an untimed run
    before the warm-up), the full model still as timm's eager forward; where nothing can
    compile, refused with ``compiled.why_not``'s sentence.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"Warm-up runs must be a whole number of 0 or more (got {warmup!r}).")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"Repeats must be a whole number of at least 1 (got {repeats!r}): a timing "
                         "needs timed runs.")
    if not inputs:
        raise InputError("Give at least one batch of images to time.")
    sizes = {int(x.shape[0]) for x in inputs}
    if len(sizes) != 1:
        raise InputError(f"The batches to time differ in size ({sorted(sizes)}); time one batch size at a time.")
    check_vit(net)
    depth, patches = len(net.blocks), net.patch_embed.num_patches
    settings = with_reference(configs)
    for cfg in settings:
        resolve(cfg, depth, patches)  # an impossible setting is refused before any run
    dev = check_device(device)
    if compile and (why := compiled.why_not(dev)) is not None:
        raise InputError(why)
    net = net_on_device(net, dev)
    batches = [x.to(dev) for x in inputs]
    runs = [_runner(net, cfg, compile) for cfg in settings]
    if compile:
        with torch.inference_mode():
            for run in runs:
                run(batches[0])
    seconds, outputs = time_runs(runs, batches, warmup, repeats, dev, progress)
    gflops = [[o.double().cpu() for o in out if o is not None] for out in outputs]
    h, w = inputs[0].shape[-2:]
    full = full_gflops(net, patches + net.num_prefix_tokens, h, w)
    batch = sizes.pop()
    return [Measured(cfg, batch, s, float(torch.cat(g).mean()) if g else full)
            for cfg, s, g in zip(settings, seconds, gflops)]


def time_runs(runs: Sequence[Callable[[Tensor], Any]], batches: Sequence[Tensor], warmup: int, repeats: int,
              device: torch.device, progress: Callable[[int, int], None] | None = None
              ) -> tuple[list[list[float]], list[list[Any]]]:
    """The module's rules applied to any callables on batches already on ``device``: each
    repetition (warm-up first) runs every callable in turn on the next batch, the order rotating.
    Returns, per callable, the seconds of its timed runs and what those runs returned."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    n = len(runs)
    total, done = (warmup + repeats) * n, 0
    seconds: list[list[float]] = [[] for _ in runs]
    outputs: list[list[Any]] = [[] for _ in runs]
    with torch.inference_mode():
        for r in range(warmup + repeats):
            x = batches[r % len(batches)]
            for j in [(r + i) % n for i in range(n)]:  # rotated: see the module's docstring
                sync()
                t0 = _clock()
                out = runs[j](x)
                sync()
                t1 = _clock()
                if r >= warmup:
                    seconds[j].append(t1 - t0)
                    outputs[j].append(out)
                done += 1
                if progress is not None:
                    progress(done, total)
    return seconds, outputs


def with_reference(configs: Sequence[ATSConfig]) -> list[ATSConfig]:
    """The full model first, then each other setting once (by id)."""
    return list({c.id: c for c in [REFERENCE, *configs]}.values())


def table(measured: Sequence[Measured]) -> pd.DataFrame:
    """One row per setting and batch size: CSV_COLUMNS, then the spread (ms per image at the
    first and third quartiles). Speed-up and GFLOPs ratio are over the full model at the same
    batch size, so its rows read 1."""
    reference = {m.batch: m for m in measured if m.config == REFERENCE}
    rows = []
    for m in measured:
        full = reference[m.batch]
        method = get(m.config.method)
        rows.append({"setting": m.id, "method": method.name,
                     "value": "" if method.param is None else format_value(m.config.value),
                     "batch": m.batch, "ms_per_image": m.ms_per_image, "images_per_s": m.images_per_s,
                     "gflops": m.gflops, "speedup": full.ms_per_image / m.ms_per_image,
                     "gflops_ratio": full.gflops / m.gflops, "ms_q1": m.ms(0.25), "ms_q3": m.ms(0.75)})
    return pd.DataFrame(rows, columns=[*CSV_COLUMNS, "ms_q1", "ms_q3"])


def batches_of(pool: Tensor, size: int) -> list[Tensor]:
    """The pool cut into batches of ``size``; a pool smaller than one batch is repeated to fill it."""
    if pool.shape[0] < size:
        pool = pool.repeat(-(-size // pool.shape[0]), 1, 1, 1)
    return [pool[i:i + size] for i in range(0, pool.shape[0] - size + 1, size)]


def benchmark(net: VisionTransformer, pool: Tensor, configs: Sequence[ATSConfig], batch_sizes: Sequence[int],
              warmup: int = 3, repeats: int = 10, device: str = "cpu",
              progress: Callable[[int, int], None] | None = None, compile: bool = False) -> pd.DataFrame:
    """Every setting (and the full model) at every batch size: ``table`` of all of them.
    Batch 1 gives the latency of one image, a large batch the throughput. ``compile``: as
    ``time_settings``."""
    sizes = check_batch_sizes(batch_sizes)
    n = len(with_reference(configs))
    total = len(sizes) * (warmup + repeats) * n
    before = 0
    measured: list[Measured] = []
    for size in sizes:
        def step(done: int, _: int, before: int = before) -> None:
            if progress is not None:
                progress(before + done, total)

        measured += time_settings(net, batches_of(pool, size), configs, warmup, repeats, device, step, compile)
        before += (warmup + repeats) * n
    return table(measured)


def check_batch_sizes(sizes: Sequence[int]) -> list[int]:
    """Batch sizes in the order given, no repeats; each at least 1."""
    out = list(dict.fromkeys(sizes))
    if not out:
        raise InputError("Give at least one batch size, such as 1,32.")
    for s in out:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise InputError(f"Batch size {s!r} is impossible: give whole numbers of at least 1, such as 1,32.")
    return out


def parse_batch_sizes(text: str) -> list[int]:
    """'1,32' -> [1, 32]."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"Batch sizes '{text}' are not whole numbers: write them like 1,32.") from None
    return check_batch_sizes(sizes)


# ---------------------------------------------------------------------------- images to time on


def random_images(n: int, size: tuple[int, int], seed: int = 0) -> Tensor:
    """n x 3 x H x W standard normal values: what normalised images look like to the model,
    for when there are no real images. ATS's token counts, so its speed, follow the images:
    real ones give the honest number."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *size, generator=g)


def folder_images(folder: str | Path, n: int, model: LoadedModel, seed: int = 0) -> Tensor:
    """n images (a seeded random choice) of any ImageFolder, in the model's preprocessing;
    their labels do not matter here. Fewer readable images than n give fewer."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"No folder at '{root}'. Give an ImageFolder (one subfolder per class) of images to time on.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return dataset_images(load_dataset(root, classes, subset=n, seed=seed), n, model)


def dataset_images(dataset: Dataset, n: int, model: LoadedModel) -> Tensor:
    """The first n readable images of a dataset, preprocessed as the model sees them."""
    tensors = []
    for item in dataset.items:
        if len(tensors) == n:
            break
        try:
            tensors.append(model.transform(read_image(item.path.read_bytes(), item.name)))
        except (InputError, OSError):
            continue  # the sweep lists unreadable images; timing needs only readable ones
    if not tensors:
        raise InputError(f"None of the images in '{dataset.root}' could be read, so there is nothing to time.")
    return torch.stack(tensors)


# ---------------------------------------------------------------------------- a sweep's timing pass


def time_dataset(model: LoadedModel, dataset: Dataset, configs: Sequence[ATSConfig], batch: int = 32,
                 device: str = "cpu", warmup: int = 1, repeats: int = 3,
                 progress: Callable[[int, int], None] | None = None, compile: bool = False) -> pd.DataFrame:
    """A sweep's timing pass: a few batches of the dataset's own images at the sweep's batch
    size, every setting timed (``compile``: as ``time_settings``); ``table`` rows for ``add_timing``."""
    batch = check_batch_sizes([batch])[0]
    pool = dataset_images(dataset, batch * repeats, model)
    return table(time_settings(model.net, batches_of(pool, batch), configs, warmup, repeats, device, progress,
                               compile))


def add_timing(summary: pd.DataFrame, timed: pd.DataFrame) -> pd.DataFrame:
    """A sweep's summary with each setting's measured ms_per_image and images_per_s."""
    cols = ["setting", "ms_per_image", "images_per_s"]
    return summary.drop(columns=cols[1:], errors="ignore").merge(timed[cols], on="setting", how="left")
