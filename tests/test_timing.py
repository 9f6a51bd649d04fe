"""Measured speed: what the tables and pages say, how runs are ordered and counted, and the
refusals. Nothing here asserts how fast anything is: the machine is shared and noisy."""

import json

import pandas as pd
import pytest
import torch

from conftest import open_app
from ats_viz import ATSConfig, InputError, run_ats, timing, viz
from ats_viz.__main__ import main
from ats_viz.data import load_dataset, read_image
from ats_viz.evaluate import make_settings, run_sweep
from ats_viz.models import ASSETS, load_model
from ats_viz.synthetic import write_imagefolder

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("shapes"), per_class=1, seed=7)


def test_benchmark_command_writes_the_promised_table(folder, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["benchmark", "--data", str(folder), "--methods", "full,ats,topk", "--k", "all,0.5",
                 "--batch", "1,3", "--repeats", "2", "--warmup", "1", "--threads", "1", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["benchmark.csv", "benchmark.html", "benchmark.png"]
    table = pd.read_csv(out / "benchmark.csv", keep_default_na=False)
    assert list(table.columns) == ["setting", "method", "value", "batch", "ms_per_image", "images_per_s", "gflops",
                                   "speedup", "gflops_ratio"]
    settings = ["full", "ats K=all", "ats K=0.5", "topk K=all", "topk K=0.5"]
    for batch in (1, 3):  # every setting at every batch size
        assert list(table.loc[table["batch"] == batch, "setting"]) == settings
    assert list(table["value"][:5]) == ["", "all", "0.5", "all", "0.5"]
    full = table[table["method"] == "full"]
    assert list(full["speedup"]) == [1.0, 1.0] and list(full["gflops_ratio"]) == [1.0, 1.0]
    assert (table["images_per_s"] * table["ms_per_image"]).round(6).eq(1000).all()
    printed = capsys.readouterr()
    assert f"images from {folder}" in printed.out and "1 thread" in printed.err


def test_random_tensors_when_there_are_no_images(monkeypatch, tmp_path, capsys):
    # A timm model has no bundled images: the command says it times random tensors.
    monkeypatch.setattr("ats_viz.models._load_timm", lambda name, file=None: load_model("embedded"))
    assert main(["benchmark", "--model", "timm:any", "--methods", "tome", "--r", "8", "--batch", "2",
                 "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    assert "random normalised tensors" in capsys.readouterr().out


def test_gflops_are_run_ats_on_the_same_images(deit_tiny, images):
    configs = [ATSConfig(), ATSConfig(k=0.5, method="topk"), ATSConfig(method="tome", r=8),
               ATSConfig(method="evit", keep_rate=0.5)]
    # Batches of 2 from 4 images, one timed repetition on each: every image counts once.
    table = timing.benchmark(deit_tiny, images, configs, [2], warmup=1, repeats=2)
    full = run_ats(deit_tiny, images, ATSConfig(method="full"))
    assert table["gflops"][0] == pytest.approx(full.full_gflops)
    for cfg, row in zip(configs, table.iloc[1:].itertuples()):
        res = run_ats(deit_tiny, images, cfg)
        assert row.setting == cfg.id
        assert row.gflops == pytest.approx(float(res.gflops.mean()))
        assert row.gflops_ratio == pytest.approx(full.full_gflops / float(res.gflops.mean()))
    assert table["gflops"][1] != pytest.approx(float(run_ats(deit_tiny, images[:2]).gflops.mean()))  # images differ


def test_repetitions_interleave_settings_and_warm_up_is_not_counted(monkeypatch, model):
    """A fake clock that each run advances by its setting's cost: the medians are those costs
    exactly if and only if the clock brackets each timed run alone."""
    now, log = [0.0], []
    cost = {"full": 4.0, "ats": 2.0, "topk": 3.0}

    def fake_run(net, x, cfg):
        log.append(cfg.id)
        warm = len(log) <= 2 * 3
        now[0] += 100.0 if warm else cost[cfg.method]  # warm-up runs are slow: they must not count
        return None if cfg.method == "full" else torch.full((x.shape[0],), cost[cfg.method])

    monkeypatch.setattr(timing, "_runner", lambda net, cfg, compile: lambda x: fake_run(net, x, cfg))
    monkeypatch.setattr(timing, "_clock", lambda: now[0])
    x = torch.zeros(2, 3, 224, 224)
    measured = timing.time_settings(model.net, [x], [ATSConfig(), ATSConfig(method="topk")], warmup=2, repeats=5)
    labels = ["full", "ats K=all", "topk K=all"]
    assert [m.id for m in measured] == labels  # the reference first
    rounds = [log[i:i + 3] for i in range(0, len(log), 3)]
    assert len(rounds) == 7 and all(sorted(r) == sorted(labels) for r in rounds)  # each round runs each setting once
    assert len({r[0] for r in rounds}) == 3  # and no setting always goes first
    for m in measured:
        assert len(m.seconds) == 5 and set(m.seconds) == {cost[m.config.method]}
    table = timing.table(measured)
    assert list(table["ms_per_image"]) == [2000.0, 1000.0, 1500.0]  # per image of the batch of 2
    assert list(table["speedup"]) == [1.0, 2.0, pytest.approx(4 / 3)]


def test_a_single_setting_run_is_one_repetition(monkeypatch, model):
    calls = []
    monkeypatch.setattr(timing, "_runner", lambda net, cfg, compile: lambda x: calls.append(cfg.method))
    timing.time_settings(model.net, [torch.zeros(1, 3, 224, 224)], [ATSConfig(method="full")], warmup=0, repeats=3)
    assert calls == ["full"] * 3  # full asked for again is the reference, not a second setting


@pytest.mark.parametrize("args, sentence", [
    (["--methods", "ats,fast"], "Unknown method(s) fast"),
    (["--batch", "0"], "Batch size 0 is impossible"),
    (["--batch", "1,big"], "Batch sizes '1,big' are not whole numbers"),
    (["--repeats", "0"], "--repeats 0: give at least 1 timed run"),
    (["--warmup", "-1"], "--warmup -1: give 0 or more"),
    (["--threads", "0"], "--threads 0: give at least 1 thread"),
    (["--k", "1"], None),  # K = 1 is refused when the settings meet the model, below
    (["--device", "tpu"], "'tpu' is not a device: use 'cpu' or 'cuda'"),
    (["--data", "/no/such/folder"], "--data '/no/such/folder' is not a folder"),
])
def test_bad_input_is_refused_before_the_model_loads(monkeypatch, tmp_path, capsys, args, sentence):
    if sentence is None:
        assert main(["benchmark", "--methods", "ats", *args, "--out", str(tmp_path)]) == 2
        assert "K must be at least 2 (got 1)" in capsys.readouterr().err
        return
    monkeypatch.setattr("ats_viz.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["benchmark", *args, "--out", str(tmp_path)]) == 2
    assert sentence in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_absent_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("ats_viz.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["benchmark", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_library_refusals(model):
    x = [torch.zeros(1, 3, 224, 224)]
    with pytest.raises(InputError, match="Repeats must be a whole number of at least 1"):
        timing.time_settings(model.net, x, [], repeats=0)
    with pytest.raises(InputError, match="K must be at least 2"):
        timing.time_settings(model.net, x, [ATSConfig(k=1)])
    with pytest.raises(InputError, match="differ in size"):
        timing.time_settings(model.net, [x[0], torch.zeros(2, 3, 224, 224)], [])
    with pytest.raises(InputError, match="has no 'ms_per_image' column"):
        viz.curve_figure(pd.DataFrame({"setting": ["full"], "method": ["full"], "gflops_mean": [1.0]}), "ms_per_image")


def test_a_sweep_gets_measured_columns_and_an_ms_axis(model, folder, tmp_path):
    dataset = load_dataset(folder, model.class_names)
    settings = make_settings({"ats": [0.5]})
    result = run_sweep(model, dataset, settings, batch=4, cache=None)
    timed = timing.time_dataset(model, dataset, settings, batch=4, warmup=0, repeats=1)
    summary = timing.add_timing(result.summary(), timed)
    assert list(summary["setting"]) == ["full", "ats K=0.5"] and summary["ms_per_image"].notna().all()
    fig = viz.curve_figure(summary, "ms_per_image")
    assert [list(t.x) for t in fig.data] == [[v] for v in summary["ms_per_image"]]
    assert fig.layout.xaxis.title.text == "measured ms per image"


def test_evaluate_time_fills_the_summary(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(tmp_path / "cache"))
    assert main(["evaluate", "--data", str(folder), "--methods", "ats", "--k", "0.5", "--batch", "4",
                 "--out", str(tmp_path / "on"), "--time"]) == 0
    summary = pd.read_csv(tmp_path / "on" / "summary.csv")
    assert {"ms_per_image", "images_per_s"} <= set(summary.columns) and summary["ms_per_image"].notna().all()
    assert main(["evaluate", "--data", str(folder), "--methods", "ats", "--k", "0.5", "--batch", "4",
                 "--out", str(tmp_path / "off")]) == 0
    assert "ms_per_image" not in pd.read_csv(tmp_path / "off" / "summary.csv").columns  # off by default
    where = timing.machine("cpu")  # the timing caption and the results folder describe the device alike
    devices = json.loads((tmp_path / "on" / "results.json").read_text())["devices"]
    assert [(d["device"], d["name"]) for d in devices] == [(where.device, where.name)]


def test_image_page_times_only_when_asked(monkeypatch, model):
    calls = []
    real = timing.time_settings

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(timing, "time_settings", counting)
    at = open_app(monkeypatch, "1_Image.py")
    labels = [m.label for m in at.metric]
    assert calls == [] and "full: measured" not in labels  # nothing timed on opening the page
    at.button(key="image_speed").click().run()
    assert not at.exception, at.exception
    assert len(calls) == 1
    shown = {m.label: m.value for m in at.metric}
    assert shown["ATS K=all: measured"].endswith(" ms") and shown["full: measured"].endswith(" ms")
    data = (ASSETS / "samples" / at.selectbox(key="image_sample").value).read_bytes()
    res = run_ats(model.net, model.prepare(read_image(data)), ATSConfig())
    assert shown["GFLOPs ratio"] == f"{res.full_gflops / float(res.gflops[0]):.2f}x"
    assert shown["Measured speed-up"].endswith("x")
    assert any("thread" in c.value for c in at.caption)
    at.run()  # a rerun shows the kept timing without timing again
    assert len(calls) == 1 and "full: measured" in [m.label for m in at.metric]
    at.text_input(key="w_k").set_value("0.5").run()  # another setting: not timed until asked
    assert len(calls) == 1 and "full: measured" not in [m.label for m in at.metric]


def test_compare_page_times_every_column_when_asked(monkeypatch):
    at = open_app(monkeypatch, "2_Compare.py")
    assert not [m for m in at.metric if m.label == "Measured"]
    at.button(key="compare_speed").click().run()
    assert not at.exception, at.exception
    measured = [m for m in at.metric if m.label == "Measured"]
    assert len(measured) == len([m for m in at.metric if m.label == "GFLOPs"]) == 4  # one per column
    assert all(m.value.endswith(" ms") for m in measured)
    assert any(m.label == "full: measured" for m in at.metric)


def test_dataset_page_measures_on_demand_and_switches_the_axis(monkeypatch, folder, tmp_path):
    monkeypatch.setenv("ATS_VIZ_CACHE", str(tmp_path / "cache"))
    at = open_app(monkeypatch, "4_Dataset.py")
    at.radio(key="ds_source").set_value("folder").run()
    at.text_input(key="ds_folder").set_value(str(folder)).run()
    at.multiselect(key="ds_methods").set_value(["ats"]).run()
    at.text_input(key="ds_ladder_ats").set_value("0.5").run()
    at.number_input(key="ds_batch").set_value(4).run()
    at.button(key="ds_go").click().run()
    assert not at.exception, at.exception
    assert "ms_per_image" not in at.dataframe[0].value.columns  # no timing unless asked
    at.button(key="ds_time").click().run()
    assert not at.exception, at.exception
    summary = at.dataframe[0].value
    assert list(summary["setting"]) == ["full", "ats K=0.5"] and summary["ms_per_image"].notna().all()
    at.radio(key="ds_curve_x").set_value("ms_per_image").run()
    curve = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert curve["layout"]["xaxis"]["title"]["text"] == "measured ms per image"
