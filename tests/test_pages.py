"""Home, Image and Compare pages through Streamlit's AppTest: what a person reads on them."""

import io
import json
import os
import time
import zlib

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from conftest import open_app, sharpen
from ats_viz import ATSConfig, run_ats, synthetic, viz
from ats_viz.methods import METHODS, REDUCERS
from ats_viz.data import read_image
from ats_viz.models import SAMPLES, load_model


def png(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def expected(model, data: bytes, cfg: ATSConfig):
    with torch.no_grad():
        return run_ats(model.net, model.prepare(read_image(data)), cfg)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def upload(at: AppTest, key: str, name: str, data: bytes) -> AppTest:
    at.file_uploader(key=key).set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, at.exception
    return at


def test_home_says_what_ats_is_and_links_the_pages(monkeypatch):
    at = open_app(monkeypatch, "app.py")  # the home page
    text = " ".join(m.value for m in at.markdown)
    assert "inverse transform sampling" in text and "class token" in text
    card = load_model("embedded").card["heldout"]
    assert f"{card['top1_full']:.1%}" in text


@pytest.mark.parametrize("name", ["app.py", "1_Image.py", "2_Compare.py", "3_Video.py", "4_Dataset.py"])
def test_every_page_links_every_page_by_name(monkeypatch, name):
    links = open_app(monkeypatch, name).sidebar.get("page_link")
    assert [link.proto.label for link in links] == ["Home", "Image", "Compare", "Video", "Dataset"]
    assert [link.proto.page for link in links] == ["", "Image", "Compare", "Video", "Dataset"]


def test_image_page_shows_the_sample_numbers(monkeypatch, model):
    at = open_app(monkeypatch, "1_Image.py")
    name = at.selectbox(key="image_sample").value
    res = expected(model, (SAMPLES / name).read_bytes(), ATSConfig())
    assert metric(at, "Tokens kept") == f"{int(res.patch_counts[0, -1])} / 196"
    assert metric(at, "GFLOPs") == f"{float(res.gflops[0]):.3f}"
    assert metric(at, "Saved") == f"{1 - float(res.gflops[0]) / res.full_gflops:.1%}"
    assert len(at.get("download_button")) == 2


def test_image_page_draws_the_overlay_png_only_when_asked(monkeypatch, model):
    drawn = []
    monkeypatch.setattr(viz, "stage_figure_png", lambda *a, **k: drawn.append(a) or b"")
    at = open_app(monkeypatch, "1_Image.py")
    at.text_input(key="w_k").set_value("0.5").run()  # a rerun with a new result
    assert not at.exception and len(at.get("download_button")) == 2
    assert drawn == []


def test_the_overlay_png_shows_every_stage_and_is_safe_from_server_threads(model):
    from concurrent.futures import ThreadPoolExecutor

    data = (SAMPLES / sorted(p.name for p in SAMPLES.glob("*.png"))[0]).read_bytes()
    x = model.prepare(read_image(data))
    res = expected(model, data, ATSConfig(k=0.5))
    seen = model.to_uint8(x[0])
    with ThreadPoolExecutor(4) as pool:  # sessions download at once: no figure may leak into another
        pngs = list(pool.map(lambda _: viz.stage_figure_png(seen, res), range(4)))
    assert len(set(pngs)) == 1
    img = Image.open(io.BytesIO(pngs[0]))
    rows = -(-(1 + len(res.stages)) // 5)  # the input and one panel per stage, five to a row
    assert img.size == (round(5 * 2.6 * 110), round(rows * 2.8 * 110))


def test_uploaded_image_each_method(monkeypatch, model):
    img, _ = synthetic.sample((7, 7), label=3)
    data = png(img)
    at = upload(open_app(monkeypatch, "1_Image.py"), "image_upload", "mine.png", data)
    for method in ("ats", "topk", "random", "full", "tome", "evit"):
        at.selectbox(key="w_method").set_value(method).run()
        if method in ("ats", "topk", "random"):
            at.text_input(key="w_k").set_value("0.5").run()
        assert not at.exception and not at.error
        # ToMe and EViT at the sidebar's defaults: r = 13, keep rate 0.7 with fusion.
        res = expected(model, data, ATSConfig(method=method, k=0.5))
        assert metric(at, "Tokens kept") == f"{int(res.patch_counts[0, -1])} / 196"
        assert metric(at, "GFLOPs") == f"{float(res.gflops[0]):.3f}"
        if method in ("topk", "random"):
            assert metric(at, "Tokens kept") == "98 / 196"
        if method == "full":
            assert metric(at, "Saved") == "0.0%"


def test_settings_live_in_the_url_and_bad_settings_get_a_sentence(monkeypatch):
    at = open_app(monkeypatch, "1_Image.py")
    at.text_input(key="w_k").set_value("49").run()
    assert at.query_params["k"] == ["49"] or at.query_params["k"] == "49"
    at.text_input(key="w_k").set_value("1").run()
    assert "K must be at least 2 (got 1)" in at.error[0].value
    at.text_input(key="w_k").set_value("lots").run()
    assert "K 'lots' is not a number" in at.error[0].value
    at.text_input(key="w_k").set_value("all").run()
    at.text_input(key="w_stages").set_value("3-40").run()
    assert "Stage 12 is outside this model" in at.error[0].value
    at.text_input(key="w_stages").set_value("").run()
    at.selectbox(key="w_method").set_value("tome").run()
    at.text_input(key="w_r").set_value("8.5").run()
    assert "r = 8.5 is not a whole number" in at.error[0].value
    at.text_input(key="w_r").set_value("8").run()
    assert not at.error and at.query_params["method"] in ("tome", ["tome"]) and at.query_params["r"] in ("8", ["8"])


def test_settings_arrive_from_the_url(monkeypatch):
    at = open_app(monkeypatch, "1_Image.py", params={"k": "30", "method": "topk"})
    assert metric(at, "Tokens kept") == "30 / 196"


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims another size (CRC fixed): a decompression bomb's shape."""
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


BIG = png_claiming(20000, 20000)


@pytest.mark.parametrize(
    "name, data, text",
    [
        ("empty.png", b"", "is empty (0 bytes)"),
        ("notes.png", b"these are my notes, not a picture", "is not an image we can read"),
        ("cut.jpg", png(np.full((64, 64, 3), 90, np.uint8), fmt="JPEG")[:300], "truncated or corrupt"),
        ("dot.png", png(np.zeros((1, 1, 3), np.uint8)), "only 1 x 1 pixels"),
        ("huge.png", BIG, "more than the 40 megapixel limit"),
    ],
)
def test_bad_uploads_get_a_sentence_and_the_page_recovers(monkeypatch, name, data, text):
    at = upload(open_app(monkeypatch, "1_Image.py"), "image_upload", name, data)
    assert text in at.error[0].value
    good = png(synthetic.sample((3, 3))[0])
    at = upload(at, "image_upload", "good.png", good)
    assert not at.error and metric(at, "Tokens kept").endswith("/ 196")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16"])
def test_every_image_mode_is_handled(monkeypatch, mode):
    arr = synthetic.sample((5, 5))[0]
    if mode == "I;16":
        data = png((arr[..., 0].astype(np.uint16) * 257))
    elif mode == "CMYK":
        data = png(arr, "CMYK", fmt="JPEG")
    else:
        data = png(arr, mode)
    at = upload(open_app(monkeypatch, "1_Image.py"), "image_upload", f"x-{mode}.png", data)
    assert not at.error and metric(at, "Tokens kept").endswith("/ 196")


def test_compare_ladder_columns_match_the_library(monkeypatch, model):
    at = open_app(monkeypatch, "2_Compare.py")
    data = (SAMPLES / at.selectbox(key="compare_sample").value).read_bytes()
    tokens = [m.value for m in at.metric if m.label == "Tokens at the end"]
    gflops = [m.value for m in at.metric if m.label == "GFLOPs"]
    assert len(tokens) == 4
    for i, k in enumerate((None, 0.75, 0.5, 0.25)):
        res = expected(model, data, ATSConfig(k=k))
        assert tokens[i] == f"{int(res.patch_counts[0, -1])} / 196"
        assert gflops[i] == f"{float(res.gflops[0]):.3f}"
    assert len(at.get("plotly_chart")) == 2
    # The chart: each setting's GFLOPs above, the full model's as a line there, its confidence below
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    bars, conf = chart["data"]
    assert [f"{g:.3f}" for g in bars["y"]] == gflops and bars["yaxis"] == "y"
    assert conf["yaxis"] == "y2" and conf["text"] == [m.delta for m in at.metric if m.label == "Top-1"]
    line = next(s for s in chart["layout"]["shapes"] if s["type"] == "line")
    assert line["yref"] == "y" and line["y0"] == pytest.approx(model.card["heldout"]["gflops_full"])
    at.text_input(key="compare_ladder_ats").set_value("all, 0").run()
    assert "K must be at least 2 (got 0)" in at.error[0].value


def test_compare_methods_at_equal_cost(monkeypatch, model):
    at = open_app(monkeypatch, "2_Compare.py")
    data = (SAMPLES / at.selectbox(key="compare_sample").value).read_bytes()
    at.radio(key="compare_mode").set_value("Methods at equal cost").run()
    assert not at.exception and not at.error
    titles = [m.value for m in at.markdown if m.value.startswith("**")]
    gflops = [float(m.value) for m in at.metric if m.label == "GFLOPs"]
    assert [t.split()[0].strip("*") for t in titles] == [METHODS[m].label for m in REDUCERS]  # ATS first
    target = float(expected(model, data, ATSConfig()).gflops[0])  # the sidebar's ATS, K = all
    assert gflops[0] == pytest.approx(target, abs=5e-4)
    for title, gf in zip(titles[1:], gflops[1:]):
        assert abs(gf - target) < 0.02 * target, (title, gf, target)  # each lands near ATS's cost
    # Each column is what the library gives for the setting it names.
    symbol, value = titles[3].strip("*").split()[1].split("=")
    res = expected(model, data, ATSConfig(method="tome", r=int(value)))
    assert symbol == "r" and gflops[3] == pytest.approx(float(res.gflops[0]), abs=5e-4)
    # The token curves wear the registry's colours, as on the Dataset page.
    curves = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"]
    assert [t["line"]["color"] for t in curves] == ["rgb({},{},{})".format(*METHODS[m].colour) for m in REDUCERS]


def test_the_shipped_model_says_what_it_knows_beside_its_prediction(monkeypatch, model):
    # A photo gets one of ten shapes: the page says so, and where a model for photos is.
    at = open_app(monkeypatch, "1_Image.py")
    note = next(c.value for c in at.caption if "synthetic shapes" in c.value)
    assert "knows scenes of 1 to 8 synthetic shapes and names the kind they show most often" in note
    assert f"one of {len(model.class_names)} ({', '.join(model.class_names)})" in note
    assert "timm pretrained model" in note and "deit_small_patch16_224" in note


def test_an_image_sent_from_the_dataset_page_is_shown(monkeypatch, model):
    data = png(synthetic.sample((9, 9), label=6)[0])
    at = open_app(monkeypatch, "1_Image.py", state={"image_from_dataset": ("hexagon/x.png", data)})
    assert "Showing hexagon/x.png from the Dataset page." in at.info[0].value
    res = expected(model, data, ATSConfig())
    assert metric(at, "Tokens kept") == f"{int(res.patch_counts[0, -1])} / 196"
    at.button(key="image_unsend").click().run()
    assert "image_from_dataset" not in at.session_state


def test_two_checkpoints_of_one_name_give_their_own_results(monkeypatch, tmp_path):
    """Runs are cached by the weights' digest and models by the file's stamp, not by its name:
    two w.safetensors in two folders, and a file rewritten in place, each show their own answer."""
    from safetensors.torch import save_file

    arch = "deit_tiny_patch16_224"
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        (tmp_path / str(seed)).mkdir()
        paths.append(tmp_path / str(seed) / "w.safetensors")
        save_file(sharpen(timm.create_model(arch)).state_dict(), str(paths[-1]))
    at = open_app(monkeypatch, "1_Image.py", params={"source": "file", "arch": arch})
    data = (SAMPLES / at.selectbox(key="image_sample").value).read_bytes()

    def shown_and_expected(path) -> tuple[str, str]:
        at.text_input(key="w_ckpt").set_value(str(path)).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        res = expected(load_model(str(path), arch), data, ATSConfig())
        return metric(at, "GFLOPs"), f"{float(res.gflops[0]):.3f}"

    first, second = shown_and_expected(paths[0]), shown_and_expected(paths[1])
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0]
    paths[0].write_bytes(paths[1].read_bytes())  # retrained in place: now the second model's weights
    os.utime(paths[0], ns=(time.time_ns() + 10**9,) * 2)
    again = shown_and_expected(paths[0])
    assert again[0] == again[1] == second[0]


def test_the_trace_json_names_the_setting_and_each_stages_value(monkeypatch, model):
    """The Image page's Trace (JSON) download: the setting by its id, each stage's parameter
    under one name, and both top-5 lists."""
    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT))
    import ui

    x = model.prepare(Image.fromarray(synthetic.sample(3)[0]))
    cfg = ATSConfig(method="tome", r=8, stages=(0, 1, 2))
    with torch.no_grad():
        res, full = run_ats(model.net, x, cfg), run_ats(model.net, x, ATSConfig(method="full"))
    doc = json.loads(ui.trace_json(res, full, model, ui.Settings("embedded", None, cfg, "0-2"), "x.png"))
    assert doc["settings"]["id"] == "tome r=8 stages=0-2"
    assert [(s["block"], s["value"], s["tokens_in"], s["tokens_out"]) for s in doc["stages"]] == \
        [(0, 8, 196, 188), (1, 8, 188, 180), (2, 8, 180, 172)]
    assert doc["top5"][0][0] == model.class_names[int(res.logits[0].argmax())]
    assert doc["top5_full"][0][0] == model.class_names[int(full.logits[0].argmax())]
