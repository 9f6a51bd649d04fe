"""The ATS stage math as pure, batched tensor functions (docs/algorithm.md, ATS steps 2 and 3).

Every function takes a padded batch: ``valid`` (B x P bool) marks the patch tokens an image
still has, so images with different token counts share one tensor. Nothing here knows about
timm; ``vit.py`` feeds these functions and applies their choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


def significance_scores(cls_attn: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """S_j = (sum over heads of A[h, CLS, j]) * ||v_j||, normalised over each image's patches.

    cls_attn: B x H x P, the class token's attention to the patch tokens.
    v:        B x P x ..., each patch token's value vector with all heads, in the trailing
              dims (B x P x C, or B x P x H x head_dim, which saves concatenating the heads).
    valid:    B x P bool. Returns B x P scores summing to 1 per image, 0 where not valid.
    """
    norms = torch.linalg.vector_norm(v, dim=tuple(range(2, v.ndim)))
    raw = torch.where(valid, cls_attn.sum(dim=1) * norms, 0.0)
    # An image whose patches all score 0 (possible only with degenerate weights) is treated as
    # uniform, so sampling still has a CDF to walk: its present patches score 1 each before the
    # normalisation. No branch: asking the device which images those are would stall it.
    raw = torch.where(raw.sum(dim=-1, keepdim=True) > 0, raw, valid)
    return raw / raw.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(raw.dtype).tiny)  # no patch at all: 0s


@dataclass(frozen=True)
class SamplingPicture:
    """What inverse transform sampling did for one image, for the explanatory figure."""

    cdf: Tensor  # P', the min-max normalised CDF of the scores sorted ascending
    order: Tensor  # P', index into the input of each sorted position
    points: Tensor  # K, the sample points on [y0, 1]
    picks: Tensor  # K, sorted position picked by each point


def _normalised_cdf(scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort ascending (absent tokens first), cumulate, min-max normalise over present tokens.

    Returns (cdf, order, flat), cdf and order B x P: absent tokens get a CDF of -1 so no
    point is ever nearest to them. flat (B x 1) marks the images whose CDF has no spread.
    """
    sorted_keys, order = torch.where(valid, scores, -1.0).sort(dim=-1, stable=True)
    present = sorted_keys >= 0
    # Cumulated in float64, each partial sum rounded back: what torch does on the CPU, and
    # ``ats_pick`` in NumPy, so that a GPU (which cumulates float32 in float32) picks the same.
    # (Apple's MPS has no float64: there float32 cumulates.)
    wide = sorted_keys.dtype if scores.device.type == "mps" else torch.float64
    cdf = sorted_keys.clamp(min=0).to(wide).cumsum(dim=-1).to(sorted_keys.dtype)
    lo = torch.where(present, cdf, float("inf")).amin(dim=-1, keepdim=True)
    spread = cdf[:, -1:] - lo
    norm = (cdf - lo) / spread.clamp(min=torch.finfo(cdf.dtype).tiny)
    return torch.where(present, norm, -1.0), order, spread <= 0


def _sample_points(cdf: Tensor, k: int) -> Tensor:
    """K points evenly on [y0, 1], y0 the smallest non-zero normalised CDF value (B x K)."""
    y0 = torch.where(cdf > 0, cdf, 2.0).amin(dim=-1, keepdim=True).clamp(max=1.0)
    t = torch.linspace(0.0, 1.0, k, dtype=cdf.dtype, device=cdf.device)
    return y0 + (1.0 - y0) * t


def _nearest(cdf: Tensor, points: Tensor) -> Tensor:
    """For each point, the sorted position with the nearest CDF value, the first on a tie.

    The CDF is non-decreasing, so only the values on either side of a point can be nearest:
    a binary search finds them, O(K log P) instead of comparing every point with every token.
    """
    right = torch.searchsorted(cdf, points).clamp(max=cdf.shape[1] - 1)
    below, above = cdf.gather(1, (right - 1).clamp(min=0)), cdf.gather(1, right)
    # In float64 the two distances of float32 values are compared without rounding, so a
    # tie is a real tie, and a tie goes to the lower value. (Apple's MPS has no float64:
    # there float32 decides near ties, as the earlier K x P comparison did everywhere.)
    p = points if points.device.type == "mps" else points.double()
    value = torch.where(p - below <= above - p, below, above)
    return torch.searchsorted(cdf, value)  # the first position holding that value


