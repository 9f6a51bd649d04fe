"""Dataset sweeps: the numbers a user reads equal plain per-image runs, the cache is honest,
and every bad input is refused with a sentence."""

import io
import logging
import os
import zipfile

import cv2
import numpy as np
import pytest
import torch

from ats_viz import ATSConfig, InputError, run_ats, viz
from ats_viz.__main__ import main
from ats_viz.data import extract_zip, load_dataset, match_labels, read_image
from ats_viz.devices import check_device
from ats_viz.evaluate import make_settings, run_sweep, sweep_batch
from ats_viz.methods import parse_ladder, parse_methods
from ats_viz.results import RESULT_FILES, load_results, results_zip
from ats_viz.stats import wilson
from ats_viz.vit import resolve
from ats_viz.synthetic import CLASSES, draw, sample, write_imagefolder

pytestmark = pytest.mark.usefixtures("no_grad")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("shapes"), per_class=2, seed=7)


def _png(seed: int) -> bytes:
    img, _ = sample(seed)
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_sweep_equals_a_plain_loop_of_run_ats(model, folder):
    ds = load_dataset(folder, model.class_names, subset=6)
    settings = [ATSConfig(method="full"), ATSConfig(k=98), ATSConfig(k=0.25, method="topk"),
                ATSConfig(k=49, method="random", seed=2)]
    res = run_sweep(model, ds, settings, batch=4, cache=None)
    table = res.per_image()
    assert len(table) == len(ds.items) * len(settings)
    for cfg in settings:
        rows = table[table["setting"] == cfg.id].set_index("image")
        hits, flops = 0, []
        for item in ds.items:
            one = run_ats(model.net, model.prepare(read_image(item.path.read_bytes())), cfg)
            row = rows.loc[item.name]
            assert int(one.logits.argmax()) == row["pred"]
            assert int(one.patch_counts[0, -1]) == row["tokens_final"]
            hits += int(one.logits.argmax()) == item.target
            flops.append(float(one.gflops[0]))
        summary = res.summary().set_index("setting").loc[cfg.id]
        assert summary["top1"] == hits / len(ds.items)
        assert summary["gflops_mean"] == pytest.approx(np.mean(flops), rel=1e-12)


def test_tokens_by_objects_reads_each_scenes_count_and_only_where_every_image_has_one(model, folder):
    ds = load_dataset(folder, model.class_names, subset=6)
    table = run_sweep(model, ds, [ATSConfig()], batch=6, cache=None).per_image()
    index = {item.name: int(item.path.name.split("_")[1]) for item in ds.items}  # circle_00001_3obj.png
    drawn = {name: len(draw((7, item.target, index[name]), label=item.target)[1].objects)
             for name, item in ((item.name, item) for item in ds.items)}
    assert list(viz.objects_per_image(table)) == [drawn[name] for name in table["image"]]
    box = viz.tokens_by_figure(table, ATSConfig().id, "objects").data[0]
    assert list(box.x) == [drawn[name] for name in table["image"]] and list(box.y) == list(table["tokens_final"])
    # by class, the classes stand in the model's order (as in the accuracy by class), not the files'
    by_class = viz.tokens_by_figure(table.iloc[::-1], ATSConfig().id, "class")
    assert len(set(table["target"])) > 1
    assert list(by_class.layout.xaxis.categoryarray) == [model.class_names[t] for t in sorted(set(table["target"]))]
    # one image named by someone else: no count is guessed, so the page draws no such figure
    assert viz.objects_per_image(table.assign(image=["holiday.png", *table["image"][1:]])) is None


