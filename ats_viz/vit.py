"""Token reduction plugged into timm's VisionTransformer, without forking timm.

``run_ats`` walks the model's own modules block by block (same weights, same order of
operations as timm) and, at each stage, hands the block to the setting's reducer
(``methods``) at its place: inside the attention, where ATS, top-K and random score the patch
tokens and only the survivors' query rows go on, or after the attention residual, where ToMe,
EViT and PiToMe reduce every image to the same count.
ATS's counts differ per image. A batch then holds each image's tokens padded to its largest
set, but only the attention sees the padding (its keys masked, so every image keeps exactly
what it would keep alone): the linear layers and the MLP run on the real tokens alone, packed,
so an image's tokens cost what they are whatever the rest of the batch keeps.
``patch_vit`` swaps the model's class (as ToMe does) so that ``net(images)`` returns the
reduced model's logits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .devices import from_host
from .errors import InputError
from .flops import full_gflops, gflops
from .methods import Reducer, Selection, StageInput, Where, get
from .setting import FULL, ATSConfig, resolve


@dataclass
class StageTrace:
    """What one reducing block saw and did, per entering patch token (prefix tokens excluded).

    Each stage records where its entering tokens went (``dest``); the grid views (which
    original patches each token holds, their scores, what was kept or merged) are composed
    from the stages before on first use, so a run whose traces nobody looks at does not pay.
    """

    block: int
    value: int | float  # the stage's parameter (K, r, a keep rate), as the method's plan gives it
    present: Tensor  # B x n bool: False for padding
    token_scores: Tensor  # B x n: the method's evidence (ATS: significance summing to 1 per image)
    kept: Tensor  # B x n bool: entering tokens that leave as themselves
    dest: Tensor | None  # B x n long: the leaving token each entering one went into (-1: dropped); None: the kept, in order
    num_patches: int  # of the original grid
    prev: StageTrace | None = None  # the stage before, whose leaving tokens enter this one
    start: Tensor | None = None  # owner_in given outright (a stage taken out of its run)

    @cached_property
    def destination(self) -> Tensor:
        if self.dest is not None:
            return self.dest
        # Pruning keeps tokens in order: a kept token's new index is the number kept before it.
        return torch.where(self.kept, self.kept.long().cumsum(dim=1) - 1, -1)

    @cached_property
    def owner_in(self) -> Tensor:
        """B x P long over the original grid: the entering token holding each patch (-1: gone)."""
        if self.start is not None:
            return self.start
        if self.prev is not None:
            return self.prev.owner_out
        b = self.present.shape[0]
        return torch.arange(self.num_patches, device=self.present.device).expand(b, self.num_patches)

    @cached_property
    def owner_out(self) -> Tensor:
        """B x P long over the original grid: the leaving token holding each patch (-1: gone)."""
        owner = self.owner_in
        return torch.where(owner >= 0, self.destination.gather(1, owner.clamp(min=0)), -1)

    def _on_grid(self, values: Tensor) -> Tensor:
        owner = self.owner_in
        on = values.detach().gather(1, owner.clamp(min=0))
        return torch.where(owner >= 0, on, torch.zeros_like(on)).cpu()

    @cached_property
    def present_mask(self) -> Tensor:
        """B x P bool over the original grid: patches held by a token entering the stage."""
        return (self.owner_in >= 0).cpu()

    @cached_property
    def scores(self) -> Tensor:
        """B x P over the original grid: the evidence of the token holding each patch (0 where gone)."""
        return self._on_grid(self.token_scores)

    @cached_property
    def kept_mask(self) -> Tensor:
        """B x P bool over the original grid: patches whose token leaves the stage as itself."""
        return self._on_grid(self.kept & self.present)

    @cached_property
    def merged_mask(self) -> Tensor:
        """B x P bool: patches whose token merged into another here (ToMe, PiToMe) or fused (EViT)."""
        return (self.owner_out >= 0).cpu() & ~self.kept_mask

    @cached_property
    def groups(self) -> Tensor:
        """B x P long over the original grid: the leaving token holding each patch (-1: dropped)."""
        return self.owner_out.cpu()

    @property
    def tokens_out(self) -> Tensor:
        """B: patch tokens leaving the stage."""
        return (self.destination.max(dim=1).values + 1).clamp(min=0).cpu()

    def _mapped(self, f, prev: StageTrace | None, start: Tensor | None) -> StageTrace:
        """The same stage with ``f`` applied to each of its tensors, after ``prev``, from ``start``."""
        def on(t: Tensor | None) -> Tensor | None:
            return None if t is None else f(t)

        return StageTrace(self.block, self.value, on(self.present), on(self.token_scores), on(self.kept),
                          on(self.dest), self.num_patches, prev, on(start))

    def to(self, device: torch.device | str, prev: StageTrace | None = None) -> StageTrace:
        """The same trace with its tensors on ``device``, after ``prev`` (the stage before, moved)."""
        return self._mapped(lambda t: t.to(device), prev, self.start)

    def take(self, index: int) -> StageTrace:
        """Image ``index`` alone (copied, so the batch can be freed)."""
        return self._mapped(lambda t: t[index:index + 1].clone(), None, self.owner_in)


@dataclass
class ATSResult:
    """One batch through the model: logits, costs and the per-stage traces."""

    logits: Tensor  # B x classes
    gflops: Tensor  # B, float64: each image's own GFLOPs
    full_gflops: float  # the same model with no reduction
    token_counts: Tensor  # B x (depth + 1): tokens (prefix included) entering each block, then leaving the last
    num_prefix: int  # class, distillation and register tokens (always kept)
    grid: tuple[int, int]  # the patch grid (rows, columns)
    config: ATSConfig
    stages: list[StageTrace] = field(default_factory=list)

    @property
    def patch_counts(self) -> Tensor:
        """B x (depth + 1): patch tokens entering each block, then leaving the last."""
        return self.token_counts - self.num_prefix

    def take(self, index: int) -> ATSResult:
        """Image ``index`` as its own batch of one (copied, so the batch can be freed)."""
        def one(t: Tensor) -> Tensor:
            return t[index:index + 1].clone()

        return ATSResult(one(self.logits), one(self.gflops), self.full_gflops, one(self.token_counts),
                         self.num_prefix, self.grid, self.config, [s.take(index) for s in self.stages])

    def cpu(self) -> ATSResult:
        """The result with every tensor in host memory (a run on a GPU, kept for the pages)."""
        stages: list[StageTrace] = []
        for s in self.stages:
            stages.append(s.to("cpu", stages[-1] if stages else None))
        return ATSResult(self.logits.cpu(), self.gflops.cpu(), self.full_gflops, self.token_counts.cpu(),
                         self.num_prefix, self.grid, self.config, stages)

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
                    "value": s.value,  # the method's parameter at this stage, as the tables name it
                    "tokens_in": int(self.patch_counts[index, s.block]),
                    "tokens_out": int(s.tokens_out[index]),
                    "kept": torch.nonzero(s.kept_mask[index]).flatten().tolist(),
                    "groups": s.groups[index].tolist(),
                    "scores": [round(float(v), 6) for v in s.scores[index]],
                }
                for s in self.stages
            ],
        }


# ---------------------------------------------------------------------------- checks


def check_vit(net: nn.Module) -> None:
    """Refuse, with a sentence, models that the engine cannot run."""
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


# ---------------------------------------------------------------------------- forward


@dataclass
class TokenState:
    """Tokens between blocks: prefix tokens first, then each image's patch tokens, padded."""

    x: Tensor  # B x (prefix + P) x D
    pos: Tensor  # B x P long: each patch token's index on the original grid (pruning methods)
    valid: Tensor  # B x P bool: False for padding
    size: Tensor | None  # B x (prefix + P) x 1: patches each token holds (merging), None until a merge
    counts: list[Tensor]  # token counts entering each block so far (B each)
    stages: list[StageTrace]
    next_block: int
    num_patches: int  # of the original input
    grid: tuple[int, int]
    image_hw: tuple[int, int]
    # Where some image has fewer tokens than the widest (ATS in a batch): the flat indices, in
    # B x (prefix + P), of the real tokens (prefix included), each image's in order. None: no
    # padding. Known on the host, so no block has to ask the device whether ``valid`` is all true.
    rows: Tensor | None = None
    traced: bool = True  # False: no stage traces (timing, sweeps, a patched model), and no work for them

    @property
    def padded(self) -> bool:
        return self.rows is not None


