"""A job's life across processes: several starting at once on one state database, and a pre-fork master.

Processes that start together race to create the state tables. And gunicorn
``--preload`` imports the app in the master, then forks the workers: a slow
import (a big Django app) can outlast a few refresh intervals, so the master may
already have refreshed, and hold the lease, or be in the middle of a query, when
it forks.
tests/reliability/test_processes.py and test_fleet.py run both for real (there
the race is lost only now and then); these tests make them happen every time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import timedelta

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from otel_segments.job.lease import lease_table
from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.segments.state_tables import tables as _tables
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


def test_losing_every_race_to_create_the_state_tables_is_not_an_error(app_engine: Engine) -> None:
    """Each time this process is about to create a state table, another process creates it first."""
    _, users, delivery, meta = _tables("otel_segments_")
    other = create_engine(app_engine.url)
    won: list[str] = []

    def another_process_first(conn, cursor, statement, parameters, context, executemany) -> None:
        for table in (users, delivery, meta, lease_table):
            if statement.lstrip().upper().startswith(f"CREATE TABLE {table.name.upper()} ") and table.name not in won:
                won.append(table.name)
                table.metadata.create_all(other, tables=[table])

    event.listen(app_engine, "before_cursor_execute", another_process_first)
    try:
        result = RefreshJob(app_engine, TIMETRACKER).run_cycle()
    finally:
        event.remove(app_engine, "before_cursor_execute", another_process_first)
        other.dispose()
    assert len(won) >= 2  # lost at least twice: to the refresh state's tables and to the lease's
    assert result is not None and result.error is None and result.holder
    assert RefreshState(app_engine).count() == USERS


def test_fork_during_a_sqlite_query_leaves_the_child_able_to_write(tmp_path) -> None:
    """SQLite keeps its lock state per process: a query of the job running across ``fork()`` would leave the
    child believing it holds a lock it does not, and its writes (and then everyone's) fail as "database is
    locked" (https://sqlite.org/howtocorrupt.html, "carrying an open database connection across a fork").
    Here the fork comes while the job's thread is reading the state table, part-way through the rows."""
    from otel_segments.segments.demo import create_demo_database
    from tests.segments.data import NOW

    path = tmp_path / "app.db"
    engine = create_engine(f"sqlite:///{path}")
    create_demo_database(engine, users_count=USERS, seed=3, now=NOW)
    inside, release = threading.Event(), threading.Event()

    def pause_mid_read(conn, cursor, statement, parameters, context, executemany) -> None:
        if "ORDER BY otel_segments_user_state.user_id" in statement and not inside.is_set():
            inside.set()  # the first rows are read: the job's connection holds SQLite's shared lock
            release.wait(10)

    event.listen(engine, "after_cursor_execute", pause_mid_read)
    job = RefreshJob(engine, TIMETRACKER)
    assert job.kick()
    assert inside.wait(10)
    threading.Timer(0.5, release.set).start()  # the read goes on while the process forks
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with sqlite3.connect(path, timeout=2) as conn:
                conn.execute("CREATE TABLE written_by_child (x INTEGER)")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    release.set()
    assert os.waitstatus_to_exitcode(status) == 0, "the child could not write: it inherited SQLite lock state"
    job.shutdown()
    engine.dispose()
