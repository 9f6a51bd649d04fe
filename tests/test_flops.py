"""GFLOPs: the paper's 4.6 for DeiT-S, torch's counter on the unpruned model, per-image counts."""

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from ats_viz import ATSConfig, run_ats
from ats_viz.flops import block_macs

pytestmark = pytest.mark.usefixtures("no_grad")


def test_deit_small_is_4_6_gflops():
    net = timm.create_model("deit_small_patch16_224").eval()
    res = run_ats(net, torch.randn(1, 3, 224, 224), ATSConfig(method="full"))
    assert res.full_gflops == pytest.approx(4.6, rel=0.01)
    assert float(res.gflops[0]) == pytest.approx(res.full_gflops)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_small_distilled_patch16_224"])
def test_matches_torch_flop_counter_on_the_unpruned_model(name):
    net = timm.create_model(name).eval()
    for blk in net.blocks:  # the explicit matmul path, which the counter sees in full
        blk.attn.fused_attn = False
    x = torch.randn(1, 3, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x)
    ours = run_ats(net, x, ATSConfig(method="full")).full_gflops
    assert ours == pytest.approx(counter.get_total_flops() / 2 * 1e-9, rel=1e-3)


def test_pruned_images_count_their_own_tokens(deit_tiny, images):
    res = run_ats(deit_tiny, images, ATSConfig(k=49))
    full = run_ats(deit_tiny, images[:1], ATSConfig(method="full")).gflops[0]
    d, m = 192, 768
    for i in range(len(images)):
        n = res.token_counts[i]
        blocks = sum(float(block_macs(n[b:b + 1], n[b + 1:b + 2], d, d, m)) for b in range(12))
        full_blocks = 12 * float(block_macs(torch.tensor([197]), torch.tensor([197]), d, d, m))
        # same embedding and head as the full model; only the blocks' share changes
        assert float(res.gflops[i]) == pytest.approx(float(full) - (full_blocks - blocks) * 1e-9)
        assert res.gflops[i] < full
    assert len(set(res.gflops.tolist())) > 1


def _linear_flops(net, x, cfg) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        res = run_ats(net, x, cfg)
    ops = counter.get_flop_counts()["Global"]
    return sum(n for op, n in ops.items() if op in (torch.ops.aten.addmm, torch.ops.aten.mm)), res


def test_a_batch_computes_only_the_tokens_its_images_keep(deit_tiny, images):
    """ATS pads a batch to its largest kept set, but the linear layers and the MLP (about 90% of
    DeiT's FLOPs) see only the real tokens: a batch's matrix products are exactly the sum of its
    images' products alone, however unequal their counts. Integer FLOP counts, so exact."""
    cfg = ATSConfig(k=0.5)
    batch_flops, batch = _linear_flops(deit_tiny, images, cfg)
    assert len(set(batch.patch_counts[:, -1].tolist())) > 1, "precondition: unequal kept counts"
    alone = [_linear_flops(deit_tiny, images[i:i + 1], cfg) for i in range(len(images))]
    assert torch.equal(torch.cat([r.token_counts for _, r in alone]), batch.token_counts)
    assert batch_flops == sum(f for f, _ in alone)
