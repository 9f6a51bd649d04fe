"""ATS plugged into timm's VisionTransformer, without forking timm.

``run_ats`` walks the model's own modules block by block (same weights, same order of
operations as timm), and at each ATS stage scores the patch tokens, picks the survivors and
carries only them on. A batch is padded to its largest token set and the padded keys are
masked, so every image keeps exactly what it would keep alone. ``patch_vit`` swaps the
model's class (as ToMe does) so that ``net(images)`` returns the ATS logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from . import ats
from .errors import InputError
from .flops import full_gflops, gflops

METHODS = ("ats", "topk", "random", "full")
MAX_K_FACTOR = 16  # K above this many times the patch count is refused
Budget = Union[None, int, float, Sequence[Union[int, float]]]


@dataclass(frozen=True)
class ATSConfig:
    """Where and how to prune.

    stages: block indices (0-based) that prune; None means the paper's (depth // 4 to the end).
    k: the sampling budget per stage: None (all patch tokens of the input), an int, a float
       fraction of the input's patch tokens, or one such value per stage.
    method: "ats", "topk", "random" or "full" (no pruning).
    seed: the seed of the "random" baseline.
    """

    stages: tuple[int, ...] | None = None
    k: Budget = None
    method: str = "ats"
    seed: int = 0

    def label(self) -> str:
        """A short human name, for legends and tables."""
        if self.method == "full":
            return "full"
        k = "all" if self.k is None else self.k
        return f"{self.method} K={k}"


@dataclass
class StageTrace:
    """What one ATS stage saw and did.

    The run records each entering token's place on the original patch grid and what the
    stage did to it; the grid views (``present_mask``, ``scores``, ``kept_mask``) are built
    on first use, so a run whose traces nobody looks at does not pay for them.
    """

    block: int
    k: int  # the budget this stage sampled with
    pos: Tensor  # B x n long: original grid index (row-major) of each token entering the stage
    present: Tensor  # B x n bool: False for padding
    token_scores: Tensor  # B x n: significance of each entering token, summing to 1 per image
    kept: Tensor  # B x n bool: the tokens that leave the stage
    num_patches: int  # of the original grid

    def _on_grid(self, values: Tensor) -> Tensor:
        values = values.detach().masked_fill(~self.present, 0)
        grid = values.new_zeros(values.shape[0], self.num_patches)
        return grid.scatter(1, self.pos, values).cpu()

    @cached_property
    def present_mask(self) -> Tensor:
        """B x P bool over the original grid: patch tokens entering the stage."""
        return self._on_grid(self.present)

    @cached_property
    def scores(self) -> Tensor:
        """B x P over the original grid: significance of the entering tokens (0 where absent)."""
        return self._on_grid(self.token_scores)

    @cached_property
    def kept_mask(self) -> Tensor:
        """B x P bool over the original grid: patch tokens still present after the stage."""
        return self._on_grid(self.kept)

    @property
    def tokens_out(self) -> Tensor:
        return self.kept.sum(dim=1).cpu()

    def take(self, index: int) -> StageTrace:
        """Image ``index`` alone (copied, so the batch can be freed)."""
        one = [t[index:index + 1].clone() for t in (self.pos, self.present, self.token_scores, self.kept)]
        return StageTrace(self.block, self.k, *one, self.num_patches)


@dataclass
class ATSResult:
    """One batch through the model: logits, costs and the per-stage traces."""

    logits: Tensor  # B x classes
    gflops: Tensor  # B, float64: each image's own GFLOPs
    full_gflops: float  # the same model with no pruning
    token_counts: Tensor  # B x (depth + 1): tokens (prefix included) entering each block, then leaving the last
    num_prefix: int  # class, distillation and register tokens (always kept)
    grid: tuple[int, int]  # the patch grid (rows, columns)
    config: ATSConfig
    stages: list[StageTrace] = field(default_factory=list)

    @property
    def patch_counts(self) -> Tensor:
        """B x (depth + 1): patch tokens entering each block, then leaving the last."""
        return self.token_counts - self.num_prefix

    def summary(self, index: int = 0) -> dict:
        """Image ``index`` as plain data (JSON-ready): costs, counts and every stage's choice."""
        return {
            "gflops": float(self.gflops[index]),
            "full_gflops": self.full_gflops,
            "grid": list(self.grid),
            "patch_tokens_per_block": self.patch_counts[index].tolist(),
            "stages": [
                {
                    "block": s.block,
                    "k": s.k,
                    "tokens_in": int(s.present_mask[index].sum()),
                    "tokens_out": int(s.kept_mask[index].sum()),
                    "kept": torch.nonzero(s.kept_mask[index]).flatten().tolist(),
                    "scores": [round(float(v), 6) for v in s.scores[index]],
                }
                for s in self.stages
            ],
        }


# ---------------------------------------------------------------------------- checks


