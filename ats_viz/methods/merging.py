"""The methods that reduce after the attention residual: ToMe merges, EViT keeps and fuses
(docs/algorithm.md). Both give every image the same count; the math is ``merge.py``'s."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import merge
from ..errors import InputError
from .base import (Option, Param, Reducer, StageInput, Value, Where, fraction_text, number, per_stage_text,
                   per_stage_values)


@dataclass(frozen=True)
class Inflected:
    """ToMe's (r, inflection) schedule: r per block on average, falling from the first block to
    the last (inflection < 0; -1 is its paper's "decreasing schedule") or rising (> 0). Written
    "13:-0.5"."""

    r: int
    inflection: float

    def __str__(self) -> str:
        return f"{self.r}:{self.inflection}"


@dataclass(frozen=True)
class PerBlock:
    """ToMe's r for each block from the first, padded with 0 (the library's list form): a type
    of its own, so it never reads as one r per stage. Written "13,13/block"."""

    r: tuple[int, ...]

    def __str__(self) -> str:
        return ",".join(str(v) for v in self.r) + "/block"


def tome_schedule(r: Value, depth: int) -> list[int]:
    """ToMe's r per block: an int for every block, a per-block list (padded with 0), or
    ToMe's (r, inflection) schedule, ``[int(lo + (hi - lo) / (depth - 1) * i)]``."""
    if isinstance(r, (list, PerBlock)):
        r = list(r.r if isinstance(r, PerBlock) else r)
        return r + [0] * (depth - len(r))
    inflect = 0.0
    if isinstance(r, Inflected):
        r, inflect = r.r, r.inflection
    if isinstance(r, bool) or not isinstance(r, int):
        raise InputError(f"r must be a whole number of tokens merged per block, not {r!r}.")
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (depth - 1) if depth > 1 else 0.0
    return [int(lo + step * i) for i in range(depth)]


def _r(text: str) -> Value:
    """'13' -> 13 merges in every block; '16, 16, 12' -> one per stage; '13:-0.5' -> ToMe's
    schedule with inflection -0.5 (more merging in the first blocks)."""
    def one(s: str) -> Value:
        if ":" in s:
            r, inflection = s.split(":", 1)
            return Inflected(one(r), float(number(inflection, "The inflection", "write r:inflection, such as 13:-0.5")))
        v = number(s, "r", "write the tokens merged per block, such as 13")
        if not isinstance(v, int):
            raise InputError(f"r = {s} is not a whole number of tokens: write one such as 13.")
        return v
    return per_stage_text(text, one)


class ToMe(Reducer):
    name, label, colour = "tome", "ToMe", (148, 103, 189)
    param = Param("r", "r", _r, "8,12,15,17",
                  "Tokens merged in each block (13 halves DeiT-S's 197 tokens to 41), one value per stage, "
                  "or ToMe's schedule r:inflection (13:-0.5 merges more in the first blocks: 19 falling to 7).",
                  default=13)
    where = Where.TOKENS
    evidence = "similarity"
    groups = True
    proportional = True
    about = ("Token Merging: in every block the r most similar pairs (keys, bipartite matching) merge "
             "into their size-weighted mean; attention weighs merged tokens by their size.")

    def default_stages(self, depth: int) -> tuple[int, ...]:
        return tuple(range(depth))

    def canonical(self, value: Value) -> Value:
        # A per-block list (every block, padded with 0) and ToMe's own (r, inflection) pair
        # become the types they name; one value per stage stays a tuple.
        if isinstance(value, list):
            return PerBlock(tuple(value))
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], float):
            return Inflected(*value)
        return super().canonical(value)

    def stage_values(self, value: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> list:
        if isinstance(value, (Inflected, PerBlock)):
            per_block = tome_schedule(value, depth)
            values = [per_block[s] for s in stages]
        else:
            values = per_stage_values(value, stages, "r")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"r = {v!r} is impossible: it counts the tokens merged per block (0 or more).")
        return values  # r above what can merge is capped at run time, as ToMe does

    def plan(self, config, depth: int, num_patches: int) -> dict[int, Any]:
        return {b: r for b, r in super().plan(config, depth, num_patches).items() if r > 0}

    def tokens_out(self, patches: int, value: Any, config) -> int | None:
        return patches - max(min(int(value), patches // 2), 0)  # ToMe caps r at half the tokens

    def candidates(self, num_patches: int) -> list:
        return list(range(0, num_patches // 2 + 1))

    def reduce(self, inp: StageInput, x: Tensor, value: Any, config) -> merge.Reduced:
        p = x.shape[1] - inp.num_prefix
        r = p - self.tokens_out(p, value, config)
        return merge.tome_merge(x, inp.k.mean(dim=1), inp.size, r, inp.num_prefix, inp.trace)


class EViT(Reducer):
    name, label, colour = "evit", "EViT", (255, 127, 14)
    param = Param("keep_rate", "keep", fraction_text("The keep rate", "0.7"), "0.8,0.6,0.45,0.3",
                  "The fraction of patch tokens kept at each stage (EViT: 0.7 at blocks 3, 6, 9), or one value "
                  "per stage.", default=0.7)
    options = (Option("fuse_token", "Dropped tokens", True, lambda fuse: "" if fuse else "unfused",
                      {True: "fused into one", False: "dropped"}),)
    where = Where.TOKENS
    evidence = "class attention"
    about = ("EViT: keep the patch tokens with the highest class attention; the rest fuse into one "
             "token, weighted by their class attention.")

    def default_stages(self, depth: int) -> tuple[int, ...]:
        """EViT's blocks 3, 6 and 9 of 12, scaled to other depths."""
        q = max(depth // 4, 1)
        return tuple(b for b in (q, 2 * q, 3 * q) if b < depth)

    def stage_values(self, value: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> list:
        out = []
        for v in per_stage_values(value, stages, "The keep rate"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise InputError(f"The keep rate {v!r} is impossible: give a fraction in (0, 1], such as 0.7.")
            out.append(float(v))
        return out

    @staticmethod
    def kept(patches: int, rate: float) -> int:
        """Patch tokens kept as themselves: ceil(keep rate x P)."""
        return math.ceil(rate * patches)

    def tokens_out(self, patches: int, value: Any, config) -> int | None:
        left = self.kept(patches, value)
        return patches if left >= patches else left + int(config.fuse_token)

    def candidates(self, num_patches: int) -> list:
        return [round(0.01 * i, 2) for i in range(1, 101)]

    def reduce(self, inp: StageInput, x: Tensor, value: Any, config) -> merge.Reduced:
        npre = inp.num_prefix
        with torch.no_grad():  # which tokens to keep and how to weigh the fused one: no gradient
            # The class token's row of the softmax attention, averaged over heads (not renormalised).
            logits = (inp.q[:, :, :1] * inp.scale) @ inp.k.transpose(-2, -1)
            cls_attn = logits.softmax(dim=-1)[:, :, 0, npre:].mean(dim=1)
        return merge.evit_keep(x, cls_attn, self.kept(x.shape[1] - npre, value), npre, config.fuse_token, inp.trace)