def ats_select(scores: Tensor, valid: Tensor, k: int) -> Tensor:
    """Inverse transform sampling: B x P bool of the patch tokens that survive (K' <= K)."""
    cdf, order, flat = _normalised_cdf(scores, valid)
    picks = _nearest(cdf, _sample_points(cdf, k))
    kept = torch.zeros_like(valid).scatter_(1, order.gather(1, picks), True)
    # No spread at all (a single patch token): keep every token, as the spec says.
    return torch.where(flat, valid, kept)


@lru_cache(maxsize=64)
def _linspace(k: int) -> np.ndarray:
    return torch.linspace(0.0, 1.0, k).numpy()  # torch's own points, bit for bit


def ats_pick(scores: np.ndarray, k: int) -> np.ndarray:
    """``ats_select`` for one image with no padding, in NumPy: the kept indices, ascending.

    The same steps on the same float32 values, so the same tokens to the bit (a test holds
    the two to it). It exists for speed: at batch 1 on the CPU each torch operation's
    dispatch costs more than its arithmetic, and a stage takes about 40 of them.
    """
    order = np.argsort(scores, kind="stable")
    # torch cumulates float32 in float64 on the CPU and rounds each partial sum: so here.
    cdf = np.cumsum(scores[order], dtype=np.float64).astype(np.float32)
    lo, hi = cdf[0], cdf[-1]
    if hi - lo <= 0:
        return np.arange(len(scores))
    cdf = (cdf - lo) / (hi - lo)
    positive = cdf[cdf > 0]
    y0 = min(positive.min(), np.float32(1.0)) if positive.size else np.float32(1.0)
    points = y0 + (np.float32(1.0) - y0) * _linspace(k)
    right = np.minimum(np.searchsorted(cdf, points), len(cdf) - 1)
    below, above = cdf[np.maximum(right - 1, 0)], cdf[right]
    p = points.astype(np.float64)
    value = np.where(p - below <= above - p, below, above)
    return np.unique(order[np.searchsorted(cdf, value)])


def sampling_picture(scores: Tensor, k: int) -> SamplingPicture:
    """The sampling of one image's present-token scores (1-D), step by step, for plotting."""
    valid = torch.ones(1, scores.numel(), dtype=torch.bool, device=scores.device)
    cdf, order, _ = _normalised_cdf(scores.reshape(1, -1), valid)
    points = _sample_points(cdf, k)
    picks = _nearest(cdf, points)
    return SamplingPicture(
        cdf=cdf[0],
        order=order[0],
        points=points[0],
        picks=picks[0],
    )


def top_order(scores: Tensor, k: int) -> Tensor:
    """The K highest-scoring tokens of each image as indices in grid order (B x min(K, P)):
    ``topk_select``'s choice where every token is present, as at every fixed-rate stage. The
    engine gathers them directly, with no mask to build and sort (on a GPU, six kernel launches
    fewer per stage)."""
    return scores.topk(min(k, scores.shape[1]), dim=-1).indices.sort(dim=-1).values


def topk_select(scores: Tensor, valid: Tensor, k: int) -> Tensor:
    """Keep the K highest-scoring present tokens of each image (all of them if fewer)."""
    k = min(k, scores.shape[1])
    keyed = scores.masked_fill(~valid, -1.0)
    top = keyed.topk(k, dim=-1).indices
    kept = torch.zeros_like(valid)
    kept.scatter_(1, top, True)
    return kept & valid


@lru_cache(maxsize=256)
def random_keys(num_patches: int, seed: int, stage: int, device: torch.device | str = "cpu") -> Tensor:
    """A fixed random ranking of the original patch grid for one stage, kept on ``device``
    (drawn on the CPU once, so a run never waits on a copy to the device).

    Ranking original positions (rather than drawing per batch row) makes random selection
    independent of batch composition: an image keeps the same tokens alone or in a batch.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + stage)
    return torch.rand(num_patches, generator=gen).to(device)


def random_select(positions: Tensor, valid: Tensor, k: int, keys: Tensor) -> Tensor:
    """Keep K random present tokens per image; positions (B x P) index the original grid."""
    ranked = keys[positions.clamp(min=0)]
    return topk_select(ranked, valid, k)
