"""The Dataset page through Streamlit's AppTest: a sweep, the cache, saved results, refusals."""

import base64
import io
import json
import zipfile

import numpy as np
import pytest
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from conftest import open_app
from ats_viz import ATSConfig, synthetic
from ats_viz.__main__ import main
from ats_viz.data import heldout_path
from ats_viz.synthetic import write_imagefolder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def shapes(tmp_path):
    return write_imagefolder(tmp_path / "shapes", per_class=1, seed=11)


def page(monkeypatch, source: str) -> AppTest:
    at = open_app(monkeypatch, "4_Dataset.py")
    at.radio(key="ds_source").set_value(source).run()
    assert not at.exception, at.exception
    return at


def evaluate(at: AppTest, ladder: str = "98") -> AppTest:
    at.multiselect(key="ds_methods").set_value(["ats"]).run()
    at.text_input(key="ds_ladder_ats").set_value(ladder).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    at.button(key="ds_go").click().run()
    assert not at.exception, at.exception
    return at


def plotted(values) -> list:
    """A plotly trace's values as the browser gets them: a list, or a typed array in base64."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def per_image_of(folder, config):
    """The library's own per-image rows for one setting on an ImageFolder (no cache)."""
    from ats_viz.data import load_dataset
    from ats_viz.evaluate import run_sweep
    from ats_viz.models import load_model

    model = load_model("embedded")
    dataset = load_dataset(folder, model.class_names)
    rows = run_sweep(model, dataset, [config], cache=None).per_image()
    return rows[rows["setting"] == config.id]


def test_a_folder_is_swept_then_read_from_the_cache(monkeypatch, cache, shapes):
    at = page(monkeypatch, "folder")
    at.text_input(key="ds_folder").set_value(str(shapes)).run()
    at = evaluate(at)
    assert "2 setting(s) computed, 0 from the cache" in at.success[0].value
    assert list(at.dataframe[0].value["setting"]) == ["full", "ats K=98"]
    charts = at.get("plotly_chart")
    assert len(charts) == 6
    # Where ATS spends its tokens, class by class, and by the scene's number of objects (the
    # bundled scenes' file names carry it): each image's final count, as the sweep has it.
    by_class, by_objects = (json.loads(c.proto.spec)["data"][0] for c in charts[-2:])
    expected = per_image_of(shapes, ATSConfig(k=98))
    assert by_class["x"] == list(expected["label"]) and plotted(by_class["y"]) == list(expected["tokens_final"])
    objects = [len(synthetic.draw((11, synthetic.CLASSES.index(label), 0), label=synthetic.CLASSES.index(label))[1].objects)
               for label in expected["label"]]
    assert plotted(by_objects["x"]) == objects and plotted(by_objects["y"]) == list(expected["tokens_final"])

    again = page(monkeypatch, "folder")  # a new session: nothing in memory, all on disk
    again.text_input(key="ds_folder").set_value(str(shapes)).run()
    again = evaluate(again)
    assert "all from the cache" in again.success[0].value


def test_the_bundled_heldout_set_is_the_default(monkeypatch, cache):
    write_imagefolder(heldout_path(), per_class=1, seed=1)  # a small stand-in, written once
    at = page(monkeypatch, "heldout")
    at = evaluate(at, "49")
    assert any("**10 images** x **2 settings**" in m.value for m in at.markdown)
    assert "2 setting(s) computed" in at.success[0].value


def test_an_uploaded_zip_is_swept(monkeypatch, cache, shapes):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in shapes.rglob("*.png"):
            z.write(p, "mine/" + p.relative_to(shapes).as_posix())
    at = page(monkeypatch, "zip")
    at.file_uploader(key="ds_zip").set_value(("mine.zip", buf.getvalue(), "application/zip")).run()
    at = evaluate(at)
    assert at.success and len(at.dataframe[0].value) == 2


def test_saved_results_open_without_a_model_run(monkeypatch, cache, shapes, tmp_path):
    out = tmp_path / "results"
    assert main(["evaluate", "--data", str(shapes), "--k", "98,49", "--methods", "ats,topk", "--out", str(out)]) == 0
    at = page(monkeypatch, "saved")
    at.text_input(key="ds_saved_path").set_value(str(out)).run()
    assert not at.exception and not at.error
    assert len(at.dataframe[0].value) == 5 and len(at.get("plotly_chart")) == 6

    # A folder written by a torchrun of several processes carries more in its manifest.
    manifest = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**manifest, "world_size": 4, "precision": "bf16",
                                                  "devices": [{"device": f"cuda:{i}"} for i in range(4)]}))
    at.text_input(key="ds_saved_path").set_value(str(out) + "/").run()
    assert not at.exception and not at.error
    assert any("(4 processes, bf16)" in m.value for m in at.markdown)


