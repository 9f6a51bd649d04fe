"""Sweeps beyond one process: torchrun shards, resuming, loading workers, precision, and the
shared model left where it is."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from ats_viz import InputError
from ats_viz.data import load_dataset
from ats_viz.evaluate import make_settings, run_sweep
from ats_viz.models import on_device
from ats_viz.results import load_results
from ats_viz.synthetic import write_imagefolder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("shapes"), per_class=1, seed=5)  # 10 images


def _evaluate(args: list[str], processes: int, tmp: Path) -> subprocess.CompletedProcess:
    """The command line in fresh processes, one thread each, as a cluster job runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "ATS_VIZ_CACHE": str(tmp / "home")}
    launch = [sys.executable, "-m", "ats_viz"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
         "-m", "ats_viz", "--"]  # "--": torchrun would read --r as an abbreviation of its own --rdzv-*
    return subprocess.run([*launch, "evaluate", *args], env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_write_what_one_writes_and_resume_from_the_cache(folder, tmp_path):
    # On the CPU (gloo) even where there is a GPU; 5 chunks: 3 for rank 0, 2 for rank 1.
    common = ["--data", str(folder), "--device", "cpu", "--methods", "ats,tome", "--k", "98", "--r", "8",
              "--batch", "4", "--chunk", "2"]
    one = _evaluate([*common, "--no-cache", "--out", str(tmp_path / "one")], 1, tmp_path)
    assert one.returncode == 0, one.stderr
    two = _evaluate([*common, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "two")], 2, tmp_path)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two" / "per_image.csv").read_bytes() == (tmp_path / "one" / "per_image.csv").read_bytes()
    assert (tmp_path / "two" / "summary.csv").read_bytes() == (tmp_path / "one" / "summary.csv").read_bytes()
    manifest = json.loads((tmp_path / "two" / "results.json").read_text())
    assert manifest["world_size"] == 2 and [d["device"] for d in manifest["devices"]] == ["cpu", "cpu"]
    assert json.loads((tmp_path / "one" / "results.json").read_text())["world_size"] == 1
    assert two.stdout.count("ats K=98") == 1  # rank 0 alone prints the table
    assert len(list((tmp_path / "cache").glob("*.json"))) == 5 * 3  # a file per chunk and setting
    saved = load_results(tmp_path / "two")  # what the Dataset page's "Open saved results" reads
    assert len(saved.per_image) == 30

    again = _evaluate([*common, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "again")], 2, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "from the cache: full, ats K=98, tome r=8" in again.stderr
    assert (tmp_path / "again" / "per_image.csv").read_bytes() == (tmp_path / "one" / "per_image.csv").read_bytes()


def test_an_interrupted_sweep_resumes_where_it_stopped(model, folder, tmp_path):
    ds = load_dataset(folder, model.class_names)
    settings = make_settings({"ats": [98]})
    whole = run_sweep(model, ds, settings, batch=2, chunk=4, cache=None)

    def stop_after_first_chunk(p):
        if p.computed >= 4 * len(settings):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(model, ds, settings, batch=2, chunk=4, cache=tmp_path, progress=stop_after_first_chunk)
    seen = []
    resumed = run_sweep(model, ds, settings, batch=2, chunk=4, cache=tmp_path, progress=seen.append)
    assert seen[0].to_compute == (10 - 4) * len(settings)  # the finished chunk is not computed again
    assert seen[0].done == 4 * len(settings)
    assert resumed.per_image().equals(whole.per_image())


def test_the_shards_joined_are_the_whole_sweep(model, folder):
    from ats_viz.evaluate import merge_shards

    ds = load_dataset(folder, model.class_names)
    settings = make_settings({"ats": [49], "evit": [0.5]})
    whole = run_sweep(model, ds, settings, batch=3, chunk=3, cache=None)
    parts = [run_sweep(model, ds, settings, batch=3, chunk=3, cache=None, shard=(r, 3)) for r in range(3)]
    assert [len(p.per_image()) for p in parts] == [4 * 3, 3 * 3, 3 * 3]
    joined = merge_shards(ds, parts)
    assert joined.per_image().equals(whole.per_image()) and joined.world_size == 3