def embed(net: VisionTransformer, images: Tensor, traced: bool = True) -> TokenState:
    """Patch embedding, position embedding and prefix tokens, as timm does them; ``traced``:
    whether the stages keep their traces (the overlays' and figures' material)."""
    check_vit(net)
    x = net.patch_embed(images)
    grid = tuple(x.shape[1:3]) if x.ndim == 4 else tuple(net.patch_embed.grid_size)
    x = net.norm_pre(net.patch_drop(net._pos_embed(x)))
    b, n, _ = x.shape
    p = n - net.num_prefix_tokens
    pos = torch.arange(p, device=x.device).expand(b, p)
    valid = torch.ones(b, p, dtype=torch.bool, device=x.device)
    counts = [torch.full((b,), n, dtype=torch.long)]
    return TokenState(x, pos, valid, None, counts, [], 0, p, grid, tuple(images.shape[-2:]), traced=traced)


def _on_rows(f, rows: Tensor | None, *xs: Tensor) -> Tensor:
    """``f`` of B x N x ... tensors, computed on the real tokens alone where ``rows`` says which
    (zeros in the padding, which nothing reads). ``f`` must act on each token by itself (linear
    layers, norms, the MLP): then packing changes nothing but the cost."""
    if rows is None:
        return f(*xs)
    b, n = xs[0].shape[:2]
    y = f(*(x.reshape(b * n, *x.shape[2:]).index_select(0, rows) for x in xs))
    return y.new_zeros(b * n, *y.shape[1:]).index_copy_(0, rows, y).view(b, n, *y.shape[1:])


