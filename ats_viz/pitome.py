"""PiToMe: energy-ranked token merging (Tran et al., NeurIPS 2024) as a pure, batched function.

PiToMe merges like ToMe, after a block's attention residual and before its MLP, with keys
averaged over heads as the metric, but it ranks the patch tokens by an **energy score**
first: a token with many close neighbours (a large cluster of similar tokens) has high
energy and is a candidate for merging; a unique, isolated token has low energy and is
protected. The rule below is the one of the authors' timm/DeiT path (hchautran/PiToMe at
550b5de, ``algo/pitome/merge.py`` ``pitome_vision``, ``pitome``, ``pitome_bsm``,
``merge_wavg``; ``algo/pitome/patch/timm.py`` and ``deit.py``).

One block, P patch tokens entering (prefix tokens set aside, never merged, kept first):

1. Energy: keys averaged over heads, L2-normalised, cosine similarities ``S`` (P x P, the
   diagonal included), ``E_i = mean_j ELU(S_ij - margin, alpha)``.
2. Rank the patch tokens by descending energy.
3. Two variants, which the authors alternate over depth (``BSM_FRACTION``):
   - ``bsm=False`` (PiToMe proper): the 2r highest-energy tokens split by rank, A the ranks
     0, 2, ..., 2r-2 and B the ranks 1, 3, ..., 2r-1. Every A token merges into its most
     similar B token. The other P - 2r tokens are protected and leave in descending energy.
   - ``bsm=True`` (energy-ranked bipartite soft matching): all P tokens split by rank, A the
     even ranks and B the odd ones; each A token's match is its most similar B token, and
     the r A tokens with the most similar matches merge (ToMe's rule, energy order instead
     of grid order). The unmerged A tokens leave in descending match similarity.
4. Size-weighted mean, ``x_B <- (sum of size * x) / (sum of size)``; sizes add (1 at first).
5. Leaving order: prefix tokens, the unmerged tokens (as in step 3), then the B tokens in
   energy-rank order.

r per block is ``floor(T - T * ratio)`` of the T patch tokens entering it (``pitome_r``),
the same ratio in every block, so counts shrink geometrically. The authors' timm path at
that commit does not apply proportional attention (their attention accepts sizes, but the
block no longer passes them); the sizes only weigh the merges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .merge import Reduced, unreduced

# The authors' defaults for timm ViTs (DeiT): margin 0.75 - 0.75 * block / depth, ELU's
# alpha 1, the energy-ranked BSM variant in the first ceil(depth / 2) blocks and PiToMe
# proper in the rest, and main_ic.py's default ratio of tokens kept per block.
MARGIN_START = 0.75
ALPHA = 1.0
BSM_FRACTION = 0.5
RATIO = 0.9125


def pitome_margins(depth: int, start: float = MARGIN_START) -> list[float]:
    """The margin of each block, decreasing linearly from ``start`` (never reaching 0)."""
    return [start - start * (i / depth) for i in range(depth)]


def pitome_bsm_blocks(depth: int, fraction: float = BSM_FRACTION) -> list[bool]:
    """Which blocks use the energy-ranked BSM variant: the first ceil(depth x fraction)."""
    n = math.ceil(depth * fraction)
    return [True] * n + [False] * (depth - n)


def pitome_r(num_patches: int, ratio: float) -> int:
    """Tokens one block merges so that about ``ratio`` of its T patch tokens leave.

    ``floor(T - T * ratio)``, written as the authors write it (the float rounding decides
    the count at exact products); 0 for ratio >= 1.
    """
    if ratio >= 1.0:
        return 0
    return max(math.floor(num_patches - num_patches * ratio), 0)


def energy_scores(metric: Tensor, margin: float, alpha: float = ALPHA) -> tuple[Tensor, Tensor]:
    """metric: B x P x C (patch tokens only). Returns the energy (B x P) and the cosine
    similarities (B x P x P). The mean includes each token's similarity to itself."""
    m = F.normalize(metric, p=2, dim=-1)
    sim = m @ m.transpose(-1, -2)
    return F.elu(sim - margin, alpha=alpha).mean(dim=-1), sim


