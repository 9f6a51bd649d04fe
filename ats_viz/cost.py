"""Costs known before a run, and settings chosen to cost the same.

Top-K, random, ToMe, EViT and PiToMe reduce by fixed rules, so their token counts (and GFLOPs) follow
from the setting alone, by the same ``Reducer.tokens_out`` the engine reduces by; ATS adapts
to each image, so its cost is measured by running it. To compare methods at equal cost,
``equal_cost`` picks each fixed-rate method's parameter whose GFLOPs land nearest a target,
typically what ATS spent on the same image.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from .flops import gflops
from .methods import Where, get
from .setting import ATSConfig, resolve


def fixed_counts(config: ATSConfig, depth: int, num_patches: int, num_prefix: int) -> list[int]:
    """Tokens (prefix included) entering each block, then leaving the last, for a method whose
    counts do not depend on the image (every method but ATS)."""
    reducer = get(config.method)
    if reducer.adaptive:
        raise ValueError(f"{reducer.label}'s token counts depend on the image: run it.")
    plan = resolve(config, depth, num_patches)
    counts = [num_patches + num_prefix]
    for block in range(depth):
        if block in plan:
            counts.append(reducer.tokens_out(counts[-1] - num_prefix, plan[block], config) + num_prefix)
        else:
            counts.append(counts[-1])
    return counts


def equal_cost(net: VisionTransformer, method: str, target: float) -> tuple[ATSConfig, float]:
    """The setting of ``method`` (its parameter; its own default stages) whose GFLOPs at the
    model's input size are nearest ``target``, and those GFLOPs. On a tie the larger cost wins."""
    reducer = get(method)
    depth, num_patches = len(net.blocks), net.patch_embed.num_patches
    candidates = reducer.candidates(num_patches)
    if reducer.param is None or not candidates:
        raise ValueError(f"{reducer.label} has no fixed cost to match")
    h, w = net.patch_embed.img_size
    configs = [ATSConfig(method=method, **{reducer.param.field: v}) for v in candidates]
    counts = torch.tensor([fixed_counts(c, depth, num_patches, net.num_prefix_tokens) for c in configs])
    costs = gflops(net, counts, h, w, after_attention=reducer.where is Where.TOKENS)
    best = int(torch.argmin((costs - target).abs() - costs * 1e-12))
    return configs[best], float(costs[best])