def test_a_setting_has_one_colour_in_every_sweep_figure(model, folder):
    """Reading the curve, the histogram, the token curves and the classes side by side, a
    setting must look the same in each; settings of one method share its hue."""
    ds = load_dataset(folder, model.class_names, subset=4)
    settings = [ATSConfig(method="full"), ATSConfig(k=147), ATSConfig(k=49), ATSConfig(k=98, method="topk")]
    res = run_sweep(model, ds, settings, batch=4, cache=None)
    table, summary = res.per_image(), res.summary()
    labels = [c.id for c in settings]
    curve = {}
    for trace in viz.curve_figure(summary).data:  # one trace per method, its points by GFLOPs
        points = summary[summary["method"] == trace.legendgroup].sort_values("gflops_mean")["setting"]
        curve.update(zip(points, trace.marker.color))
    tokens = {t.name: t.line.color for t in viz.sweep_tokens_figure(table, labels).data if t.name}
    classes = {t.name: t.marker.color for t in viz.class_accuracy_figure(table, labels, model.class_names).data}
    hist = {s: viz.gflops_histogram(table, s).data[0].marker.color for s in labels}
    assert curve == tokens == classes == hist
    assert len(set(curve.values())) == len(labels)  # and no two settings alike
    rgb = {s: [int(v) for v in c[4:-1].split(",")] for s, c in curve.items()}
    assert all(max(rgb[s]) == rgb[s][0] for s in ("ats K=147", "ats K=49"))  # ATS is red at every K
    assert sum(rgb["ats K=49"]) < sum(rgb["ats K=147"])  # the smaller budget is the deeper shade
    line = viz.gflops_histogram(table, "ats K=49", full_gflops=0.4).layout.shapes[-1].line.color
    assert line == curve["full"]  # the full model's mark is the full model's colour


def test_shared_prefix_gives_what_each_setting_gives_alone(model, folder):
    x = torch.cat([model.prepare(read_image(p.read_bytes())) for p in sorted(folder.rglob("*.png"))[:6]])
    settings = [ATSConfig(method="full"), ATSConfig(k=60), ATSConfig(k=30, method="topk"),
                ATSConfig(k=40, method="random", seed=5), ATSConfig(stages=(6, 9), k=20)]
    for cfg, shared in zip(settings, sweep_batch(model.net, x, settings, traces=True)):
        alone = run_ats(model.net, x, cfg)
        assert torch.equal(shared.logits.argmax(1), alone.logits.argmax(1))
        assert torch.allclose(shared.logits, alone.logits, atol=1e-5)
        assert torch.equal(shared.token_counts, alone.token_counts)
        assert torch.equal(shared.gflops, alone.gflops)
        assert len(shared.stages) == len(alone.stages)
        for a, b in zip(shared.stages, alone.stages):
            assert a.block == b.block and torch.equal(a.kept_mask, b.kept_mask)


def test_cache_is_reused_widened_and_invalidated(model, tmp_path):
    data = write_imagefolder(tmp_path / "data", per_class=1, seed=3)
    cache = tmp_path / "cache"
    ds = load_dataset(data, model.class_names)
    settings = make_settings({"ats": [98], "topk": [98]})
    first = run_sweep(model, ds, settings, batch=4, cache=cache)
    assert first.computed == [c.id for c in settings]

    seen = []
    again = run_sweep(model, ds, settings, batch=4, cache=cache, progress=seen.append)
    assert again.computed == [] and again.cached == first.computed
    assert all(p.computed == 0 for p in seen) and seen[-1].done == seen[-1].total
    assert again.per_image().equals(first.per_image())

    wider = make_settings({"ats": [98, 49], "topk": [98, 49]})
    grown = run_sweep(model, ds, wider, batch=4, cache=cache)
    assert grown.computed == ["ats K=49", "topk K=49"]

    # A cache file that does not read back is recomputed, not trusted.
    for f in cache.glob("*.json"):
        f.write_text(f.read_text()[:50])
        break
    assert len(run_sweep(model, ds, wider, batch=4, cache=cache).computed) == 1

    # Rewriting one image (new bytes, new mtime) invalidates every setting on this image set.
    victim = ds.items[3].path
    victim.write_bytes(_png(99))
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    changed = run_sweep(model, load_dataset(data, model.class_names), wider, batch=4, cache=cache)
    assert changed.computed == [c.id for c in wider]


def test_a_cache_file_that_cannot_be_used_is_recomputed_and_logged_once(model, tmp_path, caplog):
    data = write_imagefolder(tmp_path / "data", per_class=1, seed=3)
    cache = tmp_path / "cache"
    ds = load_dataset(data, model.class_names)
    settings = make_settings({"ats": [98]})
    first = run_sweep(model, ds, settings, batch=4, cache=cache)
    broken = sorted(cache.glob("*.json"))[0]
    broken.write_text(broken.read_text()[:50])

    def stop(_):  # after the cache is read, before anything is computed: the file stays broken
        raise KeyboardInterrupt

    with caplog.at_level(logging.WARNING, logger="ats_viz.sweepcache"):
        for _ in range(2):
            with pytest.raises(KeyboardInterrupt):
                run_sweep(model, ds, settings, batch=4, cache=cache, progress=stop)
        said = [r.getMessage() for r in caplog.records if r.name == "ats_viz.sweepcache"]
        assert len(said) == 1 and str(broken) in said[0] and "JSONDecodeError" in said[0]
        again = run_sweep(model, ds, settings, batch=4, cache=cache)
        assert len(again.computed) == 1 and again.per_image().equals(first.per_image())
        assert run_sweep(model, ds, settings, batch=4, cache=cache).computed == []  # mended by the recompute
    assert len([r for r in caplog.records if r.name == "ats_viz.sweepcache"]) == 1


