"""A process that forks while starting up is a pre-fork server's master: its children refresh, it does not.

gunicorn ``--preload`` imports the app in the master, then forks the workers. A
slow import (a big Django app) can outlast a few refresh intervals, so the
master may already have refreshed, and hold the lease, when it forks.
tests/reliability/test_processes.py shows it with gunicorn itself; this is the
same in one ``os.fork()``.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from sqlalchemy.engine import Engine

from otel_segments.job import RefreshJob
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from tests.job.conftest import USERS


def test_master_that_refreshed_before_forking_hands_the_lease_to_a_child(app_engine: Engine) -> None:
    job = RefreshJob(app_engine, TIMETRACKER, interval=timedelta(seconds=1))  # lease TTL: 30 s
    assert job.kick()  # as the reader's collection would, in the job's worker thread
    deadline = time.monotonic() + 10
    while not job.cohort_sizes() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert RefreshState(app_engine).count() == USERS and job.cohort_sizes()

    pid = os.fork()
    if pid == 0:  # a worker: it must get the lease at once, not when the master's 30 s lease expires
        code = 1
        try:
            give_up = time.monotonic() + 5
            while time.monotonic() < give_up:
                result = job.run_cycle()
                if result is not None and result.holder:
                    code = 0
                    break
                time.sleep(0.05)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child never got the lease: the master kept it"
    assert job.kick() is False  # the master stays idle from now on
    assert job.cohort_sizes() == {} and list(job.observe()) == []  # and reports no (soon stale) cohort sizes
    job.shutdown()
