"""The engine on a GPU gives what it gives on the CPU (skipped where there is no CUDA)."""

import copy
import dataclasses

import pytest
import timm
import torch

from ats_viz import ATSConfig, run_ats

from conftest import sharpen

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
              pytest.mark.usefixtures("no_grad")]

SETTINGS = [ATSConfig(method="full"), ATSConfig(k=0.5), ATSConfig(k=0.5, method="topk"),
            ATSConfig(k=0.5, method="random"), ATSConfig(method="tome", r=13),
            ATSConfig(method="evit", keep_rate=0.7)]


@pytest.fixture(scope="module")
def nets():
    torch.backends.cudnn.allow_tf32 = False  # the patch embedding's convolution, exact as on the CPU
    torch.manual_seed(0)
    cpu = sharpen(timm.create_model("deit_small_patch16_224").eval())
    gpu = sharpen(timm.create_model("deit_small_patch16_224").eval())
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


@pytest.fixture(scope="module")
def blobs():
    """32 images like conftest's four (noise and one bright square of its own size and place):
    enough that "nearly all images" is a count, not a quarter of four."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 224, 224, generator=g) * 0.3
    for i in range(len(x)):
        r = int(torch.randint(16, 120, (1,), generator=g))
        top, left = (int(v) for v in torch.randint(0, 224 - r, (2,), generator=g))
        x[i, :, top:top + r, left:left + r] += 2.0
    return x


# How ATS may differ between two devices, and why. The scores agree to the last bits only, so
# a sample point lying within that distance of the midpoint between two neighbouring CDF values
# goes to the other neighbour. One moved point changes its stage's kept set by one token (one
# more, one fewer, or another in its place): that stage's count by at most 1. The stages after
# it see other tokens, so their scores move by more than the last bits and their counts may
# drift a little further, and the logits and top-1 are no longer bound. Such near ties are
# rare: with the 98 points of K = 0.5 at each of 9 stages, about 1 image in 80 meets one
# (measured on the CPU, float32 against float64, which differ in the last bits as two devices
# do: 4 of 340 images, 1 of conftest's 4; drift at most 3 tokens at K = 0.5, 4 at K = all).
# So at most MOVED_SHARE of the images may meet one, no count may drift by more than
# MAX_DRIFT, and every other image keeps exactly its counts, logits (to 1e-3), top-1 and GFLOPs.
MOVED_SHARE = 1 / 8  # 4 of 32 where about 0.4 are expected; a fault moves most images
MAX_DRIFT = 6  # tokens, at any block


def assert_same_sampling(a, b):
    """``a`` and ``b``: one ATS batch run on two devices (``b`` already on the CPU)."""
    differ = a.token_counts != b.token_counts  # B x blocks
    moved = differ.any(dim=1)
    print(f"ATS: {int(moved.sum())} of {len(moved)} images met a near tie")
    assert int(moved.sum()) <= MOVED_SHARE * len(moved), (a.token_counts[moved], b.token_counts[moved])
    gap = (a.token_counts - b.token_counts).abs()
    worst = int(gap.max(dim=1).values.argmax())
    assert gap.max() <= MAX_DRIFT, (a.token_counts[worst], b.token_counts[worst])
    same = ~moved
    assert torch.equal(a.logits[same].argmax(1), b.logits[same].argmax(1))
    assert torch.allclose(a.logits[same], b.logits[same], atol=1e-3), (a.logits[same] - b.logits[same]).abs().max()
    assert torch.allclose(a.gflops[same], b.gflops[same])


@pytest.mark.parametrize("config", SETTINGS, ids=lambda c: c.label())
def test_cuda_equals_cpu(nets, images, blobs, config):
    cpu, gpu = nets
    if config.method == "ats":
        a, b = run_ats(cpu, blobs, config), run_ats(gpu, blobs.cuda(), config)
        assert_same_sampling(a, dataclasses.replace(b, logits=b.logits.cpu(), token_counts=b.token_counts.cpu(),
                                                    gflops=b.gflops.cpu()))
        return
    a = run_ats(cpu, images, config)
    b = run_ats(gpu, images.cuda(), config)
    # The other methods keep a fixed number of tokens: the counts are the same by construction.
    assert torch.equal(a.token_counts, b.token_counts.cpu())
    assert torch.allclose(a.logits, b.logits.cpu(), atol=1e-3), (a.logits - b.logits.cpu()).abs().max()
    assert torch.allclose(a.gflops, b.gflops.cpu())


def test_a_cuda_batch_equals_its_images_alone(nets, images):
    _, gpu = nets
    x = images.cuda()
    batch = run_ats(gpu, x, ATSConfig(k=60))
    for i in range(len(x)):
        one = run_ats(gpu, x[i:i + 1], ATSConfig(k=60))
        assert torch.equal(one.token_counts, batch.token_counts[i:i + 1])
        assert torch.allclose(one.logits, batch.logits[i:i + 1], atol=1e-4)


@pytest.mark.parametrize("config", SETTINGS + [ATSConfig(method="pitome")], ids=lambda c: c.label())
def test_a_forward_waits_on_the_gpu_only_where_ats_counts_its_tokens(nets, images, config):
    """Fixed-rate methods know every shape before the run: their forward must never wait on
    the GPU (CUDA's sync debug mode raises on any wait). ATS learns its counts from the data:
    one read-back per stage at most, counted by the warnings of the same mode."""
    import warnings

    _, gpu = nets
    x = images.cuda()
    run_ats(gpu, x, config)  # first-call work (the FLOP probe, allocations) out of the way
    torch.cuda.synchronize()
    if config.method == "ats":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                res = run_ats(gpu, x, config)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        waits = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(waits) <= len(res.stages), [str(w.message) for w in waits]
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = run_ats(gpu, x, config)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert res.logits.is_cuda


def test_ats_in_half_precision_never_takes_cudnn_attention(nets, images):
    """cuDNN's fused attention builds a plan per new shape (tens of milliseconds), and ATS's
    shapes follow the images: in bf16 it ran 100 times slower than the full model where it did.
    Every attention of an ATS forward must be one of the kernels that take any shape."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Attention(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.kernels = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in func.name():
                self.kernels.add(func.name())
            return func(*args, **(kwargs or {}))

    _, gpu = nets
    half = copy.deepcopy(gpu).to(torch.bfloat16)
    with Attention() as seen:
        res = run_ats(half, images.cuda().to(torch.bfloat16), ATSConfig(k=0.5))
    assert seen.kernels and not any("cudnn" in k for k in seen.kernels), seen.kernels
    assert torch.isfinite(res.logits).all()


@pytest.mark.parametrize("config", [ATSConfig(k=0.5, method="topk"), ATSConfig(method="tome", r=13), ATSConfig(k=0.5)],
                         ids=lambda c: c.label())
def test_the_compiled_forward_on_cuda_gives_the_eager_answers(nets, images, config):
    """Compiled (a CUDA graph for the fixed-rate methods): the same costs and, to float noise
    (fused kernels reorder sums), the same logits; replayed twice, the second run's inputs."""
    from ats_viz import compiled

    _, gpu = nets
    x = images.cuda()
    run = compiled.forward(gpu, config)
    first, _ = run(x)
    logits, gflops = run(x.flip(0))  # a replay on other inputs must not return the first's
    eager = run_ats(gpu, x.flip(0), config)
    assert torch.allclose(logits, eager.logits, atol=1e-3)
    assert not torch.allclose(first, logits)
    if config.method != "ats":
        assert torch.equal(gflops, eager.gflops.cpu())


def test_training_on_the_gpu_takes_the_cpus_steps(monkeypatch):
    """The same initial weights, batches and dropped branches (the masks are drawn on the host):
    after two steps the GPU's weights are the CPU's up to rounding. Adam's first steps move a
    weight by about lr times the sign of its gradient, so a gradient within rounding of zero may
    put one weight up to 2 lr a step apart; nearly every weight agrees far closer (masks drawn on
    the GPU would put many weights ~1e-4 apart). Then a step with ATS active and the held-out
    scores run on the GPU as well."""
    from ats_viz.arch import build
    from ats_viz.train import Recipe, heldout_metrics, shapes_spec, train

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the stem's convolutions, as on the CPU
    recipe = Recipe(steps=2, batch=8, warmup=1, seed=0, drop_path=0.5)
    torch.manual_seed(0)
    cpu = build(shapes_spec(width=32, depth=4, heads=2))
    gpu = copy.deepcopy(cpu).cuda()
    train(cpu, recipe, log=lambda s: None)
    train(gpu, recipe, log=lambda s: None)
    got = dict(gpu.named_parameters())
    diffs = torch.cat([(got[k].detach().cpu() - p.detach()).abs().flatten() for k, p in cpu.named_parameters()])
    assert float(diffs.max()) <= 2 * recipe.steps * recipe.lr * 1.01
    assert float((diffs <= 1e-5).float().mean()) >= 0.99
    assert train(gpu, dataclasses.replace(recipe, steps=1, ats=True), log=lambda s: None) == 1
    assert all(bool(p.isfinite().all()) for p in gpu.parameters())
    scored, reference = heldout_metrics(gpu, per_class=1), heldout_metrics(cpu, per_class=1)
    assert scored["images"] == 10 and scored["gflops_full"] == pytest.approx(reference["gflops_full"])
