"""The procedural scenes the embedded model learns and the app shows on a fresh machine.

A scene holds 1 to 8 objects of ten shape classes, each class with its own outline and its own
fill texture, on a cluttered background (gradients, low-frequency texture, noise, distractor
strokes that belong to no class); its label is the kind that occurs most often. So the evidence
for a label lies in several places of the image and its amount varies from scene to scene, as
on real photos under a pretrained ViT: a busy scene needs more tokens than a simple one, and a
tight budget costs accuracy. Every image is a pure function of its seed, so the same seed gives
the same bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross",
    "ring", "hexagon", "crescent", "arrow", "heart",
)
SIZE = 224
# The bundled evaluation set: images (HELDOUT_SEED, class, i), i < HELDOUT_PER_CLASS. Training draws
# 4-tuple seeds, a disjoint space. The seed was drawn (secrets.randbelow) after the shipped scenes
# model was trained, and nothing was changed after it was scored.
HELDOUT_SEED = 52361
HELDOUT_PER_CLASS = 200
MAX_OBJECTS = 8  # a scene holds 1 to MAX_OBJECTS objects
MIN_RADIUS = 16.0  # the smallest object still shows its texture in whole patches
# The share of the image a scene's objects cover (as discs): drawn from COVERAGE for one object,
# each further object adding COVERAGE_STEP, as far as they can be placed apart
COVERAGE = (0.2, 0.5)
COVERAGE_STEP = 0.05
MAX_RADIUS = 0.42  # of the image's side: the largest single object still fits inside it
_SS = 2  # shapes are drawn at twice the size and shrunk, for smooth edges


def _polygon(name: str) -> np.ndarray:
    """The outline of a polygonal shape in unit coordinates (radius about 1)."""
    if name == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if name == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a)], 1) * 1.05
    if name == "hexagon":
        a = np.deg2rad(np.arange(6) * 60)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if name == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([np.cos(a) * r, np.sin(a) * r], 1)
    if name == "cross":
        w = 0.3
        return np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
                         [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]])
    if name == "arrow":
        return np.array([[-1, -0.25], [0.15, -0.25], [0.15, -0.7], [1, 0],
                         [0.15, 0.7], [0.15, 0.25], [-1, 0.25]])
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], 1) / 16.5
    raise KeyError(name)


def shape_mask(name: str, center: tuple[float, float], radius: float, angle: float,
               size: int = SIZE, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A float mask in [0, 1] of one shape, antialiased: the whole size x size image, or only
    its ``box`` (x0, y0, x1, y1), which is all a scene needs to draw one of its objects."""
    x0, y0, x1, y1 = box or (0, 0, size, size)
    big = np.zeros(((y1 - y0) * _SS, (x1 - x0) * _SS), np.uint8)
    cx, cy, r = (center[0] - x0) * _SS, (center[1] - y0) * _SS, radius * _SS

    def disc(dx: float, dy: float, rr: float, value: int) -> None:
        cv2.circle(big, (round(cx + dx), round(cy + dy)), max(1, round(rr)), value, -1, cv2.LINE_AA)

    if name == "circle":
        disc(0, 0, r, 255)
    elif name == "ring":
        disc(0, 0, r, 255)
        disc(0, 0, r * 0.55, 0)
    elif name == "crescent":
        disc(0, 0, r, 255)
        disc(r * 0.45 * math.cos(angle), r * 0.45 * math.sin(angle), r * 0.85, 0)
    else:
        pts = _polygon(name) * r
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = pts @ rot.T + [cx, cy]
        cv2.fillPoly(big, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    return cv2.resize(big, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _hsv_colour(h: float, s: float, v: float) -> np.ndarray:
    px = np.array([[[h * 179, s * 255, v * 255]]], np.uint8)
    return cv2.cvtColor(px, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def background(rng: np.random.Generator, clutter: float = 1.0, size: int = SIZE) -> np.ndarray:
    """A muted, cluttered background (float32 RGB in 0..255); clutter in [0, 1] scales the mess."""
    c0 = _hsv_colour(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.75))
    c1 = _hsv_colour(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.75))
    a = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    g = np.cos(a) * ramp[None, :] + np.sin(a) * ramp[:, None]
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    img = c0 + (c1 - c0) * g[..., None]
    # Low-frequency texture: a coarse random grid blown up smoothly.
    coarse = rng.normal(0, 22 * clutter, (rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
    img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    # Distractor strokes: thin lines and arcs that belong to no class.
    for _ in range(int(rng.integers(2, 9) * clutter)):
        col = tuple(float(x) for x in _hsv_colour(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.2, 0.9)))
        p = rng.integers(0, size, 4)
        if rng.random() < 0.5:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, int(rng.integers(1, 3)), cv2.LINE_AA)
        else:
            ax = (int(rng.integers(10, 60)), int(rng.integers(10, 60)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, (int(p[0]), int(p[1])), ax, float(rng.uniform(0, 180)), start,
                        start + float(rng.uniform(40, 160)), col, int(rng.integers(1, 3)), cv2.LINE_AA)
    img += rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(10 * clutter)
    return img


@dataclass(frozen=True)
class ShapeSpec:
    """Where and how one object is drawn."""

    label: int
    center: tuple[float, float]
    radius: float
    angle: float
    colour: tuple[float, float, float]


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    return tuple(float(c) for c in _hsv_colour(rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0)))


@dataclass(frozen=True)
class Scene:
    """One image's objects and its label: the kind that occurs most often, strictly."""

    label: int
    objects: tuple[ShapeSpec, ...]


def random_scene(rng: np.random.Generator, label: int | None = None, objects: int | None = None,
                 max_objects: int = MAX_OBJECTS, size: int = SIZE) -> Scene:
    """``objects`` shapes (1 to ``max_objects`` when not given), the label's kind the most often.

    The label's kind occurs ``lead`` times, 2 to all of them (a single object is its own
    label), and every other kind at most ``lead - 1`` times, so the label is never a tie but
    can win by one. The objects of a scene share one size, each within 15% of it, and together
    cover a large share of the image (see COVERAGE), shrunk together where they would not stand
    apart: the class is then a matter of how much of the image each kind covers, evidence spread
    over many patches, and a busy scene has more of it.
    """
    n = objects or int(rng.integers(1, max_objects + 1))
    label = int(rng.integers(len(CLASSES))) if label is None else label
    lead = 1 if n == 1 else int(rng.integers(2, n + 1))
    kinds, counts = [label] * lead, {label: lead}
    for _ in range(n - lead):
        kind = int(rng.choice([c for c in range(len(CLASSES)) if counts.get(c, 0) < lead - 1]))
        counts[kind] = counts.get(kind, 0) + 1
        kinds.append(kind)
    rng.shuffle(kinds)
    # As a photo's subject does, the objects cover much of the image: with a few small ones (10%
    # of it on average) a small ViT's class token read a handful of patches and ATS dropped 60%
    share = rng.uniform(*COVERAGE) + COVERAGE_STEP * (n - 1)
    base = min(MAX_RADIUS * size, max(MIN_RADIUS, size * math.sqrt(share / (n * math.pi))))
    scales = rng.uniform(0.85, 1.15, n)
    while True:  # a scene too crowded to place shrinks all its objects together, so they keep one size
        placed = _place(rng, kinds, base * scales, size)
        if placed is not None:
            return Scene(label, placed)
        base *= 0.95


def _place(rng: np.random.Generator, kinds: list[int], radii: np.ndarray, size: int) -> tuple[ShapeSpec, ...] | None:
    """Objects of these kinds and radii at random places, apart from each other; None where one
    found no place in 200 tries."""
    placed: list[ShapeSpec] = []
    for kind, r in zip(kinds, radii.tolist()):
        for _ in range(200):
            c = rng.uniform(r, size - r, 2)
            if all(math.dist(c, o.center) >= r + o.radius + 4 for o in placed):
                break
        else:
            return None
        placed.append(ShapeSpec(kind, (float(c[0]), float(c[1])), r, float(rng.uniform(0, 2 * np.pi)), _colour(rng)))
    return tuple(placed)


def fill_pattern(label: int, center: tuple[float, float], angle: float, radius: float,
                 size: int = SIZE, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The class's fill pattern (float 0..1) in the object's own frame, over the image or its ``box``.

    Each class has its own texture as well as its own outline: the texture is visible in
    every 16 px patch of the object, which lets a small ViT learn the task from tens of
    thousands of images instead of hundreds of thousands, and ties the class to the object's
    patches, the tokens ATS should keep.
    """
    x0, y0, x1, y1 = box or (0, 0, size, size)
    x = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(center[0])
    y = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(center[1])
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u, v = x * c + y * s, -x * s + y * c
    tau = np.float32(2 * np.pi)
    if label == 0:  # solid
        return np.ones((y1 - y0, x1 - x0), np.float32)
    if label == 1:  # fine stripes
        return (np.sin(tau * u / 6) > 0).astype(np.float32)
    if label == 2:  # small dots
        return ((np.mod(u, 8) - 4) ** 2 + (np.mod(v, 8) - 4) ** 2 > 5).astype(np.float32)
    if label == 3:  # checker
        return (np.mod(np.floor(u / 7) + np.floor(v / 7), 2)).astype(np.float32)
    if label == 4:  # plus signs (not stripes: seen through a few patches, stripes read as a crescent's spokes)
        du, dv = np.abs(np.mod(u, 14) - 7), np.abs(np.mod(v, 14) - 7)
        return (~(((du < 1.3) & (dv < 3.8)) | ((dv < 1.3) & (du < 3.8)))).astype(np.float32)
    if label == 5:  # concentric rings
        return (np.sin(tau * np.sqrt(u * u + v * v) / 8) > 0).astype(np.float32)
    if label == 6:  # grid lines
        return ((np.mod(u, 9) > 2) & (np.mod(v, 9) > 2)).astype(np.float32)
    if label == 7:  # spokes, as many as keep them about 10 px apart across the crescent's body
        # (a fixed count left a large crescent's patches one plain band each: read alone, as
        # ATS reads them, they said circle or arrow)
        return (np.sin(max(4, round(0.44 * radius)) * np.arctan2(v, u)) > 0).astype(np.float32)
    if label == 8:  # large dots
        return ((np.mod(u, 14) - 7) ** 2 + (np.mod(v, 14) - 7) ** 2 > 16).astype(np.float32)
    # zigzag
    return (np.sin(tau * (u + 3 * np.abs(np.mod(v, 8) - 4)) / 9) > 0).astype(np.float32)


def compose(bg: np.ndarray, objects: Sequence[ShapeSpec]) -> np.ndarray:
    """Paint the objects onto a background, each with a dark rim so it stands out (uint8 RGB).

    Each object is drawn in its own box only (its extent, 1.2 radii for the heart, and room
    for the rim's blur), so a scene of eight costs little more than one.
    """
    img, size = bg.copy(), bg.shape[0]
    for spec in objects:
        reach = spec.radius * 1.25 + 6
        box = (max(0, math.floor(spec.center[0] - reach)), max(0, math.floor(spec.center[1] - reach)),
               min(size, math.ceil(spec.center[0] + reach)), min(size, math.ceil(spec.center[1] + reach)))
        x0, y0, x1, y1 = box
        m = shape_mask(CLASSES[spec.label], spec.center, spec.radius, spec.angle, size, box)
        rim = np.clip(cv2.GaussianBlur(m, (0, 0), 1.5) * 1.6 - m, 0, 1)
        shade = 0.4 + 0.6 * fill_pattern(spec.label, spec.center, spec.angle, spec.radius, size, box=box)
        fill = np.array(spec.colour, np.float32) * shade[..., None]
        part = img[y0:y1, x0:x1] * (1 - rim[..., None]) + 20 * rim[..., None]
        img[y0:y1, x0:x1] = part * (1 - m[..., None]) + fill * m[..., None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def draw(seed: int | tuple[int, ...], label: int | None = None, objects: int | None = None,
         clutter: float = 1.0, max_objects: int = MAX_OBJECTS) -> tuple[np.ndarray, Scene]:
    """One scene (224 x 224 x 3 uint8 RGB) and what is in it, a pure function of its arguments."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, label, objects, max_objects)
    return compose(background(rng, clutter), scene.objects), scene


def sample(seed: int | tuple[int, ...], label: int | None = None, clutter: float = 1.0,
           max_objects: int = MAX_OBJECTS) -> tuple[np.ndarray, int]:
    """One image and its label (see :func:`draw`)."""
    img, scene = draw(seed, label, clutter=clutter, max_objects=max_objects)
    return img, scene.label


def file_name(kind: str, index: int, objects: int) -> str:
    """A written scene's file name: its class, its index and how many objects it holds."""
    return f"{kind}_{index:05d}_{objects}obj.png"


def objects_in(name: str) -> int | None:
    """The number of objects a file written by :func:`write_imagefolder` holds, from its name."""
    found = _OBJECTS.search(name)
    return int(found.group(1)) if found else None


_OBJECTS = re.compile(r"_(\d+)obj\.png$")


def write_imagefolder(out: str | Path, per_class: int, seed: int) -> Path:
    """Write ``per_class`` scenes per class as an ImageFolder named by the model's classes."""
    out = Path(out)
    for ci, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img, scene = draw((seed, ci, i), label=ci)
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            (folder / file_name(name, i, len(scene.objects))).write_bytes(buf.tobytes())
    return out


def video_frames(seed: int, frames: int = 48, size: int = SIZE) -> Iterator[np.ndarray]:
    """A short clip: a scene that fills up, one turning object arriving after another until
    there are eight, so the evidence grows over the clip, the leading kind can change, and the
    tokens ATS keeps follow both."""
    rng = np.random.default_rng(seed)
    bg = background(rng, 1.0, size)
    scene = random_scene(rng, objects=MAX_OBJECTS, size=size)
    for f in range(frames):
        t = f / max(frames - 1, 1)
        shown = scene.objects[:1 + min(MAX_OBJECTS - 1, int(t * MAX_OBJECTS))]
        frame_noise = np.random.default_rng((seed, f)).normal(0, 4, bg.shape).astype(np.float32)
        yield compose(bg + frame_noise, [replace(o, angle=o.angle + 2.0 * t) for o in shown])


def write_video(path: str | Path, seed: int = 0, frames: int = 48, fps: float = 12.0) -> Path:
    """Write :func:`video_frames` as an MP4 that OpenCV can read back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE, SIZE))
    try:
        for frame in video_frames(seed, frames):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path