@torch.compiler.disable  # host arithmetic on Python integers: a compiled forward breaks its graph at the read-back anyway
def _padded_layout(counts: list[int], npre: int, device: torch.device) -> tuple[Tensor | None, Tensor]:
    """From each image's kept count (read back, Python integers): the flat indices of each image's
    prefix and kept tokens in B x (npre + width) (None where no image is padded), and the B x width
    padding mask. Built on the host and copied, not computed on the device: two copies where
    the device needed a dozen kernel launches per stage. The read-back has just drained this
    forward's work from the stream, so the copies add no wait of their own."""
    width = max(counts)
    kept = np.asarray(counts, dtype=np.int64)  # indices are int64 wherever NumPy's default int is not
    valid = from_host(np.arange(width) < kept[:, None], device)
    if kept.min() == width:
        return None, valid
    lens = kept + npre
    starts = np.repeat(np.arange(len(lens)) * (npre + width) - (np.cumsum(lens) - lens), lens)
    return from_host(starts + np.arange(lens.sum()), device), valid


def _attention_inputs(blk: Block, x: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B x H x N x head_dim) of the block's normalised input, as timm computes them."""
    attn = blk.attn
    b, n, _ = x.shape
    qkv = _on_rows(lambda t: attn.qkv(blk.norm1(t)), rows, x)
    qkv = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def _key_mask(state: TokenState, npre: int) -> Tensor | None:
    """Padded keys masked out (B x 1 x 1 x N); None with no padding, where this is timm exactly."""
    if not state.padded:
        return None
    keys = torch.cat([state.valid.new_ones(state.valid.shape[0], npre), state.valid], dim=1)
    return keys[:, None, None, :]


def _attention_bias(mask: Tensor | None, size: Tensor | None) -> Tensor | None:
    """The additive or boolean mask the fused attention takes: padding, and merging's
    proportional attention (a token holding s patches counts as s keys)."""
    if size is None:
        return mask
    bias = size.log()[:, None, None, :, 0]
    return bias if mask is None else bias.masked_fill(~mask, float("-inf"))


