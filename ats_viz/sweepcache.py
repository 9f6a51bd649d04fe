"""The sweep's disk cache: one JSON file per (model weights, preprocessing, precision, setting,
chunk of image files).

A sweep over a large dataset takes hours, so what it computed is kept as soon as each chunk
is done: widening the ladder computes only the new settings, a changed image file or weight
recomputes its chunk or everything, and an interrupted sweep resumes from its last chunk.
Everything a result depends on is in a file's key, and the file's name is the key's digest.
A file that does not read back cleanly is recomputed, never trusted, and said so once in the
log (``logging``, this module's logger), so a cache that keeps failing does not fail silently.
The cache is optional, so it never costs a run: a folder that cannot be written (a file, a
read-only disk) is found before any image is run and the sweep goes on without caching, and a
save that fails midway (the disk filled) stops the caching, each said once in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .atomic import atomic_write, unwritable, why_not
from . import cachebudget
from .cachebudget import cache_root
from .data import DatasetItem, fingerprint
from .models import LoadedModel, model_hash
from .setting import ATSConfig, resolve

CACHE_VERSION = 3  # 2: one file per setting and chunk of images, precision in the key; 3: the setting's id and plan
ROWS = ("names", "pred", "confidence", "gflops", "tokens")  # the columns of a setting's rows

log = logging.getLogger(__name__)
_warned: set[tuple[str, int]] = set()  # (file, its mtime): each unusable file is logged once
_warned_lock = threading.Lock()  # sessions are threads


class _Default:
    """The cache's own folder, named before the environment is read (``default_cache``)."""

    def __repr__(self) -> str:
        return "sweepcache.DEFAULT"


DEFAULT = _Default()


def default_cache() -> Path:
    return cache_root() / "sweeps"


def setting_key(cfg: ATSConfig, depth: int, num_patches: int) -> dict:
    """What a setting's results depend on: its id, and the plan it resolves to on this model
    (so a change to a method's default stages or schedule never serves old results); refuses
    an impossible setting with a sentence."""
    plan = resolve(cfg, depth, num_patches)
    return {"id": cfg.id, "plan": {str(b): v for b, v in sorted(plan.items())}}


def files_digest(items: Sequence[DatasetItem]) -> str:
    """Changes when any of these image files is replaced, rewritten or touched."""
    return hashlib.sha256(json.dumps(fingerprint(items)).encode()).hexdigest()


@dataclass
class Cached:
    """One setting's rows over one chunk of images, as the cache gave them back."""

    rows: dict[str, list]  # ROWS -> values, one per readable image of the chunk
    skipped: list[tuple[str, str]]  # (image, why it could not be read)


class SweepCache:
    """One JSON file per (model, preprocessing, precision, setting, chunk of image files);
    ``folder`` None caches nothing."""

    def __init__(self, folder: Path | None, base: dict, writable: bool = True) -> None:
        """``folder``: where the files go; ``base``: what every key holds (version, model,
        preprocessing, precision)."""
        self.folder, self.base = folder, base
        self.writable = writable and folder is not None  # False: read what is there, save nothing

    @classmethod
    def open(cls, where: Path | str | _Default | None, model: LoadedModel, precision: str) -> SweepCache:
        """The cache for ``model`` at ``precision``: ``where`` a folder, ``DEFAULT``
        (``default_cache()``) or None (no cache). The folder is made and a file written in it
        first: where that fails the sweep runs without caching (a folder that exists, say on
        a read-only disk, is still read), and the log says so once."""
        folder = None if where is None else (default_cache() if where is DEFAULT else Path(where))
        writable = True
        if folder is not None:
            why = unwritable(folder)
            if why is not None:
                readable = folder.is_dir()
                log.warning("The sweep cache folder %s cannot be written (%s); this sweep runs without caching%s.",
                            folder, why, " (the results already in it are used)" if readable else "")
                folder, writable = (folder if readable else None), False
        return cls(folder, {"version": CACHE_VERSION, "model": model_hash(model.net),
                            "transform": repr(model.transform), "precision": precision}, writable)

    @property
    def model_hash(self) -> str:
        return self.base["model"]

    def _key(self, setting: dict, files: str) -> tuple[dict, Path | None]:
        key = {**self.base, "setting": setting, "files": files}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
        return key, (self.folder / f"{digest}.json" if self.folder else None)

    def load(self, setting: dict, files: str, names: list[str], depth: int) -> Cached | None:
        """The chunk of images ``names`` under one setting (``setting_key``), or None when it is
        not cached or its file cannot be used (then logged, once per file)."""
        key, path = self._key(setting, files)
        if path is None or not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            if doc["key"] != key:
                return _distrust(path, "it was written for another key")
            rows = {"names": [str(x) for x in doc["names"]], "pred": [int(x) for x in doc["pred"]],
                    "confidence": [float(x) for x in doc["confidence"]], "gflops": [float(x) for x in doc["gflops"]],
                    "tokens": [[int(t) for t in row] for row in doc["tokens"]]}
            skipped = [(str(a), str(b)) for a, b in doc["skipped"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return _distrust(path, f"{type(err).__name__}: {str(err)[:200]}")
        if len({len(rows[c]) for c in ROWS}) != 1:
            return _distrust(path, "its columns differ in length")
        if any(len(row) != depth + 1 for row in rows["tokens"]):
            return _distrust(path, f"its token counts are not {depth + 1} per image")
        if sorted(rows["names"] + [a for a, _ in skipped]) != sorted(names):
            return _distrust(path, "its images are not the chunk's")
        cachebudget.touch(path)  # used now: the budget removes the least recently used first
        return Cached(rows, skipped)

    def save(self, setting: dict, files: str, rows: dict[str, list], skipped: list[tuple[str, str]]) -> None:
        """Keep one setting's rows (ROWS) over one chunk; a reader sees the old file or the new one."""
        key, path = self._key(setting, files)
        if path is None or not self.writable:
            return
        doc = {"key": key, **{c: rows[c] for c in ROWS}, "skipped": [list(s) for s in skipped]}
        try:
            atomic_write(path, json.dumps(doc))
        except OSError as err:  # the disk filled, the folder went away or read-only: the run goes on
            self.writable = False
            log.warning("The sweep cache file %s could not be written (%s); the rest of this sweep is not cached.",
                        path, why_not(err))


def _distrust(path: Path, why: str) -> None:
    """Log, once per file, that a cache file is not used and why: it is computed again."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0
    with _warned_lock:
        if (str(path), stamp) in _warned:
            return None
        _warned.add((str(path), stamp))
    log.warning("The sweep cache file %s cannot be used (%s); its results are computed again.", path, why)
    return None
