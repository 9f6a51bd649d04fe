"""Heavy jobs (sweeps, video analyses) in turn: at most ``max_jobs`` at a time, the rest in arrival order.

One queue serves a whole server. A job takes a ticket, waits until it is among the first
``max_jobs``, runs, and gives its place back when its block exits however it exits, so a
session that stops or reruns while waiting leaves the queue at once. Waiting wakes up every
``every_s`` seconds even when nothing moved: the caller gets a turn to show where it stands,
and (in the app) to be interrupted by a Stop.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import InputError

ENV = "ATS_VIZ_MAX_JOBS"


def max_jobs() -> int:
    """$ATS_VIZ_MAX_JOBS (default 1): how many heavy jobs may run at once on this server."""
    text = os.environ.get(ENV, "").strip() or "1"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{ENV} must be a whole number of at least 1 (got {text!r}); ask whoever runs the "
                         "server to fix it.")
    return n


class Ticket:
    """One job's place: waiting until it may run, then running until its ``ticket()`` block exits."""

    def __init__(self, queue: JobQueue) -> None:
        self._queue = queue
        self.running = False

    def wait(self, every_s: float = 0.5) -> Iterator[int]:
        """Yield the number of jobs ahead (running, then waiting before this one) until this job may
        run: at once when that number changes, and every ``every_s`` seconds anyway. Yields nothing
        when a slot is free."""
        q = self._queue
        while True:
            with q._cond:
                if q._try_start(self):
                    return
                ahead = q._ahead(self)
            yield ahead
            with q._cond:
                q._cond.wait_for(lambda: q._can_start(self) or q._ahead(self) != ahead, timeout=every_s)


class JobQueue:
    """First come, first served, ``max_jobs`` at a time; safe to share between threads."""

    def __init__(self, max_jobs: int = 1) -> None:
        if max_jobs < 1:
            raise InputError(f"At least one job must be able to run (got max_jobs={max_jobs}).")
        self.max_jobs = max_jobs
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: list[Ticket] = []

    @contextmanager
    def ticket(self) -> Iterator[Ticket]:
        """A place in the queue for the block's lifetime: run the job after ``wait()`` is exhausted."""
        t = Ticket(self)
        with self._cond:
            self._waiting.append(t)
        try:
            yield t
        finally:
            with self._cond:
                if t.running:
                    self._running -= 1
                else:
                    self._waiting.remove(t)
                self._cond.notify_all()

    def state(self) -> tuple[int, int]:
        """(jobs running, jobs waiting) now."""
        with self._cond:
            return self._running, len(self._waiting)

    # The helpers below expect self._cond to be held.

    def _can_start(self, t: Ticket) -> bool:
        return self._waiting.index(t) < self.max_jobs - self._running

    def _try_start(self, t: Ticket) -> bool:
        if t.running:  # wait() called again inside a running job
            return True
        if not self._can_start(t):
            return False
        self._waiting.remove(t)
        self._running += 1
        t.running = True
        return True

    def _ahead(self, t: Ticket) -> int:
        return self._running + self._waiting.index(t)