def _keep_rows(state: TokenState, q: Tensor, x: Tensor, sel: Selection, count: int | None,
               npre: int) -> tuple[Tensor, Tensor, Tensor]:
    """The kept query rows and tokens; the state's positions, padding and count follow.

    ``sel.index`` (one unpadded image): the kept rows in grid order, with no padding to make or
    mask. Otherwise kept tokens first (stable, so they stay in grid order): ``count`` tokens
    each where the method's rule says how many (nothing read back from the device; ``sel.order``
    holds them where the method gives indices), else padded to the batch's largest set, read
    back once."""
    kept, index = sel.kept, sel.index
    if index is not None:
        rows = torch.cat([torch.arange(npre, device=index.device), index + npre])
        state.pos = state.pos.index_select(1, index)
        state.valid = state.valid.new_ones(1, len(index))
        return q.index_select(2, rows), x.index_select(1, rows), torch.tensor([len(index)])
    b = x.shape[0]
    if count is not None:
        n_kept, width = torch.full((b,), count), count
        state.valid, state.rows = state.valid.new_ones(b, width), None
    else:
        # The stage's one read-back, as Python integers: the layout that follows is host
        # arithmetic, and a compiled forward breaks its graph here once, not at every int().
        counts = kept.sum(dim=1).tolist()
        n_kept, width = torch.tensor(counts), max(counts)
        state.rows, state.valid = _padded_layout(counts, npre, x.device)
    order = sel.order
    if order is None:
        order = torch.sort(kept.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    rows = torch.cat([torch.arange(npre, device=x.device).expand(b, npre), order + npre], dim=1)
    # Advanced indexing copies whole rows; gather with an expanded index was 4x slower at batch 32.
    batch = torch.arange(b, device=x.device)[:, None]
    state.pos = state.pos[batch, order]
    return q[batch, :, rows].transpose(1, 2), x[batch, rows], n_kept


def _block(net: VisionTransformer, index: int, state: TokenState, config: ATSConfig, value=None) -> None:
    """Block ``index``, timm's operations in timm's order; with a stage ``value``, the
    method's reducer acts at its place: on the query rows (``Where.QUERIES``) or on the
    tokens after the attention residual (``Where.TOKENS``)."""
    blk, npre = net.blocks[index], net.num_prefix_tokens
    attn, x = blk.attn, state.x
    q, k, v = _attention_inputs(blk, x, state.rows)
    mask = _key_mask(state, npre)
    reducer: Reducer = get(config.method)
    where = reducer.where if value is not None else Where.NOWHERE
    prev = state.stages[-1] if state.stages else None
    if where is not Where.NOWHERE:
        # One image: ATS reads its scores back in place of its count and samples in NumPy, a few
        # host operations for the batched path's ~60 (each a dispatch on the CPU, a kernel launch
        # on a GPU); compiled too, the pick run outside the graph. Not on Apple's MPS, which has no
        # float64 for the CDF the NumPy pick cumulates: there one image picks as its batch does.
        single = x.shape[0] == 1 and mask is None and x.device.type in ("cpu", "cuda")
        inp = StageInput(index, len(net.blocks), q, k, v, attn.scale, mask, state.valid, state.pos, state.size, npre,
                         state.num_patches, single, state.traced)
    n_kept = None

    if where is Where.QUERIES:
        with torch.no_grad():
            sel = reducer.select(inp, value, config)
        if state.traced:
            state.stages.append(StageTrace(index, value, state.valid, sel.scores, sel.kept, None, state.num_patches, prev))
        count = reducer.tokens_out(state.valid.shape[1], value, config)  # None: the images decide
        q, x, n_kept = _keep_rows(state, q, x, sel, count, npre)

    size = state.size if reducer.proportional else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_attention_bias(mask, size),
                                         dropout_p=attn.attn_drop.p if attn.training else 0.0)
    out = out.transpose(1, 2).reshape(x.shape[0], q.shape[2], -1)

    def attention_residual(t: Tensor, o: Tensor) -> Tensor:
        return t + blk.drop_path1(blk.ls1(attn.proj_drop(attn.proj(attn.norm(o)))))

    def mlp_residual(t: Tensor) -> Tensor:
        return t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))

    if where is Where.TOKENS:  # reduced between the two residuals (merging never pads)
        x = attention_residual(x, out)
        red = reducer.reduce(inp, x, value, config)
        if state.traced:
            state.stages.append(StageTrace(index, value, state.valid, red.scores, red.kept, red.dest,
                                           state.num_patches, prev))
        x, state.size = red.x, red.size
        b, p = x.shape[0], x.shape[1] - npre
        state.valid = state.valid.new_ones(b, p)
        state.pos = torch.arange(p, device=x.device).expand(b, p)  # not grid positions: merged tokens hold several
        n_kept = torch.full((b,), p)
        state.x = mlp_residual(x)
    else:
        # Both residuals in one pass over the real tokens: one gather and one scatter of them, not two.
        state.x = _on_rows(lambda t, o: mlp_residual(attention_residual(t, o)), state.rows, x, out)
    # Counts change only where a stage reduces; elsewhere the previous tensor is reused.
    state.counts.append(state.counts[-1] if n_kept is None else n_kept + npre)


