"""Batched SQL against an independent per-user computation, on SQLite and PostgreSQL, for two schemas."""

from __future__ import annotations

import logging
import math

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from otel_segments.segments import plan
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.schema import TIMETRACKER, ActivityTable, SchemaError, SchemaMapping, UsersTable, load_schema

from .data import NOW, OTHER, fill_other, fill_timetracker
from .oracle import expected


def _as_dict(segments) -> dict[str, dict]:
    return {s.distinct_id: {"$set": s.set, "$set_once": s.set_once} for s in segments}


def _assert_same(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert set(got) == set(want)
    for uid in want:
        for part in ("$set", "$set_once"):
            differ = {
                k: (got[uid][part].get(k), want[uid][part].get(k))
                for k in {*got[uid][part], *want[uid][part]}
                if got[uid][part].get(k, ...) != want[uid][part].get(k, ...)
            }
            assert not differ, (uid, part, differ)


@pytest.mark.parametrize("batch_size", [7, 10_000])
def test_timetracker_parity(engine: Engine, batch_size: int) -> None:
    fill_timetracker(engine)
    got = _as_dict(compute_segments(engine, TIMETRACKER, now=NOW, batch_size=batch_size))
    _assert_same(got, expected(engine, TIMETRACKER, NOW))
    # The generated data reaches every branch that matters.
    values = {k: {p["$set"].get(k) for p in got.values()} for k in ("engagement_level", "account_age_category", "is_admin")}
    assert values["engagement_level"] == {"very_high", "high", "medium", "low", "inactive"}
    assert values["account_age_category"] == {"new", "recent", "established", "long_term"}
    assert values["is_admin"] == {True, False}
    assert any(p["$set"]["assigned_tasks_count"] > 0 for p in got.values())


@pytest.mark.parametrize("batch_size", [5, 10_000])
def test_other_schema_parity(engine: Engine, batch_size: int) -> None:
    fill_other(engine)
    got = _as_dict(compute_segments(engine, OTHER, now=NOW, batch_size=batch_size))
    _assert_same(got, expected(engine, OTHER, NOW))
    assert any("first_login" not in p["$set_once"] for p in got.values())  # a null join date leaves keys out


def test_subset_of_users(engine: Engine) -> None:
    fill_timetracker(engine)
    want = expected(engine, TIMETRACKER, NOW)
    got = _as_dict(compute_segments(engine, TIMETRACKER, now=NOW, user_ids=["3", "12", "12", "999", "not-an-id"]))
    assert got == {"3": want["3"], "12": want["12"]}


def test_constant_number_of_queries(sqlite_engine: Engine) -> None:
    fill_timetracker(sqlite_engine, users=60)
    bound = bind(TIMETRACKER, sqlite_engine)
    statements: list[str] = []
    event.listen(sqlite_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert len(list(compute_segments(sqlite_engine, bound, now=NOW))) == 60
    assert len(statements) == 3  # users, activity with projects (one scan), tasks: for all 60 users
    statements.clear()
    assert len(list(compute_segments(sqlite_engine, bound, now=NOW, batch_size=25))) == 60
    assert len(statements) == 3 * math.ceil(60 / 25)


def test_missing_optional_tables_leave_properties_out(engine: Engine) -> None:
    fill_other(engine, with_optional=False)
    got = _as_dict(compute_segments(engine, OTHER, now=NOW))
    _assert_same(got, expected(engine, OTHER, NOW, has_projects=False, has_tasks=False))
    for p in got.values():
        for key in ("active_projects_count", "total_projects_count", "assigned_tasks_count", "completed_tasks_count"):
            assert key not in p["$set"]


def test_no_pii_and_no_none(sqlite_engine: Engine) -> None:
    fill_timetracker(sqlite_engine)
    for s in compute_segments(sqlite_engine, TIMETRACKER, now=NOW):
        values = [*s.set.values(), *s.set_once.values()]
        assert None not in values
        assert "username" not in s.set
        assert not any(isinstance(v, str) and ("@example" in v or (v.startswith("u") and v[1:].isdigit())) for v in values)
        assert not any("Secret" in str(v) for v in values)


def test_unmapped_source_and_duration_leave_their_properties_out(sqlite_engine: Engine) -> None:
    fill_timetracker(sqlite_engine, users=10)
    mapping = SchemaMapping(name="bare", activity=ActivityTable(source=None, duration_seconds=None, project_id=None), tasks=None)
    s = next(compute_segments(sqlite_engine, mapping, now=NOW))
    for key in ("timer_entries_count", "preferred_tracking_method", "uses_timer", "total_hours_tracked", "total_projects_count"):
        assert key not in s.set
    assert "engagement_level" in s.set


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (SchemaMapping(name="x", users=UsersTable(table="people")), "table 'people' does not exist"),
        (SchemaMapping(name="x", users=UsersTable(last_login="last_seen")), "column users.last_seen"),
        (SchemaMapping(name="x", activity=ActivityTable(timestamp="stamp")), "time_entries.stamp"),
        (SchemaMapping(name="x", activity=ActivityTable(table="entries")), "table 'entries'"),
    ],
)
def test_bad_mapping_names_the_missing_part(sqlite_engine: Engine, mapping: SchemaMapping, message: str) -> None:
    fill_timetracker(sqlite_engine, users=3)
    with pytest.raises(SchemaError, match=message):
        bind(mapping, sqlite_engine)


