"""PiToMe (Tran et al., NeurIPS 2024): ToMe's place in the block, tokens ranked by an energy
score before they merge, so isolated (informative) tokens are protected. The math is
``ats_viz/pitome.py``'s; this is the method's reducer, added through the registry alone."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import pitome
from ..errors import InputError
from ..merge import Reduced
from .base import Param, Reducer, StageInput, Value, Where, fraction_text, per_stage_values


class PiToMe(Reducer):
    name, label, colour = "pitome", "PiToMe", (23, 190, 207)
    # The fraction of patch tokens each block keeps, as the authors set it (their "ratio").
    param = Param("keep_rate", "keep", fraction_text("The keep ratio", "0.9"), "0.95,0.925,0.9,0.875",
                  "The fraction of patch tokens each block keeps (PiToMe's ratio, 0.9125 by default), or one "
                  "value per stage.", default=pitome.RATIO)
    where = Where.TOKENS
    evidence = "energy"
    groups = True
    about = ("PiToMe: in every block, tokens with many similar neighbours (high energy) merge into "
             "their most similar partner; isolated, informative tokens are protected.")

    def default_stages(self, depth: int) -> tuple[int, ...]:
        return tuple(range(depth))

    def stage_values(self, value: Value, stages: tuple[int, ...], depth: int, num_patches: int) -> list:
        out = []
        for v in per_stage_values(value, stages, "The keep ratio"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.5 <= v <= 1:
                raise InputError(f"The keep ratio {v!r} is impossible for PiToMe: give a fraction in [0.5, 1], "
                                 "such as 0.9 (a block can merge at most half its tokens).")
            out.append(float(v))
        return out

    def tokens_out(self, patches: int, value: Any, config) -> int | None:
        return patches - min(pitome.pitome_r(patches, value), patches // 2)

    def candidates(self, num_patches: int) -> list:
        return [round(0.5 + 0.005 * i, 3) for i in range(101)]

    def reduce(self, inp: StageInput, x: Tensor, value: Any, config) -> Reduced:
        p = x.shape[1] - inp.num_prefix
        r = p - self.tokens_out(p, value, config)
        margin = pitome.pitome_margins(inp.depth)[inp.block]
        bsm = pitome.pitome_bsm_blocks(inp.depth)[inp.block]
        return pitome.pitome_merge(x, inp.k.mean(dim=1), inp.size, r, inp.num_prefix, margin, bsm=bsm, trace=inp.trace)
