"""Training the embedded model on the synthetic scenes, reproducibly, on the CPU or a GPU.

Two modes, as in the paper: train the plain ViT ("plug and play": ATS added afterwards),
then fine-tune the same weights with ATS active (gradients flow through the kept rows).
Everything is seeded: the same command gives the same weights on the same machine, whatever
the number of processes drawing scenes; on the machine's GPU it takes the CPU's steps up to float
rounding (README, "Training").
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from . import synthetic
from .arch import MEAN, STD, ModelSpec, build
from .devices import describe
from .errors import InputError
from .synthetic import HELDOUT_PER_CLASS, HELDOUT_SEED
from .setting import FULL, ATSConfig
from .vit import run_ats


def shapes_spec(width: int = 96, depth: int = 12, heads: int = 3) -> ModelSpec:
    """An architecture for the synthetic scenes task: its classes, its image size."""
    return ModelSpec(width, depth, heads, num_classes=len(synthetic.CLASSES), img_size=synthetic.SIZE)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 B x H x W x 3 -> normalised float B x 3 x H x W."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@dataclass
class Recipe:
    steps: int = 3000
    batch: int = 64
    lr: float = 1.5e-3
    warmup: int = 300
    weight_decay: float = 0.05
    seed: int = 0
    ats: bool = False  # fine-tune with ATS active
    curriculum: float = 0.4  # fraction of steps over which clutter and crowded scenes ramp in
    drop_path: float = 0.0  # stochastic depth of the last block (DeiT's 0.1), rising linearly from 0 at the first


class _Batches(torch.utils.data.IterableDataset):
    """Fresh synthetic batches, a pure function of (seed, step), drawn by the loader's workers."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        r = self.recipe
        # With several workers, worker i draws steps i, i + n, ...: the loader takes one batch from
        # each worker in turn, so the steps arrive in order, the same batches for any n.
        info = torch.utils.data.get_worker_info()
        first, every = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            torch.set_num_threads(1)  # a worker's tensors are small; the cores are the training loop's
        for step in range(first, r.steps, every):
            ramp = min(1.0, step / max(1, r.curriculum * r.steps))
            # clutter and crowds ramp in: scenes of one or two objects first, up to the full eight
            clutter, most = 0.3 + 0.7 * ramp, 2 + round((synthetic.MAX_OBJECTS - 2) * ramp)
            items = [synthetic.sample((r.seed, step, j, 0), clutter=clutter, max_objects=most)
                     for j in range(r.batch)]
            yield to_tensor(np.stack([i for i, _ in items])), torch.tensor([l for _, l in items])


