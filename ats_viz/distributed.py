"""Sweeps shared by the processes of a torchrun, on one machine or several.

torchrun (``python -m torch.distributed.run``) starts the processes and sets WORLD_SIZE,
RANK and LOCAL_RANK; without them everything here is the one process it always was. Each
process sweeps its shard of the images on its own device (``evaluate.run_sweep(shard=...)``),
and rank 0 gathers the shards and is the only one that prints or writes.

The shards travel between the processes as pickles (``gather_object``): they come from this
project's own processes, never from a user, and torchrun's rendezvous endpoint belongs on a
network you trust, as torchrun's own documentation says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from .errors import InputError
from .evaluate import SweepResult, merge_shards


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> World:
    """The world torchrun describes in the environment, or a world of one."""
    env = os.environ
    if not any(k in env for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")):
        return World()
    try:
        world = World(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")), True)
    except ValueError:
        raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers; start the run with torchrun, "
                         "which sets them.") from None
    if not 0 <= world.rank < world.size:
        raise InputError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}; start the run with torchrun.")
    return world


def device_for(world: World, device: str | None) -> str:
    """The device this process sweeps on. One process: ``device`` (default the CPU). Under
    torchrun: each process its own GPU, cuda:LOCAL_RANK, where CUDA is there (or --device cuda
    asks for it); otherwise the CPU."""
    if not world.launched:
        return device or "cpu"
    if device not in (None, "cpu", "cuda"):
        raise InputError(f"Under torchrun each process takes its own GPU (cuda:LOCAL_RANK): give --device cuda "
                         f"or cpu, not '{device}'.")
    if device == "cpu" or (device is None and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine: use --device cpu.")
    if world.local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {world.local_rank} has no GPU: this machine has {torch.cuda.device_count()}. "
                         "Start at most that many processes per machine (--nproc_per_node).")
    return f"cuda:{world.local_rank}"


@contextlib.contextmanager
def process_group(world: World, device: str) -> Iterator[None]:
    """Joined to the other processes for the duration (NCCL between GPUs, else gloo)."""
    if world.size == 1:
        yield
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))  # gather_object sends through the current GPU
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def gather_sweep(world: World, part: SweepResult) -> SweepResult | None:
    """Every process's shard joined on rank 0, rows in dataset order (None on the others)."""
    if world.size == 1:
        return part
    # The dataset is the same in every process: only rank 0's own travels nowhere.
    shards: list[SweepResult] | None = [None] * world.size if world.main else None  # type: ignore[list-item]
    dist.gather_object(dataclasses.replace(part, dataset=None), shards, dst=0)
    return merge_shards(part.dataset, shards) if world.main else None
