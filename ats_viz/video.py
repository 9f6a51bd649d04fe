"""Videos: stream frames, run each through ATS, tabulate, export an annotated MP4.

Frames are read one at a time with OpenCV and shrunk on read, so memory stays flat
whatever the clip's length or resolution: only a batch of small frames is ever held.
A frame is run exactly as the image path runs a picture (``LoadedModel.prepare`` then
``run_ats``), so a video frame and the same picture give the same tokens.

For the frame explorer every processed frame keeps its own small trace (a one-image
``ATSResult``: kept masks and scores per stage, a few kB) and the model's view of it as
a JPEG (about 20 kB), instead of re-reading and re-running the frame on demand: redrawing
is instant, needs no seek into the file, and memory grows only with the processed frames,
which ``max_frames`` bounds.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from PIL import Image

from .data import MAX_PIXELS, MIN_SIDE
from .errors import InputError
from .models import LoadedModel
from .overlays import stage_view
from .vit import ATSConfig, ATSResult, run_ats

VIDEO_TYPES = ("mp4", "avi", "mov", "webm", "mkv")
# 90 frames spread over the clip: with the embedded model on a 2-core CPU a one-minute
# 720p clip costs a few seconds of decoding plus a few of model time (bench/bench_video.py).
DEFAULT_MAX_FRAMES = 90
MAX_FRAMES_LIMIT = 2000  # keeps the per-frame traces and views under about 50 MB
# From this stride on, seeking to each frame is cheaper than decoding every frame between.
SEEK_STRIDE = 150
BATCH = 8
_FALLBACK_FPS = 25.0  # what FFmpeg assumes when a file declares no rate
_SIGNATURES = {  # container magic: recognised containers that fail to open have a codec problem
    "an MP4/MOV file": lambda h: h[4:8] == b"ftyp",
    "an AVI file": lambda h: h[:4] == b"RIFF" and h[8:12] == b"AVI ",
    "a WebM/MKV file": lambda h: h[:4] == b"\x1a\x45\xdf\xa3",
}
_IMAGES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM")


@dataclass(frozen=True)
class VideoInfo:
    """What the file declares; ``frame_count`` is None where the container does not say."""

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int | None
    codec: str

    @property
    def duration_s(self) -> float | None:
        return None if self.frame_count is None else self.frame_count / self.fps


@dataclass(frozen=True)
class Frame:
    """One decoded frame (RGB, shrunk on read) and where it sits in the clip."""

    index: int
    time_s: float
    rgb: np.ndarray


@dataclass(frozen=True)
class FrameRow:
    """One processed frame, as a table row. Token counts are patch tokens (prefix excluded)."""

    frame: int
    time_s: float
    stage_tokens: tuple[int, ...]  # patch tokens leaving each reducing stage
    final_tokens: int
    gflops: float
    full_gflops: float
    top1: str
    top1_index: int
    confidence: float
    class_changed: bool  # top-1 differs from the previous processed frame's


@dataclass
class FrameResult:
    """A row plus what redrawing the frame needs: its own trace and the model's view."""

    row: FrameRow
    result: ATSResult  # batch of one: this frame's logits, token counts and stage traces
    view_jpeg: bytes  # what the model saw (input size, RGB), JPEG-compressed

    @property
    def view(self) -> np.ndarray:
        """The model's view as H x W x 3 uint8 RGB."""
        bgr = cv2.imdecode(np.frombuffer(self.view_jpeg, np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Summary:
    frames: int
    mean_gflops: float
    min_gflops: float
    max_gflops: float
    full_gflops: float
    saved_gflops: float  # over all processed frames, against the unpruned model
    saved_fraction: float
    class_changes: int


@dataclass
class VideoResult:
    """All processed frames of one clip; ``cancelled`` when the caller stopped early."""

    info: VideoInfo
    stride: int
    config: ATSConfig
    frames: list[FrameResult] = field(default_factory=list)
    cancelled: bool = False

    @property
    def rows(self) -> list[FrameRow]:
        return [f.row for f in self.frames]

    def summary(self) -> Summary:
        g = np.array([r.gflops for r in self.rows])
        full = self.rows[0].full_gflops
        return Summary(len(g), float(g.mean()), float(g.min()), float(g.max()), full,
                       float((full - g).sum()), float(1 - g.mean() / full),
                       sum(r.class_changed for r in self.rows))

    def to_csv(self) -> str:
        return rows_to_csv(self.rows, [s.block for s in self.frames[0].result.stages] if self.frames else [])


# ---------------------------------------------------------------------------- reading


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV logs its own failure to open a file; we say it better with an InputError."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def _open(path: Path) -> cv2.VideoCapture:
    with _quiet_opencv():
        return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)


def _fourcc(cap: cv2.VideoCapture) -> str:
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    text = bytes((code >> (8 * i)) & 0xFF for i in range(4)).decode("latin-1") if code > 0 else ""
    return text.strip() if text.isprintable() and text.strip() else "unknown"


def probe(path: str | Path, name: str | None = None) -> VideoInfo:
    """Check that ``path`` is a video with a decodable frame, or say what is wrong and what to do,
    calling it ``name`` (default: its file name; an upload kept under another name: the upload's)."""
    path = Path(path)
    name = name or path.name
    kinds = "MP4, AVI, MOV, WebM or MKV"
    if not path.is_file():
        raise InputError(f"No video file at '{path}'. Check the path.")
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # OpenCV crashes on such names rather than refusing them
        raise InputError(f"The name of '{name.encode('utf-8', 'replace').decode()}' is not valid UTF-8, "
                         "which OpenCV cannot open: rename the file.") from None
    if path.stat().st_size == 0:
        raise InputError(f"'{name}' is empty (0 bytes). Choose a video file ({kinds}).")
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(_IMAGES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        raise InputError(f"'{name}' is an image, not a video. Open it on the Image page, or choose a {kinds} file.")
    cap = _open(path)
    try:
        if not cap.isOpened():
            kind = next((k for k, match in _SIGNATURES.items() if match(head)), None)
            if kind is None:
                raise InputError(f"'{name}' is not a video that can be read. Choose a {kinds} file.")
            raise InputError(
                f"'{name}' is {kind}, but its video cannot be decoded: its codec is not supported "
                "here, or the file is damaged. Re-encode it to H.264 MP4 (for example "
                f"ffmpeg -i '{name}' -c:v libx264 -pix_fmt yuv420p out.mp4) and try again.")
        codec = _fourcc(cap)
        with _quiet_opencv():
            ok, frame = cap.read()
        if not ok or frame is None:
            raise InputError(
                f"'{name}' opens as a video ({codec}) but has no frame that can be decoded: it is empty, "
                "truncated or uses a codec this build cannot decode. Re-export it (H.264 MP4 is safest).")
        h, w = frame.shape[:2]
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    if w * h > MAX_PIXELS:
        raise InputError(f"'{name}' has {w} x {h} frames, more than {MAX_PIXELS // 1_000_000} megapixels. "
                         "Downscale it first (4K and 8K are fine).")
    if min(w, h) < MIN_SIDE:
        raise InputError(f"'{name}' has {w} x {h} frames; the model needs at least {MIN_SIDE} x {MIN_SIDE}.")
    fps = fps if math.isfinite(fps) and 0 < fps < 1000 else _FALLBACK_FPS
    frames = int(count) if math.isfinite(count) and 0 < count < 2**40 else None
    return VideoInfo(path, w, h, fps, frames, codec)


def plan(info: VideoInfo, stride: int | None = None, max_frames: int = DEFAULT_MAX_FRAMES) -> tuple[int, int | None]:
    """(stride, frames expected). Without a stride, ``max_frames`` are spread over the clip
    (one a second where its length is unknown)."""
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or not 1 <= max_frames <= MAX_FRAMES_LIMIT:
        raise InputError(f"The frame cap must be a whole number from 1 to {MAX_FRAMES_LIMIT}; got {max_frames!r}.")
    if stride is None:
        stride = math.ceil(info.frame_count / max_frames) if info.frame_count else max(1, round(info.fps))
    elif isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InputError(f"The frame stride must be a whole number of at least 1; got {stride!r}.")
    expected = None if info.frame_count is None else min(max_frames, math.ceil(info.frame_count / stride))
    return stride, expected


def _shrink(bgr: np.ndarray, short_side: int | None) -> np.ndarray:
    """BGR frame -> RGB with its shorter side at most ``short_side`` (area-averaged)."""
    h, w = bgr.shape[:2]
    if short_side is not None and min(h, w) > short_side:
        s = short_side / min(h, w)
        bgr = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_frames(info: VideoInfo, stride: int = 1, max_frames: int = DEFAULT_MAX_FRAMES,
                short_side: int | None = None) -> Iterator[Frame]:
    """Every ``stride``-th frame, at most ``max_frames``, one decoded frame in memory at a time.

    Skipped frames are only grabbed (demuxed and decoded, not converted); from
    ``SEEK_STRIDE`` on, where the length is known, the reader seeks instead.
    """
    cap = _open(info.path)
    try:
        seek = stride >= SEEK_STRIDE and info.frame_count is not None
        wanted = range(0, info.frame_count if seek else 2**62, stride)
        position, yielded = 0, 0
        for index in wanted:
            if yielded >= max_frames:
                return
            if seek:
                cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            else:
                while position < index and cap.grab():
                    position += 1
                if position < index:
                    return
            ok, bgr = cap.read()
            if not ok or bgr is None:
                return
            position = index + 1
            yielded += 1
            yield Frame(index, index / info.fps, _shrink(bgr, short_side))
    finally:
        cap.release()


# ---------------------------------------------------------------------------- running


def _jpeg(rgb: np.ndarray) -> bytes:
    _, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return buf.tobytes()


def _run_batch(model: LoadedModel, config: ATSConfig, batch: list[Frame],
               previous: int | None) -> list[FrameResult]:
    x = torch.cat([model.prepare(Image.fromarray(f.rgb)) for f in batch])
    with torch.inference_mode():  # on the model's device; what is kept comes back to the host
        res = run_ats(model.net, x.to(next(model.net.parameters()).device), config).cpu()
    probs = res.logits.float().softmax(dim=1)
    out = []
    for i, f in enumerate(batch):
        conf, top = probs[i].max(dim=0)
        top = int(top)
        row = FrameRow(
            frame=f.index, time_s=f.time_s,
            stage_tokens=tuple(int(s.tokens_out[i]) for s in res.stages),
            final_tokens=int(res.patch_counts[i, -1]),
            gflops=float(res.gflops[i]), full_gflops=float(res.full_gflops),
            top1=model.class_names[top], top1_index=top, confidence=float(conf),
            class_changed=previous is not None and top != previous,
        )
        previous = top
        out.append(FrameResult(row, res.take(i), _jpeg(model.to_uint8(x[i]))))
    return out


def stream(model: LoadedModel, info: VideoInfo, config: ATSConfig, stride: int = 1,
           max_frames: int = DEFAULT_MAX_FRAMES, batch_size: int = BATCH) -> Iterator[FrameResult]:
    """Processed frames in order, as they are ready: stop iterating to cancel."""
    short_side = 2 * min(model.input_size)  # leaves the model's own resize some detail to average
    batch: list[Frame] = []
    previous: int | None = None
    for frame in read_frames(info, stride, max_frames, short_side):
        batch.append(frame)
        if len(batch) == batch_size:
            results, batch = _run_batch(model, config, batch, previous), []
            previous = results[-1].row.top1_index
            yield from results
    if batch:
        yield from _run_batch(model, config, batch, previous)


def analyse_video(model: LoadedModel, path: str | Path, config: ATSConfig, stride: int | None = None,
                  max_frames: int = DEFAULT_MAX_FRAMES,
                  progress: Callable[[int, int | None], None] | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  started: Callable[[VideoResult], None] | None = None) -> VideoResult:
    """Run a clip through ATS frame by frame; ``should_stop`` ends early, keeping what is done.

    ``progress(done, expected)`` is called after each frame (``expected`` None where the
    file does not say its length). ``started(result)`` gets the result before the first
    frame: it fills as frames are done and reads ``cancelled`` until the last one is, so a
    caller interrupted from outside (a page's Stop) still holds every finished frame.
    """
    info = probe(path)
    stride, expected = plan(info, stride, max_frames)
    out = VideoResult(info, stride, config, cancelled=True)
    if started is not None:
        started(out)
    frames = stream(model, info, config, stride, max_frames)
    try:
        for fr in frames:
            out.frames.append(fr)
            if progress is not None:
                progress(len(out.frames), expected)
            if should_stop is not None and should_stop():
                return out
    finally:
        frames.close()
    out.cancelled = False
    return out


# ---------------------------------------------------------------------------- export


def rows_to_csv(rows: list[FrameRow], stage_blocks: list[int]) -> str:
    """The per-frame table: one column per reducing stage, named by its block."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["frame", "time_s", *[f"tokens_after_block_{b}" for b in stage_blocks], "final_tokens",
                "gflops", "full_gflops", "top1", "confidence", "class_changed"])
    for r in rows:
        w.writerow([r.frame, f"{r.time_s:.3f}", *r.stage_tokens, r.final_tokens, f"{r.gflops:.6f}",
                    f"{r.full_gflops:.6f}", r.top1, f"{r.confidence:.4f}", int(r.class_changed)])
    return buf.getvalue()


def annotate(fr: FrameResult, scale: int = 2) -> np.ndarray:
    """One frame for the exported MP4: what the last stage left (as the Image page draws it), tokens and top-1."""
    view = fr.view
    h, w = view.shape[:2]
    big = cv2.resize(view, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    if fr.result.stages:
        big = stage_view(big, fr.result, fr.result.stages[-1])
    band = np.zeros((22 * scale, w * scale, 3), np.uint8)
    r, total = fr.row, fr.result.grid[0] * fr.result.grid[1]
    lines = (f"{r.time_s:.1f}s  {r.final_tokens}/{total} tokens  {r.gflops:.3g} GFLOPs",
             f"top-1 {r.top1} {r.confidence:.0%}" + ("  (changed)" if r.class_changed else ""))
    for i, text in enumerate(lines):
        cv2.putText(band, text, (3 * scale, (9 + 10 * i) * scale), cv2.FONT_HERSHEY_SIMPLEX, 0.28 * scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([big, band])


def write_annotated(result: VideoResult, path: str | Path, scale: int = 2, fps: float | None = None) -> Path:
    """The processed frames as an MP4 (mp4v): playing at the clip's own pace unless ``fps`` says."""
    if not result.frames:
        raise InputError("There are no processed frames to export: run the video first.")
    path = Path(path)
    first = annotate(result.frames[0], scale)
    fps = fps or max(1.0, result.info.fps / result.stride)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (first.shape[1], first.shape[0]))
    if not writer.isOpened():
        raise InputError(f"Cannot write a video to '{path}': check that its folder exists and ends in .mp4.")
    try:
        for i, fr in enumerate(result.frames):
            img = first if i == 0 else annotate(fr, scale)
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def annotated_mp4(result: VideoResult, scale: int = 2) -> bytes:
    """:func:`write_annotated` into memory, for a download button (OpenCV writes only to files)."""
    with tempfile.TemporaryDirectory() as tmp:
        return write_annotated(result, Path(tmp) / "annotated.mp4", scale).read_bytes()