def default_workers() -> int:
    """Processes drawing scenes: every core but the training loop's, at most 8 (on a GPU, drawing
    scenes is what takes the time; 2 cores: one, as the loop needs the other)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(8, cores - 1))


class _HostDropPath(nn.Module):
    """timm's DropPath, its mask drawn on the CPU from torch's global generator as timm draws it
    for a CPU batch, then moved to the batch's device: on the CPU it trains what timm's did, and
    a GPU drops the branches a CPU run on the same host drops, where the GPU's own generator
    would drop others. (The host's draws are its own: torch's CPU Bernoulli takes MKL's
    generator on Intel CPUs and its own elsewhere.)"""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0:  # as timm: a branch always dropped stays 0, not 0 / 0
            mask.div_(keep)
        # Not waiting: CUDA stages a pageable host tensor at once, so an asynchronous copy needs no
        # synchronisation (a blocking one would wait for the GPU at every block).
        return x * mask.to(x.device, non_blocking=True)


@contextmanager
def _stochastic_depth(net: VisionTransformer, rate: float) -> Iterator[None]:
    """Drop each block's residual branches at random while training, block i at rate * i / (depth - 1)
    as timm and DeiT do; the blocks get their own branches back after (in eval mode a no-op anyway)."""
    saved = [(blk.drop_path1, blk.drop_path2) for blk in net.blocks]
    depth = len(net.blocks)
    for i, blk in enumerate(net.blocks):
        p = rate * i / max(1, depth - 1)
        if p > 0:
            blk.drop_path1, blk.drop_path2 = _HostDropPath(p), _HostDropPath(p)
    try:
        yield
    finally:
        for blk, (one, two) in zip(net.blocks, saved):
            blk.drop_path1, blk.drop_path2 = one, two


@torch.enable_grad()  # a caller's no_grad must not silently train nothing
def train(net: VisionTransformer, recipe: Recipe, log: Callable[[str], None] = print,
          stop_after_s: float | None = None, workers: int = 1) -> int:
    """Train ``net`` in place, on the device it is on, with AdamW, warmup and cosine decay; leave
    it in eval mode. ``workers`` processes draw the scenes (the result does not depend on how many).

    Returns the steps done: fewer than ``recipe.steps`` when ``stop_after_s`` ran out first.
    """
    if workers < 0:
        raise InputError(f"The number of workers drawing scenes must be 0 or more (got {workers}).")
    device = next(net.parameters()).device
    torch.manual_seed(recipe.seed)
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and "pos_embed" not in n and "token" not in n]
    no_decay = [p for n, p in net.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    loader = torch.utils.data.DataLoader(_Batches(recipe), batch_size=None, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    config = ATSConfig() if recipe.ats else FULL
    net.train()
    t0, seen, correct, loss_sum = time.time(), 0, 0, 0.0
    with _stochastic_depth(net, recipe.drop_path):
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = run_ats(net, x, config).logits if recipe.ats else net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            # Summed on the device, read at a log line: a GPU does not wait for the host every step.
            seen += len(y)
            correct += (logits.argmax(1) == y).sum()
            loss_sum += loss.detach() * len(y)
            if (step + 1) % 50 == 0 or step + 1 == recipe.steps:
                el = time.time() - t0
                log(f"step {step + 1}/{recipe.steps}  loss {float(loss_sum) / seen:.3f}  "
                    f"train acc {int(correct) / seen:.3f}  "
                    f"lr {lr_at(step):.2e}  {(step + 1) * recipe.batch / el:.1f} img/s  {el / 60:.1f} min")
                seen, correct, loss_sum = 0, 0, 0.0
            if stop_after_s is not None and time.time() - t0 > stop_after_s:
                log(f"stopping at step {step + 1}: time limit")
                break
    net.eval()
    return step + 1


def heldout_batches(per_class: int, seed: int = HELDOUT_SEED, batch: int = 50
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """The held-out set (the bundled dataset's images; another seed: a set like it), in batches
    of images, labels and each scene's number of objects."""
    items = [(ci, i) for ci in range(len(synthetic.CLASSES)) for i in range(per_class)]
    for start in range(0, len(items), batch):
        drawn = [synthetic.draw((seed, ci, i), label=ci) for ci, i in items[start:start + batch]]
        yield (to_tensor(np.stack([img for img, _ in drawn])), torch.tensor([s.label for _, s in drawn]),
               [len(s.objects) for _, s in drawn])


@torch.no_grad()
def heldout_metrics(net: VisionTransformer, per_class: int | None = None,
                    seed: int = HELDOUT_SEED) -> dict[str, Any]:
    """Top-1 (with its 95% Wilson interval) and mean GFLOPs of the full model and of ATS at the
    default setting, the patch tokens ATS keeps, and its GFLOPs by the scene's number of objects,
    on the held-out set (``per_class``: fewer images; ``seed``: a fresh set like it)."""
    from .stats import wilson

    net.eval()
    device = next(net.parameters()).device
    hits = {"full": 0, "ats": 0}
    flops = {"full": 0.0, "ats": 0.0}
    n, first, last = 0, 0, 0
    by_objects: dict[int, list[float]] = {}
    for x, y, objects in heldout_batches(per_class or HELDOUT_PER_CLASS, seed):
        for key, cfg in (("full", FULL), ("ats", ATSConfig())):
            res = run_ats(net, x.to(device), cfg)
            hits[key] += int((res.logits.argmax(1).cpu() == y).sum())
            flops[key] += float(res.gflops.sum())
            if res.stages:  # ATS's, the full model has none
                first += int(res.patch_counts[:, res.stages[0].block + 1].sum())
                last += int(res.patch_counts[:, -1].sum())
                for count, gflops in zip(objects, res.gflops.tolist()):
                    by_objects.setdefault(count, []).append(gflops)
        n += len(y)
    return {
        "images": n,
        "seed": seed,
        "top1_full": hits["full"] / n,
        "top1_full_ci": list(wilson(hits["full"], n)),
        "top1_ats": hits["ats"] / n,
        "top1_ats_ci": list(wilson(hits["ats"], n)),
        "gflops_full": flops["full"] / n,
        "gflops_ats": flops["ats"] / n,
        "gflops_saved": 1 - flops["ats"] / flops["full"],
        "ats_tokens_first_stage": first / n,  # patch tokens leaving ATS's first stage
        "ats_tokens_final": last / n,
        # JSON keys are text: the number of objects -> ATS's mean GFLOPs on such scenes
        "ats_gflops_by_objects": {str(k): sum(v) / len(v) for k, v in sorted(by_objects.items())},
    }


def write_checkpoint(net: VisionTransformer, spec: ModelSpec, out: Path, stem: str, recipe: Recipe,
                     steps_done: int, minutes: float, command: str, metrics: dict[str, Any], note: str) -> Path:
    """Weights as safetensors plus a model card (JSON for the code, markdown for people)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu().contiguous() for k, v in net.state_dict().items()}, str(out / f"{stem}.safetensors"))
    where = describe(next(net.parameters()).device)
    write_card(out, {
        "name": stem,
        "architecture": asdict(spec),
        "arch_summary": f"timm VisionTransformer, conv stem (stride 16) + {spec.depth} blocks, "
                        f"width {spec.width}, {spec.heads} heads, class token, 14 x 14 patches",
        "parameters": sum(p.numel() for p in net.parameters()),
        "classes": list(synthetic.CLASSES),
        "preprocessing": {"input_size": [3, spec.img_size, spec.img_size], "crop_pct": 1.0,
                          "mean": list(MEAN), "std": list(STD)},
        "training": {**asdict(recipe), "steps_done": steps_done, "minutes": round(minutes, 1),
                     "threads": torch.get_num_threads(), "device": where.device, "device_name": where.name,
                     "command": command},
        "heldout": metrics,
        "note": note,
    })
    return out / f"{stem}.safetensors"


def rescore(out: Path, stem: str, per_class: int | None = None) -> dict[str, Any]:
    """Score a checkpoint written here on the bundled held-out set as it is now (after its seed
    changed, say) and rewrite its card's held-out numbers; everything else stays."""
    card = json.loads((out / f"{stem}.json").read_text())
    net = load_weights(build(ModelSpec(**card["architecture"])), out / f"{stem}.safetensors")
    card["heldout"] = heldout_metrics(net, per_class)
    write_card(out, card)
    return card["heldout"]


def write_card(out: Path, card: dict[str, Any]) -> None:
    """The card as JSON (for the code) and markdown (for people)."""
    stem, spec, recipe, metrics = card["name"], ModelSpec(**card["architecture"]), card["training"], card["heldout"]
    (out / f"{stem}.json").write_text(json.dumps(card, indent=2))
    by_objects = ", ".join(f"{k}: {v:.3f}" for k, v in metrics.get("ats_gflops_by_objects", {}).items())
    md = [
        f"# {stem}", "", card["note"], "",
        f"- Architecture: {card['arch_summary']} ({card['parameters']:,} parameters).",
        f"- Classes: {', '.join(card['classes'])}.",
        f"- Preprocessing: {spec.img_size} px RGB, no crop, mean {MEAN}, std {STD}.",
        f"- Training: `{recipe['command']}` ({recipe['steps_done']} steps of {recipe['batch']} fresh synthetic images"
        + (f", stopped by the time limit before the planned {recipe['steps']}"
           if recipe["steps_done"] < recipe["steps"] else "")
        + f", {recipe['minutes']:.1f} minutes "
        + (f"on {recipe['device_name']}" if recipe.get("device", "cpu") != "cpu"
           else f"with {recipe['threads']} CPU threads")
        + f"; AdamW lr {recipe['lr']:g}, warmup and cosine decay"
        + (f", stochastic depth {recipe['drop_path']:g}" if recipe.get("drop_path") else "")
        + f", seed {recipe['seed']}"
        + f"{', ATS active' if recipe['ats'] else ''}).",
        f"- Held-out set ({metrics['images']:,} images, seed {metrics['seed']}, never trained on; "
        "95% Wilson intervals):",
        f"  - full model: top-1 {metrics['top1_full']:.1%} ({_interval(metrics['top1_full_ci'])}), "
        f"{metrics['gflops_full']:.3f} GFLOPs",
        f"  - ATS at blocks 3-11, K = all patches: top-1 {metrics['top1_ats']:.1%} "
        f"({_interval(metrics['top1_ats_ci'])}), {metrics['gflops_ats']:.3f} GFLOPs on average "
        f"({metrics['gflops_saved']:.1%} saved); {metrics['ats_tokens_first_stage']:.1f} of "
        f"{(spec.img_size // 16) ** 2} patch tokens "
        f"leave its first stage and {metrics['ats_tokens_final']:.1f} the last",
    ]
    if by_objects:
        md.append(f"  - ATS's mean GFLOPs by the scene's number of objects: {by_objects}")
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")


def _interval(ci: list[float]) -> str:
    return f"{ci[0]:.1%} to {ci[1]:.1%}"


def load_weights(net: VisionTransformer, path: Path) -> VisionTransformer:
    net.load_state_dict(load_file(str(path)))
    return net
