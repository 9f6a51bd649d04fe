"""The package as users get it: a wheel that carries the shipped model, and light imports."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from ats_viz.models import ASSETS, EMBEDDED, SAMPLES


def _python(code: str, cwd: Path, path: str) -> subprocess.CompletedProcess:
    """A fresh interpreter importing from ``path`` first (PYTHONPATH), in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                    reason="building the wheel offline (--no-build-isolation) needs setuptools installed")
def test_the_wheel_carries_the_shipped_model_and_loads_it_from_anywhere(tmp_path):
    # Build from a copy: an in-tree build would write build/ and *.egg-info into the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ats_viz", src / "ats_viz", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "--no-index", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(dist.glob("ats_viz-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"ats_viz/assets/{stem}.{ext}" for stem in EMBEDDED.values() for ext in ("safetensors", "json", "md")}
    samples = {f"ats_viz/assets/samples/{p.name}" for p in SAMPLES.glob("*.png")}
    assert len(samples) >= 4
    assert shipped | samples <= names, sorted((shipped | samples) - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import ats_viz.models as m; from ats_viz import load_model; "
            "net = load_model('embedded'); print(m.__file__); print(m.ASSETS); print(net.card['name'])")
    run = _python(code, elsewhere, str(site))
    assert run.returncode == 0, run.stderr[-2000:]
    module, assets, card = run.stdout.split()
    assert Path(module).is_relative_to(site) and Path(assets) == site / "ats_viz" / "assets"
    assert card == EMBEDDED["embedded"]
    assert ASSETS != Path(assets)  # the checkout's own assets played no part


def test_loading_and_evaluating_import_no_app_video_or_training_code():
    code = ("import sys, ats_viz.models, ats_viz.evaluate, ats_viz.vit; from ats_viz import load_model; "
            "print(' '.join(m for m in ('streamlit', 'cv2', 'plotly', 'matplotlib', 'ats_viz.train', "
            "'ats_viz.synthetic') if m in sys.modules))")
    run = _python(code, ROOT, str(ROOT))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == []
