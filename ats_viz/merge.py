"""ToMe's merging and EViT's keep-and-fuse as pure, batched tensor functions (docs/algorithm.md).

Both reduce after a block's attention residual and before its MLP, and both give every image
of a batch the same number of tokens, so nothing here pads. Prefix tokens (class,
distillation, registers) are first in every sequence, never reduced, and stay first.

Each function returns the reduced tokens and, where a trace is asked for, a ``dest`` map (B x
P, long): which of the leaving patch tokens each entering patch token went into (-1: dropped),
from which the traces draw the groups of patches every token holds. Without a trace none of
that is computed: on a GPU at small batches each operation costs a kernel launch, and the maps
took about as many as the merge itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Reduced:
    x: Tensor  # B x (prefix + P') x D: the leaving tokens
    size: Tensor | None  # B x (prefix + P') x 1: patches per token (ToMe), None where not tracked
    # The trace, None where none was asked for:
    dest: Tensor | None  # B x P long: leaving patch token of each entering patch token, -1 if dropped
    scores: Tensor | None  # B x P: the evidence per entering patch token (similarity or class attention)
    kept: Tensor | None  # B x P bool: entering patch tokens that leave as themselves


def unreduced(x: Tensor, size: Tensor | None, scores: Tensor | None, num_prefix: int, trace: bool) -> Reduced:
    """A stage that reduces nothing: every patch token leaves as itself."""
    if not trace:
        return Reduced(x, size, None, None, None)
    b, p = x.shape[0], x.shape[1] - num_prefix
    ident = torch.arange(p, device=x.device).expand(b, p)
    scores = x.new_zeros(b, p) if scores is None else scores
    return Reduced(x, size, ident, scores, torch.ones(b, p, dtype=torch.bool, device=x.device))


def tome_merge(x: Tensor, metric: Tensor, size: Tensor | None, r: int, num_prefix: int, trace: bool = True) -> Reduced:
    """ToMe's bipartite soft matching, then the size-weighted merge (ToMe's merge_wavg).

    x: B x N x D tokens; metric: B x N x C, the keys averaged over heads. Tokens split by
    position, A even and B odd; each A token's most similar B token is its match; the r A
    tokens with the most similar matches merge into them. Prefix tokens never merge (their
    rows and columns score -inf), and r is capped at half the others, as ToMe caps it.
    Leaving order: prefix tokens, the unmerged A tokens in A order, then the B tokens.
    """
    b, n, d = x.shape
    r = min(r, (n - num_prefix) // 2)
    p = n - num_prefix
    if r <= 0:
        return unreduced(x, size, None, num_prefix, trace)
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, bb = metric[:, ::2], metric[:, 1::2]
        scores = a @ bb.transpose(-1, -2)  # B x NA x NB
        na, nb = scores.shape[1], scores.shape[2]
        pre_a, pre_b = (num_prefix + 1) // 2, num_prefix // 2  # prefix tokens on each side
        scores[:, :pre_a, :] = -math.inf
        if pre_b:
            scores[:, :, :pre_b] = -math.inf
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)
        unm_idx = edge_idx[:, r:].sort(dim=-1).values  # A order: the prefix tokens come first
        src_idx = edge_idx[:, :r]
        dst_idx = node_idx.gather(1, src_idx)

    if size is None:
        size = x.new_ones(b, n, 1)

    def merge(t: Tensor) -> Tensor:
        c = t.shape[-1]
        src, dst = t[:, ::2], t[:, 1::2]
        unm = src.gather(1, unm_idx[..., None].expand(-1, -1, c))
        moved = src.gather(1, src_idx[..., None].expand(-1, -1, c))
        dst = dst.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, c), moved, reduce="sum")
        # Prefix first in their own order (for the class token alone this is ToMe's cat([unm, dst])).
        return torch.cat([_interleave(unm[:, :pre_a], dst[:, :pre_b]), unm[:, pre_a:], dst[:, pre_b:]], dim=1)

    # The weighted tokens and their sizes merge as one tensor (the size its last channel): the
    # same sums, half the operations.
    merged = merge(torch.cat([x * size, size], dim=-1))
    new_size = merged[..., d:]
    out_x = merged[..., :d] / new_size
    if not trace:
        return Reduced(out_x, new_size, None, None, None)

    # Where each entering token went, in the leaving patch-token order (prefix removed); A
    # tokens sit at even positions, B tokens at odd ones.
    with torch.no_grad():
        n_unm = na - r
        new_a = torch.empty(b, na, dtype=torch.long, device=x.device)
        new_a.scatter_(1, unm_idx, torch.arange(n_unm, device=x.device).expand(b, n_unm) - pre_a)
        new_b = torch.arange(nb, device=x.device).expand(b, nb) + (n_unm - pre_a - pre_b)
        new_a.scatter_(1, src_idx, new_b.gather(1, dst_idx))
        dest = torch.empty(b, n, dtype=torch.long, device=x.device)
        dest[:, 0::2], dest[:, 1::2] = new_a, new_b
        best = x.new_empty(b, n)  # each token's similarity to its best match on the other side
        best[:, 0::2], best[:, 1::2] = node_max, scores.amax(dim=1)
        kept = torch.ones(b, n, dtype=torch.bool, device=x.device)
        kept[:, 0::2] = kept[:, 0::2].scatter(1, src_idx, False)
    return Reduced(out_x, new_size, dest[:, num_prefix:], best[:, num_prefix:], kept[:, num_prefix:])


def _interleave(even: Tensor, odd: Tensor) -> Tensor:
    """Tokens at even positions and at odd positions back in position order."""
    if odd.shape[1] == 0:
        return even
    out = torch.stack([even[:, :odd.shape[1]], odd], dim=2).flatten(1, 2)
    return torch.cat([out, even[:, odd.shape[1]:]], dim=1)


def evit_keep(x: Tensor, cls_attn: Tensor, left: int, num_prefix: int, fuse: bool, trace: bool = True) -> Reduced:
    """EViT: keep the ``left`` patch tokens of highest class attention (EViT's
    ceil(keep_rate x P), which the method's reducer computes).

    x: B x N x D tokens (prefix first); cls_attn: B x P, the class token's attention to the
    patch tokens averaged over heads. Kept tokens leave in descending attention (EViT's
    sorted top-k); with ``fuse`` the others are summed, weighted by their class attention,
    into one token appended last (an ordinary token at later stages).
    """
    b, n, d = x.shape
    p = n - num_prefix
    if left >= p:
        return unreduced(x, None, cls_attn, num_prefix, trace)
    with torch.no_grad():
        idx = cls_attn.topk(left, dim=1, largest=True, sorted=True).indices
        kept = torch.zeros(b, p, dtype=torch.bool, device=x.device).scatter_(1, idx, True) if fuse or trace else None
        if trace:
            dest = torch.full((b, p), left if fuse else -1, dtype=torch.long, device=x.device)
            dest.scatter_(1, idx, torch.arange(left, device=x.device).expand(b, left))
    patches = x[:, num_prefix:]
    parts = [x[:, :num_prefix], patches.gather(1, idx[..., None].expand(-1, -1, d))]
    if fuse:
        with torch.no_grad():
            # The complement in ascending order, as EViT's complement_idx gives it.
            others = torch.sort(kept.to(torch.int8), dim=1, stable=True).indices[:, :p - left]
        weights = cls_attn.gather(1, others)
        rest = patches.gather(1, others[..., None].expand(-1, -1, d))
        parts.append((rest * weights[..., None]).sum(dim=1, keepdim=True))
    out = torch.cat(parts, dim=1)
    return Reduced(out, None, dest, cls_attn, kept) if trace else Reduced(out, None, None, None, None)
