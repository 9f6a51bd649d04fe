"""Writing so that a reader sees the old file or folder or the new one, never half of it.

Everything the app writes for later (cached sweep results, the bundled held-out set, unpacked
uploads) may be read at the same moment by another process or by another session of the same
server (sessions are threads). So each is written under a temporary name of its own beside
the target, ``.{name}.{pid}.{thread}.tmp``, which no other writer uses, and then moved onto
the target in one step (a rename within one folder is atomic).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator

_REASONS = {  # an OSError's errno, as a person reads it
    errno.EROFS: "it is on a read-only file system",
    errno.EACCES: "permission denied: you may not write there",
    errno.EPERM: "permission denied: you may not write there",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOENT: "nothing can be made there (no such file or directory)",  # /proc, a folder removed meanwhile
}


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
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.is_dir():  # not another writer finishing first: a real failure, said as it is
            raise


def why_not(err: OSError) -> str:
    """An OSError as the words of a sentence ("it is on a read-only file system")."""
    return _REASONS.get(err.errno) or f"the system refused ({(err.strerror or type(err).__name__).rstrip('.')})"


def unwritable(folder: Path | str, keep: bool = True) -> str | None:
    """None when files can be written in ``folder``, otherwise why not, in words.

    The folder is made (with its parents) where missing and a temporary file is written in
    it and removed: the operation itself is tried, since permission bits say nothing to root
    and nothing of a read-only mount. ``keep`` False removes again the folders made for the
    check, so a run refused later leaves no trace.
    """
    folder = Path(folder)
    missing = []
    top = folder
    while not top.exists() and not top.is_symlink() and top != top.parent:
        missing.append(top)
        top = top.parent
    if top.exists() and not top.is_dir():
        return f"'{top}' is a file, not a folder" if top == folder else f"'{top}' is a file, so no folder can be made below it"
    made: list[Path] = []
    try:
        for part in reversed(missing):
            try:
                part.mkdir()
                made.append(part)
            except FileExistsError:  # made meanwhile by another writer, or a dangling link
                if not part.is_dir():
                    raise
        probe = temp_sibling(folder / ".write-check")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return why_not(err)
    finally:
        if not keep:
            for part in reversed(made):
                with contextlib.suppress(OSError):
                    part.rmdir()
    return None
