"""Video throughput and memory: frames per second and peak RSS, short clip against long clip.

Each clip runs in its own subprocess so that its peak RSS (resource.getrusage) is its own.
The claim checked: at a fixed frame cap, peak memory does not grow with the clip's length
(frames are streamed and shrunk on read), while time grows only with the frames decoded.

    nice -n 15 python bench/bench_video.py                 # 20 s and 60 s of 720p at 30 fps
    nice -n 15 python bench/bench_video.py --quick         # 2 s and 6 s of 360p: a smoke run
    nice -n 15 python bench/bench_video.py --height 2160   # 4K
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_clip(path: Path, seconds: float, height: int, fps: float) -> Path:
    """A textured background sliding under a moving disc, in mp4v (what the app exports too)."""
    width = height * 16 // 9
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((height, width * 2, 3)) * 255).astype(np.uint8), (0, 0), height / 100)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    n = round(seconds * fps)
    for i in range(n):
        x0 = (i * 3) % width
        frame = np.ascontiguousarray(base[:, x0:x0 + width])
        cx = int(width * (0.1 + 0.8 * i / max(n - 1, 1)))
        cv2.circle(frame, (cx, height // 2), height // 6, (0, 60, 230), -1, cv2.LINE_AA)
        writer.write(frame)
    writer.release()
    return path


def child(path: str, model_name: str, max_frames: int, stride: int | None) -> None:
    """Run one clip and print one JSON line: timings and RSS before and after."""
    sys.path.insert(0, str(ROOT))
    from ats_viz.models import load_model
    from ats_viz.video import analyse_video, probe
    from ats_viz.vit import ATSConfig

    model = load_model(model_name)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = analyse_video(model, path, ATSConfig(), stride, max_frames)
    seconds = time.perf_counter() - t0
    kept = sum(len(f.view_jpeg) + sum(s.scores.numel() * 4 + s.kept_mask.numel() * 2 for s in f.result.stages)
               for f in res.frames)
    info = probe(path)
    print(json.dumps({
        "clip_frames": info.frame_count, "size": f"{info.width}x{info.height}", "stride": res.stride,
        "processed": len(res.frames), "seconds": seconds, "rss_model_mb": base,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "kept_kb_per_frame": kept / 1024 / max(len(res.frames), 1),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", type=float, default=20.0, help="seconds of the short clip")
    ap.add_argument("--long", type=float, default=60.0, help="seconds of the long clip")
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--max-frames", type=int, default=90)
    ap.add_argument("--stride", type=int, help="default: spread --max-frames over each clip")
    ap.add_argument("--quick", action="store_true", help="2 s and 6 s of 360p: checks the bench runs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.max_frames, args.stride)
        return
    if args.quick:
        args.short, args.long, args.height = 2.0, 6.0, 360
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in (args.short, args.long):
            path = write_clip(Path(tmp) / f"clip{seconds:g}.mp4", seconds, args.height, args.fps)
            cmd = [sys.executable, __file__, "--child", str(path), "--model", args.model,
                   "--max-frames", str(args.max_frames)] + (["--stride", str(args.stride)] if args.stride else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append({"clip_s": seconds, **json.loads(out.strip().splitlines()[-1])})
    print(f"{'clip':>6} {'size':>10} {'frames':>7} {'stride':>6} {'run':>5} {'time s':>7} {'run fps':>8} "
          f"{'clip fps':>9} {'model MB':>9} {'peak MB':>8} {'kept kB/fr':>10}")
    for r in rows:
        print(f"{r['clip_s']:>5g}s {r['size']:>10} {r['clip_frames']:>7} {r['stride']:>6} {r['processed']:>5} "
              f"{r['seconds']:>7.2f} {r['processed'] / r['seconds']:>8.1f} {r['clip_frames'] / r['seconds']:>9.1f} "
              f"{r['rss_model_mb']:>9.0f} {r['rss_peak_mb']:>8.0f} {r['kept_kb_per_frame']:>10.1f}")
    short, long = rows
    growth = [r["rss_peak_mb"] - r["rss_model_mb"] for r in rows]
    print(f"long / short clip: length x{long['clip_s'] / short['clip_s']:.1f}, "
          f"time x{long['seconds'] / short['seconds']:.2f}, peak RSS x{long['rss_peak_mb'] / short['rss_peak_mb']:.2f} "
          f"(growth over the loaded model: {growth[0]:.0f} MB vs {growth[1]:.0f} MB)")


if __name__ == "__main__":
    main()
