"""The seam every method goes through: a reducer registered once is run by the engine, costed,
matched at equal cost and named, with nothing else changed; and a setting has one identity."""

import pytest
import torch

from ats_viz import ATSConfig, InputError, run_ats
from ats_viz import methods
from ats_viz.cost import equal_cost, fixed_counts
from ats_viz.merge import Reduced
from ats_viz.methods import METHODS, Inflected, Param, Reducer, Where
from ats_viz.methods.merging import tome_schedule
from ats_viz.setting import from_text


class KeepFirst(Reducer):
    """A toy method from outside the package: after the attention, keep the first n patch tokens."""

    name, label, colour = "keepfirst", "keep first", (0, 0, 0)
    param = Param("k", "K", lambda s: int(s), "40,20", "how many patch tokens to keep")
    where = Where.TOKENS
    evidence = "position"

    def default_stages(self, depth):
        return (depth // 2,)

    def stage_values(self, value, stages, depth, num_patches):
        return [value if value is not None else num_patches // 2] * len(stages)

    def tokens_out(self, patches, value, config):
        return min(value, patches)

    def candidates(self, num_patches):
        return list(range(1, num_patches + 1))

    def reduce(self, inp, x, value, config):
        b, p = x.shape[0], x.shape[1] - inp.num_prefix
        n = self.tokens_out(p, value, config)
        index = torch.arange(p).expand(b, p)
        return Reduced(x[:, :inp.num_prefix + n], None, torch.where(index < n, index, -1),
                       -index.float(), index < n)


@pytest.fixture
def keepfirst(monkeypatch):
    monkeypatch.setitem(METHODS, "keepfirst", KeepFirst())
    return METHODS["keepfirst"]


def test_a_method_added_through_the_registry_runs_costs_and_matches(deit_tiny, images, keepfirst):
    cfg = ATSConfig(method="keepfirst", k=50)
    with torch.no_grad():
        res = run_ats(deit_tiny, images[:2], cfg)
        full = run_ats(deit_tiny, images[:2], ATSConfig(method="full"))
    assert res.patch_counts[0].tolist() == [196] * 7 + [50] * 6  # block 6 of 12 reduces, 50 leave
    assert fixed_counts(cfg, 12, 196, 1) == res.token_counts[0].tolist()
    assert torch.equal(res.stages[0].kept_mask[0], torch.arange(196) < 50)
    assert float(res.gflops[0]) < float(full.gflops[0])
    # Equal cost searches its candidates, and what it predicts is what runs.
    matched, predicted = equal_cost(deit_tiny, "keepfirst", float(res.gflops[0]))
    assert matched.k == 50 and predicted == pytest.approx(float(res.gflops[0]))
    assert cfg.id == "keepfirst K=50" and from_text("keepfirst", "", "50") == cfg


@pytest.mark.parametrize("name", [n for n in METHODS if METHODS[n].reduces and not METHODS[n].adaptive])
def test_every_fixed_rate_method_leaves_the_counts_its_rule_says(deit_tiny, images, name):
    """tokens_out is the one rule: what the engine leaves is what the cost model predicts,
    at several values of the parameter, ladder ends included."""
    method = METHODS[name]
    for value in methods.parse_ladder(name, method.param.ladder):
        cfg = ATSConfig(method=name, **{method.param.field: value})
        with torch.no_grad():
            res = run_ats(deit_tiny, images[:2], cfg)
        counts = fixed_counts(cfg, 12, 196, 1)
        assert res.token_counts.tolist() == [counts] * 2, cfg.id
        # What each stage's choice actually left (its trace, from the kept tokens or the merges),
        # not only the count the engine carried on: a reducer that keeps other than its rule fails.
        for stage in res.stages:
            assert stage.tokens_out.tolist() == [counts[stage.block + 1] - 1] * 2, (cfg.id, stage.block)


def test_ats_counts_are_the_images_own():
    with pytest.raises(ValueError, match="depend on the image"):
        fixed_counts(ATSConfig(), 12, 196, 1)


def test_settings_that_differ_only_in_stages_have_different_ids():
    a, b = ATSConfig(k=0.5), ATSConfig(k=0.5, stages=(3, 4, 5, 9))
    assert a.id == "ats K=0.5" and b.id == "ats K=0.5 stages=3-5,9" and a != b
    assert ATSConfig(method="random", k=0.5, seed=3).id == "random K=0.5 seed=3"
    assert ATSConfig(method="evit", fuse_token=False).id == "evit keep=0.7 unfused"
    assert ATSConfig(method="full").id == "full"


def test_fields_a_method_does_not_read_do_not_split_its_identity():
    # EViT's fusion means nothing to ATS, so these are one setting: equal, one hash, one id.
    assert ATSConfig(k=0.5, fuse_token=False, r=4) == ATSConfig(k=0.5)
    assert hash(ATSConfig(method="tome", seed=9)) == hash(ATSConfig(method="tome"))
    assert ATSConfig(method="random", seed=2) != ATSConfig(method="random", seed=3)


def test_one_setting_has_one_id_and_two_settings_two():
    # ToMe's per-block list and one r per stage are different settings, with different ids
    # (the list leaves blocks 5 and 6 unmerged: its r is for blocks 0 and 1).
    per_block, per_stage = ATSConfig(method="tome", r=[13, 13], stages=(5, 6)), ATSConfig(method="tome", r=(13, 13),
                                                                                         stages=(5, 6))
    assert per_block.id == "tome r=13,13/block stages=5-6" and per_stage.id == "tome r=13,13 stages=5-6"
    assert len({per_block, per_stage}) == 2  # both hashable
    # The same setting written two ways is one.
    assert ATSConfig(k=0.5, stages=(9, 3)) == ATSConfig(k=0.5, stages=(3, 9))
    assert ATSConfig(k=(0.5,)) == ATSConfig(k=0.5)


def test_tomes_schedule_is_typed_and_can_be_written():
    # ToMe's own (r, inflection) pair becomes the schedule it names; "13:-0.5" writes it.
    assert ATSConfig(method="tome", r=(13, -0.5)).r == Inflected(13, -0.5)
    assert from_text("tome", "", "13:-0.5") == ATSConfig(method="tome", r=Inflected(13, -0.5))
    assert ATSConfig(method="tome", r=Inflected(13, -0.5)).id == "tome r=13:-0.5"
    # A pair of ints is one r per stage.
    assert from_text("tome", "0,1", "16, 12").r == (16, 12)
    with pytest.raises(InputError, match="inflection"):
        from_text("tome", "", "13:steep")
    # Its direction, as ToMe's parse_r(12, (13, -0.5)) gives it, and as the help a person reads says
    # (it once said the opposite): a negative inflection merges more in the first blocks.
    assert fixed_counts(from_text("tome", "", "13:-0.5"), 12, 196, 1)[:4] == [197, 178, 161, 145]
    assert tome_schedule(Inflected(13, -0.5), 12) == [19, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7]
    assert "13:-0.5 merges more in the first blocks: 19 falling to 7" in methods.get("tome").param.help


def test_unknown_methods_are_refused_everywhere():
    for call in (lambda: ATSConfig(method="tomato"), lambda: methods.get("tomato"),
                 lambda: methods.parse_methods("ats,tomato"), lambda: from_text("tomato")):
        with pytest.raises(InputError, match="tomato"):
            call()


def test_nothing_outside_the_methods_compares_a_methods_name():
    """The registry is the one place that knows a method by name: code that tests a name
    instead of asking the reducer breaks when a method is added (as PiToMe was)."""
    import re

    from conftest import ROOT

    names = "|".join(METHODS)
    quoted = rf"""["']({names})["']"""
    compare = re.compile(rf"""(==|!=)\s*{quoted}|{quoted}\s*(==|!=)|in\s*\(\s*{quoted}|METHODS\[{quoted}\]|"""
                         rf"""get\({quoted}\)|\bor\s+{quoted}""")
    files = [p for p in (ROOT / "ats_viz").glob("*.py")] + [ROOT / "ui.py", ROOT / "app.py"] + \
        list((ROOT / "pages").glob("*.py"))
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text().splitlines(), 1) if compare.search(line)]
    assert not found, found
