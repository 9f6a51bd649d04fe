"""The engine against the reference behaviour of docs/algorithm.md, on real timm models."""

import pytest
import timm
import torch

from ats_viz import ATSConfig, InputError, patch_vit, run_ats
from ats_viz.cost import fixed_counts
from ats_viz.methods import METHODS



@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def test_no_stage_and_full_equal_plain_timm(deit_tiny, images):
    ref = timm.create_model("deit_tiny_patch16_224").eval()
    ref.load_state_dict(deit_tiny.state_dict())
    want = ref(images)
    assert torch.allclose(run_ats(deit_tiny, images, ATSConfig(method="full")).logits, want, atol=1e-5)
    assert torch.allclose(run_ats(deit_tiny, images, ATSConfig(stages=())).logits, want, atol=1e-5)


def test_batched_equals_per_image(deit_tiny, images):
    cfg = ATSConfig(k=0.5)
    batch = run_ats(deit_tiny, images, cfg)
    final = batch.patch_counts[:, -1]
    assert len(set(final.tolist())) > 1, "precondition: the images keep different token counts"
    for i in range(len(images)):
        one = run_ats(deit_tiny, images[i:i + 1], cfg)
        assert torch.allclose(one.logits[0], batch.logits[i], atol=1e-4)
        for s_one, s_batch in zip(one.stages, batch.stages):
            assert torch.equal(s_one.kept_mask[0], s_batch.kept_mask[i])
        assert one.gflops[0] == pytest.approx(float(batch.gflops[i]))


@pytest.mark.parametrize("method", ["topk", "random"])
def test_baselines_batched_equal_per_image_and_keep_k(deit_tiny, images, method):
    cfg = ATSConfig(k=60, method=method, seed=3)
    batch = run_ats(deit_tiny, images, cfg)
    assert all(int(s.tokens_out.max()) == 60 for s in batch.stages)
    one = run_ats(deit_tiny, images[2:3], cfg)
    assert torch.equal(one.stages[-1].kept_mask[0], batch.stages[-1].kept_mask[2])


def test_deterministic(deit_tiny, images):
    a = run_ats(deit_tiny, images, ATSConfig(k=50))
    b = run_ats(deit_tiny, images, ATSConfig(k=50))
    assert all(torch.equal(x.kept_mask, y.kept_mask) for x, y in zip(a.stages, b.stages))


def test_traces_describe_the_pruning(deit_tiny, images):
    res = run_ats(deit_tiny, images, ATSConfig(k=40))
    assert [s.block for s in res.stages] == list(range(3, 12))
    prev = torch.ones(4, 196, dtype=torch.bool)
    for s in res.stages:
        assert torch.equal(s.present_mask, prev)
        assert not (s.kept_mask & ~s.present_mask).any()  # nothing comes back
        assert torch.allclose(s.scores.sum(1), torch.ones(4), atol=1e-5)
        assert (s.scores[~s.present_mask] == 0).all()
        assert (s.tokens_out <= 40).all()
        # the highest-scoring present token always survives
        top = s.scores.argmax(1)
        assert s.kept_mask[torch.arange(4), top].all()
        prev = s.kept_mask
    assert torch.equal(res.patch_counts[:, -1], res.stages[-1].tokens_out)


def test_budget_forms(deit_tiny, images):
    assert [s.value for s in run_ats(deit_tiny, images[:1], ATSConfig(k=0.25)).stages] == [49] * 9
    assert [s.value for s in run_ats(deit_tiny, images[:1], ATSConfig()).stages] == [196] * 9
    per = (100, 90, 80, 70, 60, 50, 40, 30, 20)
    res = run_ats(deit_tiny, images, ATSConfig(k=per))
    assert [s.value for s in res.stages] == list(per)
    assert all((s.tokens_out <= k).all() for s, k in zip(res.stages, per))
    big = run_ats(deit_tiny, images[:1], ATSConfig(k=3000))  # more points than tokens: allowed
    assert int(big.patch_counts[0, -1]) <= 196
    with pytest.raises(InputError, match="K = 5000 is more than 16 times the 196 patch tokens"):
        run_ats(deit_tiny, images[:1], ATSConfig(k=5000))


