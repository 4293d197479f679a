"""A full pass reads the next batch on a second connection while this one is computed (``prefetch.py``).

The result is the same users with the same aggregates as the plain pass; a batch that cannot be read as it
is hands over to the caller's connection, where its bad row is set aside alone; a caller that stops early
leaves no thread or connection behind; and where a second connection cannot read concurrently (in-memory
SQLite, a SQLite file the state is written to, unless in WAL mode) nothing is prefetched.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine

from otel_segments.segments.aggregate import aggregate_users
from otel_segments.segments.binding import bind
from otel_segments.segments.demo import create_demo_database, time_entries
from otel_segments.segments.prefetch import concurrent_reads
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from tests.segments.data import NOW
from tests.segments.test_quarantine import VIEWS, _views

USERS = 60
BATCH = 7  # nine batches: most are read ahead


def _a_user_with_entries(engine: Engine, *, after: int) -> int:
    with engine.connect() as conn:
        query = select(func.min(time_entries.c.user_id)).where(time_entries.c.user_id > after)
        return int(conn.execute(query).scalar_one())


def _pass(engine: Engine, schema, *, prefetch: bool, problems: list | None = None) -> list:
    users = aggregate_users(engine, schema, now=NOW, batch_size=BATCH, prefetch=prefetch, problems=problems)
    return [(u.activity, u.oldest_in_window, u.inputs) for u in users]


def test_the_prefetched_pass_equals_the_plain_one_and_reads_on_another_thread(engine: Engine) -> None:
    create_demo_database(engine, users_count=USERS, seed=5, now=NOW)
    bound = bind(TIMETRACKER, engine)
    assert concurrent_reads(engine)
    threads: set[int] = set()
    event.listen(engine, "before_cursor_execute", lambda *args: threads.add(threading.get_ident()))
    plain = _pass(engine, bound, prefetch=False)
    assert threads == {threading.get_ident()}
    threads.clear()
    ahead = _pass(engine, bound, prefetch=True)
    assert len(plain) == USERS
    assert ahead == plain
    assert threads and threading.get_ident() not in threads  # every read ran on the fetching thread


def test_a_batch_that_cannot_be_read_resumes_on_the_callers_connection(engine: Engine) -> None:
    create_demo_database(engine, users_count=USERS, seed=5, now=NOW)
    poisoned = _a_user_with_entries(engine, after=4 * BATCH)  # in the fifth batch: four were read ahead
    fails = "abs(-9223372036854775807 - 1)" if engine.dialect.name == "sqlite" else "1 / (user_id - user_id)"
    _views(engine, f"CASE WHEN user_id = {poisoned} THEN {fails} ELSE duration_seconds END")
    bound = bind(VIEWS, engine)
    plain_problems: list = []
    ahead_problems: list = []
    plain = _pass(engine, bound, prefetch=False, problems=plain_problems)
    ahead = _pass(engine, bound, prefetch=True, problems=ahead_problems)
    assert [p.user_id for p in ahead_problems if p.skipped] == [str(poisoned)]
    assert ahead_problems == plain_problems
    assert len(ahead) == USERS - 1 and ahead == plain


def test_a_caller_that_stops_early_leaves_no_connection_behind(engine: Engine) -> None:
    create_demo_database(engine, users_count=USERS, seed=5, now=NOW)
    users = aggregate_users(engine, bind(TIMETRACKER, engine), now=NOW, batch_size=BATCH, prefetch=True)
    next(users)
    assert engine.pool.checkedout() >= 1  # the fetching thread's
    users.close()
    deadline = time.monotonic() + 5
    while engine.pool.checkedout() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.pool.checkedout() == 0


def test_nothing_is_prefetched_where_a_second_connection_cannot_read_concurrently(tmp_path) -> None:
    memory = create_engine("sqlite://")
    app = create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    elsewhere = create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}")
    assert not concurrent_reads(memory)  # each connection its own, empty, database
    assert not concurrent_reads(app, app)  # the state's writes would wait for each read
    assert not concurrent_reads(app, create_engine(f"sqlite:///{tmp_path / '.' / 'app.sqlite'}"))  # the same file
    assert concurrent_reads(app, elsewhere) and concurrent_reads(app)
    with app.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    assert concurrent_reads(app, app)  # in WAL mode the state's writes and the reads do not wait for each other

    create_demo_database(memory, users_count=USERS, seed=5, now=NOW)
    threads: set[int] = set()
    event.listen(memory, "before_cursor_execute", lambda *args: threads.add(threading.get_ident()))
    result = refresh(memory, RefreshState(memory), TIMETRACKER, now=NOW, full=True, batch_size=BATCH)
    assert result.computed == USERS
    assert threads == {threading.get_ident()}


def test_a_full_refresh_reads_ahead_only_when_there_is_a_next_batch(tmp_path) -> None:
    app = create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    state = RefreshState(create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}"))
    create_demo_database(app, users_count=USERS, seed=5, now=NOW)
    threads: set[int] = set()
    event.listen(app, "before_cursor_execute", lambda *args: threads.add(threading.get_ident()))
    assert refresh(app, state, TIMETRACKER, now=NOW, full=True, batch_size=USERS).computed == USERS
    assert threads == {threading.get_ident()}  # one batch: nothing to read ahead, no thread
    threads.clear()
    # an empty state again: with the state in place a full refresh computes only changed rows (test_digests.py)
    empty = RefreshState(create_engine(f"sqlite:///{tmp_path / 'empty_state.sqlite'}"))
    assert refresh(app, empty, TIMETRACKER, now=NOW, full=True, batch_size=BATCH).computed == USERS
    assert len(threads) == 2  # the batches on the read-ahead thread, the change scans on the caller's
