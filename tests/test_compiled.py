"""The opt-in compiled forward (issue 22, item 4): the same answers as the eager engine, and a
sentence instead of a crash where nothing can compile. Each compile takes seconds, so this file
compiles as little as it can. Nothing here asserts how fast anything is."""

import pandas as pd
import pytest
import torch

from ats_viz import ATSConfig, InputError, compiled, run_ats, timing
from ats_viz.__main__ import main
from ats_viz.flops import block_macs
from ats_viz.synthetic import write_imagefolder

needs_compiler = pytest.mark.skipif(compiled.why_not("cpu") is not None, reason="no C++ compiler for torch.compile")


@pytest.fixture
def no_compiler():
    """Inductor's compiler search finds nothing, as on a machine without g++."""
    from torch._inductor import config

    with config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        yield


@needs_compiler
@pytest.mark.parametrize("cfg", [ATSConfig(method="topk", k=0.5), ATSConfig(k=0.5)], ids=lambda c: c.id)
def test_a_compiled_forward_gives_the_engines_logits_and_costs(deit_tiny, images, cfg):
    with torch.no_grad():
        want = run_ats(deit_tiny, images[:2], cfg)
        logits, gflops = compiled.forward(deit_tiny, cfg)(images[:2])
    # Compiling fuses and reorders float sums: logits agree to float32 noise, not to the bit.
    assert torch.allclose(logits, want.logits, atol=1e-4)
    if cfg.method == "topk":  # counts fixed by the setting: the same cost exactly
        assert torch.equal(gflops, want.gflops)
        return
    # ATS: reordered sums can move a token whose sampling point sits on a near tie. One token
    # more or fewer at every stage costs at most its share of 9 blocks: the tolerance.
    one_token = 9 * float(block_macs(torch.tensor([197]), torch.tensor([197]), 192, 192, 768)) / 197 * 1e-9
    assert (gflops - want.gflops).abs().max() <= one_token
    assert len(set(gflops.tolist())) == 2, "precondition: the two images keep different counts"


@needs_compiler
def test_timing_compiled_reports_the_eager_costs(deit_tiny, images):
    cfg = ATSConfig(method="evit", keep_rate=0.5)
    table = timing.benchmark(deit_tiny, images[:2], [cfg], [2], warmup=0, repeats=1, compile=True)
    eager = run_ats(deit_tiny, images[:2], cfg)
    assert list(table["setting"]) == ["full", cfg.id]
    assert table["gflops"][1] == pytest.approx(float(eager.gflops.mean()))


def test_without_a_compiler_the_library_says_what_to_install(no_compiler, deit_tiny, images):
    why = compiled.why_not("cpu")
    assert "needs a C++ compiler" in why and "g++" in why
    with pytest.raises(InputError, match="needs a C\\+\\+ compiler"):
        timing.time_settings(deit_tiny, [images[:1]], [ATSConfig()], warmup=0, repeats=1, compile=True)
    with pytest.raises(InputError, match="needs a C\\+\\+ compiler"):
        compiled.forward(deit_tiny, ATSConfig())


def test_without_a_compiler_the_benchmark_command_times_eagerly_and_says_why(no_compiler, tmp_path, capsys):
    folder = write_imagefolder(tmp_path / "shapes", per_class=1, seed=7)
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(folder), "--methods", "topk", "--k", "0.5", "--batch", "2",
                 "--repeats", "1", "--warmup", "0", "--compile", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "--compile: Compiling on the CPU needs a C++ compiler" in err and "Timing without it." in err
    assert list(pd.read_csv(out / "benchmark.csv")["setting"]) == ["full", "topk K=0.5"]
