"""Figures of ATS: plotly figures and matplotlib pictures, drawn from traces, from a video's
frames and from the tables of dataset sweeps and timings. The overlays on the image itself
(numpy / OpenCV) are ``overlays.py``'s."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from . import synthetic
from .ats import sampling_picture
from .errors import InputError
from .methods import METHODS
from .setting import FULL
from .overlays import stage_overlays
from .vit import ATSResult, StageTrace

if TYPE_CHECKING:  # only named: drawing a timeline needs none of video.py's code
    from .video import VideoResult

OTHER = (90, 90, 90)  # a method the registry does not know (a saved table from elsewhere)


def method_rgb(method: str) -> tuple[int, int, int]:
    """Every figure colours a method the same way (the registry's colour), page to page."""
    m = METHODS.get(method)
    return m.colour if m else OTHER


def is_reference(method: str) -> bool:
    """The unreduced model, drawn as a star (a table's method may be one the registry lacks)."""
    m = METHODS.get(method)
    return m is not None and not m.reduces


def method_label(method: str) -> str:
    m = METHODS.get(method)
    return m.label if m else method


def method_colour(method: str, depth: float = 1.0) -> str:
    """The method's hue as a plotly colour; a depth below 1 pales it towards white."""
    return "rgb({},{},{})".format(*(round(255 - (255 - c) * depth) for c in method_rgb(method)))


def setting_colours(table: pd.DataFrame) -> dict[str, str]:
    """One colour per setting of a sweep table (per image or summary): its method's hue,
    paler for a costlier setting, so one method's ladder reads from dark (cheap) to pale."""
    cost = table.groupby("setting", sort=False)["gflops_mean" if "gflops_mean" in table else "gflops"].mean()
    methods = table.drop_duplicates("setting").set_index("setting")["method"]
    out = {}
    for method, settings in methods.groupby(methods, sort=False):
        ranked = cost[settings.index].sort_values(ascending=False).index.tolist()
        for i, setting in enumerate(ranked):
            out[setting] = method_colour(method, 1.0 if len(ranked) == 1 else 0.4 + 0.6 * i / (len(ranked) - 1))
    return out


def run_colours(runs: dict[str, ATSResult]) -> dict[str, str]:
    """setting_colours for runs in hand (the Image and Compare pages), keyed by their labels."""
    rows = [(label, res.config.method, float(res.gflops.mean())) for label, res in runs.items()]
    return setting_colours(pd.DataFrame(rows, columns=["setting", "method", "gflops"]))


def stage_figure_png(image: np.ndarray, res: ATSResult, index: int = 0, cols: int = 5) -> bytes:
    """All stage overlays in one matplotlib figure, as PNG bytes (for download)."""
    # A Figure of its own, never pyplot: pyplot's current-figure state is shared by the
    # server's threads. Imported here: only a download needs matplotlib.
    from matplotlib.figure import Figure

    panels = [("input", image)] + stage_overlays(image, res, index)
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(cols * 2.6, rows * 2.8))
    for ax in fig.subplots(rows, cols, squeeze=False).flat:
        ax.axis("off")
    for ax, (title, img) in zip(fig.axes, panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def score_heatmap(stage: StageTrace, grid: tuple[int, int], index: int = 0, evidence: str = "score") -> go.Figure:
    """The method's evidence over the patch grid (ATS: significance; ToMe: similarity to the
    best match; EViT: class attention); hover names the patch, its score and its fate."""
    scores = stage.scores[index].reshape(grid).numpy()
    present = stage.present_mask[index].reshape(grid).numpy()
    kept = stage.kept_mask[index].reshape(grid).numpy()
    merged = stage.merged_mask[index].reshape(grid).numpy()
    fate = np.where(kept, "kept", np.where(merged, "merged", np.where(present, "dropped here", "dropped earlier")))
    z = np.where(present, scores, np.nan)
    fig = go.Figure(go.Heatmap(
        z=z, customdata=fate, colorscale="Viridis", colorbar=dict(title=evidence.replace(" ", "<br>"), thickness=10),
        hovertemplate="patch (row %{y}, col %{x})<br>" + evidence + " %{z:.4f}<br>%{customdata}<extra></extra>",
    ))
    rows, cols = np.nonzero(kept)
    fig.add_trace(go.Scatter(x=cols, y=rows, mode="markers", hoverinfo="skip", showlegend=False,
                             marker=dict(symbol="square-open", size=7, color="rgb(255,196,0)")))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_layout(title=f"{evidence.capitalize()} entering block {stage.block}", height=330, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def sampling_figure(stage: StageTrace, index: int = 0) -> go.Figure:
    """How inverse transform sampling chose: the sorted-score CDF, the K points, their picks."""
    present = stage.present_mask[index]
    pic = sampling_picture(stage.scores[index][present], stage.value)
    x = np.arange(len(pic.cdf))
    picked = np.unique(pic.picks.numpy())
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=pic.cdf.numpy(), mode="lines", line_shape="hv", name="normalised CDF",
                             hovertemplate="rank %{x}<br>CDF %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=pic.picks.numpy(), y=pic.points.numpy(), mode="markers", name=f"{stage.value} sample points",
                             marker=dict(size=5, symbol="line-ew-open", color="gray"),
                             hovertemplate="point %{y:.3f} picks rank %{x}<extra></extra>"))
    fig.add_trace(go.Scatter(x=picked, y=pic.cdf.numpy()[picked], mode="markers", name=f"{len(picked)} token{'s' if len(picked) != 1 else ''} kept",
                             marker=dict(size=7, color="rgb(255,160,0)"),
                             hovertemplate="rank %{x} kept<extra></extra>"))
    fig.update_layout(title=f"Inverse transform sampling at block {stage.block}", height=330,
                      xaxis_title="tokens, sorted by score (ascending)", yaxis_title="normalised CDF",
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=10, r=10, t=40, b=10))
    return fig