def check_vit(net: nn.Module) -> None:
    """Refuse, with a sentence, models that ATS cannot run on."""
    if not isinstance(net, VisionTransformer):
        raise InputError(
            f"ATS needs a timm VisionTransformer; got {type(net).__name__}. "
            "Pick a ViT or DeiT model (for example deit_small_patch16_224)."
        )
    if net.cls_token is None:
        raise InputError(
            "This model has no class token, and ATS scores tokens by the class token's "
            "attention. Pick a model with a class token (for example deit_small_patch16_224)."
        )
    if net.global_pool not in ("token", "avg") or getattr(net, "attn_pool", None) is not None:
        raise InputError(f"ATS supports class-token or average pooling, not '{net.global_pool}'.")
    for i, blk in enumerate(net.blocks):
        if type(blk) is not Block or getattr(blk.attn, "gate", None) is not None:
            raise InputError(f"Block {i} is a {type(blk).__name__}; ATS supports timm's standard Block.")


def default_stages(depth: int) -> tuple[int, ...]:
    """The paper's stages, blocks 3 to 11 of 12, scaled to other depths."""
    return tuple(range(depth // 4, depth))


def resolve(config: ATSConfig, depth: int, num_patches: int) -> dict[int, int]:
    """The pruning plan {block: K} for a model of this depth and an input of num_patches."""
    if config.method not in METHODS:
        raise InputError(f"Unknown method '{config.method}': choose one of {', '.join(METHODS)}.")
    if config.method == "full":
        return {}
    stages = default_stages(depth) if config.stages is None else tuple(config.stages)
    for s in stages:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < depth:
            raise InputError(f"Stage {s!r} is outside this model: its blocks are 0 to {depth - 1}.")
    if len(set(stages)) != len(stages):
        raise InputError(f"Stages {list(stages)} name a block twice.")
    ks = config.k if isinstance(config.k, (list, tuple)) else [config.k] * len(stages)
    if len(ks) != len(stages):
        raise InputError(f"K gives {len(ks)} values but there are {len(stages)} stages: give one per stage.")
    return {s: _budget(k, num_patches) for s, k in zip(sorted(stages), ks)}


def _budget(k: int | float | None, num_patches: int) -> int:
    if k is None:
        return num_patches
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise InputError(f"K must be a whole number or a fraction, not {k!r}.")
    if isinstance(k, float):
        if not 0 < k <= 1:
            raise InputError(f"K as a fraction must be in (0, 1]; got {k}. Give a whole number for a count.")
        value = round(k * num_patches)
        if value < 2:
            raise InputError(f"K = {k} of {num_patches} patches is {value} tokens; K must be at least 2.")
        return value
    if k < 2:
        raise InputError(f"K must be at least 2 (got {k}).")
    if k > MAX_K_FACTOR * num_patches:
        # More points than a few per token pick nothing new, and would only cost memory.
        raise InputError(f"K = {k} is more than {MAX_K_FACTOR} times the {num_patches} patch tokens; "
                         f"give at most {MAX_K_FACTOR * num_patches}.")
    return k


# ---------------------------------------------------------------------------- forward


@dataclass
class TokenState:
    """Tokens between blocks: prefix tokens first, then each image's patch tokens, padded."""

    x: Tensor  # B x (prefix + P) x D
    pos: Tensor  # B x P long: each patch token's index on the original grid
    valid: Tensor  # B x P bool: False for padding
    counts: list[Tensor]  # token counts entering each block so far (B each)
    stages: list[StageTrace]
    next_block: int
    num_patches: int  # of the original input
    grid: tuple[int, int]
    image_hw: tuple[int, int]


def embed(net: VisionTransformer, images: Tensor) -> TokenState:
    """Patch embedding, position embedding and prefix tokens, as timm does them."""
    check_vit(net)
    x = net.patch_embed(images)
    grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(net.patch_embed.grid_size)
    x = net.norm_pre(net.patch_drop(net._pos_embed(x)))
    b, n, _ = x.shape
    p = n - net.num_prefix_tokens
    pos = torch.arange(p, device=x.device).expand(b, p)
    valid = torch.ones(b, p, dtype=torch.bool, device=x.device)
    counts = [torch.full((b,), n, dtype=torch.long)]
    return TokenState(x, pos, valid, counts, [], 0, p, grid, tuple(images.shape[-2:]))


def _select(method: str, scores: Tensor, state: TokenState, k: int, seed: int, block: int) -> Tensor:
    if method == "ats":
        return ats.ats_select(scores, state.valid, k)
    if method == "topk":
        return ats.topk_select(scores, state.valid, k)
    return ats.random_select(state.pos, state.valid, k, ats.random_keys(state.num_patches, seed, block))


def _cls_attention(q: Tensor, k: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """The class token's row of the softmax attention, B x H x N (the SDPA kernel does not return it)."""
    logits = (q[:, :, :1] * scale) @ k.transpose(-2, -1)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)[:, :, 0]


def _block(net: VisionTransformer, blk: Block, state: TokenState, prune: tuple[str, int, int] | None) -> None:
    """One block, timm's operations in timm's order; with ``prune``, an ATS stage."""
    attn = blk.attn
    x, npre = state.x, net.num_prefix_tokens
    b, n, _ = x.shape
    qkv = attn.qkv(blk.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    # Padding is masked as keys; with no padding the mask is None and this is timm exactly.
    mask = None
    if not bool(state.valid.all()):
        keys = torch.cat([state.valid.new_ones(b, npre), state.valid], dim=1)
        mask = keys[:, None, None, :]

    if prune is not None:
        method, budget, seed = prune
        with torch.no_grad():
            cls_attn = _cls_attention(q, k, mask, attn.scale)[:, :, npre:]
            # Values as B x P x H x head_dim: the norm spans all heads without concatenating them.
            scores = ats.significance_scores(cls_attn.float(), v[:, :, npre:].transpose(1, 2).float(), state.valid)
            kept = _select(method, scores, state, budget, seed, len(state.counts) - 1)
        state.stages.append(StageTrace(len(state.counts) - 1, budget, state.pos, state.valid, scores, kept,
                                       state.num_patches))
        # Kept tokens first (stable, so they stay in grid order), padded to the batch's largest set.
        n_kept = kept.sum(dim=1)
        width = int(n_kept.max())
        order = torch.sort(kept.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
        rows = torch.cat([torch.arange(npre, device=x.device).expand(b, npre), order + npre], dim=1)
        # Advanced indexing copies whole rows; gather with an expanded index was 4x slower at batch 32.
        batch = torch.arange(b, device=x.device)[:, None]
        q = q[batch, :, rows].transpose(1, 2)
        x = x[batch, rows]
        state.pos = state.pos[batch, order]
        state.valid = torch.arange(width, device=x.device) < n_kept[:, None]

    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.0
    )
    out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(b, q.shape[2], -1))))
    x = x + blk.drop_path1(blk.ls1(out))
    x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    state.x = x
    # Counts change only where a stage prunes; elsewhere the previous tensor is reused.
    state.counts.append(n_kept.cpu() + npre if prune is not None else state.counts[-1])


