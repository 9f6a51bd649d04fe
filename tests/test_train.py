"""The synthetic data is a pure function of its seed; training runs, saves and reloads."""

import copy
import hashlib
import json
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ats_viz import ATSConfig, run_ats, synthetic
from ats_viz import data
from ats_viz.__main__ import main
from ats_viz.data import heldout_folder, read_image
from ats_viz.arch import ModelSpec, build
from ats_viz.train import Recipe, _Batches, _HostDropPath, heldout_metrics, shapes_spec, train, write_checkpoint


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.png")):
        h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synth_cli_same_seed_same_bytes(tmp_path):
    assert main(["synth", "--out", str(tmp_path / "a"), "--per-class", "2", "--seed", "5"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), "--per-class", "2", "--seed", "5"]) == 0
    assert main(["synth", "--out", str(tmp_path / "c"), "--per-class", "2", "--seed", "6"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(synthetic.CLASSES)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_a_cached_heldout_set_drawn_another_way_is_never_read(tmp_path, monkeypatch):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(tmp_path))
    crescent = synthetic.CLASSES.index("crescent")

    def first_crescent(folder):
        (path,) = (folder / "crescent").glob("crescent_00000_*obj.png")
        return np.asarray(read_image(path.read_bytes()))

    def drawn_now():
        return synthetic.sample((synthetic.HELDOUT_SEED, crescent, 0), label=crescent)[0]

    data._heldout_key.cache_clear()
    try:
        before = heldout_folder(per_class=1)
        assert np.array_equal(first_crescent(before), drawn_now())
        # A texture is redesigned (as the crescent's was): the set on disk no longer matches the code.
        monkeypatch.setattr(synthetic, "fill_pattern",
                            lambda *a, box, **k: np.ones((box[3] - box[1], box[2] - box[0]), np.float32))
        data._heldout_key.cache_clear()
        after = heldout_folder(per_class=1)
        assert after != before and np.array_equal(first_crescent(after), drawn_now())
        assert not np.array_equal(first_crescent(after), first_crescent(before))
    finally:
        data._heldout_key.cache_clear()


def test_a_scenes_label_is_the_kind_it_shows_most_often_and_its_objects_stand_apart():
    sizes, covered = {}, {}
    for i in range(300):
        img, scene = synthetic.draw((77, i))
        kinds = [o.label for o in scene.objects]
        n = len(kinds)
        assert 1 <= n <= synthetic.MAX_OBJECTS and img.shape == (224, 224, 3)
        lead = kinds.count(scene.label)
        assert all(kinds.count(k) < lead for k in set(kinds) - {scene.label})  # never a tie
        for a, o in enumerate(scene.objects):
            assert o.radius <= o.center[0] <= 224 - o.radius and o.radius <= o.center[1] <= 224 - o.radius
            for b in scene.objects[a + 1:]:
                assert np.hypot(o.center[0] - b.center[0], o.center[1] - b.center[1]) >= o.radius + b.radius
        radii = [o.radius for o in scene.objects]
        assert max(radii) <= min(radii) * 1.15 / 0.85 + 1e-9  # one size per scene, each within 15% of it
        sizes.setdefault(n, []).append(np.mean(radii))
        covered.setdefault(n, []).append(sum(np.pi * r * r for r in radii) / 224 ** 2)
    assert set(sizes) == set(range(1, synthetic.MAX_OBJECTS + 1))  # every count occurs
    # a busy scene's objects are smaller, to fit (33-41 px before any shrinking, against 56-89 px
    # for one object), yet together they cover more of the image: more evidence, in more places;
    # and a single object covers about a third of it (the earlier scenes' objects a tenth)
    assert np.mean(sizes[8]) < 0.6 * np.mean(sizes[1])
    assert np.mean(covered[8]) > np.mean(covered[1]) > 0.25
    # a label and a count can be asked for; the label is then the majority of that many objects
    img, scene = synthetic.draw((5, 5), label=3, objects=6)
    assert scene.label == 3 and len(scene.objects) == 6


def test_a_written_scene_says_in_its_name_how_many_objects_it_holds(tmp_path):
    folder = synthetic.write_imagefolder(tmp_path / "set", per_class=2, seed=9)
    for ci, kind in enumerate(synthetic.CLASSES):
        for i in range(2):
            (path,) = (folder / kind).glob(f"{kind}_{i:05d}_*obj.png")
            assert synthetic.objects_in(path.name) == len(synthetic.draw((9, ci, i), label=ci)[1].objects)
    assert synthetic.objects_in("holiday.png") is None and synthetic.objects_in("cat_3objects.png") is None


def test_video_frames_follow_the_object():
    frames = list(synthetic.video_frames(seed=2, frames=6))
    assert len(frames) == 6 and frames[0].shape == (224, 224, 3)
    assert not np.array_equal(frames[0], frames[-1])


def test_tiny_training_runs_saves_and_reloads(tmp_path):
    spec = shapes_spec(width=32, depth=4, heads=2)
    net = build(spec)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    logs = []
    recipe = Recipe(steps=2, batch=4, warmup=1, seed=0)
    assert train(net, recipe, log=logs.append) == 2
    assert any("step 2/2" in line for line in logs)
    assert not torch.equal(before["head.weight"], net.state_dict()["head.weight"])
    metrics = heldout_metrics(net, per_class=1, seed=5)
    assert metrics["images"] == 10 and metrics["seed"] == 5
    lo, hi = metrics["top1_ats_ci"]
    assert 0 <= lo <= metrics["top1_ats"] <= hi <= 1 and hi - lo > 0.25  # ten images: wide (0.28 even at 0 or 10 of 10)
    path = write_checkpoint(net, spec, tmp_path, "tiny", recipe, 2, 0.25, "test", metrics, "a test")
    card = json.loads((tmp_path / "tiny.json").read_text())
    assert card["heldout"] == metrics
    text = (tmp_path / "tiny.md").read_text()
    assert f"top-1 {metrics['top1_ats']:.1%} ({lo:.1%} to {hi:.1%})" in text and "10 images, seed 5" in text
    assert "2 steps of 4 fresh synthetic images, 0.2 minutes with" in text and card["training"]["minutes"] == 0.2
    assert card["training"]["device"] == "cpu" and f"with {torch.get_num_threads()} CPU threads" in text
    again = build(ModelSpec(**card["architecture"]))
    again.load_state_dict(load_file(str(path)))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(run_ats(again.eval(), x, ATSConfig()).logits, run_ats(net, x, ATSConfig()).logits)
    assert "top-1" in (tmp_path / "tiny.md").read_text()
    # ATS's cost by the scene's number of objects: every count of the ten scenes, means of their GFLOPs
    drawn = [len(synthetic.draw((5, ci, 0), label=ci)[1].objects) for ci in range(10)]
    assert sorted(map(int, metrics["ats_gflops_by_objects"])) == sorted(set(drawn))
    # --rescore: the bundled set is the one scored now; the rest of the card stays as trained
    assert main(["train", "--rescore", "--out", str(tmp_path), "--name", "tiny", "--eval-per-class", "1"]) == 0
    card_now = json.loads((tmp_path / "tiny.json").read_text())
    assert card_now["heldout"] == heldout_metrics(net, per_class=1)
    assert card_now["training"] == card["training"] and card_now["note"] == card["note"]
    assert f"seed {synthetic.HELDOUT_SEED}" in (tmp_path / "tiny.md").read_text()


def test_training_with_ats_active_trains_the_reduced_model():
    """One step of the ATS fine-tune lowers, on the batch it was given, the loss train() minimises
    with ATS active, and is not the plain model's step: ``Recipe.ats`` decides what is trained.
    A step that trained nothing (no gradient through the kept rows, a caller's no_grad, the flag
    ignored) fails here; one Adam step moves each weight by about lr, so the drop is large."""
    torch.manual_seed(0)
    net = build(shapes_spec(width=32, depth=4, heads=2))
    plain = copy.deepcopy(net)
    recipe = Recipe(steps=1, batch=8, warmup=1, seed=0, ats=True)
    x, y = next(iter(_Batches(recipe)))  # the very batch train() draws at step 0

    def loss(model):  # train()'s objective, in training mode (the stem's BatchNorm: batch statistics)
        model = copy.deepcopy(model).train()
        with torch.no_grad():
            return float(F.cross_entropy(run_ats(model, x, ATSConfig()).logits, y, label_smoothing=0.1))

    before = loss(net)
    with torch.no_grad():  # train() must train all the same
        assert train(net, recipe, log=lambda s: None) == 1
    assert not net.training
    assert loss(net) < before - 0.05  # ln 10 = 2.30 at the start; one step drops it 0.11 to 0.26 (seeds 0-5)
    train(plain, replace(recipe, ats=False), log=lambda s: None)
    ats_w = {k: v.detach() for k, v in net.named_parameters()}
    plain_w = {k: v.detach() for k, v in plain.named_parameters()}
    # Adam's first step is lr * sign(gradient): where the two gradients differ in sign the weights
    # are 2 lr apart, so the flag is obeyed when some weight differs by more than lr.
    assert max(float((ats_w[k] - plain_w[k]).abs().max()) for k in ats_w) > recipe.lr


def test_stochastic_depth_acts_while_training_and_leaves_the_model_as_built():
    """``Recipe.drop_path`` drops residual branches at random while training (the same seed then
    trains other weights than without it) and gives every block its own branches back after, so
    the trained model is the plain timm model that loading rebuilds."""
    torch.manual_seed(0)
    net = build(shapes_spec(width=32, depth=4, heads=2))
    plain = copy.deepcopy(net)
    recipe = Recipe(steps=2, batch=8, warmup=1, seed=0, drop_path=0.5)
    train(net, recipe, log=lambda s: None)
    train(plain, replace(recipe, drop_path=0.0), log=lambda s: None)
    assert all(type(b.drop_path1) is type(b.drop_path2) is torch.nn.Identity for b in net.blocks)
    trained, without = net.state_dict(), plain.state_dict()
    assert any(not torch.equal(trained[k], without[k]) for k in trained)


def test_any_number_of_workers_draws_the_same_batches_and_trains_the_same_weights():
    """Worker i draws steps i, i + n, ... and the loader takes one batch from each in turn, so 0 to 3
    processes drawing scenes train the same weights bit for bit (stochastic depth included; with 2,
    one worker runs out a step before the other). A worker drawing every step, or steps arriving
    out of order, trains other weights (Adam is order-bound)."""
    recipe = Recipe(steps=3, batch=4, warmup=1, seed=0, drop_path=0.5)
    threads = torch.get_num_threads()
    weights = []
    for workers in (0, 1, 2, 3):
        torch.manual_seed(0)
        net = build(shapes_spec(width=32, depth=4, heads=2))
        assert train(net, recipe, log=lambda s: None, workers=workers) == 3
        assert torch.get_num_threads() == threads  # drawing in this process leaves its threads alone
        weights.append(net.state_dict())
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in other)


def test_stochastic_depth_drops_what_timms_drop_path_drops_on_the_cpu():
    """The masks are drawn on the CPU as timm draws them for a CPU batch (so the shipped model's
    command still trains the weights it trained on this machine); a branch always dropped is 0,
    as in timm, not 0 / 0."""
    from timm.layers import DropPath

    x = torch.randn(16, 5, 8)
    torch.manual_seed(3)
    ours = _HostDropPath(0.3).train()(x)
    torch.manual_seed(3)
    theirs = DropPath(0.3).train()(x)
    dropped = (ours == 0).all(dim=(1, 2))
    assert torch.equal(ours, theirs) and 0 < int(dropped.sum()) < 16
    assert torch.allclose(ours[~dropped], x[~dropped] / 0.7)  # the kept branches scaled by 1 / keep
    assert torch.equal(_HostDropPath(0.3).eval()(x), x)
    assert torch.equal(_HostDropPath(1.0).train()(x), torch.zeros_like(x))
