"""The job queue: at most max_jobs at a time, in arrival order, and a place always given back."""

import threading
import time

import pytest

from ats_viz import InputError
from ats_viz.jobs import JobQueue, max_jobs


def until(predicate, timeout: float = 30.0) -> None:
    """Wait for another thread to get somewhere (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the other thread never got there"
        time.sleep(0.005)


class Job(threading.Thread):
    """A job that takes a ticket, records every 'jobs ahead' it is told, runs until released."""

    def __init__(self, q: JobQueue, name: str, log: list, fail_while_waiting: bool = False):
        super().__init__(name=name, daemon=True)
        self.q, self.log, self.fail = q, log, fail_while_waiting
        self.ahead: list[int] = []
        self.release = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            with self.q.ticket() as t:
                for n in t.wait(every_s=0.01):
                    self.ahead.append(n)
                    if self.fail:
                        raise KeyboardInterrupt("stopped while queued")  # like Streamlit's StopException
                self.log.append(self.name)
                self.release.wait(30)
        except KeyboardInterrupt as err:
            self.error = err


def start(q, name, log, **kw) -> Job:
    job = Job(q, name, log, **kw)
    job.start()
    return job


def test_max_jobs_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("ATS_VIZ_MAX_JOBS", raising=False)
    assert max_jobs() == 1
    monkeypatch.setenv("ATS_VIZ_MAX_JOBS", " 3 ")
    assert max_jobs() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("ATS_VIZ_MAX_JOBS", bad)
        with pytest.raises(InputError, match="ATS_VIZ_MAX_JOBS must be a whole number of at least 1"):
            max_jobs()
    with pytest.raises(InputError):
        JobQueue(0)


def test_a_free_slot_runs_at_once_and_is_given_back():
    q = JobQueue(1)
    with q.ticket() as t:
        assert list(t.wait()) == []
        assert q.state() == (1, 0)
    assert q.state() == (0, 0)
    with pytest.raises(RuntimeError):
        with q.ticket() as t:
            list(t.wait())
            raise RuntimeError("the job failed")
    assert q.state() == (0, 0)


def test_jobs_wait_their_turn_in_arrival_order_and_see_their_place():
    q, log = JobQueue(1), []
    a = start(q, "a", log)
    until(lambda: log == ["a"])
    b = start(q, "b", log)
    until(lambda: q.state() == (1, 1))
    c = start(q, "c", log)
    until(lambda: q.state() == (1, 2) and c.ahead)
    assert b.ahead[0] == 1 and c.ahead[0] == 2
    a.release.set()
    until(lambda: log == ["a", "b"])
    until(lambda: c.ahead[-1] == 1)  # c moved up when a finished
    b.release.set()
    until(lambda: log == ["a", "b", "c"])
    c.release.set()
    for job in (a, b, c):
        job.join(30)
    assert q.state() == (0, 0) and a.ahead == []


def test_never_more_than_max_jobs_at_once():
    q, log = JobQueue(2), []
    jobs = [start(q, f"j{i}", log) for i in range(6)]
    until(lambda: q.state() == (2, 4))
    assert len(log) == 2
    for _ in range(3):  # finish the running ones; the next two start, never a third
        running = [j for j in jobs if j.name in log and not j.release.is_set()]
        assert len(running) == 2
        for j in running:
            j.release.set()
        until(lambda: len(log) == min(6, len([j for j in jobs if j.release.is_set()]) + 2))
    until(lambda: q.state() == (0, 0))
    assert sorted(log) == sorted(j.name for j in jobs)


def test_a_job_stopped_while_queued_gives_its_place_back():
    q, log = JobQueue(1), []
    a = start(q, "a", log)
    until(lambda: log == ["a"])
    c = start(q, "c", log)
    until(lambda: q.state() == (1, 1))
    b = start(q, "b", log, fail_while_waiting=True)  # behind c: stops at its first update
    b.join(30)
    assert b.error is not None and b.ahead == [2]
    assert q.state() == (1, 1)  # only c still waits
    a.release.set()
    until(lambda: log == ["a", "c"])
    c.release.set()
    c.join(30)
    assert q.state() == (0, 0)
