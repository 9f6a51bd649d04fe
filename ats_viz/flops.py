"""GFLOPs from token counts, in the paper's convention (docs/algorithm.md, "GFLOPs").

GFLOPs here are multiply-accumulates x 1e-9, counting every matrix product of the blocks
(q k^T and A v included), the patch embedding and the head. Norms, softmax, the ATS
scoring and sampling (O(N log N)) and ToMe's matching are left out, as in DeiT and the papers.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

_EMBED_MACS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], int]]" = weakref.WeakKeyDictionary()


def block_macs(n_in: Tensor, n_out: Tensor, dim: int, attn_dim: int | Tensor, mlp_dim: int | Tensor,
               after_attention: bool = False) -> Tensor:
    """MACs of one block with n_in tokens entering and n_out leaving (n_out = n_in if no reduction).

    ATS and its baselines drop query rows inside the attention, so A v and the projection see
    the kept tokens; ToMe and EViT reduce after the attention (``after_attention``), so only
    the MLP sees fewer.
    """
    n_in, n_out = n_in.double(), n_out.double()
    n_rows = n_in if after_attention else n_out
    return (
        3 * n_in * dim * attn_dim  # qkv
        + n_in * n_in * attn_dim  # q k^T
        + n_rows * n_in * attn_dim  # A v
        + n_rows * attn_dim * dim  # proj
        + 2 * n_out * dim * mlp_dim  # MLP
    )


def embed_macs(net: nn.Module, height: int, width: int) -> int:
    """MACs of the patch embedding at this input size, measured once with torch's counter.

    Measuring (rather than assuming a 16 x 16 convolution) covers convolutional stems too.
    """
    cache = _EMBED_MACS.setdefault(net, {})
    if (height, width) not in cache:
        p = next(net.patch_embed.parameters())
        probe = torch.zeros(1, 3, height, width, dtype=p.dtype, device=p.device)
        counter = FlopCounterMode(display=False)
        training = net.patch_embed.training
        net.patch_embed.eval()  # in training a stem's batch norm would learn from the probe
        try:
            with torch.no_grad(), counter:
                net.patch_embed(probe)
        finally:
            net.patch_embed.train(training)
        cache[(height, width)] = counter.get_total_flops() // 2  # the counter reports 2 per MAC
    return cache[(height, width)]


def head_macs(net: nn.Module) -> int:
    """MACs of the classifier(s) on the pooled token(s)."""
    heads = [getattr(net, "head", None), getattr(net, "head_dist", None)]
    return sum(h.in_features * h.out_features for h in heads if isinstance(h, nn.Linear))


def gflops(net: nn.Module, token_counts: Tensor, height: int, width: int, after_attention: bool = False) -> Tensor:
    """Per-image GFLOPs from token counts (B x (depth + 1)): column b enters block b.
    ``after_attention``: the blocks reduce after their attention (ToMe, EViT; see block_macs)."""
    counts = token_counts.cpu()
    # One widths entry per block (they may differ), broadcast over the batch: one call for all blocks.
    attn_dims = torch.tensor([blk.attn.qkv.out_features // 3 for blk in net.blocks], dtype=torch.float64)
    mlp_dims = torch.tensor([blk.mlp.fc1.out_features for blk in net.blocks], dtype=torch.float64)
    per_block = block_macs(counts[:, :-1], counts[:, 1:], net.embed_dim, attn_dims, mlp_dims, after_attention)
    fixed = embed_macs(net, height, width) + head_macs(net)
    return (per_block.sum(dim=1) + fixed) * 1e-9


def full_gflops(net: nn.Module, num_tokens: int, height: int, width: int) -> float:
    """GFLOPs of the unpruned model: every block sees all num_tokens tokens."""
    counts = torch.full((1, len(net.blocks) + 1), num_tokens, dtype=torch.long)
    return float(gflops(net, counts, height, width)[0])
