"""One poisoned row never costs anyone else their delivery (issue 14): the rows that used to stop every cycle.

Each database gets thousands of good users and one poisoned row of each kind the issue reproduced; the
real job, with the local PostHog capture endpoint, must deliver every good user on the first cycle and name
each poisoned user in one WARNING line. Before the fix each of these rows turned into 0 deliveries for
everyone, every cycle (``Could not decode to UTF-8``, ``date value out of range``, ``integer overflow``,
``timestamp too small / too large``, ``value too long for type character varying(255)``, NUL in text).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import Engine

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.sinks.posthog import PostHogSink
from tests.segments.data import NOW, OTHER, fill_other, other_metadata
from tests.sinks.conftest import Capture

GOOD = 2_000
T1 = NOW + timedelta(seconds=1)
BIG = 2**63 - 1

# user id -> (statements that poison it, on SQLite; on PostgreSQL), each with :uid and :now bound.
_USER = (
    "INSERT INTO users (id, username, role, created_at, last_login, auth_provider) "
    "VALUES (:uid, 'poisoned', 'user', :now, :now, 'local')"
)
_ENTRY = (
    "INSERT INTO time_entries (id, user_id, start_time, created_at, source, duration_seconds) "
    "VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM time_entries), :uid, :now, {ts}, 'manual', {d})"
)
SQLITE_POISON = {
    "role": [_USER, "UPDATE users SET role = CAST(X'C3FF' AS TEXT) WHERE id = :uid"],
    "created_far_ahead": [_USER, "UPDATE users SET created_at = '9999-12-31T23:00:00-05:00' WHERE id = :uid"],
    "login_before_year_1": [_USER, "UPDATE users SET last_login = '0001-01-01T00:00:00+01:00' WHERE id = :uid"],
    "entry_far_ahead": [_USER, _ENTRY.format(ts="'9999-12-31T23:00:00-05:00'", d=60)],
    "durations_overflow": [_USER, _ENTRY.format(ts=":now", d=BIG), _ENTRY.format(ts=":now", d=BIG)],
    # a date column holding bytes that are not UTF-8: not a date, read as NULL
    "created_undecodable": [_USER, "UPDATE users SET created_at = CAST(X'C3FF' AS TEXT) WHERE id = :uid"],
    "entry_undecodable": [_USER, _ENTRY.format(ts="CAST(X'C3FF' AS TEXT)", d=60)],
}

POSTGRES_POISON = {
    "created_bc": [_USER, "UPDATE users SET created_at = '4713-01-01 BC' WHERE id = :uid"],
    "login_10000": [_USER, "UPDATE users SET last_login = '10000-01-01' WHERE id = :uid"],
    "entry_10000": [_USER, _ENTRY.format(ts="'10000-01-01'", d=60)],
    "durations_overflow": [
        _USER,
        "ALTER TABLE time_entries ALTER COLUMN duration_seconds TYPE bigint",
        _ENTRY.format(ts=":now", d=BIG),
        _ENTRY.format(ts=":now", d=BIG),
    ],
}
# What the warning names for each, besides the user id (a poisoned user whose value is read as NULL or with
# replacement is still delivered; the warning says so).
NAMED = {
    "role": "users.role",
    "created_far_ahead": "users.created_at",
    "login_before_year_1": "users.last_login",
    "entry_far_ahead": "time_entries.created_at",
    "durations_overflow": "time_entries.duration_seconds",
    "created_bc": "users.created_at",
    "login_10000": "users.last_login",
    "entry_10000": "time_entries.created_at",
    "created_undecodable": "users.created_at",
    "entry_undecodable": "time_entries.created_at",
}


def _database(url: str, good: int, poisons: dict[str, list[str]]) -> tuple[Engine, dict[str, str]]:
    """A demo database of ``good`` users plus one user per poison; the engine and poison -> user id."""
    engine = create_engine(url)
    create_demo_database(engine, users_count=good, seed=5, now=NOW)
    ids = {}
    with engine.begin() as conn:
        for i, (name, statements) in enumerate(poisons.items()):
            uid = good + 1 + i
            ids[name] = str(uid)
            for statement in statements:
                params = {"uid": uid, "now": NOW.replace(tzinfo=None)}
                conn.execute(text(statement), {k: v for k, v in params.items() if f":{k}" in statement})
    return engine, ids


def _url(request: pytest.FixtureRequest, tmp_path, dialect: str) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}" if dialect == "sqlite" else request.getfixturevalue("postgres_database")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def poisoned(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[Engine, dict[str, str]]]:
    """``GOOD`` users and one poisoned row of each kind."""
    sqlite = request.param == "sqlite"
    engine, ids = _database(_url(request, tmp_path, request.param), GOOD, SQLITE_POISON if sqlite else POSTGRES_POISON)
    try:
        yield engine, ids
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("dialect", "poison"),
    [("sqlite", name) for name in SQLITE_POISON]
    + [pytest.param("postgresql", name, marks=pytest.mark.postgres) for name in POSTGRES_POISON],
)
def test_one_poisoned_row_costs_no_one_else_their_delivery(
    request: pytest.FixtureRequest, tmp_path, capture: Capture, caplog, dialect: str, poison: str
) -> None:
    """Each row of the issue alone, among 40 good users: before the fix, 0 of 41 delivered, every cycle."""
    statements = (SQLITE_POISON if dialect == "sqlite" else POSTGRES_POISON)[poison]
    engine, ids = _database(_url(request, tmp_path, dialect), 40, {poison: statements})
    job = RefreshJob(engine, TIMETRACKER, sinks={"posthog": lambda: _posthog(capture.host)}, interval=timedelta(seconds=1))
    try:
        with caplog.at_level(logging.WARNING, logger="otel_segments"):
            result = job.run_cycle(now=T1)
        assert result is not None and result.error is None and not result.failed, result
        uid = ids[poison]
        assert set(capture.by_user()) == {str(i) for i in range(1, 41)} | {uid}
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and f"user {uid}" in lines[0] and NAMED[poison] in lines[0], lines
        assert dict(result.quarantined) == {}  # read, not set aside: see tests/segments/test_quarantine.py
    finally:
        job.shutdown(timeout_s=2)
        engine.dispose()


def _posthog(host: str) -> PostHogSink:
    return PostHogSink("phc_test_key", host)


def test_every_good_user_is_delivered_on_the_first_cycle_and_each_poisoned_user_is_named(
    poisoned: tuple[Engine, dict[str, str]], capture: Capture, caplog
) -> None:
    engine, poison = poisoned
    job = RefreshJob(engine, TIMETRACKER, sinks={"posthog": lambda: _posthog(capture.host)}, interval=timedelta(seconds=1))
    try:
        with caplog.at_level(logging.WARNING, logger="otel_segments"):
            result = job.run_cycle(now=T1)
        assert result is not None and result.error is None and not result.failed, result
        delivered = set(capture.by_user())
        assert {str(i) for i in range(1, GOOD + 1)} <= delivered
        assert set(poison.values()) <= delivered  # read as NULL or with replacement characters, so delivered too
        assert dict(result.quarantined) == {}
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        for name, uid in poison.items():
            lines = [w for w in warnings if f"user {uid}:" in w or f"user {uid} " in w]
            assert len(lines) == 1, (name, lines, warnings)
            assert NAMED[name] in lines[0], (name, lines)
        # read as NULL / with replacement, never as a crash: they are delivered too, without the bad value
        sent = capture.by_user()
        for name in ("role",):
            if name in poison:
                assert sent[poison[name]]["properties"]["$set"]["role"] == "\ufffd\ufffd"
        for name in ("created_far_ahead", "created_bc"):
            if name in poison:
                assert "account_age_days" not in sent[poison[name]]["properties"]["$set"]
        # the next cycle names no one again and resends no one
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="otel_segments"):
            again = job.run_cycle(now=T1 + timedelta(seconds=1))
        assert again is not None and again.error is None
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert len(capture.events()) == len(delivered)
    finally:
        job.shutdown(timeout_s=2)


LONG_ID = "x" * 300
NUL_ID = "nul\x00id"


@pytest.mark.postgres
def test_ids_the_state_columns_cannot_hold_still_work(postgres_database: str, tmp_path, capture: Capture) -> None:
    """Text ids on SQLite (the app) with the state on PostgreSQL: one of 300 characters, one with a NUL."""
    app = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    state = create_engine(postgres_database)
    fill_other(app, users=20)
    members, logs = other_metadata.tables["members"], other_metadata.tables["work_log"]
    with app.begin() as conn:
        conn.execute(insert(members), [{"member_key": LONG_ID, "kind": "staff"}, {"member_key": NUL_ID, "kind": "owner"}])
        conn.execute(insert(logs), [{"member": LONG_ID, "logged": NOW, "how": "typed", "secs": 5}])
    job = RefreshJob(app, OTHER, state_engine=state, sinks={"posthog": lambda: _posthog(capture.host)})
    try:
        first = job.run_cycle(now=T1)
        assert first is not None and first.error is None and not first.failed, first
        sent = capture.by_user()
        assert len(sent) == 22
        assert sent[LONG_ID]["properties"]["$set"]["entries_all_time"] == 1
        assert sent[NUL_ID]["properties"]["$set"]["role"] == "owner"
        again = job.run_cycle(now=T1 + timedelta(seconds=1))  # found in the state: neither recomputed as new nor resent
        assert again is not None and again.error is None and again.refreshed is not None
        assert len(capture.events()) == 22
        assert again.refreshed.computed == 0
    finally:
        job.shutdown(timeout_s=2)
        app.dispose()
        state.dispose()
