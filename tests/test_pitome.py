"""PiToMe's merge (ats_viz/pitome.py): the contract every reducer keeps (counts, prefix, sizes,
dest, batches), the authors' rule checked against a plain per-image loop written here, and the
authors' own output on a fixture made by their code."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ats_viz.pitome import (MARGIN_START, pitome_bsm_blocks, pitome_margins, pitome_merge,
                            pitome_r)

VARIANTS = [False, True]  # PiToMe proper, the energy-ranked BSM variant


def _inputs(b=3, n=53, d=8, c=6, seed=0, sized=False, npre=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    metric = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    size = None
    if sized:
        size = torch.randint(1, 6, (b, n, 1), generator=g).double()
        size[:, :npre] = 1
    return x, metric, size


def _groups(dest: torch.Tensor, n_out: int) -> list[list[int]]:
    """For one image: the entering patch tokens each leaving patch token holds."""
    return [sorted((dest == j).nonzero().flatten().tolist()) for j in range(n_out)]


def _loop_rule(metric: torch.Tensor, r: int, margin: float, bsm: bool) -> tuple[list[int], list[list[int]]]:
    """The rule of the module docstring for one image, one token at a time (no batching, no
    gathers): the unmerged tokens in leaving order, then the B tokens with what merged in."""
    p = metric.shape[0]
    m = [v / v.norm() for v in metric]
    cos = [[float(m[i] @ m[j]) for j in range(p)] for i in range(p)]
    elu = lambda t: t if t > 0 else math.exp(t) - 1.0
    energy = [sum(elu(cos[i][j] - margin) for j in range(p)) / p for i in range(p)]
    rank = sorted(range(p), key=lambda i: -energy[i])
    pool = rank if bsm else rank[:2 * r]
    a, b = pool[0::2], pool[1::2]
    best = {i: max(b, key=lambda j: cos[i][j]) for i in a}
    if bsm:
        merged = sorted(a, key=lambda i: -cos[i][best[i]])[:r]
        unmerged = sorted((i for i in a if i not in merged), key=lambda i: -cos[i][best[i]])
    else:
        merged, unmerged = a, rank[2 * r:]
    groups = [[i] for i in unmerged] + [sorted([j] + [i for i in merged if best[i] == j]) for j in b]
    return unmerged, groups


@pytest.mark.parametrize("bsm", VARIANTS)
@pytest.mark.parametrize("n,npre", [(53, 1), (54, 1), (54, 3)])  # odd and even patch counts; class + 2 registers
def test_counts_prefix_sizes_and_dest(bsm, n, npre):
    x, metric, size = _inputs(n=n, sized=True, npre=npre)
    p, r = n - npre, 7
    out = pitome_merge(x, metric, size, r, npre, margin=0.5, bsm=bsm)
    assert out.x.shape == (3, n - r, 8) and out.size.shape == (3, n - r, 1)
    assert torch.equal(out.x[:, :npre], x[:, :npre]) and torch.equal(out.size[:, :npre], size[:, :npre])
    assert torch.equal(out.size.sum(dim=1), size.sum(dim=1))
    assert out.dest.shape == (3, p) and out.scores.shape == (3, p) and out.kept.shape == (3, p)
    assert int(out.dest.min()) >= 0 and int(out.dest.max()) == p - r - 1
    assert (out.kept.sum(dim=1) == p - r).all()
    for i in range(3):
        for j in range(p - r):
            into = (out.dest[i] == j).nonzero().flatten()
            assert len(into) >= 1  # every leaving patch token holds at least one entering token
            w = size[i, npre + into]
            assert torch.allclose(out.x[i, npre + j], (x[i, npre + into] * w).sum(0) / w.sum())
            assert out.size[i, npre + j, 0] == w.sum()
        # A kept token leaves as a token that holds it; only the r merged ones are not kept.
        kept = out.kept[i].nonzero().flatten()
        assert len(set(out.dest[i, kept].tolist())) == p - r


def test_sizes_start_at_one():
    x, metric, _ = _inputs(n=40)
    out = pitome_merge(x, metric, None, 10, 1, margin=0.3)
    assert (out.size.sum(dim=1) == 40).all()
    assert (out.size[:, 1:] - 1).sum(dim=1).flatten().tolist() == [10.0] * 3  # 10 tokens merged away in each image


@pytest.mark.parametrize("bsm", VARIANTS)
def test_r_is_capped_at_half_the_patches_and_zero_is_identity(bsm):
    x, metric, size = _inputs(n=52, sized=True)  # 51 patches
    assert pitome_merge(x, metric, size, 1000, 1, margin=0.5, bsm=bsm).x.shape[1] == 52 - 25
    for r in (0, -3):
        out = pitome_merge(x, metric, size, r, 1, margin=0.5, bsm=bsm)
        assert out.x is x and out.size is size
        assert torch.equal(out.dest, torch.arange(51).expand(3, 51)) and out.kept.all()


@pytest.mark.parametrize("bsm", VARIANTS)
def test_a_batch_gives_each_image_what_it_gets_alone(bsm):
    x, metric, size = _inputs(b=4, n=61, sized=True, seed=3)
    out = pitome_merge(x, metric, size, 12, 1, margin=0.25, bsm=bsm)
    for i in range(4):
        one = pitome_merge(x[i:i + 1], metric[i:i + 1], size[i:i + 1], 12, 1, margin=0.25, bsm=bsm)
        for a, b in zip((one.x, one.size, one.dest, one.scores, one.kept),
                        (out.x, out.size, out.dest, out.scores, out.kept)):
            assert torch.equal(a, b[i:i + 1])


@pytest.mark.parametrize("bsm", VARIANTS)
@pytest.mark.parametrize("seed", range(3))
def test_the_rule_matches_a_plain_loop(bsm, seed):
    x, metric, _ = _inputs(b=2, n=30, seed=seed)
    r, margin = 6, pitome_margins(12)[4 * seed]
    out = pitome_merge(x, metric, None, r, 1, margin=margin, bsm=bsm)
    for i in range(2):
        unmerged, groups = _loop_rule(metric[i, 1:], r, margin, bsm)
        assert _groups(out.dest[i], 29 - r) == groups  # same groups, in the same leaving order
        m = F.normalize(metric[i, 1:], dim=-1)
        energy = F.elu(m @ m.T - margin).mean(dim=-1)
        assert torch.allclose(out.scores[i], energy)
        assert out.kept[i, unmerged].all()


def test_isolated_tokens_are_protected_and_the_cluster_merges():
    # Patches 0-3 point nearly the same way (a cluster: high energy), 4 and 5 are alone.
    e = torch.eye(4, dtype=torch.float64)
    metric = torch.stack([e[0], e[0], e[0] + 0.1 * e[1], e[0] + 0.1 * e[2], e[1], e[3]])
    metric = torch.cat([e[2:3], metric])[None]  # a class token first, most like patch 3
    x = torch.arange(7, dtype=torch.float64).reshape(1, 7, 1)
    out = pitome_merge(x, metric, None, 2, 1, margin=0.5, bsm=False)
    assert out.scores[0, :4].min() > out.scores[0, 4:].max()
    assert out.kept[0, 4:].all() and out.kept[0, :4].sum() == 2
    assert set(out.dest[0, :4].tolist()) == {2, 3}  # the cluster became two tokens, after 4 and 5
    assert out.dest[0, 4:].tolist() == [0, 1]  # protected first, in descending energy (4 leans on patch 2)
    assert out.x[0, :3, 0].tolist() == [0.0, 5.0, 6.0]


def test_gradients_reach_every_entering_token():
    x, metric, size = _inputs(n=20, sized=True)
    x.requires_grad_(True)
    pitome_merge(x, metric, size, 5, 1, margin=0.5).x.sum().backward()
    assert (x.grad.abs().sum(dim=-1) > 0).all()


def test_the_authors_schedules():
    m = pitome_margins(12)
    assert m[0] == MARGIN_START and all(a > b for a, b in zip(m, m[1:])) and m[-1] == pytest.approx(MARGIN_START / 12)
    assert pitome_bsm_blocks(12) == [True] * 6 + [False] * 6
    assert pitome_bsm_blocks(5) == [True] * 3 + [False] * 2
    assert pitome_r(196, 1.0) == 0 and pitome_r(196, 0.5) == 98 and pitome_r(0, 0.9) == 0
    # The same ratio at every block: the kept count shrinks geometrically, never below half.
    t = 196
    for _ in range(12):
        r = pitome_r(t, 0.9)
        assert t - r >= 0.9 * t - 1e-9 and t - r < 0.9 * t + 1
        t -= r


def test_the_authors_merges_on_their_own_fixture():
    """The authors' code (hchautran/PiToMe, algo/pitome/merge.py), run once outside this project
    on small seeded float64 inputs, both variants, with and without sizes: the same tokens
    merge into the same ones, in the same leaving order, to the same values. Float64, so no
    near-tie in energy can rank differently on another machine."""
    doc = json.loads((Path(__file__).parent / "data" / "pitome_authors.json").read_text())
    assert len(doc["cases"]) == 8
    for case in doc["cases"]:
        x = torch.tensor(case["x"], dtype=torch.float64)[None]
        metric = torch.tensor(case["metric"], dtype=torch.float64)[None]
        size = None if case["size"] is None else torch.tensor(case["size"], dtype=torch.float64)[None, :, None]
        r = pitome_r(x.shape[1] - 1, case["ratio"])
        assert r == case["r"]
        out = pitome_merge(x, metric, size, r, 1, case["margin"], bsm=case["bsm"])
        dest = out.dest[0].tolist()
        groups = [[0]] + [[1 + i for i, d in enumerate(dest) if d == j] for j in range(out.x.shape[1] - 1)]
        assert groups == case["groups"], (case["bsm"], case["ratio"])
        assert torch.allclose(out.x[0], torch.tensor(case["merged"], dtype=torch.float64), atol=1e-12)
        assert out.size[0, :, 0].tolist() == case["merged_size"]
