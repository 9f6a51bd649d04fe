"""The cache's size budget: what the app writes under its cache folder ($ATS_VIZ_CACHE) is kept
within $ATS_VIZ_CACHE_GB gigabytes (default 20), the least recently used going first.

An entry is one thing the app writes and can make again: an unpacked upload
(``uploads/<digest>``), an uploaded file kept as it came (``uploads/<kind>-<digest>.<ext>``: a
labels CSV, a video), the bundled held-out set (``heldout-*``) or one file of cached sweep
results (``sweeps/<digest>.json``).
Nothing else under the cache folder is counted or removed, so a cache folder that also holds
other files never loses them. Sizes are counted in 4 KiB blocks, as a disk holds files.

"Used" is an entry's access time, which the app sets itself whenever it reuses an entry (its
modification time is kept, so nothing keyed by modification times changes); a sweep reading
its cached results updates it as the file system does. What a running job of this process
uses (``in_use``) is never removed, nor is what the current operation keeps or is making.
An entry is removed by renaming it out of the way first, so a reader sees all of it or none.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

ENV = "ATS_VIZ_CACHE_GB"
DEFAULT_GB = 20.0
BLOCK = 4096

_UPLOAD = re.compile(r"[0-9a-f]{24}|[a-z]+-[0-9a-f]{24}\.[a-z0-9]+")  # data.extract_zip, data.keep_upload
_SWEEP = re.compile(r"[0-9a-f]{40}\.json")
_HELDOUT = re.compile(r"heldout-[^/]+")

_lock = threading.Lock()  # sessions are threads: one of them makes room at a time
_pinned: Counter[str] = Counter()  # resolved paths in use by a running job -> how many jobs
_reserved = [0]  # bytes promised to writes in progress (their temporary folders are not entries)
_sizes: dict[str, tuple[int, int, int]] = {}  # folder -> (inode, mtime_ns, bytes): folders never change


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int  # bytes, in whole blocks
    used_ns: int  # last use: the later of access and modification time


def budget() -> int:
    """$ATS_VIZ_CACHE_GB in bytes; an InputError for a value that is not a positive number."""
    text = os.environ.get(ENV, "").strip()
    try:
        gb = float(text) if text else DEFAULT_GB
    except ValueError:
        gb = math.nan
    if not math.isfinite(gb) or gb <= 0:
        raise InputError(f"{ENV} must be a number of gigabytes above 0 (got {text!r}); ask whoever runs the "
                         "server to fix it.")
    return int(gb * 1e9)


def blocks(size: int) -> int:
    """``size`` bytes as the whole blocks a disk gives them."""
    return -(-size // BLOCK) * BLOCK


def size_text(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def cache_root() -> Path:
    """Where ats-viz keeps what it can recompute: $ATS_VIZ_CACHE, else ~/.cache/ats-viz."""
    env = os.environ.get("ATS_VIZ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ats-viz"


def _folder_size(path: Path, info: os.stat_result) -> int:
    hit = _sizes.get(str(path))
    if hit is not None and hit[:2] == (info.st_ino, info.st_mtime_ns):
        return hit[2]
    total = 0
    for parent, _, names in os.walk(path):  # links are not followed (the app writes none)
        for n in names:
            with contextlib.suppress(OSError):
                total += blocks(os.lstat(os.path.join(parent, n)).st_size)
    _sizes[str(path)] = (info.st_ino, info.st_mtime_ns, total)
    return total


def entries() -> list[Entry]:
    """Everything the app wrote under its cache and may remove, oldest use first."""
    root = cache_root()
    found = []
    for folder, pattern in ((root, _HELDOUT), (root / "uploads", _UPLOAD), (root / "sweeps", _SWEEP)):
        try:
            with os.scandir(folder) as it:
                listed = [(Path(e.path), e.stat(follow_symlinks=False)) for e in it if pattern.fullmatch(e.name)]
        except OSError:  # not made yet, or removed meanwhile
            continue
        for path, info in listed:
            if stat.S_ISDIR(info.st_mode):
                size = _folder_size(path, info)
            elif stat.S_ISREG(info.st_mode):
                size = blocks(info.st_size)
            else:  # the app writes no links or other things: not ours
                continue
            found.append(Entry(path, size, max(info.st_atime_ns, info.st_mtime_ns)))
    return sorted(found, key=lambda e: e.used_ns)


def touch(path: Path | str) -> None:
    """Mark an entry as used now: its access time, set explicitly (as noatime mounts do not), its
    modification time kept as it was."""
    with contextlib.suppress(OSError):
        os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))


@contextlib.contextmanager
def in_use(*paths: Path | str) -> Iterator[None]:
    """While the block runs, the entries holding (or held by) ``paths`` are never removed."""
    keys = _keys(paths)
    with _lock:
        _pinned.update(keys)
    try:
        yield
    finally:
        with _lock:
            _pinned.subtract(keys)
            for k in keys:
                if _pinned[k] <= 0:
                    del _pinned[k]


def _protected(entry: Path, keep: Iterable[str]) -> bool:
    e = entry.resolve()
    return any(Path(k).is_relative_to(e) or e.is_relative_to(Path(k)) for k in keep)


def _remove(path: Path) -> None:
    """Gone in one step for any reader (renamed aside), then deleted."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.evicted")
    try:
        path.rename(aside)
    except OSError:  # removed meanwhile by another process
        return
    _sizes.pop(str(path), None)
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _make_room(need: int, limit: int, keep: list[str], partly: bool = False) -> int:
    """Remove the least recently used entries, but those kept or in use, until ``need`` more
    bytes fit; returns the bytes still in the way (0: it fits). Where even that would not make
    room, nothing is removed, unless ``partly``. Called with the lock held."""
    listed = entries()
    used = sum(e.size for e in listed) + _reserved[0]
    kept = [*keep, *_pinned]
    victims = []
    for e in listed:
        if used + need <= limit:
            break
        if not _protected(e.path, kept):
            victims.append(e)
            used -= e.size
    short = max(0, used + need - limit)
    if not short or partly:
        for e in victims:
            _remove(e.path)
    return short


def _keys(keep: Iterable[Path | str]) -> list[str]:
    return [str(Path(k).resolve()) for k in keep]


@contextlib.contextmanager
def room(need: int, name: str, keep: Iterable[Path | str] = ()) -> Iterator[None]:
    """Room for ``need`` more bytes under the cache while the block writes them, made by removing
    the least recently used entries (never ``keep`` nor those in use). A write that cannot fit
    is refused with a sentence, before anything is written."""
    limit = budget()
    if need > limit:
        raise InputError(f"'{name}' needs {size_text(need)} on this server, more than it keeps for all uploads "
                         f"and cached results ({size_text(limit)}, {ENV}). Use a smaller part of it, or ask "
                         f"whoever runs the server to raise {ENV}.")
    with _lock:
        short = _make_room(need, limit, _keys(keep))
        if short:
            raise InputError(f"There is no room for '{name}' ({size_text(need)}) in this server's cache "
                             f"({size_text(limit)}, {ENV}) while other jobs use it. Try again when they are "
                             "done, or use a smaller part of it.")
        _reserved[0] += need
    try:
        yield
    finally:
        with _lock:
            _reserved[0] -= need


def trim(keep: Iterable[Path | str] = ()) -> None:
    """Back within the budget after a write whose size was not known before (a sweep's results,
    the held-out set): the least recently used entries go, never ``keep`` nor those in use. A bad
    setting is left to ``room`` to tell (an upload): what was just written is kept either way."""
    try:
        limit = budget()
    except InputError:
        return
    with _lock:
        _make_room(0, limit, _keys(keep), partly=True)
