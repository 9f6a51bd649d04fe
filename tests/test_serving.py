"""One server for a team, through Streamlit's AppTest: typed paths confined to $ATS_VIZ_ROOTS,
sweeps queued behind each other with their place shown and Stop leaving the queue, and a sweep
that never moves the model other sessions are using."""

import hashlib
import io
import os
import threading
import zipfile

import pytest
import torch
from PIL import Image
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.testing.v1 import AppTest

from conftest import ROOT, open_app
from ats_viz import ATSConfig, InputError, run_ats, synthetic
from ats_viz import evaluate as ev
from ats_viz.data import heldout_path, load_dataset, read_image
from ats_viz.models import load_model, model_hash, on_device, source_stamp
from ats_viz.synthetic import write_imagefolder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ATS_VIZ_MAX_JOBS", raising=False)
    # A small stand-in for the bundled held-out set, which the Dataset page opens on by default.
    write_imagefolder(heldout_path(), per_class=1, seed=1)
    return tmp_path / "cache"


@pytest.fixture
def shapes(tmp_path):
    return write_imagefolder(tmp_path / "shapes", per_class=1, seed=11)


@pytest.fixture
def ui(monkeypatch):
    """The app's ui module, the very one its pages import (so its caches are theirs)."""
    monkeypatch.syspath_prepend(str(ROOT))
    import ui

    return ui


def open_page(monkeypatch, name: str, source: str | None = None) -> AppTest:
    at = open_app(monkeypatch, name)
    if source:
        at.radio(key="ds_source").set_value(source).run()
    assert not at.exception, at.exception
    return at


def errors(at: AppTest) -> str:
    assert not at.exception, at.exception
    return " ".join(e.value for e in at.error)


def keys(at: AppTest, kind: str) -> set[str]:
    return {w.key for w in at.get(kind)}


# ---------------------------------------------------------------------------- confined paths


