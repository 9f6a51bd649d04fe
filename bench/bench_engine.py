"""Engine speed: does removing tokens save time in proportion to the GFLOPs it saves?

DeiT-S (random weights, attention sharpened so scores are peaked as in a trained model) at
batch 1 and batch 32, ATS at blocks 3-11 with K chosen so that the kept tokens cost about 60%
of the full GFLOPs. Prints, from one run: the GFLOPs ratio, the measured speed-up over the
unpatched timm model, their quotient (goals: >= 0.8 at batch 1, >= 0.65 at batch 32), and
the share of the ATS model's time spent scoring and sampling (goal: < 5%).

    python bench/bench_engine.py [--reps 20]
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from ats_viz import ATSConfig, ats, run_ats


def sharpen(net: torch.nn.Module, factor: float) -> None:
    with torch.no_grad():
        for blk in net.blocks:
            d = blk.attn.qkv.out_features // 3
            blk.attn.qkv.weight[: 2 * d] *= factor


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.6, help="GFLOPs fraction to aim K at")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    net = timm.create_model("deit_small_patch16_224").eval()
    sharpen(net, 3.0)
    g = torch.Generator().manual_seed(0)
    probe = torch.randn(8, 3, 224, 224, generator=g)
    # The K whose mean GFLOPs come nearest the target fraction.
    best_k, best_gap = 196, 1.0
    for k in range(196, 1, -6):
        res = run_ats(net, probe, ATSConfig(k=k))
        gap = abs(float(res.gflops.mean()) / res.full_gflops - args.target)
        if gap < best_gap:
            best_k, best_gap = k, gap
    cfg = ATSConfig(k=best_k)
    print(f"DeiT-S, ATS at blocks 3-11, K = {best_k}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'full ms':>9} {'ATS ms':>9} {'GFLOPs ratio':>13} {'speed-up':>9} {'quotient':>9} {'select %':>9}")
    for batch, reps in ((1, args.reps * 3), (32, max(2, args.reps // 3))):
        x = torch.randn(batch, 3, 224, 224, generator=g)
        t_full = timed(lambda: net(x), reps)
        t_ats = timed(lambda: run_ats(net, x, cfg), reps)
        res = run_ats(net, x, cfg)
        ratio = res.full_gflops / float(res.gflops.mean())
        # Time the scoring and sampling inside one ATS run by wrapping the two functions.
        spent = [0.0]

        def clock(fn):
            def inner(*a, **kw):
                t = time.perf_counter()
                out = fn(*a, **kw)
                spent[0] += time.perf_counter() - t
                return out
            return inner

        orig = ats.significance_scores, ats.ats_select
        ats.significance_scores, ats.ats_select = clock(orig[0]), clock(orig[1])
        try:
            t = time.perf_counter()
            run_ats(net, x, cfg)
            total = time.perf_counter() - t
        finally:
            ats.significance_scores, ats.ats_select = orig
        speed = t_full / t_ats
        print(f"{batch:>5} {t_full * 1e3:>9.1f} {t_ats * 1e3:>9.1f} {ratio:>13.2f} {speed:>9.2f} "
              f"{speed / ratio:>9.2f} {100 * spent[0] / total:>8.1f}%")
    page_work(net, args.reps)


def page_work(deit: torch.nn.Module, reps: int) -> None:
    """What the Image page computes for a new upload once the model is cached: decode and
    preprocess, one ATS run and one full run (goals: < 1 s embedded, < 3 s DeiT-S)."""
    import io

    from PIL import Image

    from ats_viz.data import read_image
    from ats_viz.models import LoadedModel, load_model, wrap_net

    buf = io.BytesIO()
    Image.fromarray((torch.rand(480, 640, 3) * 255).byte().numpy()).save(buf, format="JPEG")
    data = buf.getvalue()
    models: list[tuple[str, LoadedModel]] = [("embedded", load_model("embedded")),
                                             ("DeiT-S", wrap_net(deit, "deit_small_patch16_224"))]
    print("\nImage page work per new upload (640 x 480 JPEG: decode, preprocess, ATS run, full run)")
    for name, loaded in models:
        def upload() -> None:
            x = loaded.prepare(read_image(data, "bench.jpg"))
            run_ats(loaded.net, x, ATSConfig())
            run_ats(loaded.net, x, ATSConfig(method="full"))
        print(f"  {name:<9} {timed(upload, reps) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
