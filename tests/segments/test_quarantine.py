"""Schema mappings that point at views, and a row that fails only when the database computes it (issue 14).

A view is read like a table (docs/segments.md). A view's computed column can fail for one row only
(SQLite's ``integer overflow``, PostgreSQL's ``division by zero``), which no guard in our SQL can read
around: the batch is bisected, that user alone is set aside, named once, counted, and retried each cycle,
and every other user is computed and delivered.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.demo import create_demo_database, time_entries
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.sinks.posthog import PostHogSink
from otel_segments.spans.privacy import pseudonymize, set_privacy_policy
from tests.segments.data import NOW
from tests.sinks.conftest import Capture

USERS = 40
T1 = NOW + timedelta(seconds=1)
VIEWS = replace(
    TIMETRACKER,
    name="views",
    users=replace(TIMETRACKER.users, table="users_v"),
    activity=replace(TIMETRACKER.activity, table="entries_v"),
)
_COLUMNS = "id, user_id, project_id, created_at, updated_at, source"


def _views(engine: Engine, duration: str = "duration_seconds") -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW users_v AS SELECT * FROM users"))
        conn.execute(text(f"CREATE VIEW entries_v AS SELECT {_COLUMNS}, {duration} AS duration_seconds FROM time_entries"))


def _a_user_with_entries(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.min(time_entries.c.user_id))).scalar_one())


def test_a_mapping_of_views_reads_what_the_tables_hold(engine: Engine) -> None:
    create_demo_database(engine, users_count=USERS, seed=4, now=NOW)
    _views(engine)
    tables = list(compute_segments(engine, TIMETRACKER, now=NOW))
    views = list(compute_segments(engine, VIEWS, now=NOW))
    assert len(tables) == USERS
    assert views == tables


def test_a_row_that_fails_in_the_database_sets_aside_its_user_alone(engine: Engine, capture: Capture, caplog) -> None:
    create_demo_database(engine, users_count=USERS, seed=4, now=NOW)
    poisoned = _a_user_with_entries(engine)
    # evaluated per row, for this user's rows only: no guard of ours can read it
    fails = "abs(-9223372036854775807 - 1)" if engine.dialect.name == "sqlite" else "1 / (user_id - user_id)"
    _views(engine, f"CASE WHEN user_id = {poisoned} THEN {fails} ELSE duration_seconds END")
    job = RefreshJob(engine, VIEWS, sinks={"posthog": lambda: PostHogSink("phc_test_key", capture.host)})
    try:
        with caplog.at_level(logging.WARNING, logger="otel_segments"):
            first = job.run_cycle(now=T1)
        assert first is not None and first.error is None and not first.failed, first
        assert set(capture.by_user()) == {str(i) for i in range(1, USERS + 1)} - {str(poisoned)}
        assert dict(first.quarantined) == {"refresh": 1}
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, lines
        assert f"user {poisoned} set aside" in lines[0] and "entries_v.duration_seconds" in lines[0], lines
        assert ("overflow" if engine.dialect.name == "sqlite" else "division by zero") in lines[0]

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="otel_segments"):
            again = job.run_cycle(now=T1 + timedelta(seconds=1))
        assert again is not None and again.error is None and again.refreshed is not None
        # retried (it failed again), though nothing about it changed
        assert [p.user_id for p in again.refreshed.problems if p.skipped] == [str(poisoned)]
        assert dict(again.quarantined) == {"refresh": 1}  # still counted, not named again
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []

        with engine.begin() as conn:  # the row is fixed: the user is computed and delivered at the next cycle
            conn.execute(text("DROP VIEW entries_v"))
            conn.execute(text(f"CREATE VIEW entries_v AS SELECT {_COLUMNS}, duration_seconds FROM time_entries"))
        fixed = job.run_cycle(now=T1 + timedelta(seconds=2))
        assert fixed is not None and fixed.error is None and dict(fixed.quarantined) == {}
        assert str(poisoned) in capture.by_user()
        assert len(capture.events()) == USERS
    finally:
        job.shutdown(timeout_s=2)


def test_a_failure_of_every_user_is_the_databases_not_a_rows(engine: Engine) -> None:
    """Bisection sets aside users only when some of the batch succeed: an error for every user is raised."""
    create_demo_database(engine, users_count=USERS, seed=4, now=NOW)
    fails = "abs(-9223372036854775807 - 1)" if engine.dialect.name == "sqlite" else "1 / (id - id)"
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE VIEW users_v AS SELECT id, created_at, last_login, auth_provider, "
                f"CASE WHEN id IS NOT NULL THEN CAST({fails} AS VARCHAR(20)) END AS role FROM users"
            )
        )
        conn.execute(text("CREATE VIEW entries_v AS SELECT * FROM time_entries"))
    state = RefreshState(engine)
    try:
        refresh(engine, state, VIEWS, now=T1)
    except Exception as error:  # noqa: BLE001 - the driver's own error, whatever it is called
        assert "overflow" in str(error) or "division by zero" in str(error)
    else:
        raise AssertionError("a failure of every user was taken for bad rows")
    assert state.count() == 0


def test_with_a_hash_key_the_warning_names_the_hashed_id_only(engine: Engine, capture: Capture, caplog) -> None:
    create_demo_database(engine, users_count=USERS, seed=4, now=NOW)
    poisoned = _a_user_with_entries(engine)
    fails = "abs(-9223372036854775807 - 1)" if engine.dialect.name == "sqlite" else "1 / (user_id - user_id)"
    _views(engine, f"CASE WHEN user_id = {poisoned} THEN {fails} ELSE duration_seconds END")
    set_privacy_policy(hash_key=b"k3y")
    job = RefreshJob(engine, VIEWS, sinks={"posthog": lambda: PostHogSink("phc_test_key", capture.host)})
    try:
        with caplog.at_level(logging.WARNING, logger="otel_segments"):
            result = job.run_cycle(now=T1)
        assert result is not None and result.error is None
        [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert f"user {pseudonymize(str(poisoned))} set aside" in line
        assert f"user {poisoned} " not in line
    finally:
        set_privacy_policy()
        job.shutdown(timeout_s=2)


def test_a_state_row_the_database_refuses_sets_aside_its_user_alone(sqlite_engine: Engine) -> None:
    """A write of the state that fails (here a trigger refuses one user's row) is bisected like a read."""
    create_demo_database(sqlite_engine, users_count=USERS, seed=4, now=NOW)
    state = RefreshState(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON otel_segments_user_state WHEN NEW.user_id = '7' "
                "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
            )
        )
    first = refresh(sqlite_engine, state, TIMETRACKER, now=T1)
    assert [(p.user_id, p.where, p.skipped) for p in first.problems] == [("7", "otel_segments_user_state", True)]
    assert "refused by a trigger" in first.problems[0].cause
    assert first.quarantined == 1
    assert state.user_ids() == {str(i) for i in range(1, USERS + 1)} - {"7"}

    again = refresh(sqlite_engine, state, TIMETRACKER, now=T1 + timedelta(seconds=1))
    assert [p.user_id for p in again.problems] == ["7"]  # retried, though nothing about it changed

    with sqlite_engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse"))
    fixed = refresh(sqlite_engine, state, TIMETRACKER, now=T1 + timedelta(seconds=2))
    assert fixed.problems == () and fixed.changed == 1
    assert state.user_ids() == {str(i) for i in range(1, USERS + 1)}