def test_typed_paths_outside_the_roots_are_refused_and_never_read(monkeypatch, cache, shapes, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    pipe = tmp_path / "labels.csv"
    os.mkfifo(pipe)  # reading it would block the page until a writer came
    monkeypatch.setenv("ATS_VIZ_ROOTS", str(allowed))
    outside = f"is outside the folders this server may read ('{allowed.resolve()}')"

    at = open_page(monkeypatch, "4_Dataset.py", "folder")
    at.text_input(key="ds_folder").set_value(str(shapes)).run()
    assert outside in errors(at)
    (allowed / "link").symlink_to(shapes)
    at.text_input(key="ds_folder").set_value(str(allowed / "link")).run()
    assert outside in errors(at)
    at.text_input(key="ds_folder").set_value(str(allowed / ".." / "shapes")).run()
    assert outside in errors(at)
    shapes.rename(allowed / "shapes")
    at.text_input(key="ds_folder").set_value(str(allowed / "shapes"))
    at.text_input(key="ds_csv_path").set_value(str(pipe)).run()
    assert outside in errors(at)
    at.text_input(key="ds_csv_path").set_value("").run()
    assert not errors(at) and any("**10 images**" in m.value for m in at.markdown)

    at = open_page(monkeypatch, "4_Dataset.py", "saved")
    at.text_input(key="ds_saved_path").set_value(str(tmp_path)).run()
    assert outside in errors(at)

    at = open_page(monkeypatch, "1_Image.py")
    at.selectbox(key="w_source").set_value("file").run()
    at.text_input(key="w_ckpt").set_value(str(pipe)).run()
    assert outside in errors(at)
    assert not at.metric  # no model, no run

    at = open_app(monkeypatch, "1_Image.py", params={"source": "file", "ckpt": str(pipe)})  # a link someone was sent
    assert outside in errors(at) and not at.metric


def test_empty_roots_leave_uploads_only(monkeypatch, cache, shapes):
    monkeypatch.setenv("ATS_VIZ_ROOTS", "")
    off = "Typed paths are turned off on this server"
    at = open_page(monkeypatch, "4_Dataset.py", "folder")
    assert "ds_folder" not in keys(at, "text_input") and off in at.info[0].value
    at.radio(key="ds_source").set_value("saved").run()
    assert "ds_saved_path" not in keys(at, "text_input") and "ds_saved_zip" in keys(at, "file_uploader")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in shapes.rglob("*.png"):
            z.write(p, p.relative_to(shapes).as_posix())
    at.radio(key="ds_source").set_value("zip").run()
    at.file_uploader(key="ds_zip").set_value(("mine.zip", buf.getvalue(), "application/zip")).run()
    assert not errors(at) and any("**10 images**" in m.value for m in at.markdown)
    at.radio(key="ds_source").set_value("heldout").run()
    assert not errors(at) and any("**10 images**" in m.value for m in at.markdown)

    at = open_page(monkeypatch, "1_Image.py")
    at.selectbox(key="w_source").set_value("file").run()
    assert "w_ckpt" not in keys(at, "text_input") and off in errors(at)


# ---------------------------------------------------------------------------- the job queue


def stop_when_queued(monkeypatch, ui) -> list[int]:
    """The places a queued page is told; once the first is on screen, Stop is pressed (it stops
    the script run, as Streamlit's fast reruns do to the run in progress)."""
    told = []
    real = ui.queued_text

    def spy(ahead, max_jobs):
        told.append(ahead)
        if len(told) == 2:
            get_script_run_ctx().script_requests.request_stop()
        return real(ahead, max_jobs)

    monkeypatch.setattr(ui, "queued_text", spy)
    return told


def test_a_queued_sweep_shows_its_place_and_stop_leaves_the_queue(monkeypatch, cache, shapes, ui):
    queue = ui.job_queue(1)  # the server's queue: the page gets this same object
    told = stop_when_queued(monkeypatch, ui)
    at = open_page(monkeypatch, "4_Dataset.py", "folder")
    at.text_input(key="ds_folder").set_value(str(shapes)).run()
    at.multiselect(key="ds_methods").set_value(["ats"]).run()
    at.text_input(key="ds_ladder_ats").set_value("98").run()
    with queue.ticket() as other:  # another session's sweep holds the only slot
        assert list(other.wait()) == []
        at.button(key="ds_go").click().run()
        assert not at.exception, at.exception
        assert told[:2] == [1, 1]
        assert any(i.value.startswith("Queued: 1 job ahead of yours") for i in at.info)
        assert queue.state() == (1, 0)  # the stopped session left the queue; only the other job is there
    at.run()
    assert "Stopped while queued" in at.info[0].value
    at.button(key="ds_go").click().run()
    assert not errors(at) and "2 setting(s) computed" in at.success[0].value
    assert told[2:] == [] and queue.state() == (0, 0)  # a free slot: no note, no wait


def test_a_queued_video_analysis_shows_its_place_and_stop_leaves_the_queue(monkeypatch, cache, ui):
    queue = ui.job_queue(1)
    told = stop_when_queued(monkeypatch, ui)
    at = open_page(monkeypatch, "3_Video.py")
    at.number_input(key="video_max_frames").set_value(2).run()
    with queue.ticket() as first, queue.ticket():  # two jobs ahead: one running, one waiting
        assert list(first.wait()) == []
        at.button(key="video_go").click().run()
        assert not at.exception, at.exception
        assert told[:2] == [2, 2]
        assert any(i.value.startswith("Queued: 2 jobs ahead of yours") for i in at.info)
        assert queue.state() == (1, 1)
    at.run()
    assert "Stopped (while queued" in at.info[0].value
    at.button(key="video_go").click().run()
    assert not errors(at) and at.metric[0].value == "2"
    assert queue.state() == (0, 0)


def test_a_bad_job_limit_gets_a_sentence(monkeypatch, cache, shapes):
    monkeypatch.setenv("ATS_VIZ_MAX_JOBS", "many")
    at = open_page(monkeypatch, "4_Dataset.py", "folder")
    at.text_input(key="ds_folder").set_value(str(shapes)).run()
    at.multiselect(key="ds_methods").set_value(["ats"]).run()
    at.button(key="ds_go").click().run()
    assert "ATS_VIZ_MAX_JOBS must be a whole number of at least 1 (got 'many')" in errors(at)


def test_the_image_and_compare_pages_are_never_queued(monkeypatch, cache, ui):
    queue = ui.job_queue(1)
    with queue.ticket() as sweep:  # a sweep holds the only slot
        assert list(sweep.wait()) == []
        for name in ("1_Image.py", "2_Compare.py"):
            at = open_page(monkeypatch, name)
            assert not errors(at) and at.metric and not any("Queued" in i.value for i in at.info)


# ---------------------------------------------------------------------------- one model, many sessions


def test_a_sweep_on_the_shared_model_leaves_the_image_page_right(monkeypatch, cache, shapes, ui):
    shared = ui.get_model("embedded", None, source_stamp("embedded"))
    params = [(p, p.device) for p in shared.net.parameters()]
    digest = model_hash(shared.net)
    dataset = load_dataset(shapes, shared.class_names)
    settings = ev.make_settings({"ats": [98, 49]})
    swept = {}
    sweep = threading.Thread(target=lambda: swept.update(
        result=ev.run_sweep(shared, dataset, settings, batch=2, cache=None)))
    sweep.start()
    try:  # meanwhile another session uploads to the Image page, which runs the same cached model
        img, _ = synthetic.sample((9, 9), label=4)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        at = open_page(monkeypatch, "1_Image.py")
        at.file_uploader(key="image_upload").set_value(("mine.png", buf.getvalue(), "image/png")).run()
        assert not errors(at)
        own = load_model("embedded")
        with torch.no_grad():
            res = run_ats(own.net, own.prepare(read_image(buf.getvalue())), ATSConfig())
        assert next(m.value for m in at.metric if m.label == "Tokens kept") == f"{int(res.patch_counts[0, -1])} / 196"
    finally:
        sweep.join()
    alone = ev.run_sweep(own, dataset, settings, batch=2, cache=None)
    for label, run in alone.runs.items():
        assert swept["result"].runs[label].pred == run.pred and swept["result"].runs[label].tokens == run.tokens
    assert ui.get_model("embedded", None, source_stamp("embedded")) is shared
    assert [(p, p.device) for p in shared.net.parameters()] == params and model_hash(shared.net) == digest

    elsewhere = on_device(shared, "meta")  # another device, as a sweep there gets it: a copy of its own
    assert elsewhere.net is not shared.net and next(elsewhere.net.parameters()).device.type == "meta"
    assert all(p is q and p.device.type == "cpu" for p, (q, _) in zip(shared.net.parameters(), params))


# ---------------------------------------------------------------------------- links out of a typed folder


def page_text(at: AppTest) -> str:
    """Everything the page says in words."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "text", "info", "warning", "error", "success")
    return " ".join(str(e.value) for kind in kinds for e in at.get(kind))


def test_a_typed_folder_never_shows_what_its_links_lead_to(monkeypatch, cache, shapes, tmp_path):
    """Issue 24, items 5 and 6: a class folder linking out was walked (its files named on the page),
    and a results folder's linked files were opened."""
    allowed, private = tmp_path / "allowed", tmp_path / "private"
    allowed.mkdir()
    (private / "square").mkdir(parents=True)
    (private / "square" / "secret_name.png").write_bytes(next((shapes / "square").iterdir()).read_bytes())
    data = allowed / "shapes"
    shapes.rename(data)
    (data / "square").rename(tmp_path / "square-was-here")
    (data / "square").symlink_to(private / "square")
    monkeypatch.setenv("ATS_VIZ_ROOTS", str(allowed))

    at = open_page(monkeypatch, "4_Dataset.py", "folder")
    at.text_input(key="ds_folder").set_value(str(data)).run()
    said = page_text(at)
    assert not errors(at) and any("**9 images**" in m.value for m in at.markdown)
    assert "1 class folder(s) left out: they are links to folders outside the folder" in said and "'square'" in said
    assert "secret_name" not in said and str(private) not in said

    outside = private / "run"  # a results folder of someone else's, as 'evaluate --out' writes one
    outside.mkdir()
    (outside / "per_image.csv").write_text("image,setting,method,value,pred,label,correct,gflops,tokens_final\n")
    (outside / "summary.csv").write_text("setting,method,value,top1,gflops_mean\n")
    (outside / "results.json").write_text('{"model": "embedded", "images": 11, "dataset": "/private/set", '
                                          '"full_gflops": 0.375, "class_names": ["circle"]}')
    run = allowed / "run"
    run.mkdir()
    for name in ("per_image.csv", "summary.csv", "results.json"):
        (run / name).symlink_to(private / "run" / name)
    at = open_page(monkeypatch, "4_Dataset.py", "saved")
    at.text_input(key="ds_saved_path").set_value(str(run)).run()
    said = page_text(at)
    assert "link to files outside the folder, which this server does not read" in errors(at)
    assert "11 images" not in said and "/private/set" not in said and str(private) not in said


# ---------------------------------------------------------------------------- the cache's budget


def _archive(tag: str, kb: int = 100) -> bytes:
    """A ZIP of one class folder holding ``kb`` kB (whole 4 KiB blocks) of bytes unique to ``tag``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{tag}/circle/a.png", tag.encode() * (kb * 1024 // len(tag)))
    return buf.getvalue()


def test_the_cache_keeps_to_its_budget_least_recently_used_first(monkeypatch, cache):
    """Issue 24, item 7: nothing evicted uploads/, so uploads filled a team server's disk."""
    import time

    from ats_viz import cachebudget
    from ats_viz.data import extract_zip

    monkeypatch.setenv("ATS_VIZ_CACHE_GB", "0.00033")  # 330 kB: three uploads of 100 kB and a little more
    for old in cachebudget.entries():  # the stand-in held-out set: not part of this test
        cachebudget._remove(old.path)
    sweeps = cache / "sweeps"
    sweeps.mkdir()
    stale = sweeps / f"{'0' * 40}.json"  # a sweep's cached results, counted like the rest
    stale.write_bytes(b" " * 40_000)
    (cache / "notes.txt").write_bytes(b"x" * 2_000_000)  # not the app's: never counted, never removed
    (cache / "uploads").mkdir()
    (cache / "uploads" / "keep-me.zip").write_bytes(b"x" * 2_000_000)
    now = time.time_ns()
    os.utime(stale, ns=(now - 10**12, now - 10**12))
    a = extract_zip(_archive("aaaa"), "a.zip")
    b = extract_zip(_archive("bbbb"), "b.zip")
    for n, folder in enumerate((a, b)):  # a used before b, both after the sweep file
        os.utime(folder.parent, ns=(now - 10**11 + n * 10**9,) * 2)
    c = extract_zip(_archive("cccc"), "c.zip")
    assert not stale.exists() and a.is_dir() and b.is_dir() and c.is_dir()  # room made from the oldest first
    assert extract_zip(_archive("aaaa"), "a.zip") == a  # used again: now the newest
    d = extract_zip(_archive("dddd"), "d.zip")
    assert not b.exists() and a.is_dir() and c.is_dir() and d.is_dir()  # b was the least recently used
    assert (cache / "notes.txt").stat().st_size == 2_000_000 and (cache / "uploads" / "keep-me.zip").exists()
    assert sum(e.size for e in cachebudget.entries()) <= cachebudget.budget()
    assert not [p for p in (cache / "uploads").iterdir() if p.name.startswith(".")]  # nothing half-removed left

    with cachebudget.in_use(c):  # a sweep reading c: never evicted, even as the least recently used
        os.utime(c.parent, ns=(now - 10**12,) * 2)
        e = extract_zip(_archive("eeee"), "e.zip")
        assert c.is_dir() and e.is_dir() and not a.exists()
        with pytest.raises(InputError) as err:  # 300 kB: only by evicting c, which is in use
            extract_zip(_archive("ffff", 300), "f.zip")
        assert "There is no room for 'f.zip'" in str(err.value) and "while other jobs use it" in str(err.value)
        assert d.is_dir() and e.is_dir()  # a refused upload removes nothing
    assert not (cache / "uploads" / hashlib.sha256(_archive("ffff", 300)).hexdigest()[:24]).exists()
    assert extract_zip(_archive("ffff", 300), "f.zip").is_dir() and not c.exists()  # c is free again

    monkeypatch.setenv("ATS_VIZ_CACHE_GB", "lots")
    with pytest.raises(InputError, match="ATS_VIZ_CACHE_GB must be a number of gigabytes above 0"):
        extract_zip(_archive("gggg"), "g.zip")


def test_an_uploaded_labels_csv_is_kept_in_the_cache_and_counted(monkeypatch, cache, shapes):
    from ats_viz import cachebudget

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in shapes.rglob("*.png"):
            z.write(p, p.name)  # flat: the labels come from the CSV
    rows = "".join(f"{p.name},{p.parent.name}\n" for p in sorted(shapes.rglob("*.png"))[:4])
    at = open_page(monkeypatch, "4_Dataset.py", "zip")
    at.file_uploader(key="ds_zip").set_value(("flat.zip", buf.getvalue(), "application/zip"))
    at.file_uploader(key="ds_csv_upload").set_value(("labels.csv", rows.encode(), "text/csv")).run()
    assert not errors(at) and any("**4 images**" in m.value for m in at.markdown)
    kept = [e.path.name for e in cachebudget.entries()]
    assert sum(n.startswith("labels-") and n.endswith(".csv") for n in kept) == 1
    assert sum(len(n) == 24 for n in kept) == 1  # the unpacked ZIP