def test_progress_counts_images_and_settings(model, folder):
    ds = load_dataset(folder, model.class_names, subset=8, seed=1)
    seen, rows = [], []

    def watch(p):
        seen.append(p)
        rows.append(len(p.partial.per_image()))  # partial results, read as they arrive

    res = run_sweep(model, ds, make_settings({"ats": [49]}), batch=3, cache=None, progress=watch)
    assert [p.per_setting["ats K=49"][0] for p in seen] == [0, 3, 6, 8]
    assert rows == [0, 6, 12, 16]
    assert seen[-1].done == seen[-1].total == 16 and seen[-1].eta_s == 0
    assert seen[1].eta_s is not None and seen[1].eta_s > 0
    assert len(res.per_image()) == 16


def test_unmatched_labels_and_unreadable_images_are_left_out_and_listed(model, tmp_path):
    data = write_imagefolder(tmp_path / "data", per_class=1, seed=4)
    (data / "dog").mkdir()
    (data / "dog" / "a.png").write_bytes(_png(1))
    (data / "dog" / "b.png").write_bytes(_png(2))
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = load_dataset(data, model.class_names)
    assert ds.unmatched == {"dog": 2}
    assert "2 image(s) left out" in ds.notes()[0] and "'dog' (2)" in ds.notes()[0]
    res = run_sweep(model, ds, make_settings({"ats": [98]}), cache=None)
    assert [name for name, _ in res.skipped] == ["circle/broken.png"]
    assert "broken.png" in res.skipped[0][1]
    assert set(res.per_image()["image"]) == {it.name for it in ds.items} - {"circle/broken.png"}


def test_csv_labels_case_insensitive_with_header(model, folder, tmp_path):
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))[:4]
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\n" + "".join(f"{f},{f.split('/')[0].upper()}\n" for f in files))
    ds = load_dataset(folder, model.class_names, csv)
    assert [it.name for it in ds.items] == files
    assert [it.target for it in ds.items] == [CLASSES.index(f.split("/")[0]) for f in files]


def test_imagenet_synset_ids_map_to_imagenet_indices():
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_descriptions()
    assert match_labels(["n01440764", "n99999999", "cat"], names) == {"n01440764": 0}


def test_subset_is_seeded(model, folder):
    a = load_dataset(folder, model.class_names, subset=5, seed=3)
    b = load_dataset(folder, model.class_names, subset=5, seed=3)
    c = load_dataset(folder, model.class_names, subset=5, seed=4)
    assert a.items == b.items and len(a.items) == 5 and a.items != c.items
    assert a.notes() == ["Evaluating a random subset of 5 of 20 images."]