def test_smaller_k_fewer_tokens_and_gflops(deit_tiny, images):
    counts, flops = [], []
    for k in (196, 98, 49, 12):
        res = run_ats(deit_tiny, images, ATSConfig(k=k))
        counts.append(float(res.patch_counts[:, -1].float().mean()))
        flops.append(float(res.gflops.mean()))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert flops == sorted(flops, reverse=True) and flops[-1] < res.full_gflops


@pytest.mark.parametrize(
    "cfg, text",
    [
        (ATSConfig(k=0), "K must be at least 2 (got 0)"),
        (ATSConfig(k=1), "K must be at least 2 (got 1)"),
        (ATSConfig(k=-5), "got -5"),
        (ATSConfig(k=0.001), "0.001"),
        (ATSConfig(k=1.5), "1.5"),
        (ATSConfig(stages=(3, 12)), "Stage 12"),
        (ATSConfig(stages=(-1,)), "Stage -1"),
        (ATSConfig(k=(10, 20)), "2 values"),
    ],
)
def test_impossible_settings_name_the_bad_value(deit_tiny, images, cfg, text):
    with pytest.raises(InputError, match=text.replace("(", r"\(").replace(")", r"\)")):
        run_ats(deit_tiny, images[:1], cfg)
    with pytest.raises(InputError):
        patch_vit(deit_tiny, cfg)


def test_an_unknown_method_is_refused_when_the_setting_is_made():
    # Not later, at a run or a lookup that falls through to another method.
    with pytest.raises(InputError, match="Unknown method 'magic': choose one of full, ats"):
        ATSConfig(method="magic")


def test_patch_vit_makes_the_model_call_ats(images):
    torch.manual_seed(1)
    net = timm.create_model("deit_tiny_patch16_224").eval()
    full = net(images)
    patch_vit(net, ATSConfig(k=30))
    assert torch.allclose(net(images), run_ats(net, images).logits)
    patch_vit(net, ATSConfig(method="full"))
    assert torch.allclose(net(images), full, atol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs, prefix",
    [
        ("vit_small_patch16_224", {}, 1),
        ("deit_small_distilled_patch16_224", {}, 2),
        ("vit_small_patch14_reg4_dinov2", {"img_size": 224}, 5),
        ("deit_tiny_patch16_224", {"img_size": 160}, 1),
    ],
)
def test_model_families_keep_their_prefix_tokens(name, kwargs, prefix):
    torch.manual_seed(0)
    net = timm.create_model(name, **kwargs).eval()
    x = torch.randn(2, 3, *net.patch_embed.img_size)
    res = run_ats(net, x, ATSConfig(k=0.5))
    grid = net.patch_embed.grid_size
    assert res.num_prefix == prefix
    assert res.grid == tuple(grid)
    assert res.stages[0].kept_mask.shape == (2, grid[0] * grid[1])
    assert (res.token_counts[:, -1] == res.stages[-1].tokens_out + prefix).all()
    assert [s.block for s in res.stages] == list(METHODS["ats"].default_stages(len(net.blocks)))
    assert torch.allclose(run_ats(net, x, ATSConfig(method="full")).logits, net(x), atol=1e-4)


def test_models_ats_cannot_run_on_are_refused():
    gap = timm.create_model("vit_medium_patch16_reg4_gap_256")
    with pytest.raises(InputError, match="no class token"):
        patch_vit(gap, ATSConfig())
    with pytest.raises(InputError, match="VisionTransformer"):
        patch_vit(torch.nn.Linear(3, 3), ATSConfig())


def test_training_through_ats_gives_gradients(images):
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224", num_classes=3).train()
    with torch.enable_grad():
        loss = run_ats(net, images[:2], ATSConfig(k=20)).logits.sum()
        loss.backward()
    assert net.blocks[11].mlp.fc1.weight.grad.abs().sum() > 0
    assert net.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cfg", [ATSConfig(method="topk", k=0.5), ATSConfig(method="random", k=0.3),
                                 ATSConfig(method="tome"), ATSConfig(method="evit"), ATSConfig(method="pitome"),
                                 ATSConfig(method="full")], ids=lambda c: c.id)
