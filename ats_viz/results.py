"""Results folders: a sweep written out as tables, a figure and a manifest, and read back.

A sweep on a cluster is looked at elsewhere and later (the Dataset page's "Open saved
results", a download that the page opens again), so what it found is written as plain files
anyone can read: per_image.csv, summary.csv, the accuracy curve (HTML and PNG) and
results.json, which says what was swept, on which model, data and devices.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .atomic import unwritable, why_not
from .errors import InputError
from .evaluate import SweepResult
from .methods import format_value, get
from .paths import allowed_roots, within
from .stats import summarize
from .sweepcache import CACHE_VERSION
from .timing import add_timing
from .setting import ATSConfig

RESULT_FILES = ("per_image.csv", "summary.csv", "curve.html", "curve.png", "results.json")
MANIFEST = "results.json"


def _setting_doc(cfg: ATSConfig) -> dict:
    reducer = get(cfg.method)
    doc = {"id": cfg.id, "method": cfg.method, "stages": None if cfg.stages is None else list(cfg.stages)}
    if reducer.param is not None:
        doc["value"] = format_value(cfg.value)
    doc.update({o.field: getattr(cfg, o.field) for o in reducer.options})
    return doc


def check_out(out: Path | str) -> Path:
    """Refuse, before a sweep, a results folder that cannot be written, with a sentence naming
    it and why (below a file, a read-only disk, no permission): the folder is made and a file
    written in it, then what was made for the check is removed again."""
    out = Path(out).expanduser()
    why = unwritable(out, keep=False)
    if why is not None:
        raise InputError(f"Cannot write the results to '{out}': {why}. Give a folder you can write to.")
    return out


def write_results(result: SweepResult, out: Path | str, timed: pd.DataFrame | None = None) -> dict[str, Path]:
    """per_image.csv, summary.csv, curve.html, curve.png and the results.json manifest;
    ``timed`` (``timing.time_dataset``) adds measured ms_per_image and images_per_s to the summary.
    A folder that cannot be written is refused with a sentence (``check_out`` says so before a sweep)."""
    out = check_out(out)
    try:
        return _write(result, out, timed)
    except OSError as err:  # the disk filled or the folder went away midway
        raise InputError(f"Writing the results to '{out}' failed: {why_not(err)} "
                         f"({getattr(err, 'filename', None) or out}). Give a folder you can write to.") from None


def _write(result: SweepResult, out: Path, timed: pd.DataFrame | None) -> dict[str, Path]:
    # Imported here: sweeping and reading results back must not load plotly, matplotlib and OpenCV.
    from .viz import curve_figure, curve_png
    out.mkdir(parents=True, exist_ok=True)
    per_image = result.per_image()
    summary = summarize(per_image, result.full_gflops)
    if timed is not None:
        summary = add_timing(summary, timed)
    paths = {name: out / name for name in RESULT_FILES}
    per_image.to_csv(paths["per_image.csv"], index=False)
    summary.to_csv(paths["summary.csv"], index=False)
    curve_figure(summary).write_html(paths["curve.html"], include_plotlyjs=True)
    curve_png(summary, paths["curve.png"])
    manifest = {
        "version": CACHE_VERSION,
        "model": result.model_name,
        "model_hash": result.model_hash,
        "dataset": str(result.dataset.root),
        "images": len(result.dataset.items),
        "found": result.dataset.found,
        "unmatched": result.dataset.unmatched,
        "skipped": [list(s) for s in result.skipped],
        "class_names": result.dataset.class_names,
        "full_gflops": result.full_gflops,
        "depth": result.depth,
        "settings": [_setting_doc(c) for c in result.settings],
        "precision": result.precision,
        "world_size": result.world_size,
        "devices": result.devices,
        "seconds": result.seconds,
        "files": list(RESULT_FILES),
    }
    paths[MANIFEST].write_text(json.dumps(manifest, indent=2))
    return paths


@dataclass
class SavedSweep:
    """A results folder read back: the tables and the manifest."""

    per_image: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict


def load_results(folder: Path | str) -> SavedSweep:
    """Open a folder written by ``write_results`` (or ``python -m ats_viz evaluate``).

    Under $ATS_VIZ_ROOTS its files are read only if they lie inside it once resolved
    (``paths.within``): a file linking out of the folder is refused, and what it links to is
    never read nor named. Unconfined, links are followed, as on one's own machine."""
    folder = Path(folder).expanduser()
    if allowed_roots() is not None:
        out = [n for n in ("per_image.csv", "summary.csv", MANIFEST) if within(folder / n, folder) is None]
        if out:
            links = "links to a file" if len(out) == 1 else "link to files"
            raise InputError(f"{', '.join(repr(n) for n in out)} in '{folder}' {links} outside the folder, which "
                             "this server does not read. Copy the results into the folder instead.")
    missing = [n for n in ("per_image.csv", "summary.csv", MANIFEST) if not (folder / n).is_file()]
    if missing:
        raise InputError(f"'{folder}' is not a results folder: {', '.join(missing)} missing. "
                         "Make one with 'python -m ats_viz evaluate --out FOLDER'.")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        # Folders from before ToMe and EViT name the parameter column "k".
        per_image = pd.read_csv(folder / "per_image.csv").rename(columns={"k": "value"})
        summary = pd.read_csv(folder / "summary.csv").rename(columns={"k": "value"})
    except (ValueError, OSError) as err:
        raise InputError(f"The results in '{folder}' could not be read ({str(err)[:120]}). Run the sweep again.") from None
    return SavedSweep(per_image, summary, manifest)


def results_zip(result: SweepResult, timed: pd.DataFrame | None = None) -> bytes:
    """The results folder as a ZIP, for a download that the Dataset page can open again."""
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="ats-viz-") as tmp, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, path in write_results(result, tmp, timed).items():
            z.write(path, name)
    return buf.getvalue()