def tokens_figure(runs: dict[str, ATSResult], title: str = "Patch tokens per block", index: int = 0) -> go.Figure:
    """Patch tokens entering each block (and leaving the last) of one image, a line per run,
    coloured as the Dataset page colours the same settings."""
    colours = run_colours(runs)
    fig = go.Figure()
    for name, res in runs.items():
        counts = res.patch_counts[index].tolist()
        labels = [f"block {b}" for b in range(len(counts) - 1)] + ["out"]
        fig.add_trace(go.Scatter(x=labels, y=counts, mode="lines+markers", name=name, line_shape="hv",
                                 line=dict(color=colours[name]),
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
    """GFLOPs (above, the full model's as a line) and top-1 confidence (below) per setting: two
    panels, not two axes on one, where the full model's line and the confidence line crossed."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("GFLOPs", "top-1 confidence"))
    fig.add_trace(go.Bar(x=list(labels), y=list(gflops), name="GFLOPs", marker_color="rgb(230,149,0)",
                         hovertemplate="%{x}<br>%{y:.3f} GFLOPs<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=list(labels), y=list(confidence), name="top-1 confidence", marker_color="rgb(40,90,200)",
                         text=[f"{c:.1%}" for c in confidence], textposition="auto",
                         hovertemplate="%{x}<br>top-1 confidence %{y:.1%}<extra></extra>"), row=2, col=1)
    fig.add_hline(y=full_gflops, line_dash="dot", annotation_text="full model", line_color="gray", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", row=2, col=1)
    fig.update_xaxes(type="category")
    fig.update_xaxes(title_text=x_title, row=2, col=1)
    fig.update_layout(height=420, showlegend=False, margin=dict(l=10, r=10, t=40, b=10))
    return fig


# ---------------------------------------------------------------------------- videos

LABEL_GAP = 1 / 8  # of the clip's span, between two written class names: closer, they overlap into a smear


def _spaced(times: list[float], gap: float) -> list[int]:
    """The indices of the times to label, ascending: the last, then back in time each one at least
    ``gap`` before the one labelled after it, so that no two labels overlap however the changes
    cluster, and a burst is named by its last change: the class that stays."""
    kept: list[int] = []
    for i in reversed(range(len(times))):
        if not kept or times[kept[-1]] - times[i] >= gap:
            kept.append(i)
    return kept[::-1]


def timeline_figure(result: VideoResult) -> go.Figure:
    """Patch tokens after the last block and GFLOPs per frame over time; top-1 changes marked.

    Every change is a red marker naming the new class on hover; those at least ``LABEL_GAP`` of the
    clip before the next labelled one also get a line and a written label: a burst of changes gets
    one, naming the class it settles on.
    """
    rows = result.rows
    t = [r.time_s for r in rows]
    hover = [f"frame {r.frame}<br>top-1 {r.top1} ({r.confidence:.0%})" for r in rows]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("Patch tokens after the last block", "GFLOPs per frame"))
    fig.add_trace(go.Scatter(x=t, y=[r.final_tokens for r in rows], mode="lines+markers", name="tokens",
                             text=hover, hovertemplate="%{text}<br>%{y} tokens<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=t, y=[r.gflops for r in rows], mode="lines+markers", name="GFLOPs",
                             text=hover, hovertemplate="%{text}<br>%{y:.4f} GFLOPs<extra></extra>"), row=2, col=1)
    if rows:
        fig.add_hline(y=rows[0].full_gflops, line_dash="dash", line_color="grey", row=2, col=1,
                      annotation_text="full model", annotation_position="top left")
    changes = [r for r in rows if r.class_changed]
    fig.add_trace(go.Scatter(
        x=[r.time_s for r in changes], y=[r.final_tokens for r in changes], mode="markers", name="top-1 changes",
        marker=dict(color="crimson", size=9, symbol="diamond"), text=[r.top1 for r in changes],
        customdata=[[r.frame, r.confidence] for r in changes],
        hovertemplate="frame %{customdata[0]}: top-1 changes to <b>%{text}</b> (%{customdata[1]:.0%})"
                      "<extra></extra>"), row=1, col=1)
    span = t[-1] - t[0] if t else 0.0
    labelled = _spaced([r.time_s for r in changes], span * LABEL_GAP if span > 0 else math.inf)  # no span: one label
    for r in (changes[i] for i in labelled):
        fig.add_vline(x=r.time_s, line_dash="dot", line_color="crimson", row=1, col=1,
                      annotation_text=r.top1, annotation_position="top right", annotation_font_color="crimson")
        fig.add_vline(x=r.time_s, line_dash="dot", line_color="crimson", row=2, col=1)
    title = (f"{len(changes)} top-1 changes: {len(labelled)} labelled, hover the red markers for all"
             if len(labelled) < len(changes) else None)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    fig.update_layout(height=460, showlegend=False, title=title, margin=dict(l=10, r=10, t=60 if title else 40, b=10))
    return fig


# ---------------------------------------------------------------------------- dataset sweeps
# The figures of evaluate.py's tables (per_image and summary).

# The accuracy curve's x axes: {summary column: (axis title, hover text)}. Measured ms come
# from a timing pass (timing.add_timing), GFLOPs from every sweep.
CURVE_X = {"gflops_mean": ("mean GFLOPs per image", "%{x:.3f} GFLOPs"),
           "ms_per_image": ("measured ms per image", "%{x:.2f} ms per image")}


def _curve_x(summary: pd.DataFrame, x: str) -> str:
    if x not in CURVE_X:
        raise InputError(f"The curve's x axis '{x}' is unknown: choose one of {', '.join(CURVE_X)}.")
    if x not in summary or summary[x].isna().all():
        raise InputError(f"The summary has no '{x}' column: measure speed first (evaluate --time).")
    return x


def curve_figure(summary: pd.DataFrame, x: str = "gflops_mean") -> go.Figure:
    """Top-1 (95% CI bars) against mean GFLOPs, or against measured ms per image (``x``): one
    line per method, the full model a star."""
    x = _curve_x(summary, x)
    colours = setting_colours(summary)
    fig = go.Figure()
    for method, g in summary.groupby("method", sort=False):
        g = g.sort_values(x)
        full = is_reference(method)
        hue = method_colour(method)
        fig.add_trace(go.Scatter(
            x=g[x], y=g["top1"] * 100, name=method_label(method), legendgroup=method, mode="markers" if full else "lines+markers",
            line=dict(color=hue),
            marker=dict(color=[colours[s] for s in g["setting"]], size=14 if full else 9,
                        symbol="star" if full else "circle"),
            error_y=dict(type="data", symmetric=False, array=(g["ci_high"] - g["top1"]) * 100,
                         arrayminus=(g["top1"] - g["ci_low"]) * 100, thickness=1, color=hue),
            customdata=np.stack([g["setting"], g["ci_low"] * 100, g["ci_high"] * 100,
                                 g["tokens_final_mean"], g["images"]], axis=1),
            hovertemplate=("<b>%{customdata[0]}</b>"
                           + "<br>top-1 %{y:.1f}% (95% CI %{customdata[1]:.1f} to %{customdata[2]:.1f})"
                           "<br>" + CURVE_X[x][1] + "<br>%{customdata[3]:.1f} patch tokens at the end"
                           "<br>%{customdata[4]} images<extra></extra>"),
        ))
    fig.update_layout(xaxis_title=CURVE_X[x][0], yaxis_title="top-1 accuracy (%)",
                      legend_title="method", hovermode="closest", margin=dict(t=30))
    return fig


def curve_png(summary: pd.DataFrame, path: Path | str, x: str = "gflops_mean") -> Path:
    """The accuracy curve as a PNG, drawn with matplotlib (plotly's PNG export needs kaleido)."""
    from matplotlib.figure import Figure

    x = _curve_x(summary, x)
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.add_subplot()
    for method, g in summary.groupby("method", sort=False):
        g = g.sort_values(x)
        full = is_reference(method)
        err = np.stack([(g["top1"] - g["ci_low"]) * 100, (g["ci_high"] - g["top1"]) * 100])
        ax.errorbar(g[x], g["top1"] * 100, yerr=err, label=method_label(method), capsize=3,
                    color=[c / 255 for c in method_rgb(method)],
                    marker="*" if full else "o", markersize=12 if full else 5, linestyle="none" if full else "-")
    ax.set_xlabel(CURVE_X[x][0])
    ax.set_ylabel("top-1 accuracy (%), 95% CI")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def gflops_histogram(per_image: pd.DataFrame, setting: str, full_gflops: float | None = None) -> go.Figure:
    """How GFLOPs spread over the images under one setting: ATS spends more on busy images."""
    colours = setting_colours(per_image)
    g = per_image[per_image["setting"] == setting]
    fig = go.Figure(go.Histogram(x=g["gflops"], nbinsx=40, name=setting, marker_color=colours.get(setting),
                                 hovertemplate="%{x} GFLOPs: %{y} images<extra></extra>"))
    if len(g):
        fig.add_vline(x=float(g["gflops"].mean()), line_dash="dash", annotation_text="mean")
    if full_gflops is not None:
        fig.add_vline(x=full_gflops, line_color=method_colour(FULL.method),
                      annotation_text="full model")
    fig.update_layout(xaxis_title="GFLOPs per image", yaxis_title="images", title=setting,
                      showlegend=False, margin=dict(t=40))
    return fig


def objects_per_image(per_image: pd.DataFrame) -> pd.Series | None:
    """Each row's number of objects, read from its file name (the bundled scenes carry it), or
    None where some image does not say (any other dataset)."""
    counts = per_image["image"].astype(str).map(synthetic.objects_in)
    return None if counts.isna().any() or not len(counts) else counts.astype(int)


def tokens_by_figure(per_image: pd.DataFrame, setting: str, by: str = "class") -> go.Figure:
    """Each image's patch tokens after the last block under one setting, against its class or
    (``by="objects"``, the bundled scenes) its number of objects: where an adaptive method
    spends its tokens (a method of fixed rate draws one flat line)."""
    g = per_image[per_image["setting"] == setting]
    x, axis = (g["label"], "class") if by == "class" else (objects_per_image(g), "objects in the scene")
    fig = go.Figure(go.Box(x=x, y=g["tokens_final"], boxpoints="all", jitter=0.4, pointpos=0, boxmean=True,
                           marker=dict(size=4, color=method_colour(g["method"].iloc[0]) if len(g) else None),
                           name=setting,
                           text=g["image"], hovertemplate="%{text}: %{y} tokens<extra></extra>"))
    fig.update_layout(title=f"Patch tokens kept per image, by {axis}: {setting}", xaxis_title=axis,
                      yaxis_title="patch tokens after the last block", showlegend=False, margin=dict(t=40))
    if by == "class":  # in the model's class order, as the accuracy by class is (not the files' order)
        order = g.sort_values("target", kind="stable")["label"].unique()
        fig.update_xaxes(categoryorder="array", categoryarray=list(order))
    else:
        fig.update_xaxes(dtick=1)
    return fig


def sweep_tokens_figure(per_image: pd.DataFrame, settings: Sequence[str]) -> go.Figure:
    """Patch tokens entering each block over a dataset: mean and 10th-90th percentile band."""
    colours = setting_colours(per_image)
    cols = sorted((c for c in per_image.columns if c.startswith("tokens_in_")), key=lambda c: int(c[10:]))
    cols.append("tokens_final")
    x = list(range(len(cols)))
    fig = go.Figure()
    for setting in settings:
        g = per_image.loc[per_image["setting"] == setting, cols].to_numpy(dtype=float)
        if not len(g):
            continue
        lo, hi = np.percentile(g, 10, axis=0), np.percentile(g, 90, axis=0)
        fig.add_trace(go.Scatter(x=x + x[::-1], y=np.concatenate([hi, lo[::-1]]), fill="toself",
                                 line=dict(width=0), fillcolor=colours[setting], opacity=0.15, hoverinfo="skip",
                                 showlegend=False, legendgroup=setting))
        fig.add_trace(go.Scatter(x=x, y=g.mean(axis=0), name=setting, mode="lines+markers",
                                 line=dict(color=colours[setting]), legendgroup=setting,
                                 hovertemplate=f"{setting}<br>block %{{x}}: %{{y:.1f}} tokens<extra></extra>"))
    fig.update_layout(xaxis_title=f"block (the last point: after block {len(cols) - 2})",
                      yaxis_title="patch tokens entering (mean, 10-90% band)", margin=dict(t=30))
    return fig


def class_accuracy_figure(per_image: pd.DataFrame, settings: Sequence[str],
                          class_names: Sequence[str]) -> go.Figure:
    """Top-1 per class and setting: where pruning hurts, not just how much on average."""
    colours = setting_colours(per_image)
    fig = go.Figure()
    for setting in settings:
        g = per_image[per_image["setting"] == setting]
        acc = g.groupby("target")["correct"].agg(["mean", "size"])
        fig.add_trace(go.Bar(x=[class_names[t] for t in acc.index], y=acc["mean"] * 100, name=setting,
                             marker_color=colours.get(setting), customdata=acc["size"],
                             hovertemplate="%{x}: %{y:.1f}% of %{customdata} images<extra>" + setting + "</extra>"))
    fig.update_layout(barmode="group", xaxis_title="class", yaxis_title="top-1 accuracy (%)", margin=dict(t=30))
    return fig


# ---------------------------------------------------------------------------- measured speed
# The figures of timing.py's tables: does a setting save time as its GFLOPs promise?

_PLOTLY_MARKERS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")
_MPL_MARKERS = ("o", "s", "D", "^", "P", "X", "*", "h")


def _speed_groups(table: pd.DataFrame):
    """(method, batch, rows, marker index) for each method at each batch size."""
    sizes = sorted(table["batch"].unique())
    for (method, batch), g in table.groupby(["method", "batch"], sort=False):
        yield method, int(batch), g, sizes.index(batch) % len(_PLOTLY_MARKERS)


def _diagonal(table: pd.DataFrame) -> tuple[float, float]:
    values = pd.concat([table["speedup"], table["gflops_ratio"]])
    return min(0.9, float(values.min()) * 0.95), float(values.max()) * 1.05


def speed_figure(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Measured speed-up against the GFLOPs ratio, both over the full model: on the line y = x
    a setting saves time exactly as its GFLOPs promise; below it, overheads eat part of the
    saving. One colour per method, one marker shape per batch size."""
    lo, hi = _diagonal(table)
    fig = go.Figure(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="speed-up = GFLOPs ratio",
                               line=dict(color="gray", dash="dash"), hoverinfo="skip"))
    for method, batch, g, marker in _speed_groups(table):
        fig.add_trace(go.Scatter(
            x=g["gflops_ratio"], y=g["speedup"], mode="markers", name=f"{method_label(method)}, batch {batch}",
            legendgroup=method, marker=dict(color=method_colour(method), size=11, symbol=_PLOTLY_MARKERS[marker]),
            customdata=np.stack([g["setting"], g["ms_per_image"], g["images_per_s"], g["gflops"]], axis=1),
            hovertemplate=("<b>%{customdata[0]}</b>, batch " + str(batch)
                           + "<br>speed-up %{y:.2f}x, GFLOPs ratio %{x:.2f}x<br>%{customdata[1]:.2f} ms per image, "
                           "%{customdata[2]:.1f} images/s<br>%{customdata[3]:.3f} GFLOPs<extra></extra>"),
        ))
    fig.update_layout(title=title, xaxis_title="GFLOPs ratio (full / setting)",
                      yaxis_title="measured speed-up (full time / setting time)", hovermode="closest",
                      margin=dict(t=50))
    return fig


def speed_png(table: pd.DataFrame, path: Path | str, title: str = "") -> Path:
    """speed_figure drawn with matplotlib, as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.add_subplot()
    lo, hi = _diagonal(table)
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1, label="speed-up = GFLOPs ratio")
    for method, batch, g, marker in _speed_groups(table):
        ax.scatter(g["gflops_ratio"], g["speedup"], color=[c / 255 for c in method_rgb(method)],
                   marker=_MPL_MARKERS[marker], s=45, label=f"{method_label(method)}, batch {batch}")
    ax.set_xlabel("GFLOPs ratio (full / setting)")
    ax.set_ylabel("measured speed-up (full time / setting time)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
