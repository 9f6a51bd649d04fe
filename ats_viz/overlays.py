"""Overlays: what a run kept, drawn over the image itself (numpy and OpenCV, uint8 H x W x 3).

The pictures that follow tokens over an image: the Image and Compare pages show them, and the
video export draws them into every frame. Kept apart from the plotly and matplotlib figures
(``viz.py``) so that a video or a batch export loads neither.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .methods import get
from .vit import ATSResult, StageTrace

KEPT = (255, 196, 0)  # outline of kept patches (amber: visible on most images)
FUSED = (0, 200, 255)  # outline of patches held by a fused token (EViT): cyan, apart from amber


def overlay(image: np.ndarray, kept: np.ndarray | torch.Tensor, grid: tuple[int, int],
            dim: float = 0.22, outline: bool = True, fused: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """The image with dropped patches dimmed and kept ones outlined (uint8 H x W x 3); patches
    in ``fused`` (EViT's extra token) stay bright, outlined in their own colour."""
    kept = np.asarray(kept, dtype=bool).reshape(grid)
    fused = np.zeros_like(kept) if fused is None else np.asarray(fused, dtype=bool).reshape(grid)
    h, w = image.shape[:2]
    ph, pw = h / grid[0], w / grid[1]
    mask = cv2.resize((kept | fused).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = np.where(mask[..., None], image, (image * dim).astype(np.uint8)).copy()
    if outline:
        for cells, colour in ((kept, KEPT), (fused, FUSED)):
            for r, c in zip(*np.nonzero(cells)):
                x0, y0 = round(c * pw), round(r * ph)
                x1, y1 = round((c + 1) * pw) - 1, round((r + 1) * ph) - 1
                cv2.rectangle(out, (x0, y0), (x1, y1), colour, 1)
    return out


# Distinct hues for merged groups (matplotlib's tab10 without grey), cycled by token index.
_GROUP_COLOURS = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                           (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)], dtype=np.float32)


def groups_overlay(image: np.ndarray, groups: np.ndarray | torch.Tensor, grid: tuple[int, int],
                   tint: float = 0.55) -> np.ndarray:
    """ToMe's merged tokens over the picture: the patches of each token that holds several
    share one tint, with a line where two tokens meet; tokens of one patch are left as they are."""
    groups = np.asarray(groups, dtype=np.int64).reshape(grid)
    ids, counts = np.unique(groups[groups >= 0], return_counts=True)
    merged = np.isin(groups, ids[counts > 1])
    h, w = image.shape[:2]
    big = cv2.resize(groups.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    big_merged = cv2.resize(merged.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    colour = _GROUP_COLOURS[np.abs(big) % len(_GROUP_COLOURS)]
    out = np.where(big_merged[..., None], image * (1 - tint) + colour * tint, image)
    edge = np.zeros((h, w), dtype=bool)
    edge[:, 1:] |= big[:, 1:] != big[:, :-1]
    edge[1:, :] |= big[1:, :] != big[:-1, :]
    out[edge & big_merged] = 255
    return out.astype(np.uint8)


def stage_view(image: np.ndarray, res: ATSResult, stage: StageTrace, index: int = 0) -> np.ndarray:
    """What one stage left, drawn the way its method works: merged groups for merging methods
    (ToMe, PiToMe); for the others the tokens of one patch outlined, the patches of a fused
    token (EViT) in their own colour, and dropped patches dimmed."""
    groups = stage.groups[index].numpy()
    if get(res.config.method).groups:
        return groups_overlay(image, groups, res.grid)
    held = groups >= 0
    sizes = np.bincount(groups[held], minlength=1)
    fused = held & (sizes[np.where(held, groups, 0)] > 1)
    return overlay(image, held & ~fused, res.grid, fused=fused)


def stage_overlays(image: np.ndarray, res: ATSResult, index: int = 0) -> list[tuple[str, np.ndarray]]:
    """One (title, view) per reducing stage for image ``index`` of a result."""
    total = res.grid[0] * res.grid[1]
    return [(f"block {s.block}: {int(s.tokens_out[index])} / {total} tokens", stage_view(image, res, s, index))
            for s in res.stages]
