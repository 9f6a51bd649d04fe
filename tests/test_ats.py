"""The sampling rule of docs/algorithm.md (ATS, step 3), on hand-made score vectors."""

import pytest
import torch

from ats_viz import ats


def keep(scores, k):
    s = torch.tensor(scores, dtype=torch.float32).reshape(1, -1)
    s = s / s.sum()
    kept = ats.ats_select(s, torch.ones_like(s, dtype=torch.bool), k)
    return sorted(torch.nonzero(kept[0]).flatten().tolist())


def test_one_dominant_token_and_the_spec_walkthrough():
    # Nine tokens of 0.01 and one of 0.91: normalised CDF 0, 1/99, ..., 8/99, 1.
    # Points at 1/99, 0.34, 0.67, 1 pick sorted positions 1, 8, 9, 9: three tokens survive.
    # Scramble the order the tokens arrive in: the dominant one sits at index 4.
    scores = [0.01] * 9
    scores.insert(4, 0.91)
    kept = keep(scores, 4)
    assert 4 in kept
    # Sorted positions 1 and 8 among the nine equal tokens are, by the stable sort,
    # the 2nd and the 9th of them in arrival order: original indices 1 and 9.
    assert kept == [1, 4, 9]


def test_highest_token_always_kept_and_zero_cdf_token_never():
    scores = [5, 1, 3, 2, 4]
    kept = keep(scores, 2)
    # K = 2: points at y0 and 1, the second and the top token in sorted order.
    assert kept == [0, 3]


def test_k_above_the_token_count_keeps_each_token_once():
    # Uniform scores: the normalised CDF is 0, 1/9, ..., 1; the lowest token sits at 0,
    # below y0, so even 50 points pick only the other nine.
    kept = keep([1.0] * 10, 50)
    assert kept == list(range(1, 10))


def test_smaller_k_keeps_fewer_tokens():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 196, generator=g) ** 4
    s = s / s.sum(1, keepdim=True)
    valid = torch.ones_like(s, dtype=torch.bool)
    counts = [int(ats.ats_select(s, valid, k).sum(1).max()) for k in (196, 98, 49, 12)]
    assert counts == sorted(counts, reverse=True) and counts[-1] <= 12 and counts[0] < 196


def test_single_token_is_kept():
    s = torch.tensor([[1.0]])
    assert ats.ats_select(s, torch.ones_like(s, dtype=torch.bool), 5).tolist() == [[True]]


def test_padding_never_changes_the_choice():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(1, 30, generator=g) ** 3
    s = s / s.sum()
    alone = ats.ats_select(s, torch.ones_like(s, dtype=torch.bool), 10)
    padded = torch.cat([s, torch.rand(1, 7, generator=g)], dim=1)
    valid = torch.cat([torch.ones(1, 30), torch.zeros(1, 7)], dim=1).bool()
    both = ats.ats_select(padded, valid, 10)
    assert torch.equal(both[:, :30], alone) and not both[:, 30:].any()


def test_sampling_picture_matches_the_selection():
    s = torch.tensor([0.05, 0.4, 0.1, 0.05, 0.3, 0.1])
    pic = ats.sampling_picture(s, 4)
    chosen = sorted(set(pic.order[pic.picks].tolist()))
    kept = ats.ats_select(s[None], torch.ones(1, 6, dtype=torch.bool), 4)
    assert chosen == torch.nonzero(kept[0]).flatten().tolist()
    assert pic.points[0] > 0 and pic.points[-1] == pytest.approx(1.0)
    assert pic.cdf[0] == 0 and pic.cdf[-1] == pytest.approx(1.0)


def test_topk_and_random_keep_exactly_k():
    s = torch.tensor([[0.1, 0.5, 0.05, 0.2, 0.15]])
    valid = torch.ones_like(s, dtype=torch.bool)
    assert torch.nonzero(ats.topk_select(s, valid, 2)[0]).flatten().tolist() == [1, 3]
    pos = torch.arange(5)[None]
    keys = ats.random_keys(5, seed=0, stage=3)
    r = ats.random_select(pos, valid, 3, keys)
    assert int(r.sum()) == 3
    assert torch.equal(r, ats.random_select(pos, valid, 3, ats.random_keys(5, seed=0, stage=3)))


def test_the_engines_fixed_rate_choice_is_the_masks_in_grid_order():
    """Fixed-rate stages take top_order's indices, not topk_select's mask: the same tokens, ties
    included (both ask torch.topk), ascending as the engine gathers them."""
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (16, 40), generator=g).float()  # many ties
    valid = torch.ones_like(s, dtype=torch.bool)
    for k in (1, 7, 20, 40, 50):
        order = ats.top_order(s, k)
        assert order.shape == (16, min(k, 40)) and bool((order.diff(dim=1) > 0).all())
        mask = torch.zeros_like(valid).scatter_(1, order, True)
        assert torch.equal(mask, ats.topk_select(s, valid, k))


def test_scores_follow_the_formula():
    # Two heads, three patches: S_j = (sum_h A[h, CLS, j]) * ||v_j||, normalised.
    attn = torch.tensor([[[0.2, 0.3, 0.1], [0.1, 0.1, 0.4]]])
    v = torch.tensor([[[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]]])
    s = ats.significance_scores(attn, v, torch.ones(1, 3, dtype=torch.bool))
    raw = torch.tensor([0.3 * 5, 0.4 * 1, 0.5 * 1])
    assert torch.allclose(s[0], raw / raw.sum())


def test_an_image_whose_tokens_all_score_zero_samples_uniformly():
    # Image 0: every value vector is zero (degenerate weights), two of its four patches padding.
    # Image 1: a normal image. Scores sum to 1 over present patches, 0 on padding, either way;
    # image 2 has no patch left at all: 0 everywhere, never NaN.
    attn = torch.tensor([[[0.2, 0.3, 0.1, 0.4]], [[0.1, 0.2, 0.3, 0.4]], [[0.1, 0.2, 0.3, 0.4]]])
    v = torch.stack([torch.zeros(4, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]]),
                     torch.ones(4, 2)])
    valid = torch.tensor([[True, False, True, False], [True, True, True, True], [False] * 4])
    s = ats.significance_scores(attn, v, valid)
    assert s[0].tolist() == [0.5, 0.0, 0.5, 0.0] and s[2].tolist() == [0.0] * 4
    raw = torch.tensor([0.1 * 1, 0.2 * 2, 0.3 * 3, 0.4 * 4])
    assert torch.allclose(s[1], raw / raw.sum(), rtol=1e-6, atol=0)
    # so sampling still has a CDF to walk (no NaN, no padding kept): on a uniform CDF over two
    # patches the first sorts to a normalised CDF of 0 and is never kept, the second is
    assert ats.ats_select(s[:2], valid[:2], 2)[0].tolist() == [False, False, True, False]