def pitome_merge(x: Tensor, metric: Tensor, size: Tensor | None, r: int, num_prefix: int,
                 margin: float, alpha: float = ALPHA, bsm: bool = False, trace: bool = True) -> Reduced:
    """PiToMe's merge of r patch tokens (see the module docstring for the rule).

    x: B x N x D tokens, prefix first; metric: B x N x C, the block's keys averaged over
    heads (prefix rows are ignored: the authors set aside the class token only, so their
    code would merge a distillation token; here every prefix token leaves as it is);
    size: B x N x 1 patches per token, None for all ones; r: tokens to merge, capped at
    P // 2 (with 2r > P the authors' code fails: their ratio is meant to stay >= 0.5);
    margin, alpha: the energy's ELU; bsm: the energy-ranked bipartite variant instead of
    PiToMe proper. r <= 0 returns x and size as given (the energy still scored).

    Returns the leaving tokens (B x (prefix + P - r) x D) and their sizes, ``dest`` (B x P:
    the leaving patch token each entering patch token went into), ``scores`` (B x P: the
    energy) and ``kept`` (B x P: False for the r tokens merged into another). Ties in energy
    or in similarity go to the lower index (stable sorts; the authors' sorts are unstable).
    """
    b, n, d = x.shape
    p = n - num_prefix
    r = max(min(r, p // 2), 0)
    with torch.no_grad():
        energy, sim = energy_scores(metric[:, num_prefix:], margin, alpha)
    if r == 0:
        return unreduced(x, size, energy, num_prefix, trace)

    with torch.no_grad():
        rank = torch.argsort(energy, dim=-1, descending=True, stable=True)  # B x P
        if bsm:
            a_idx, b_idx = rank[:, ::2], rank[:, 1::2]
        else:
            a_idx, b_idx = rank[:, :2 * r:2], rank[:, 1:2 * r:2]
        na, nb = a_idx.shape[1], b_idx.shape[1]
        pair = sim.gather(1, a_idx[..., None].expand(-1, -1, p)).gather(2, b_idx[:, None, :].expand(-1, na, -1))
        node_max, node_idx = pair.max(dim=-1)  # each A token's best B token (NA)
        if bsm:
            edge = node_max.argsort(dim=-1, descending=True, stable=True)
            src_idx, unm_idx = a_idx.gather(1, edge[:, :r]), a_idx.gather(1, edge[:, r:])
            dst_pos = node_idx.gather(1, edge[:, :r])
        else:
            # Every A token merges; the tokens below rank 2r are protected, in energy order.
            src_idx, unm_idx, dst_pos = a_idx, rank[:, 2 * r:], node_idx

    if size is None:
        size = x.new_ones(b, n, 1)

    def merge(t: Tensor) -> Tensor:
        """Patch part of t (B x P x c) -> B x (P - r) x c: unmerged, then B with sums in."""
        c = t.shape[-1]
        unm = t.gather(1, unm_idx[..., None].expand(-1, -1, c))
        src = t.gather(1, src_idx[..., None].expand(-1, -1, c))
        dst = t.gather(1, b_idx[..., None].expand(-1, -1, c))
        dst = dst.scatter_reduce(1, dst_pos[..., None].expand(-1, -1, c), src, reduce="sum")
        return torch.cat([unm, dst], dim=1)

    sp = size[:, num_prefix:]
    merged = merge(torch.cat([x[:, num_prefix:] * sp, sp], dim=-1))  # tokens and sizes as one: half the operations
    new_size = merged[..., d:]
    out_x = torch.cat([x[:, :num_prefix], merged[..., :d] / new_size], dim=1)
    new_size = torch.cat([size[:, :num_prefix], new_size], dim=1)
    if not trace:
        return Reduced(out_x, new_size, None, None, None)

    with torch.no_grad():
        n_unm = unm_idx.shape[1]
        ar = torch.arange(max(n_unm, nb), device=x.device)
        dest = torch.empty(b, p, dtype=torch.long, device=x.device)
        dest.scatter_(1, unm_idx, ar[:n_unm].expand(b, n_unm))
        dest.scatter_(1, b_idx, (ar[:nb] + n_unm).expand(b, nb))
        dest.scatter_(1, src_idx, dst_pos + n_unm)
        kept = torch.ones(b, p, dtype=torch.bool, device=x.device).scatter_(1, src_idx, False)
    return Reduced(out_x, new_size, dest, energy, kept)
