"""Devices and precisions: which device a run may use, what it runs inside, how it is named, and
how host arrays reach it.

Every number this project measures (a sweep's results, a timing) is written with the device
it came from, and one description serves them all (``describe``), so that a results folder
and a timing caption name the same machine the same way.
"""

from __future__ import annotations

import contextlib
import platform
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device(device: str) -> torch.device:
    """The torch device for ``device`` ("cpu", "cuda", "cuda:1"), or a sentence saying why not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"'{device}' is not a device: use 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine: use device 'cpu'.")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"Device '{device}' is not supported: use 'cpu' or 'cuda'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"There is no {dev}: this machine has {torch.cuda.device_count()} GPU(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return dev


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What a run at ``precision`` runs inside, or a sentence saying why it cannot."""
    if precision not in PRECISIONS:
        raise InputError(f"Precision '{precision}' is not one of {', '.join(PRECISIONS)}.")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("fp16 runs only on CUDA (the CPU has no fast float16 kernels): on the CPU use bf16 or fp32.")
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class DeviceInfo:
    """Where a run ran: a number means little without it."""

    device: str  # "cpu" or "cuda:N" (plain "cuda" resolved to the GPU it is)
    name: str  # the GPU's or the CPU's model name
    host: str

    def doc(self) -> dict:
        """As results.json lists it under "devices"."""
        return asdict(self)


def describe(dev: torch.device) -> DeviceInfo:
    """The one description of a device, for results folders and timing captions alike."""
    if dev.type == "cuda" and dev.index is None:  # "cuda" is the current GPU: record which one
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or _cpu_model() or platform.machine()
    return DeviceInfo(str(dev), name, socket.gethostname())


def _cpu_model() -> str:
    """The CPU's model name on Linux, where platform.processor() is usually empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def from_host(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device``, not waiting for the copy where that is safe: on CUDA,
    which stages a pageable array before the call returns (so a temporary may go); not on Apple's
    MPS, whose asynchronous copy from a temporary host array is not safe."""
    return torch.from_numpy(array).to(device, non_blocking=device.type == "cuda")
