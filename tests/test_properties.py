"""Property tests of the stage math (ats_viz.ats) over arbitrary score vectors and budgets.

What a user relies on, for any image: ATS keeps at most K tokens and at least one, always
the most significant one, and which tokens survive depends on their scores, not on the
order they arrive in or on the padding that shares the batch with them. Top-K keeps
exactly min(K, n) tokens, the largest.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ats_viz.ats import (
    _nearest,
    _normalised_cdf,
    _sample_points,
    ats_pick,
    ats_select,
    topk_select,
)

PROPS = settings(max_examples=150, deadline=None)

budgets = st.integers(min_value=2, max_value=400)


@st.composite
def score_vectors(draw, distinct: bool = False, longest: int = 300) -> torch.Tensor:
    """Non-negative float32 scores of length 1..longest summing to 1 (as significance_scores gives)."""
    n = draw(st.integers(min_value=1, max_value=longest))
    elems = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_infinity=False, width=32)
    if distinct:
        raw = draw(st.lists(elems.filter(lambda v: v > 0), min_size=n, max_size=n, unique=True))
    else:
        # Mixes in exact zeros and repeated values: ties and dead tokens both happen in practice.
        raw = draw(st.lists(st.one_of(elems, st.just(0.0), st.sampled_from([0.25, 0.5])), min_size=n, max_size=n))
    t = torch.tensor(raw, dtype=torch.float32)
    assume(float(t.sum()) > 0)
    t = t / t.sum()
    if distinct:
        assume(len(set(t.tolist())) == n)  # normalising in float32 must not create ties
    return t


def _ats(scores: torch.Tensor, k: int) -> torch.Tensor:
    valid = torch.ones(1, scores.numel(), dtype=torch.bool)
    return ats_select(scores.reshape(1, -1), valid, k)[0]


@PROPS
@given(score_vectors(), budgets)
def test_ats_keeps_between_one_and_k_tokens_including_the_top_one(scores, k):
    kept = _ats(scores, k)
    assert kept.dtype == torch.bool and kept.shape == scores.shape  # a mask over exactly these tokens
    n_kept = int(kept.sum())
    assert 1 <= n_kept <= min(k, scores.numel())
    top = scores.max()
    assert bool((kept & (scores == top)).any()), "the highest-scoring token (or one of the tied maxima) is kept"


@settings(max_examples=400, deadline=None)
@given(score_vectors(), budgets)
def test_the_one_image_numpy_path_keeps_exactly_the_tokens_the_batched_rule_keeps(scores, k):
    """An image run alone on the CPU takes ats_pick; in a batch, ats_select: the same tokens."""
    want = torch.nonzero(_ats(scores, k)).flatten().tolist()
    assert ats_pick(scores.numpy(), k).tolist() == want


@PROPS
@given(score_vectors(longest=60), st.integers(min_value=2, max_value=80))
def test_each_point_picks_the_nearest_cdf_value_exactly_and_the_first_on_a_tie(scores, k):
    """The binary search against the spec's rule, decided in exact rational arithmetic."""
    cdf, _, _ = _normalised_cdf(scores.reshape(1, -1), torch.ones(1, scores.numel(), dtype=torch.bool))
    points = _sample_points(cdf, k)
    values = [Fraction(c) for c in cdf[0].tolist()]
    for p, got in zip(points[0].tolist(), _nearest(cdf, points)[0].tolist()):
        distance = [abs(v - Fraction(p)) for v in values]
        assert got == distance.index(min(distance))


@PROPS
@given(score_vectors(distinct=True), budgets, st.randoms(use_true_random=False))
def test_ats_choice_follows_the_tokens_not_their_order(scores, k, rnd):
    perm = list(range(scores.numel()))
    rnd.shuffle(perm)
    perm = torch.tensor(perm, dtype=torch.long)
    kept = _ats(scores, k)
    kept_permuted = _ats(scores[perm], k)
    assert torch.equal(kept_permuted, kept[perm])


@PROPS
@given(score_vectors(), budgets, st.randoms(use_true_random=False))
def test_ats_kept_scores_do_not_depend_on_arrival_order_even_with_ties(scores, k, rnd):
    perm = list(range(scores.numel()))
    rnd.shuffle(perm)
    permuted = scores[torch.tensor(perm, dtype=torch.long)]
    a = sorted(scores[_ats(scores, k)].tolist())
    b = sorted(permuted[_ats(permuted, k)].tolist())
    assert a == b


@PROPS
@given(score_vectors(), budgets, st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=2**31 - 1))
def test_ats_choice_ignores_padding_in_the_batch(scores, k, pad, seed):
    """An image padded to a larger batch member keeps exactly what it keeps alone."""
    n = scores.numel()
    junk = torch.rand(pad, generator=torch.Generator().manual_seed(seed))
    where = torch.randperm(n + pad, generator=torch.Generator().manual_seed(seed + 1))
    padded = torch.empty(n + pad)
    valid = torch.zeros(n + pad, dtype=torch.bool)
    real, fake = where[:n].sort().values, where[n:]
    padded[real], padded[fake], valid[real] = scores, junk, True
    kept = ats_select(padded.reshape(1, -1), valid.reshape(1, -1), k)[0]
    assert not bool(kept[~valid].any()), "a padding slot is never kept"
    assert torch.equal(kept[real], _ats(scores, k))


@PROPS
@given(score_vectors(), budgets)
def test_topk_keeps_exactly_min_k_n_and_the_largest(scores, k):
    valid = torch.ones(1, scores.numel(), dtype=torch.bool)
    kept = topk_select(scores.reshape(1, -1), valid, k)[0]
    assert int(kept.sum()) == min(k, scores.numel())
    if not bool(kept.all()):
        assert float(scores[kept].min()) >= float(scores[~kept].max())


@PROPS
@given(score_vectors(), budgets)
def test_ats_never_keeps_more_than_topk_and_agrees_on_the_top_token(scores, k):
    """ATS at budget K is never costlier than top-K at the same K (the point of the comparison)."""
    valid = torch.ones(1, scores.numel(), dtype=torch.bool)
    ats_kept = _ats(scores, k)
    topk_kept = topk_select(scores.reshape(1, -1), valid, k)[0]
    assert int(ats_kept.sum()) <= int(topk_kept.sum())
    assert np.isclose(float(scores[ats_kept].max()), float(scores[topk_kept].max()))