def test_loading_workers_give_the_same_images_in_the_same_order(model, folder, tmp_path):
    data = write_imagefolder(tmp_path / "data", per_class=1, seed=6)
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    ds = load_dataset(data, model.class_names)
    settings = make_settings({"ats": [98]})
    plain = run_sweep(model, ds, settings, batch=4, cache=None)
    workers = run_sweep(model, ds, settings, batch=4, cache=None, workers=2)
    assert workers.per_image().equals(plain.per_image())
    assert workers.skipped == plain.skipped and [n for n, _ in plain.skipped] == ["circle/broken.png"]
    assert "broken.png" in plain.skipped[0][1]


def test_a_sweep_never_moves_the_model_it_is_given(model, folder):
    params = list(model.net.parameters())
    where = [(p.device, p.data_ptr()) for p in params]

    def unmoved(_):
        assert [(p.device, p.data_ptr()) for p in model.net.parameters()] == where

    ds = load_dataset(folder, model.class_names, subset=3)
    run_sweep(model, ds, make_settings({"ats": [98]}), cache=None, progress=unmoved)
    assert all(a is b for a, b in zip(model.net.parameters(), params))
    unmoved(None)
    assert on_device(model, "cpu") is model  # already there: the model itself, no copy

    elsewhere = on_device(model, "meta")  # another device without a GPU: a copy lives there
    assert next(elsewhere.net.parameters()).device.type == "meta"
    assert on_device(model, "meta").net is elsewhere.net  # made once, reused by the next sweep
    unmoved(None)
    with torch.no_grad():
        model.net.head.bias.add_(0)  # weights changed in place: the copy is made again
    assert on_device(model, "meta").net is not elsewhere.net


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_sweep_on_the_gpu_leaves_the_shared_model_on_the_cpu(model, folder):
    ds = load_dataset(folder, model.class_names, subset=4)
    settings = make_settings({"ats": [98], "tome": [8]})
    before = [(p.device, p.data_ptr()) for p in model.net.parameters()]
    gpu = run_sweep(model, ds, settings, batch=2, device="cuda", cache=None, workers=2)
    assert [(p.device, p.data_ptr()) for p in model.net.parameters()] == before
    cpu = run_sweep(model, ds, settings, batch=2, cache=None)
    assert (gpu.per_image()["pred"] == cpu.per_image()["pred"]).all()
    assert (gpu.per_image()["tokens_final"] == cpu.per_image()["tokens_final"]).mean() > 0.9
    assert gpu.devices[0]["device"] == "cuda:0"


def test_precision_is_in_the_results_and_the_cache_key(model, folder, tmp_path):
    ds = load_dataset(folder, model.class_names, subset=4)
    settings = make_settings({"ats": [98], "tome": [8], "evit": [0.7]})
    fp32 = run_sweep(model, ds, settings, cache=tmp_path)
    bf16 = run_sweep(model, ds, settings, cache=tmp_path, precision="bf16")
    assert bf16.computed == fp32.computed  # not read from the fp32 files
    assert bf16.precision == "bf16" and len(bf16.per_image()) == len(fp32.per_image())
    assert run_sweep(model, ds, settings, cache=tmp_path, precision="bf16").computed == []
    with pytest.raises(InputError, match="fp16 runs only on CUDA"):
        run_sweep(model, ds, settings, cache=None, precision="fp16")
    with pytest.raises(InputError, match="Precision 'fp8' is not one of fp32, bf16, fp16"):
        run_sweep(model, ds, settings, cache=None, precision="fp8")


def test_torchrun_is_read_from_the_environment(monkeypatch):
    from ats_viz import distributed

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    alone = distributed.from_env()
    assert (alone.size, alone.main, alone.launched) == (1, True, False)
    assert distributed.device_for(alone, None) == "cpu" and distributed.device_for(alone, "cuda:1") == "cuda:1"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.from_env()
    assert (world.rank, world.size, world.local_rank, world.main) == (3, 4, 1, False)
    if not torch.cuda.is_available():
        assert distributed.device_for(world, None) == "cpu"  # no CUDA: the CPU, and gloo between processes
    assert distributed.device_for(world, "cpu") == "cpu"
    with pytest.raises(InputError, match="each process takes its own GPU"):
        distributed.device_for(world, "cuda:0")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="RANK 4 is outside WORLD_SIZE 4"):
        distributed.from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError, match="must be whole numbers"):
        distributed.from_env()