def test_cli_writes_what_it_promises(folder, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["evaluate", "--data", str(folder), "--k", "98,49", "--methods", "ats,random", "--subset", "6",
                 "--batch", "4", "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(RESULT_FILES)
    saved = load_results(out)
    assert list(saved.summary["setting"]) == ["full", "ats K=98", "ats K=49", "random K=98", "random K=49"]
    assert len(saved.per_image) == 6 * 5
    assert saved.manifest["model"] == "embedded" and saved.manifest["images"] == 6
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ats K=49" in capsys.readouterr().out


def test_cli_refuses_with_a_sentence(folder, tmp_path, capsys):
    assert main(["evaluate", "--data", str(folder), "--k", "98,1", "--out", str(tmp_path)]) == 2
    assert "K must be at least 2 (got 1)" in capsys.readouterr().err


def _not_here(*args, **kwargs):
    raise AssertionError("reached: the refusal should have come first")


@pytest.mark.parametrize("where, says", [
    ("afile/results", "afile' is a file, so no folder can be made below it."),
    ("afile", "afile' is a file, not a folder."),
    ("read-only/results", "it is on a read-only file system."),
    ("read-only", "it is on a read-only file system."),
    ("/proc/ats-viz-out", "Cannot write the results to '/proc/ats-viz-out'"),
])
def test_cli_refuses_a_results_folder_it_cannot_write_before_loading_the_model(folder, tmp_path, capsys, monkeypatch,
                                                                            read_only, where, says):
    (tmp_path / "afile").write_text("a file")
    read_only(tmp_path / "read-only")
    monkeypatch.setattr("ats_viz.models.load_model", _not_here)
    out = tmp_path / where
    assert main(["evaluate", "--data", str(folder), "--k", "98", "--methods", "ats", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out: Cannot write the results to '{out}': ") and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "read-only"]  # nothing made for the check stays


def test_cli_says_when_the_bundled_set_cannot_be_written(tmp_path, monkeypatch, capsys, read_only):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(read_only(tmp_path / "cache")))
    assert main(["evaluate", "--k", "98", "--methods", "ats", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: The bundled held-out set cannot be written to" in err and "read-only file system" in err, err
    assert "Set ATS_VIZ_CACHE to a folder you can write to, or give --data." in err


def test_write_results_says_why_it_cannot(model, folder, tmp_path, read_only):
    from ats_viz.results import check_out, write_results

    result = run_sweep(model, load_dataset(folder, model.class_names, subset=2), make_settings({"ats": [98]}),
                       cache=None)
    ro = read_only(tmp_path / "ro")
    assert "on a read-only file system" in _refusal(write_results, result, ro / "results")
    (tmp_path / "afile").write_text("x")
    assert "is a file" in _refusal(write_results, result, tmp_path / "afile" / "results")
    assert check_out(tmp_path / "new" / "results") == tmp_path / "new" / "results"
    assert not (tmp_path / "new").exists()  # the check leaves nothing behind
    assert sorted(write_results(result, tmp_path / "new" / "results")) == sorted(RESULT_FILES)


def test_a_cache_folder_that_cannot_be_written_costs_a_warning_not_the_run(model, tmp_path, caplog, read_only):
    data = write_imagefolder(tmp_path / "data", per_class=1, seed=3)
    ds = load_dataset(data, model.class_names)
    settings = make_settings({"ats": [98]})
    plain = run_sweep(model, ds, settings, batch=4, cache=None).per_image()
    (tmp_path / "afile").write_text("not a folder")
    cache = tmp_path / "cache"
    run_sweep(model, ds, settings, batch=4, cache=cache)
    files = sorted(cache.iterdir())
    read_only(cache)
    with caplog.at_level(logging.WARNING, logger="ats_viz.sweepcache"):
        for where, why in [(tmp_path / "afile", "'{}' is a file, not a folder"),
                           (tmp_path / "afile" / "sweeps", "'{}' is a file, so no folder can be made below it"),
                           (cache, "it is on a read-only file system")]:
            caplog.clear()
            result = run_sweep(model, ds, make_settings({"ats": [98, 49]}), batch=4, cache=where)
            said = [r.getMessage() for r in caplog.records]
            assert said == [f"The sweep cache folder {where} cannot be written ({why.format(tmp_path / 'afile')}); "
                            "this sweep runs without caching" + (" (the results already in it are used)."
                                                                 if where == cache else ".")]
            assert result.per_image().query("setting != 'ats K=49'").reset_index(drop=True).equals(plain)
        assert result.cached == ["full", "ats K=98"] and result.computed == ["ats K=49"]  # read, though not written
    assert sorted(cache.iterdir()) == files and (tmp_path / "afile").read_text() == "not a folder"


def test_a_cache_that_fails_midway_warns_once_and_the_sweep_goes_on(model, tmp_path, caplog, monkeypatch):
    import errno

    data = write_imagefolder(tmp_path / "data", per_class=1, seed=3)
    ds = load_dataset(data, model.class_names)
    settings = make_settings({"ats": [98], "topk": [49]})
    plain = run_sweep(model, ds, settings, batch=2, cache=None)
    saved = []

    def full_disk(path, data):
        saved.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("ats_viz.sweepcache.atomic_write", full_disk)
    with caplog.at_level(logging.WARNING, logger="ats_viz.sweepcache"):
        result = run_sweep(model, ds, settings, batch=2, chunk=4, cache=tmp_path / "cache")
    said = [r.getMessage() for r in caplog.records]
    assert len(saved) == 1 and said == [f"The sweep cache file {saved[0]} could not be written (the disk is full); "
                                        "the rest of this sweep is not cached."]
    assert result.per_image().equals(plain.per_image())


def _refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        fn(*args, **kwargs)
    return str(err.value)


def test_bad_datasets_are_refused_with_a_sentence(model, folder, tmp_path):
    names = model.class_names
    assert "No folder at" in _refusal(load_dataset, tmp_path / "nowhere", names)
    (tmp_path / "empty").mkdir()
    assert "is empty" in _refusal(load_dataset, tmp_path / "empty", names)
    (tmp_path / "text" / "circle").mkdir(parents=True)
    (tmp_path / "text" / "circle" / "notes.txt").write_text("hi")
    assert "has no images" in _refusal(load_dataset, tmp_path / "text", names)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(_png(1))
    assert "no class subfolders" in _refusal(load_dataset, tmp_path / "flat", names)
    (tmp_path / "pets" / "dog").mkdir(parents=True)
    (tmp_path / "pets" / "dog" / "a.png").write_bytes(_png(1))
    msg = _refusal(load_dataset, tmp_path / "pets", names)
    assert "None of the labels ('dog') match the model's classes ('circle'" in msg
    csv = tmp_path / "labels.csv"
    real = next((folder / "circle").glob("*.png")).relative_to(folder).as_posix()
    csv.write_text(f"{real},circle\ncircle/gone.png,circle\n../escape.png,circle\n")
    msg = _refusal(load_dataset, folder, names, csv)
    assert "The CSV names 2 file(s) that are not in" in msg and "'circle/gone.png'" in msg
    csv.write_text("only-one-column\n")
    assert "Line 1 of 'labels.csv' is not filename,label" in _refusal(load_dataset, folder, names, csv)
    csv.write_text("filename,label\n")
    assert "has no rows" in _refusal(load_dataset, folder, names, csv)
    assert "subset size must be a whole number of at least 1" in _refusal(load_dataset, folder, names, subset=0)


def test_a_folder_too_big_to_be_a_dataset_is_refused_before_it_is_walked_through(model, tmp_path, monkeypatch):
    """A mistyped path ('/', a home folder) must not be scanned to the end."""
    import ats_viz.data as data

    for label in ("circle", "square"):
        (tmp_path / label).mkdir()
        for i in range(15):
            (tmp_path / label / f"{i}.png").write_bytes(b"")
    (tmp_path / "circle" / ".thumbs").mkdir()  # hidden folders are neither walked nor counted
    for i in range(50):
        (tmp_path / "circle" / ".thumbs" / f"{i}.png").write_bytes(b"")
    monkeypatch.setattr(data, "MAX_SCAN_ENTRIES", 30)
    assert load_dataset(tmp_path, model.class_names).found == 30
    monkeypatch.setattr(data, "MAX_SCAN_ENTRIES", 29)
    msg = _refusal(load_dataset, tmp_path, model.class_names)
    assert f"'{tmp_path}' holds more than 29 files and folders" in msg and "Give the dataset's own folder" in msg


@pytest.mark.parametrize("method, ladder, sentence", [
    ("ats", "", "The K ladder of ATS is empty"),
    ("ats", "196,1", "K must be at least 2 (got 1)"),
    ("ats", "0", "K must be at least 2 (got 0)"),
    ("ats", "98,abc", "K 'abc' is not a number"),
    ("ats", "1.5", "K as a fraction must be in (0, 1]"),
    ("tome", "8,1.5", "r = 1.5 is not a whole number"),
    ("tome", "-2", "r = -2 is impossible"),
    ("evit", "0.7,1.5", "The keep rate 1.5 is impossible"),
    ("evit", "0", "The keep rate 0 is impossible"),
])
def test_impossible_ladders_are_refused(method, ladder, sentence):
    def check():
        for cfg in make_settings({method: parse_ladder(method, ladder)}):
            resolve(cfg, 12, 196)
    assert sentence in _refusal(check)


def test_ladder_methods_and_device_parsing():
    assert parse_ladder("ats", "196, 98,98,0.5,all") == [196, 98, 0.5, None]
    assert parse_ladder("tome", "8, 13") == [8, 13] and parse_ladder("evit", "0.7") == [0.7]
    assert parse_methods("ATS,topk,ToMe") == ["ats", "topk", "tome"]
    assert "Unknown method(s) tomato" in _refusal(parse_methods, "ats,tomato")
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _refusal(check_device, "cuda")


def test_wilson_interval():
    lo, hi = wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    assert wilson(0, 10)[0] == 0 and round(wilson(0, 10)[1], 4) == 0.2775
    assert wilson(10, 10)[1] == 1


def test_uploaded_zips_unpack_safely_and_results_zips_reopen(model, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(tmp_path / "cache"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.rglob("*.png"))[:4]:
            z.write(p, "wrapped/" + p.relative_to(folder).as_posix())
        z.writestr("../escape.png", b"x")
        z.writestr("__MACOSX/wrapped/._a.png", b"x")
    root = extract_zip(buf.getvalue(), "mine.zip")
    assert root.name == "wrapped" and extract_zip(buf.getvalue(), "mine.zip") == root  # reused, not re-written
    assert not (tmp_path / "cache" / "escape.png").exists() and not list(root.parent.glob("__MACOSX"))
    ds = load_dataset(root, model.class_names)
    assert len(ds.items) == 4
    assert "is not a ZIP archive" in _refusal(extract_zip, b"junk", "junk.zip")

    res = run_sweep(model, ds, make_settings({"ats": [49]}), cache=None)
    saved = load_results(extract_zip(results_zip(res), "results.zip", ("csv", "json", "html")))
    assert list(saved.summary["setting"]) == ["full", "ats K=49"]
    assert saved.per_image["gflops"].tolist() == pytest.approx(res.per_image()["gflops"].tolist())


def test_cli_evit_without_fusion(folder, tmp_path):
    assert main(["evaluate", "--data", str(folder), "--methods", "evit", "--keep-rate", "0.5", "--no-fuse",
                 "--no-cache", "--subset", "2", "--out", str(tmp_path)]) == 0
    summary = load_results(tmp_path).summary.set_index("setting")
    assert summary.loc["evit keep=0.5 unfused", "tokens_final_mean"] == 25  # 196 -> 98 -> 49 -> 25, none fused


def test_imagenet_val_folders_as_people_have_them(tmp_path):
    """A flat val/ folder with LOC_val_solution.csv (ImageId without .JPEG, PredictionString
    starting with the synset), or a CSV of filename and synset or 0-based class index."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names, synsets = info.label_descriptions(), info.label_names()
    val = tmp_path / "val"
    val.mkdir()
    for i in range(1, 4):
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(_png(i))
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\n"
                        f"ILSVRC2012_val_00000002,{synsets[65]} 10 20 200 300 {synsets[65]} 5 5 50 50 \n"
                        f"ILSVRC2012_val_00000001,{synsets[970]} 1 2 3 4 \n"
                        "ILSVRC2012_val_00000003,n99999999 1 2 3 4 \n")
    ds = load_dataset(val, names, solution)
    assert [(it.name, it.target) for it in ds.items] == [("ILSVRC2012_val_00000002.JPEG", 65),
                                                           ("ILSVRC2012_val_00000001.JPEG", 970)]
    assert ds.unmatched == {"n99999999": 1}

    plain = tmp_path / "labels.csv"
    plain.write_text(f"filename,label\nILSVRC2012_val_00000001.JPEG,{synsets[3]}\n"
                     "ILSVRC2012_val_00000002.JPEG,999\nILSVRC2012_val_00000003.JPEG,1000\n")
    ds = load_dataset(val, names, plain)
    assert [it.target for it in ds.items] == [3, 999] and ds.unmatched == {"1000": 1}
    (tmp_path / "gone.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000009,n01440764 1 2 3 4\n")
    assert "'ILSVRC2012_val_00000009'" in _refusal(load_dataset, val, names, tmp_path / "gone.csv")


def test_settings_text_reads_the_same_everywhere():
    """The one parser: a reversed range is refused, 'all' works in every K ladder, and a float
    keeps its point in labels (K = 1.0, every patch, is not the impossible K = 1)."""
    from ats_viz.methods import parse_stages

    assert "run backwards" in _refusal(parse_stages, "11-3")
    assert parse_stages("3-5, 9") == (3, 4, 5, 9)
    assert parse_ladder("topk", "all, 1.0, 1") == [None, 1.0] and parse_ladder("ats", "1") == [1]
    assert ATSConfig(k=1.0).id == "ats K=1.0" and ATSConfig(k=None).id == "ats K=all"
