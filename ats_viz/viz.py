"""Pictures of ATS: patch overlays (numpy / OpenCV) and plotly figures, all drawn from traces."""

from __future__ import annotations

import io
from typing import Sequence

import cv2
import matplotlib

matplotlib.use("Agg")  # the library draws off-screen: no display on servers
import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
import torch

from .ats import sampling_picture
from .vit import ATSResult, StageTrace

KEPT = (255, 196, 0)  # outline of kept patches (amber: visible on most images)


def overlay(image: np.ndarray, kept: np.ndarray | torch.Tensor, grid: tuple[int, int],
            dim: float = 0.22, outline: bool = True) -> np.ndarray:
    """The image with dropped patches dimmed and kept ones outlined (uint8 H x W x 3)."""
    kept = np.asarray(kept, dtype=bool).reshape(grid)
    h, w = image.shape[:2]
    ph, pw = h / grid[0], w / grid[1]
    mask = cv2.resize(kept.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = np.where(mask[..., None], image, (image * dim).astype(np.uint8)).copy()
    if outline:
        for r, c in zip(*np.nonzero(kept)):
            x0, y0 = round(c * pw), round(r * ph)
            x1, y1 = round((c + 1) * pw) - 1, round((r + 1) * ph) - 1
            cv2.rectangle(out, (x0, y0), (x1, y1), KEPT, 1)
    return out


def stage_overlays(image: np.ndarray, res: ATSResult, index: int = 0) -> list[tuple[str, np.ndarray]]:
    """One (title, overlay) per ATS stage for image ``index`` of a result."""
    total = res.grid[0] * res.grid[1]
    return [
        (f"block {s.block}: {int(s.kept_mask[index].sum())} / {total} tokens",
         overlay(image, s.kept_mask[index].numpy(), res.grid))
        for s in res.stages
    ]


def stage_figure_png(image: np.ndarray, res: ATSResult, index: int = 0, cols: int = 5) -> bytes:
    """All stage overlays in one matplotlib figure, as PNG bytes (for download)."""
    panels = [("input", image)] + stage_overlays(image, res, index)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.8))
    for ax in np.atleast_1d(axes).flat:
        ax.axis("off")
    for ax, (title, img) in zip(np.atleast_1d(axes).flat, panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def score_heatmap(stage: StageTrace, grid: tuple[int, int], index: int = 0) -> go.Figure:
    """Significance over the patch grid; hover names the patch, its score and its fate."""
    scores = stage.scores[index].reshape(grid).numpy()
    present = stage.present_mask[index].reshape(grid).numpy()
    kept = stage.kept_mask[index].reshape(grid).numpy()
    fate = np.where(kept, "kept", np.where(present, "dropped here", "dropped earlier"))
    z = np.where(present, scores, np.nan)
    fig = go.Figure(go.Heatmap(
        z=z, customdata=fate, colorscale="Viridis", colorbar=dict(title="score", thickness=10),
        hovertemplate="patch (row %{y}, col %{x})<br>score %{z:.4f}<br>%{customdata}<extra></extra>",
    ))
    rows, cols = np.nonzero(kept)
    fig.add_trace(go.Scatter(x=cols, y=rows, mode="markers", hoverinfo="skip", showlegend=False,
                             marker=dict(symbol="square-open", size=7, color="rgb(255,196,0)")))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_layout(title=f"Scores entering block {stage.block}", height=330, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def sampling_figure(stage: StageTrace, index: int = 0) -> go.Figure:
    """How inverse transform sampling chose: the sorted-score CDF, the K points, their picks."""
    present = stage.present_mask[index]
    pic = sampling_picture(stage.scores[index][present], stage.k)
    x = np.arange(len(pic.cdf))
    picked = np.unique(pic.picks.numpy())
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=pic.cdf.numpy(), mode="lines", line_shape="hv", name="normalised CDF",
                             hovertemplate="rank %{x}<br>CDF %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=pic.picks.numpy(), y=pic.points.numpy(), mode="markers", name=f"{stage.k} sample points",
                             marker=dict(size=5, symbol="line-ew-open", color="gray"),
                             hovertemplate="point %{y:.3f} picks rank %{x}<extra></extra>"))
    fig.add_trace(go.Scatter(x=picked, y=pic.cdf.numpy()[picked], mode="markers", name=f"{len(picked)} token{'s' if len(picked) != 1 else ''} kept",
                             marker=dict(size=7, color="rgb(255,160,0)"),
                             hovertemplate="rank %{x} kept<extra></extra>"))
    fig.update_layout(title=f"Inverse transform sampling at block {stage.block}", height=330,
                      xaxis_title="tokens, sorted by score (ascending)", yaxis_title="normalised CDF",
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def tokens_figure(curves: dict[str, Sequence[float]], title: str = "Patch tokens per block") -> go.Figure:
    """Patch tokens entering each block (and leaving the last), one line per setting."""
    fig = go.Figure()
    for name, counts in curves.items():
        n = len(counts)
        labels = [f"block {b}" for b in range(n - 1)] + ["out"]
        fig.add_trace(go.Scatter(x=labels, y=list(counts), mode="lines+markers", name=name, line_shape="hv",
                                 hovertemplate="%{x}: %{y} tokens<extra>" + name + "</extra>"))
    fig.update_layout(title=title, height=320, yaxis_title="patch tokens", yaxis_rangemode="tozero",
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


def topk(logits: torch.Tensor, class_names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
    """The k most probable classes of one logit vector, with probabilities."""
    probs = logits.float().softmax(-1)
    p, i = probs.topk(min(k, probs.numel()))
    return [(class_names[j], float(q)) for j, q in zip(i.tolist(), p.tolist())]


def compare_figure(labels: Sequence[str], gflops: Sequence[float], confidence: Sequence[float],
                   full_gflops: float, x_title: str = "setting") -> go.Figure:
    """GFLOPs (bars, left axis) and top-1 confidence (line, right axis) per setting."""
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(labels), y=list(gflops), name="GFLOPs", marker_color="rgb(230,149,0)",
                         hovertemplate="%{x}<br>%{y:.3f} GFLOPs<extra></extra>"))
    fig.add_trace(go.Scatter(x=list(labels), y=list(confidence), name="top-1 confidence", yaxis="y2",
                             mode="lines+markers", line=dict(color="rgb(40,90,200)"),
                             hovertemplate="%{x}<br>top-1 confidence %{y:.1%}<extra></extra>"))
    fig.add_hline(y=full_gflops, line_dash="dot", annotation_text="full model", line_color="gray")
    fig.update_layout(
        title="GFLOPs and top-1 confidence", height=340, xaxis=dict(title=x_title, type="category"),
        yaxis=dict(title="GFLOPs", rangemode="tozero"),
        yaxis2=dict(title="confidence", overlaying="y", side="right", range=[0, 1], tickformat=".0%"),
        legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=40, b=10),
    )
    return fig
