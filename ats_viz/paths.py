"""Where a path typed into the app may point, when one server serves a team: $ATS_VIZ_ROOTS.

Unset: anywhere the server's user can read (the app on a person's own machine). A list of
folders separated by ``os.pathsep``: only inside them, judged after symlinks and '..' are
resolved, so a link or '../..' cannot step out. Set but empty: no typed path at all (uploads
only). Nothing is opened to decide: resolving reads links and directories, never a file's
contents. The command line never asks: it runs as the person typing.

One rule for links, :func:`within`: a path counts as inside a folder only once resolved
(links and '..'), and then only if it lies in the folder, also resolved. It decides a typed
path against the roots (:func:`confine`) and what is found inside a folder that was opened
against that folder: a dataset's class folders and images (``data``), a results folder's
files (``results``). What lies outside is never listed, named in a message or read.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

ENV = "ATS_VIZ_ROOTS"
OFF = ("Typed paths are turned off on this server (ATS_VIZ_ROOTS is empty): upload the files instead, "
       "or ask whoever runs the server to allow a folder.")


def allowed_roots() -> tuple[Path, ...] | None:
    """The folders typed paths must lie in; None when unconfined, () when typed paths are off."""
    env = os.environ.get(ENV)
    if env is None:
        return None
    return tuple(Path(p.strip()).expanduser().resolve() for p in env.split(os.pathsep) if p.strip())


def typed_paths_allowed() -> bool:
    roots = allowed_roots()
    return roots is None or bool(roots)


def within(path: str | Path, folder: str | Path) -> Path | None:
    """``path`` resolved, if it lies inside ``folder`` (resolved too); else None, also for a
    loop of links. Nothing is opened: resolving reads links and directories only."""
    try:
        resolved = Path(path).expanduser().resolve()
        base = Path(folder).expanduser().resolve()
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        return None
    return resolved if resolved.is_relative_to(base) else None


def confine(path: str | Path) -> Path:
    """``path`` as it may be read: resolved and inside an allowed root, or an InputError naming the
    roots. Unconfined, it is only expanded ('~'), so the app behaves as it always has."""
    roots = allowed_roots()
    given = Path(path).expanduser()
    if roots is None:
        return given
    if not roots:
        raise InputError(OFF)
    for root in roots:
        resolved = within(given, root)
        if resolved is not None:
            return resolved
    names = ", ".join(f"'{r}'" for r in roots)
    raise InputError(f"'{path}' is outside the folders this server may read ({names}). "
                     "Give a path inside one of them, or upload the files instead.")