@pytest.mark.parametrize("source, widget, value, sentence", [
    ("folder", "ds_folder", "/no/such/folder", "No folder at '/no/such/folder'"),
    ("saved", "ds_saved_path", "/no/such/folder", "is not a results folder"),
])
def test_bad_paths_get_a_sentence(monkeypatch, cache, source, widget, value, sentence):
    at = page(monkeypatch, source)
    at.text_input(key=widget).set_value(value).run()
    assert not at.exception
    assert sentence in at.error[0].value


def test_impossible_ladder_and_broken_zip_get_a_sentence(monkeypatch, cache, shapes):
    at = page(monkeypatch, "folder")
    at.text_input(key="ds_folder").set_value(str(shapes)).run()
    at.text_input(key="ds_ladder_ats").set_value("98,1").run()
    assert "K must be at least 2 (got 1)" in at.error[0].value
    at.text_input(key="ds_ladder_ats").set_value("98")
    at.text_input(key="ds_ladder_tome").set_value("8,-1").run()
    assert "r = -1 is impossible" in at.error[0].value
    at = page(monkeypatch, "zip")
    at.file_uploader(key="ds_zip").set_value(("bad.zip", b"not a zip", "application/zip")).run()
    assert not at.exception
    assert "'bad.zip' is not a ZIP archive" in at.error[0].value


def test_gallery_shows_the_extremes_and_hands_one_to_the_image_page(monkeypatch, cache, shapes):
    at = page(monkeypatch, "folder")
    at.text_input(key="ds_folder").set_value(str(shapes)).run()
    at = evaluate(at)
    setting = at.selectbox(key="ds_hist_setting").value
    per_image = at.session_state["ds_run"]["tables"][0]
    rows = per_image[per_image["setting"] == setting].sort_values("tokens_final")
    subheaders = [h.value for h in at.subheader]
    assert f"Most and fewest tokens kept under {setting}" in subheaders
    buttons = [b for b in at.button if b.label == "Open on the Image page"]
    assert len(buttons) == 10
    fewest = rows.iloc[0]
    # The first button belongs to the image that kept the fewest tokens; clicking it hands that
    # image to the Image page.
    buttons[0].click().run()
    name, data = at.session_state["image_from_dataset"]
    assert name == fewest["image"] and data == (shapes / fewest["image"]).read_bytes()


def test_the_gallery_shows_phone_photos_upright(monkeypatch, cache, tmp_path, phone_photo, red_corner):
    """The gallery shows what the model saw: a portrait photo stands, as on the Image page."""
    folder = tmp_path / "photos"
    for label, orientation in (("circle", 6), ("square", 8)):
        (folder / label).mkdir(parents=True)
        (folder / label / f"phone-{orientation}.jpg").write_bytes(phone_photo(orientation))
    shown = []
    original = DeltaGenerator.image

    def image(self, img, *args, **kwargs):
        shown.append((kwargs.get("caption", ""), img))
        return original(self, img, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "image", image)
    at = page(monkeypatch, "folder")
    at.text_input(key="ds_folder").set_value(str(folder)).run()
    evaluate(at)
    gallery = {caption.split(":")[0]: img for caption, img in shown if caption.startswith("circle/")
               or caption.startswith("square/")}
    assert set(gallery) == {"circle/phone-6.jpg", "square/phone-8.jpg"}
    assert all(np.asarray(img).shape[:2] == (96, 64) for img in gallery.values())  # portrait
    assert red_corner(gallery["circle/phone-6.jpg"]) == "top-right"
    assert red_corner(gallery["square/phone-8.jpg"]) == "bottom-left"


def test_the_folder_is_listed_once_and_again_when_it_changes(monkeypatch, cache, shapes):
    import ats_viz.data

    walks = []
    original = ats_viz.data.load_dataset

    def load_dataset(folder, *args):
        if folder == str(shapes):  # not the held-out set of the page's first run
            walks.append(folder)
        return original(folder, *args)

    monkeypatch.setattr(ats_viz.data, "load_dataset", load_dataset)
    at = page(monkeypatch, "folder")
    at.text_input(key="ds_folder").set_value(str(shapes)).run()
    at.number_input(key="ds_batch").set_value(8).run()  # reruns that leave the dataset alone
    at.text_input(key="ds_ladder_ats").set_value("147,98").run()
    assert not at.exception and len(walks) == 1
    assert "**10 images**" in " ".join(m.value for m in at.markdown)

    circle = next((shapes / "circle").iterdir())
    (shapes / "circle" / "again.png").write_bytes(circle.read_bytes())  # a new image in a class folder
    at.run()
    assert len(walks) == 2 and "**11 images**" in " ".join(m.value for m in at.markdown)

    labels = shapes / "labels.csv"  # and a CSV, edited in place
    labels.write_text(f"circle/{circle.name},circle\n")
    at.text_input(key="ds_csv_path").set_value(str(labels)).run()
    assert "**1 images**" in " ".join(m.value for m in at.markdown)
    labels.write_text(f"circle/{circle.name},circle\ncircle/again.png,circle\n")
    at.run()
    assert len(walks) == 4 and "**2 images**" in " ".join(m.value for m in at.markdown)