# cuDNN's fused attention (PyTorch's choice for half precision on recent NVIDIA GPUs) builds an
# execution plan for every new shape, tens of milliseconds each. Where the shapes follow the
# images (ATS), nearly every stage of every batch is a new shape: on an H200 in bf16, ATS ran 100
# times slower than the full model, and only there. Such forwards take the other fused kernels.
_SHAPE_FREE_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _attention_kernels(device: torch.device, plan: dict, config: ATSConfig):
    varying = get(config.method).adaptive and bool(plan)
    return sdpa_kernel(_SHAPE_FREE_ATTENTION) if varying and device.type == "cuda" else contextlib.nullcontext()


def run_blocks(net: VisionTransformer, state: TokenState, config: ATSConfig, stop: int | None = None) -> TokenState:
    """Run blocks from ``state.next_block`` up to ``stop`` (default: all), reducing per ``config``."""
    plan = resolve(config, len(net.blocks), state.num_patches)
    stop = len(net.blocks) if stop is None else stop
    with _attention_kernels(state.x.device, plan, config):
        for i in range(state.next_block, stop):
            _block(net, i, state, config, plan.get(i))
    state.next_block = stop
    return state


def fork(state: TokenState) -> TokenState:
    """A copy to branch from: later blocks change the copy, never the original."""
    return TokenState(state.x, state.pos, state.valid, state.size, list(state.counts), list(state.stages),
                      state.next_block, state.num_patches, state.grid, state.image_hw, state.rows, state.traced)


def _head(net: VisionTransformer, state: TokenState) -> Tensor:
    """Final norm and head; padding is excluded from average pooling."""
    x = net.norm(state.x)
    if net.global_pool == "avg":
        w = state.valid.to(x.dtype).unsqueeze(-1)
        pooled = (x[:, net.num_prefix_tokens:] * w).sum(1) / w.sum(1).clamp(min=1)
        return net.head(net.head_drop(net.fc_norm(pooled)))
    return net.forward_head(x)


def costs(net: VisionTransformer, counts: Tensor, image_hw: tuple[int, int], config: ATSConfig) -> Tensor:
    """Each image's GFLOPs from its token counts (B x (depth + 1)) under ``config``."""
    return gflops(net, counts, *image_hw, after_attention=get(config.method).where is Where.TOKENS)


def finish(net: VisionTransformer, state: TokenState, config: ATSConfig) -> ATSResult:
    """Logits, costs and traces."""
    counts = torch.stack(state.counts, dim=1)
    h, w_ = state.image_hw
    return ATSResult(
        logits=_head(net, state),
        gflops=costs(net, counts, (h, w_), config),
        full_gflops=full_gflops(net, int(counts[0, 0]), h, w_),
        token_counts=counts,
        num_prefix=net.num_prefix_tokens,
        grid=state.grid,
        config=config,
        stages=state.stages,
    )


def run_ats(net: VisionTransformer, images: Tensor, config: ATSConfig | None = None, traces: bool = True) -> ATSResult:
    """Run a batch (B x 3 x H x W, normalised) under ``config`` (default: the patched one);
    ``traces=False``: logits, costs and counts alone (``stages`` empty), for what never draws."""
    config = config or getattr(net, "ats_config", None) or FULL
    state = embed(net, images, traced=traces)
    return finish(net, run_blocks(net, state, config), config)


def run_logits(net: VisionTransformer, images: Tensor, config: ATSConfig) -> tuple[Tensor, Tensor]:
    """Logits and token counts (B x (depth + 1)) alone, no costs or result: what a patched
    model returns, and what a compiled forward (``compiled.py``) traces."""
    state = run_blocks(net, embed(net, images, traced=False), config)
    return _head(net, state), torch.stack(state.counts, dim=1)


class _ATSForward:
    """Mixed into a patched model's class: ``net(images)`` gives the reduced model's logits alone."""

    ats_config: ATSConfig

    def forward(self, x: Tensor) -> Tensor:
        return run_logits(self, x, self.ats_config)[0]


_PATCHED: dict[type, type] = {}


def patch_vit(net: VisionTransformer, config: ATSConfig) -> VisionTransformer:
    """Make ``net`` run under ``config``; call again to change the config."""
    check_vit(net)
    resolve(config, len(net.blocks), net.patch_embed.num_patches)
    if not isinstance(net, _ATSForward):
        base = type(net)
        if base not in _PATCHED:
            _PATCHED[base] = type(f"ATS{base.__name__}", (_ATSForward, base), {})
        net.__class__ = _PATCHED[base]
    net.ats_config = config
    return net
