"""ATS and the two baselines that prune like it: top-K and random (docs/algorithm.md).

All three act inside the attention: they score the patch tokens by ATS's significance (the
class token's attention times each value's norm), keep some, and the engine computes the
rest of the block for the kept query rows alone. The math is ``ats.py``'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import ats
from ..devices import from_host
from ..errors import InputError
from .base import Option, Param, Reducer, Selection, StageInput, Value, Where, number, per_stage_text, per_stage_values

MAX_K_FACTOR = 16  # K above this many times the patch count is refused: more points pick nothing new


def _k(text: str) -> Value:
    """'all' -> None; '98' -> 98; '0.5' -> half the patches; '120, 100, 80' -> one per stage."""
    def one(s: str) -> Value:
        s = s.lower()
        if s == "all":
            return None
        return number(s, "K", "write a count (98), a fraction (0.5) or 'all'")
    return per_stage_text(text, one)


def budget(k: Value, num_patches: int) -> int:
    """K as a count of sample points: None is every patch, a float a fraction of them."""
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
        raise InputError(f"K = {k} is more than {MAX_K_FACTOR} times the {num_patches} patch tokens; "
                         f"give at most {MAX_K_FACTOR * num_patches}.")
    return k


def significance(inp: StageInput) -> Tensor:
    """ATS's significance of each entering patch token (B x P, summing to 1 per image)."""
    npre = inp.num_prefix
    logits = (inp.q[:, :, :1] * inp.scale) @ inp.k.transpose(-2, -1)
    if inp.key_mask is not None:
        logits = logits.masked_fill(~inp.key_mask, float("-inf"))
    cls_attn = logits.softmax(dim=-1)[:, :, 0, npre:]  # the SDPA kernel does not return this row
    # Values as B x P x H x head_dim: the norm spans all heads without concatenating them.
    return ats.significance_scores(cls_attn.float(), inp.v[:, :, npre:].transpose(1, 2).float(), inp.valid)


_K_HELP = "'all' (every patch of the input), a count (98), a fraction (0.5) or one value per stage."


@torch.compiler.disable  # NumPy on the host: a compiled forward runs it as it is, where its read-back breaks the graph anyway
def _pick_one(scores: Tensor, k: int) -> Tensor:
    """ATS's choice for one image (1 x P scores), sampled on the host: the kept indices, ascending."""
    picked = ats.ats_pick(scores[0].cpu().numpy(), k)  # the stage's one read-back
    return from_host(picked, scores.device)  # the stream orders the copy before the kernels that read it


def _in_order(scores: Tensor | None, order: Tensor, inp: StageInput) -> Selection:
    """A fixed-rate choice given as indices; the kept mask only where a trace shows it."""
    kept = torch.zeros_like(inp.valid).scatter_(1, order, True) if inp.trace else None
    return Selection(scores, kept, order=order)


class _Pruning(Reducer):
    where = Where.QUERIES
    evidence = "significance"
    param = Param("k", "K", _k, "0.5,0.35,0.2,0.1", _K_HELP)

    def default_stages(self, depth: int) -> tuple[int, ...]:
        """The ATS paper's stages, blocks 3 to 11 of 12, scaled to other depths."""
        return tuple(range(depth // 4, depth))

    def stage_values(self, value: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> list:
        return [budget(v, num_patches) for v in per_stage_values(value, stages, "K")]

    def tokens_out(self, patches: int, value: Any, config) -> int | None:
        return min(int(value), patches)

    def candidates(self, num_patches: int) -> list:
        return list(range(2, num_patches + 1))


class ATS(_Pruning):
    name, label, colour = "ats", "ATS", (214, 39, 40)
    # K sets how many points ATS samples, not how many tokens it keeps, so its ladder starts at every patch.
    param = Param("k", "K", _k, "all,0.75,0.5,0.25", _K_HELP)
    samples = True
    about = ("Adaptive Token Sampling: significance = class attention x value norm; inverse transform "
             "sampling keeps K' <= K tokens, a different number per image.")

    @property
    def adaptive(self) -> bool:
        return True

    def tokens_out(self, patches: int, value: Any, config) -> int | None:
        return None

    def candidates(self, num_patches: int) -> list:
        return []

    def select(self, inp: StageInput, value: Any, config) -> Selection:
        scores = significance(inp)
        if inp.single:
            index = _pick_one(scores, value)
            kept = torch.zeros_like(inp.valid).index_fill_(1, index, True) if inp.trace else None  # the trace's mask
            return Selection(scores, kept, index)
        return Selection(scores, ats.ats_select(scores, inp.valid, value))


class TopK(_Pruning):
    name, label, colour = "topk", "top-K", (31, 119, 180)
    about = "The K patch tokens of highest significance (ATS's scores, a fixed count)."

    def select(self, inp: StageInput, value: Any, config) -> Selection:
        scores = significance(inp)
        return _in_order(scores, ats.top_order(scores, value), inp)


class Random(_Pruning):
    name, label, colour = "random", "random", (127, 127, 127)
    options = (Option("seed", "Seed", 0, lambda s: "" if s == 0 else f"seed={s}"),)
    about = "K random patch tokens (seeded), whatever their scores."

    def select(self, inp: StageInput, value: Any, config) -> Selection:
        keys = ats.random_keys(inp.num_patches, config.seed, inp.block, inp.pos.device)
        scores = significance(inp) if inp.trace else None  # the trace's evidence; the choice ignores it
        return _in_order(scores, ats.top_order(keys[inp.pos], value), inp)  # as ats.random_select