def run_blocks(net: VisionTransformer, state: TokenState, config: ATSConfig, stop: int | None = None) -> TokenState:
    """Run blocks from ``state.next_block`` up to ``stop`` (default: all), pruning per ``config``."""
    plan = resolve(config, len(net.blocks), state.num_patches)
    stop = len(net.blocks) if stop is None else stop
    for i in range(state.next_block, stop):
        prune = (config.method, plan[i], config.seed) if i in plan else None
        _block(net, net.blocks[i], state, prune)
    state.next_block = stop
    return state


def fork(state: TokenState) -> TokenState:
    """A copy to branch from: later blocks change the copy, never the original."""
    return TokenState(state.x, state.pos, state.valid, list(state.counts), list(state.stages),
                      state.next_block, state.num_patches, state.grid, state.image_hw)


def finish(net: VisionTransformer, state: TokenState, config: ATSConfig) -> ATSResult:
    """Final norm and head (padding excluded from average pooling), costs and traces."""
    x = net.norm(state.x)
    if net.global_pool == "avg":
        w = state.valid.to(x.dtype).unsqueeze(-1)
        pooled = (x[:, net.num_prefix_tokens:] * w).sum(1) / w.sum(1).clamp(min=1)
        logits = net.head(net.head_drop(net.fc_norm(pooled)))
    else:
        logits = net.forward_head(x)
    counts = torch.stack(state.counts, dim=1)
    h, w_ = state.image_hw
    return ATSResult(
        logits=logits,
        gflops=gflops(net, counts, h, w_),
        full_gflops=full_gflops(net, int(counts[0, 0]), h, w_),
        token_counts=counts,
        num_prefix=net.num_prefix_tokens,
        grid=state.grid,
        config=config,
        stages=state.stages,
    )


def run_ats(net: VisionTransformer, images: Tensor, config: ATSConfig | None = None) -> ATSResult:
    """Run a batch (B x 3 x H x W, normalised) with ATS; config defaults to the patched one."""
    config = config or getattr(net, "ats_config", None) or ATSConfig(method="full")
    state = embed(net, images)
    return finish(net, run_blocks(net, state, config), config)


class _ATSForward:
    """Mixed into a patched model's class: ``net(images)`` gives the ATS logits alone."""

    ats_config: ATSConfig

    def forward(self, x: Tensor) -> Tensor:
        return run_ats(self, x).logits


_PATCHED: dict[type, type] = {}


def patch_vit(net: VisionTransformer, config: ATSConfig) -> VisionTransformer:
    """Make ``net`` run with ATS under ``config``; call again to change the config."""
    check_vit(net)
    resolve(config, len(net.blocks), net.patch_embed.num_patches)
    if not isinstance(net, _ATSForward):
        base = type(net)
        if base not in _PATCHED:
            _PATCHED[base] = type(f"ATS{base.__name__}", (_ATSForward, base), {})
        net.__class__ = _PATCHED[base]
    net.ats_config = config
    return net
