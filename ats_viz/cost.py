"""Costs known before a run, and settings chosen to cost the same.

Top-K, random, ToMe and EViT reduce by fixed rules, so their token counts (and GFLOPs) follow
from the setting alone; ATS adapts to each image, so its cost is measured by running it. To
compare methods at equal cost, ``equal_cost`` picks each fixed-rate method's parameter whose
GFLOPs land nearest a target, typically what ATS spent on the same image.
"""

from __future__ import annotations

import math

import torch
from timm.models.vision_transformer import VisionTransformer

from .flops import gflops
from .methods import METHODS, get
from .vit import ATSConfig, resolve


def fixed_counts(config: ATSConfig, depth: int, num_patches: int, num_prefix: int) -> list[int]:
    """Tokens (prefix included) entering each block, then leaving the last, for a method whose
    counts do not depend on the image (every method but ATS)."""
    if config.method == "ats":
        raise ValueError("ATS's token counts depend on the image: run it.")
    plan = resolve(config, depth, num_patches)
    n = num_patches + num_prefix
    counts = [n]
    for block in range(depth):
        value = plan.get(block)
        if value is not None:
            p = n - num_prefix
            if config.method in ("topk", "random"):
                p = min(int(value), p)
            elif config.method == "tome":
                p -= max(min(int(value), p // 2), 0)
            elif config.method == "evit":
                left = math.ceil(value * p)
                p = p if left >= p else left + int(config.fuse_token)
            n = p + num_prefix
        counts.append(n)
    return counts


def _candidates(method: str, num_patches: int) -> list:
    if method in ("topk", "random"):
        return list(range(2, num_patches + 1))
    if method == "tome":
        return list(range(0, num_patches // 2 + 1))
    if method == "evit":
        return [round(0.01 * i, 2) for i in range(1, 101)]
    raise ValueError(f"{method} has no fixed cost to match")


def equal_cost(net: VisionTransformer, method: str, target: float) -> tuple[ATSConfig, float]:
    """The setting of ``method`` (its parameter; its own default stages) whose GFLOPs at the
    model's input size are nearest ``target``, and those GFLOPs. On a tie the larger cost wins."""
    param = get(method).param
    if param is None or method == "ats":
        raise ValueError(f"{method} has no fixed cost to match")
    depth, num_patches = len(net.blocks), net.patch_embed.num_patches
    h, w = net.patch_embed.img_size
    configs = [ATSConfig(method=method, **{param.field: v}) for v in _candidates(method, num_patches)]
    counts = torch.tensor([fixed_counts(c, depth, num_patches, net.num_prefix_tokens) for c in configs])
    costs = gflops(net, counts, h, w, after_attention=METHODS[method].where == "tokens")
    best = int(torch.argmin((costs - target).abs() - costs * 1e-12))
    return configs[best], float(costs[best])
