"""The package as users get it: a wheel that carries the shipped model, and light imports."""

from __future__ import annotations

import ast
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


def test_videos_overlays_and_results_folders_import_no_plotly_or_matplotlib():
    code = ("import sys, ats_viz.video, ats_viz.overlays, ats_viz.results, ats_viz.timing; "
            "print(' '.join(m for m in ('streamlit', 'plotly', 'matplotlib') if m in sys.modules))")
    run = _python(code, ROOT, str(ROOT))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == []


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each module of ``package`` (dotted, relative to it) -> the package's modules it imports,
    wherever the import stands (in a function, under TYPE_CHECKING): each is a dependency a
    reader follows. Importing a submodule imports its parent packages too."""
    files = {".".join(p.relative_to(package).with_suffix("").parts).removesuffix("__init__").rstrip("."): p
             for p in package.rglob("*.py")}

    def with_parents(parts: list[str]) -> set[str]:
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(files)

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        parts = name.split(".") if name else []
        home = parts if path.name == "__init__.py" else parts[:-1]  # what "." means here
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {m for a in node.names if a.name.split(".")[0] == package.name
                          for m in with_parents(a.name.split(".")[1:])}
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            module = (node.module or "").split(".") if node.module else []
            if node.level:
                base = home[:len(home) - node.level + 1] + module
            elif module[:1] == [package.name]:
                base = module[1:]
            else:
                continue
            edges |= with_parents(base)
            edges |= {m for a in node.names for m in with_parents([*base, a.name])}  # from . import x
        graph[name] = edges - with_parents(parts) - {""}  # a module's own packages are its home
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_library_has_no_import_cycles():
    graph = import_graph(ROOT / "ats_viz")
    assert {"evaluate", "timing", "video", "viz", "results", "sweepcache"} <= set(graph)
    assert "viz" not in graph["video"] and "evaluate" not in graph["timing"]
    assert {"methods", "methods.base", "setting", "vit"} <= set(graph) and "setting" in graph["vit"]
    found = [sorted(c) for c in cycles(graph)]
    assert found == [], f"modules that import each other: {found}"
