"""ToMe, EViT and PiToMe: hand-checked small cases, the token counts and GFLOPs their authors' code
gives on DeiT-S, and the same engine guarantees as ATS (batches, prefix tokens, LayerScale)."""

import math

import pytest
import timm
import torch

from ats_viz import ATSConfig, InputError, run_ats
from ats_viz.cost import equal_cost, fixed_counts
from ats_viz.merge import evit_keep, tome_merge
from ats_viz.methods import Inflected, tome_schedule

from conftest import sharpen


def _unit(*pairs, dim=4):
    v = torch.zeros(dim)
    for i, a in pairs:
        v[i] = a
    return v


def test_tome_merges_the_most_similar_pairs_in_tomes_order():
    # Positions 0 (class), 1..6. A = 0, 2, 4, 6; B = 1, 3, 5. Position 2 matches 3 exactly,
    # 4 matches 1 at 0.9, 6 matches 5 at 0.5: with r = 2 the first two pairs merge.
    metric = torch.stack([
        _unit((0, 1.0)),  # class: most like position 1, but protected
        _unit((0, 1.0)), _unit((1, 1.0)), _unit((1, 1.0)),
        _unit((0, 0.9), (3, math.sqrt(0.19))), _unit((2, 1.0)), _unit((2, 0.5), (3, math.sqrt(0.75))),
    ])[None]
    x = torch.arange(7, dtype=torch.float32).reshape(1, 7, 1)
    out = tome_merge(x, metric, None, r=2, num_prefix=1)
    # Leaving: class, the unmerged A token (6), then every B token (1, 3, 5) with what merged in.
    assert out.x.flatten().tolist() == [0.0, 6.0, 2.5, 2.5, 5.0]
    assert out.size.flatten().tolist() == [1.0, 1.0, 2.0, 2.0, 1.0]
    assert out.dest.tolist() == [[1, 2, 2, 1, 3, 0]]  # patch tokens 1..6 -> leaving patch tokens
    assert out.kept.tolist() == [[True, False, True, False, True, True]]
    assert out.scores[0, 1] == pytest.approx(1.0) and out.scores[0, 3] == pytest.approx(0.9)
    # Sizes weigh the next merge: a token of 2 pulls twice as hard.
    again = tome_merge(out.x, torch.stack([_unit((0, 1.0))] * 5)[None], out.size, r=1, num_prefix=1)
    assert again.size.sum() == 7


def test_tome_caps_r_at_half_the_tokens_and_protects_every_prefix_token():
    x = torch.randn(2, 9, 8)
    out = tome_merge(x, torch.randn(2, 9, 4), None, r=100, num_prefix=3)  # class + 2 registers
    assert out.x.shape[1] == 9 - (9 - 3) // 2
    assert torch.equal(out.x[:, :3], x[:, :3])  # prefix unchanged and first
    assert tome_schedule(Inflected(13, -0.5), 12) == [19, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7]  # ToMe's parse_r
    assert tome_schedule([4, 4], 4) == [4, 4, 0, 0]


def test_evit_keeps_the_most_attended_tokens_and_fuses_the_rest():
    cls_attn = torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]])
    x = torch.tensor([[[9.0], [1.0], [2.0], [3.0], [4.0], [5.0]]])  # class, then patches 0..4
    out = evit_keep(x, cls_attn, 3, num_prefix=1, fuse=True)  # ceil(0.5 x 5) = 3 kept
    fused = 0.1 * 1.0 + 0.05 * 3.0  # weighted by class attention, not normalised
    assert out.x.flatten().tolist() == pytest.approx([9.0, 2.0, 4.0, 5.0, fused])  # descending attention
    assert out.dest.tolist() == [[3, 0, 3, 1, 2]]
    unfused = evit_keep(x, cls_attn, 3, num_prefix=1, fuse=False)
    assert unfused.x.flatten().tolist() == [9.0, 2.0, 4.0, 5.0] and unfused.dest.tolist() == [[-1, 0, -1, 1, 2]]


@pytest.fixture(scope="module")
def deit_small():
    torch.manual_seed(0)
    return sharpen(timm.create_model("deit_small_patch16_224").eval())


@pytest.mark.parametrize("config, counts, gflops", [
    (ATSConfig(method="tome", r=13), list(range(197, 40, -13)), 2.70),
    (ATSConfig(method="evit", keep_rate=0.7, stages=(3, 6, 9)), [197] * 4 + [140] * 3 + [100] * 3 + [72] * 3, 3.03),
    (ATSConfig(method="evit", keep_rate=0.7, fuse_token=False), [197] * 4 + [139] * 3 + [98] * 3 + [69] * 3, 3.00),
    # PiToMe at its authors' ratio: the counts their DeiT patch gives (hchautran/PiToMe at 550b5de).
    (ATSConfig(method="pitome"), [197, 180, 165, 151, 138, 127, 116, 106, 97, 89, 82, 75, 69], 2.76),
])
def test_deit_small_counts_and_gflops_are_the_authors(deit_small, images, config, counts, gflops):
    with torch.no_grad():
        res = run_ats(deit_small, images, config)
        alone = run_ats(deit_small, images[2:3], config)
    assert res.token_counts.tolist() == [counts] * len(images)
    assert res.gflops.tolist() == pytest.approx([gflops] * len(images), abs=0.005)
    assert res.full_gflops == pytest.approx(4.60, abs=0.005)
    assert torch.allclose(alone.logits, res.logits[2:3], atol=1e-4)  # a batch changes nothing
    assert fixed_counts(config, 12, 196, 1) == counts
    # Every patch is held by exactly one token, and the tokens' sizes add up.
    groups = res.stages[-1].groups
    if config.fuse_token:
        assert (groups >= 0).all() and int(groups.max()) + 1 == counts[-1] - 1


def test_no_reduction_is_timm_exactly_with_layerscale_and_registers():
    torch.manual_seed(0)
    net = timm.create_model("vit_small_patch16_224", init_values=0.3, reg_tokens=4, img_size=64,
                            class_token=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = net(x)
        for cfg in (ATSConfig(method="tome", r=0), ATSConfig(method="evit", keep_rate=1.0)):
            assert torch.allclose(run_ats(net, x, cfg).logits, reference, atol=1e-4)
        merged = run_ats(net, x, ATSConfig(method="tome", r=3))
        kept = run_ats(net, x, ATSConfig(method="evit", keep_rate=0.5))
    # 16 patches and 5 prefix tokens; r is capped at half the patches once they run short.
    assert merged.num_prefix == 5 and merged.token_counts[0].tolist() == [21, 18, 15, 12, 9, 7] + [6] * 7
    assert kept.token_counts[0, -1] == 5 + 4  # 16 patches -> 8+1 -> 5+1 -> 3+1 (ceil), the fused one last


def test_fixed_rate_methods_are_matched_to_a_cost(deit_small, images):
    with torch.no_grad():
        target = float(run_ats(deit_small, images[:1], ATSConfig()).gflops[0])
        for method in ("tome", "evit", "topk", "random"):
            cfg, predicted = equal_cost(deit_small, method, target)
            res = run_ats(deit_small, images[:1], cfg)
            assert float(res.gflops[0]) == pytest.approx(predicted)  # the prediction is what runs
            assert abs(predicted - target) < 0.1, (method, predicted, target)
    with pytest.raises(ValueError):
        equal_cost(deit_small, "ats", target)


def test_impossible_settings_of_the_new_methods_are_refused(deit_small, images):
    for cfg, sentence in ((ATSConfig(method="tome", r=-1), "r = -1 is impossible"),
                          (ATSConfig(method="evit", keep_rate=1.5), "keep rate 1.5 is impossible"),
                          (ATSConfig(method="evit", keep_rate=(0.7, 0.5)), "gives 2 values but there are 3 stages")):
        with pytest.raises(InputError, match=sentence):
            run_ats(deit_small, images[:1], cfg)
