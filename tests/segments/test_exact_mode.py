"""Exact mode (``OTEL_SEGMENTS_CHANGE_CAPTURE=triggers``): the app database's triggers record every user a write
touched, through each relation of the mapping, and the refresh reads and clears them, on SQLite and PostgreSQL.

Every edit below moves no ``updated_at``: the windows would miss each of them until the maximum age (issue 21), so
the state equalling a full recompute right after it is what the triggers bring.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.captured import CAPTURE, ChangeCapture
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.segments.triggers import CHANGE_TABLE, create_ddl, drop_ddl, trigger_names

from .data import NOW, fill_timetracker, naive

RAW_EDITS = [  # (what, SQL): hand edits in SQL, none of which moves a timestamp
    ("a duration fixed", "UPDATE time_entries SET duration_seconds = 7 WHERE id = (SELECT min(id) FROM time_entries)"),
    ("an entry moved to another user", "UPDATE time_entries SET user_id = 3 WHERE id = (SELECT max(id) FROM time_entries)"),
    ("an entry deleted", "DELETE FROM time_entries WHERE id = (SELECT min(id) FROM time_entries WHERE user_id = 6)"),
    ("a task reassigned", "UPDATE tasks SET assigned_to = 2 WHERE id = (SELECT min(id) FROM tasks WHERE assigned_to <> 2)"),
    ("a task completed", "UPDATE tasks SET status = 'done' WHERE id = (SELECT max(id) FROM tasks WHERE status <> 'done')"),
    ("a project archived", "UPDATE projects SET status = 'archived' WHERE id = (SELECT min(project_id) FROM time_entries)"),
    (
        "an admin grant revoked",
        "DELETE FROM user_roles WHERE role_id = 2 AND user_id = (SELECT min(user_id) FROM user_roles WHERE role_id = 2)",
    ),
    ("a role renamed from an admin name", "UPDATE roles SET name = 'staff' WHERE id = 2"),
    ("a role and auth method changed", "UPDATE users SET role = 'admin', auth_provider = 'oidc' WHERE id = 8"),
    ("an account's creation date corrected", "UPDATE users SET created_at = created_at - INTERVAL_ONE_YEAR WHERE id = 9"),
    ("a user id changed", "UPDATE users SET id = 9000 WHERE id = 10"),
]


def _apply(engine: Engine, drop: bool = False) -> None:
    bound = bind(TIMETRACKER, engine)
    with engine.begin() as conn:
        for statement in (drop_ddl if drop else create_ddl)(conn, bound):
            conn.execute(statement)


def _state_equals_full(engine: Engine, state: RefreshState, now) -> None:
    got = {s.distinct_id: s.digest() for s in state.segments()}
    want = {s.distinct_id: s.digest() for s in compute_segments(engine, TIMETRACKER, now=now)}
    assert got == want


def _pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {CHANGE_TABLE}")).scalar()


def _sql(engine: Engine, statement: str) -> None:
    year = "'-365 days'" if engine.dialect.name == "sqlite" else None
    if year is not None:
        statement = statement.replace("created_at - INTERVAL_ONE_YEAR", f"datetime(created_at, {year})")
    statement = statement.replace("INTERVAL_ONE_YEAR", "INTERVAL '365 days'")
    with engine.begin() as conn:
        conn.execute(text(statement))


def test_every_relation_of_the_mapping_records_its_users(engine: Engine) -> None:
    fill_timetracker(engine, users=40)
    with engine.begin() as conn:  # user 10 holds nothing another table points at, so its id can change
        for table, column in (("time_entries", "user_id"), ("tasks", "assigned_to"), ("user_roles", "user_id")):
            conn.execute(text(f"DELETE FROM {table} WHERE {column} = 10"))
    _apply(engine)
    state, capture = RefreshState(engine), ChangeCapture()
    now = NOW
    assert refresh(engine, state, TIMETRACKER, now=now, capture=capture).full  # the first one computes everyone
    for what, statement in RAW_EDITS:
        _sql(engine, statement)
        assert _pending(engine) > 0, f"{what}: no change recorded"
        now += timedelta(seconds=1)
        result = refresh(engine, state, TIMETRACKER, now=now, capture=capture)
        assert not result.full and result.computed < 40, what
        assert result.changed > 0, f"{what}: no segment changed (the edit should change one)"
        _state_equals_full(engine, state, now)
        assert _pending(engine) == 0, f"{what}: the rows read were not cleared"
    assert state.meta_values(CAPTURE)[CAPTURE] == "triggers"


def test_a_bulk_update_records_each_owner_once_per_statement_on_postgresql(engine: Engine) -> None:
    """PostgreSQL: one INSERT ... SELECT DISTINCT per statement (transition tables); SQLite: one row per row written."""
    fill_timetracker(engine, users=40)
    _apply(engine)
    with engine.connect() as conn:
        rows, owners = conn.execute(
            select(func.count(), func.count(text("DISTINCT user_id"))).select_from(text("time_entries"))
        ).one()
    _sql(engine, "UPDATE time_entries SET duration_seconds = 60")
    if engine.dialect.name == "postgresql":
        assert _pending(engine) == owners
    else:
        assert _pending(engine) == rows  # row triggers: the owner after the update, once a row (none moved)


def test_missing_triggers_fall_back_to_the_windows_with_one_warning(engine: Engine, caplog) -> None:
    fill_timetracker(engine, users=30)
    _apply(engine)
    state, capture = RefreshState(engine), ChangeCapture()
    refresh(engine, state, TIMETRACKER, now=NOW, capture=capture)
    refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=1), capture=capture)
    dropped = sorted(trigger_names(bind(TIMETRACKER, engine)))[0]
    _sql(engine, f"DROP TRIGGER {dropped}{_on(engine, dropped)}")
    with caplog.at_level(logging.WARNING, logger="otel_segments"):
        fallback = refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=2), capture=capture)
        _sql(
            engine,
            "INSERT INTO time_entries (id, user_id, start_time, created_at, source, duration_seconds, updated_at) "
            f"VALUES (999999, 4, '{naive(NOW)}', '{naive(NOW)}', 'manual', 60, '{naive(NOW)}')",
        )
        windows = refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=3), capture=capture)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and dropped in warnings[0] and "otel-segments triggers --apply" in warnings[0]
    assert fallback.full  # what happened while the triggers were gone was seen by nobody: everyone, once
    assert not windows.full and windows.computed >= 1  # the insert, found by the key window
    _state_equals_full(engine, state, NOW + timedelta(seconds=3))
    assert state.meta_values(CAPTURE)[CAPTURE] == "windows"

    _apply(engine)  # back: the first refresh by triggers computes everyone (changes meanwhile were not recorded)
    back = refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=4), capture=capture)
    assert back.full and _pending(engine) == 0
    _sql(engine, "UPDATE time_entries SET duration_seconds = 1 WHERE id = 999999")
    exact = refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=5), capture=capture)
    assert not exact.full and exact.computed == 1  # the one user the update touched, found by its trigger
    _state_equals_full(engine, state, NOW + timedelta(seconds=5))


def _on(engine: Engine, name: str) -> str:
    if engine.dialect.name != "postgresql":
        return ""
    return " ON " + trigger_names(bind(TIMETRACKER, engine))[name]


def test_a_change_recorded_after_the_read_is_kept_for_the_next_cycle(engine: Engine) -> None:
    fill_timetracker(engine, users=20)
    _apply(engine)
    state, capture = RefreshState(engine), ChangeCapture()
    refresh(engine, state, TIMETRACKER, now=NOW, capture=capture)
    bound = bind(TIMETRACKER, engine)
    _sql(engine, "UPDATE users SET role = 'admin' WHERE id = 1")
    found, read = capture.find(engine, bound, state, now=NOW, limit=1000)
    assert found.user_ids == {"1"}
    _sql(engine, "UPDATE users SET role = 'admin' WHERE id = 2")  # committed between the read and the clear
    capture.clear(engine, read)
    assert _pending(engine) == 1
    found, _ = capture.find(engine, bound, state, now=NOW, limit=1000)
    assert found.user_ids == {"2"}


def test_dropping_the_triggers_removes_them_and_the_change_table(engine: Engine) -> None:
    fill_timetracker(engine, users=5)
    _apply(engine)
    bound = bind(TIMETRACKER, engine)
    capture = ChangeCapture()
    with engine.connect() as conn:
        assert capture.missing(conn, bound) == []
    _apply(engine, drop=True)
    with engine.connect() as conn:
        missing = capture.missing(conn, bound)
    assert missing == [CHANGE_TABLE, *sorted(trigger_names(bound))]
    _sql(engine, "UPDATE users SET role = 'admin' WHERE id = 1")  # the app's writes go on


@pytest.mark.postgres
def test_nothing_of_ours_fails_the_apps_write_on_postgresql(postgres_database: str) -> None:
    """Our change table dropped, a mapped column renamed under the triggers: the app's statements still succeed."""
    from sqlalchemy import create_engine

    engine = create_engine(postgres_database)
    try:
        fill_timetracker(engine, users=5)
        _apply(engine)
        bound = bind(TIMETRACKER, engine)
        _sql(engine, "ALTER TABLE tasks RENAME COLUMN assigned_to TO assignee_id")  # the trigger's function names the old one
        _sql(engine, "UPDATE tasks SET status = 'done'")
        _sql(engine, f"DROP TABLE {CHANGE_TABLE}")
        _sql(engine, "UPDATE time_entries SET duration_seconds = 5")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM tasks WHERE status <> 'done'")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM time_entries WHERE duration_seconds <> 5")).scalar() == 0
            assert ChangeCapture().missing(conn, bound) == [CHANGE_TABLE]
    finally:
        engine.dispose()
