"""Writing so that a reader sees the old file or folder or the new one, never half of it.

Everything the app writes for later (cached sweep results, the bundled held-out set, unpacked
uploads) may be read at the same moment by another process or by another session of the same
server (sessions are threads). So each is written under a temporary name of its own beside
the target, ``.{name}.{pid}.{thread}.tmp``, which no other writer uses, and then moved onto
the target in one step (a rename within one folder is atomic).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator


def temp_sibling(path: Path) -> Path:
    """A name beside ``path`` that only this process and thread write to."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` (text as UTF-8) in one step: a reader sees the old file or
    the new one. Its folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill (not yet made); once filled it becomes
    ``path`` in one step. Where ``path`` appeared meanwhile (another process or session made
    the same folder first), that one stands and ours is removed; so is ours if filling it fails.
    Only for folders whose content is fixed by their name, so that either copy will do."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed writer of the same pid and thread
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(path)
    except OSError:  # the folder is there already: another writer finished first
        shutil.rmtree(tmp, ignore_errors=True)
