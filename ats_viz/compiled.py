"""The opt-in compiled forward: ``torch.compile`` of the engine, for one model and setting.

Eager PyTorch pays a fixed price for every operation it dispatches (on a GPU a kernel launch,
on the CPU some microseconds), and a stage's choice of tokens is dozens of small operations:
at small batches that price, not the FLOPs, sets the time. Compiling fuses them.
- The fixed-rate methods (top-K, random, ToMe, EViT, PiToMe) know every shape before the run,
  so their whole forward is one graph; on CUDA it is also captured as a CUDA graph
  (``mode="reduce-overhead"``): one launch per forward.
- ATS reads its kept counts back once per stage, so its forward compiles in pieces, one
  between read-backs, its token counts marked dynamic.

Compiling takes seconds to minutes the first time for each model, setting and input shape;
the compiled forward is kept with its model copy. Costs (GFLOPs) come from the token counts,
as ``run_ats`` gives them; traces are not built into the graph (nothing reads them here).
"""

from __future__ import annotations

import importlib.util
import shutil
import weakref
from typing import Callable

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from .cost import fixed_counts
from .errors import InputError
from .methods import get
from .setting import ATSConfig
from .vit import check_vit, costs, run_logits

Forward = Callable[[Tensor], tuple[Tensor, Tensor]]  # images -> (logits, each image's GFLOPs)
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> {setting id: Forward}


def _versions():
    """Room for every compiled version of the engine's functions. Dynamo keeps them per
    function, and every setting, model and batch size is a version of the same ones (and past
    an ATS read-back, of each block's); at its default of 8 it quietly runs the rest eagerly."""
    return torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096)


def why_not(device: torch.device | str) -> str | None:
    """None where ``torch.compile`` can build code for ``device``; else the sentence a person reads."""
    kind = torch.device(device).type
    if kind == "cuda":
        if importlib.util.find_spec("triton") is None:
            return ("Compiling for the GPU needs Triton, which is not installed here: install the triton package "
                    "that matches your torch, or measure without compiling.")
        return None
    if kind != "cpu":
        return f"Compiling is offered on the CPU and on CUDA GPUs, not on '{kind}': measure without compiling."
    from torch._inductor import cpp_builder

    try:
        compiler = cpp_builder.get_cpp_compiler()
    except Exception:  # inductor's own search found none (its exception types vary by version)
        compiler = None
    if compiler is None or shutil.which(compiler) is None:
        return ("Compiling on the CPU needs a C++ compiler (g++ or clang++), and none was found: install one "
                "(for example `apt-get install g++`), or measure without compiling.")
    return None


def forward(net: VisionTransformer, config: ATSConfig) -> Forward:
    """``images -> (logits, each image's GFLOPs)`` under ``config``, compiled for ``net`` on its
    device (its first call compiles). Refuses, with ``why_not``'s sentence, where nothing can."""
    check_vit(net)
    device = next(net.parameters()).device
    why = why_not(device)
    if why is not None:
        raise InputError(why)
    per_net = _COMPILED.setdefault(net, {})
    if config.id not in per_net:  # a model copy lives on one device
        per_net[config.id] = _build(net, config, device)
    return per_net[config.id]


def _build(net: VisionTransformer, config: ATSConfig, device: torch.device) -> Forward:
    reducer = get(config.method)
    depth, patches, npre = len(net.blocks), net.patch_embed.num_patches, net.num_prefix_tokens

    def cost(counts: Tensor, images: Tensor) -> Tensor:
        return costs(net, counts, tuple(images.shape[-2:]), config)

    if reducer.adaptive:
        both = torch.compile(lambda x: run_logits(net, x, config), dynamic=True)

        def run(images: Tensor) -> tuple[Tensor, Tensor]:
            with _versions():
                logits, counts = both(images)
            return logits, cost(counts, images)
        return run

    # Fixed rates: the graph returns the logits alone (the counts are known without it), so on
    # CUDA it holds no host tensor and is captured whole as a CUDA graph. Static shapes, one
    # compile per batch size: dynamo's automatic dynamic shapes, on the second size, spent over
    # 20 minutes simplifying ToMe's symbolic shapes on this project's 2-core CPU.
    mode = "reduce-overhead" if device.type == "cuda" else None
    logits_only = torch.compile(lambda x: run_logits(net, x, config)[0], mode=mode, dynamic=False)
    counts = torch.tensor([fixed_counts(config, depth, patches, npre)])

    def run(images: Tensor) -> tuple[Tensor, Tensor]:
        # A CUDA graph's outputs live in memory that its next replay overwrites: keep a copy.
        with _versions():
            logits = logits_only(images).clone()
        return logits, cost(counts.expand(images.shape[0], -1), images)
    return run