def test_optional_table_with_a_wrong_column_is_an_error(sqlite_engine: Engine) -> None:
    fill_other(sqlite_engine, users=3)
    from dataclasses import replace

    from otel_segments.segments.schema import TasksTable

    with pytest.raises(SchemaError, match=r"todo\.assignee"):
        bind(replace(OTHER, tasks=TasksTable(table="todo", assignee="assignee")), sqlite_engine)


def test_load_schema() -> None:
    assert load_schema("timetracker") is TIMETRACKER
    assert load_schema("tests.segments.data:OTHER") is OTHER
    for bad, message in (
        ("nope", "unknown schema"),
        ("tests.nothing_here:X", "cannot import"),
        ("tests.segments.data:MISSING", "no attribute"),
        ("tests.segments.data:NOW", "not a SchemaMapping"),
    ):
        with pytest.raises(SchemaError, match=message):
            load_schema(bad)


def test_naive_timestamps_are_utc(sqlite_engine: Engine) -> None:
    fill_timetracker(sqlite_engine, users=5)
    with sqlite_engine.begin() as conn:
        conn.execute(text("DELETE FROM time_entries"))
        conn.execute(
            text("INSERT INTO time_entries (user_id, start_time, created_at, source) VALUES (1, :t, :t, 'timer')"),
            {"t": "2025-06-14 12:00:00.000000"},  # exactly 24 h before NOW (12:00 UTC): inside the window
        )
    s = next(compute_segments(sqlite_engine, TIMETRACKER, now=NOW, user_ids=["1"]))
    assert s.set["entries_last_24h"] == 1
    assert s.set["last_segment_update"].endswith("+00:00")


def test_shape_follows_the_indexes_and_stays_exact(engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """The app's own user_id index only: on SQLite a batch holding every user is read by one scan that no index
    serves (PostgreSQL's planner chooses itself), and the job says once, at INFO, which index would help; after
    running that very statement, the batch's range through it; the same segments in every case."""
    monkeypatch.setattr(plan, "_advised", set())
    fill_timetracker(engine)
    dialect = engine.dialect.name
    want = expected(engine, TIMETRACKER, NOW)
    bound = bind(TIMETRACKER, engine)
    assert plan.activity_shape(bound, dialect) == (plan.SCAN if dialect == "sqlite" else plan.ROLL_UP)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with caplog.at_level(logging.INFO, logger="otel_segments.segments.plan"):
        _assert_same(_as_dict(compute_segments(engine, bound, now=NOW, batch_size=7)), want)
        batched = [s for s in statements if "time_entries" in s and "GROUP BY" in s]
        statements.clear()
        _assert_same(_as_dict(compute_segments(engine, bound, now=NOW, batch_size=60)), want)  # exactly every user
        whole = [s for s in statements if "time_entries" in s and "GROUP BY" in s]
    assert len(batched) == 9 and not any("+ time_entries.user_id" in s for s in batched)
    assert len(whole) == 1 and ("+ time_entries.user_id" in whole[0]) == (dialect == "sqlite")
    advice = [r.getMessage() for r in caplog.records if "CREATE INDEX" in r.getMessage()]
    assert len(advice) == 1, advice
    statement = advice[0].split("Create it with: ")[1]
    assert statement == plan.covering_statement(bound, dialect)
    with engine.begin() as conn:
        conn.execute(text(statement))
    covered = bind(TIMETRACKER, engine)
    assert plan.activity_shape(covered, dialect) == plan.ROLL_UP
    assert plan.covering_statement(covered, dialect) is None
    statements.clear()
    _assert_same(_as_dict(compute_segments(engine, covered, now=NOW)), want)
    assert not any("+ time_entries.user_id" in s for s in statements)


def test_no_index_on_the_user_keeps_the_range_and_advises(sqlite_engine: Engine) -> None:
    """With no index on the user at all the range is read by a scan anyway: the roll-up stays, exact; the advice stays."""
    fill_timetracker(sqlite_engine)
    with sqlite_engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_time_entries_user_id"))
    bound = bind(TIMETRACKER, sqlite_engine)
    assert plan.activity_shape(bound, "sqlite") == plan.ROLL_UP
    assert plan.covering_statement(bound, "sqlite") is not None
    _assert_same(_as_dict(compute_segments(sqlite_engine, bound, now=NOW)), expected(sqlite_engine, TIMETRACKER, NOW))