def test_fixed_rate_methods_never_read_the_device_back(cfg):
    """Their shapes are known before the run, so a forward must not wait on the device: on the
    meta device (shapes, no data) any read-back (a count, a bool, a nonzero) raises. ATS reads
    its kept counts back once per stage, so it cannot run there."""
    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224").eval().to("meta")
    x = torch.empty(2, 3, 224, 224, device="meta")
    with torch.no_grad():
        res = run_ats(net, x, cfg)
    assert res.token_counts.tolist() == [fixed_counts(cfg, 12, 196, 1)] * 2
    with pytest.raises(NotImplementedError):
        run_ats(net, x, ATSConfig())


@pytest.mark.parametrize("cfg", [ATSConfig(k=0.5), ATSConfig(method="tome", r=13), ATSConfig(method="evit")],
                         ids=lambda c: c.id)
def test_a_result_brought_to_the_host_keeps_every_stages_view(deit_tiny, images, cfg):
    """The pages run on the server's GPU and keep ``res.cpu()``: each stage's grid views are
    composed through the stages before it, so the copy must keep that chain, not only tensors."""
    res = run_ats(deit_tiny, images, cfg)
    host = res.cpu()
    assert torch.equal(host.logits, res.logits) and torch.equal(host.token_counts, res.token_counts)
    for a, b in zip(res.stages, host.stages):
        assert b.prev is (host.stages[host.stages.index(b) - 1] if b is not host.stages[0] else None)
        for view in ("groups", "kept_mask", "merged_mask", "present_mask", "scores"):
            assert torch.equal(getattr(a, view), getattr(b, view)), view
    assert host.summary(1) == res.summary(1)


@pytest.mark.parametrize("cfg", [ATSConfig(k=0.5), ATSConfig(method="topk", k=0.5), ATSConfig(method="random", k=0.3),
                                 ATSConfig(method="tome"), ATSConfig(method="evit"), ATSConfig(method="pitome")],
                         ids=lambda c: c.id)
def test_a_run_without_traces_gives_the_same_answers_for_fewer_operations(deit_tiny, images, cfg):
    """Timing, sweeps and a patched model draw nothing, so they ask for no traces: the same
    logits (to the bit: the forward's operations are the same ones), counts and costs, no
    stages, and fewer operations dispatched (each one a kernel launch on a GPU)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func] += 1
            return func(*args, **(kwargs or {}))

    run_ats(deit_tiny, images, cfg)  # first-call work (the FLOP probe) out of the way
    with Count() as traced:
        full = run_ats(deit_tiny, images, cfg)
    with Count() as bare:
        lean = run_ats(deit_tiny, images, cfg, traces=False)
    assert torch.equal(lean.logits, full.logits)
    assert torch.equal(lean.token_counts, full.token_counts) and torch.equal(lean.gflops, full.gflops)
    assert full.stages and not lean.stages
    # ATS chooses by the scores and the mask its trace shows, so its trace costs nothing more.
    saves = cfg.method != "ats"
    assert sum(bare.ops.values()) < sum(traced.ops.values()) if saves else bare.ops == traced.ops


@pytest.mark.parametrize("counts, npre", [([3, 1, 0, 3], 1), ([2, 2], 1), ([5], 0), ([0, 4, 2], 2), ([1, 3], 0)])
def test_a_padded_batchs_layout_lists_each_images_real_rows_in_order(counts, npre):
    """The flat indices of each image's prefix and kept tokens in B x (npre + width), as int64
    (what index_select and index_copy_ take, on every platform), and the padding mask; no
    indices where no image is padded."""
    from ats_viz.vit import _padded_layout

    width = max(counts)
    rows, valid = _padded_layout(counts, npre, torch.device("cpu"))
    assert valid.dtype == torch.bool and valid.tolist() == [[j < c for j in range(width)] for c in counts]
    if len(set(counts)) == 1:
        assert rows is None
        return
    expected = [i * (npre + width) + j for i, c in enumerate(counts) for j in range(npre + c)]
    assert rows.dtype == torch.int64 and rows.tolist() == expected
