"""One sweep over N processes (torchrun) against one process, in images per second.

CPU: N processes of one thread each against one process of N threads. CUDA: N processes,
one GPU each, against one process on one GPU. Each run is ``python -m ats_viz evaluate`` as a
user runs it (no cache, the bundled held-out set); the rate is taken from the sweep's own
seconds in results.json (the slowest process's, for a torchrun), so process start-up and
model loading are left out, and is also given over the whole command's wall time. Chunks are
one batch each, so every process has a share even of a small set.
Alternate runs are repeated and the best of each kept: a shared machine drifts.

Usage, from the repository root:
    python -m bench.bench_scale                                     # 2 CPU processes, 200 images
    python -m bench.bench_scale --images 20 --repeats 1             # a quick check that it runs
    python -m bench.bench_scale --device cuda --processes 8 --images 5000 --batch 128 --workers 6
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sweep(processes: int, threads: int, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(sweep seconds, wall seconds) of one run of the command line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launch = [sys.executable, "-m", "ats_viz"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
         "-m", "ats_viz", "--"]
    command = [*launch, "evaluate", "--subset", str(args.images), "--methods", args.methods, "--no-cache",
               "--batch", str(args.batch), "--chunk", str(args.batch), "--workers", str(args.workers), "--device", args.device,
               "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "results.json").read_text())
    assert manifest["world_size"] == processes
    return manifest["seconds"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default="ats,tome", help="with their default ladders, and the full model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.processes
    cpu = args.device == "cpu"
    one = f"1 process, {n} threads" if cpu else "1 process, 1 GPU"
    many = f"{n} processes, 1 thread each" if cpu else f"{n} processes, 1 GPU each"
    best = {one: (float("inf"), float("inf")), many: (float("inf"), float("inf"))}
    with tempfile.TemporaryDirectory(prefix="ats-viz-scale-") as tmp:
        for r in range(args.repeats):
            for name, (procs, threads) in ((one, (1, n if cpu else 1)), (many, (n, 1))):
                s, w = sweep(procs, threads, args, Path(tmp) / f"{r}-{procs}")
                best[name] = (min(best[name][0], s), min(best[name][1], w))
        settings = len(json.loads((Path(tmp) / f"0-{n}" / "results.json").read_text())["settings"])
    print(f"{args.images} images x {settings} settings ({args.methods} and full), batch {args.batch}, "
          f"{args.workers} loading workers, {args.device}; best of {args.repeats}")
    print(f"{'':<30}{'sweep s':>9}{'images/s':>10}{'wall s':>9}{'images/s':>10}")
    for name, (s, w) in best.items():
        print(f"{name:<30}{s:>9.2f}{args.images / s:>10.1f}{w:>9.2f}{args.images / w:>10.1f}")
    print(f"speed-up of {many} (sweep time): {best[one][0] / best[many][0]:.2f}x")


if __name__ == "__main__":
    main()
