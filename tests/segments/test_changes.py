"""Each kind of change is found at the next incremental refresh, for its user only, on SQLite and PostgreSQL; naive
columns are read in their declared zone, and a zone far from UTC neither hides changes nor recomputes users forever."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.engine import Engine

from otel_segments.segments import changes
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.demo import projects, tasks, time_entries, user_roles, users
from otel_segments.segments.driver_values import read_datetime
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.settings import config

from .data import NOW, fill_timetracker, naive


def _digests(state: RefreshState) -> dict[str, str]:
    return {s.distinct_id: s.digest() for s in state.segments()}


def _full(engine: Engine, bound, now: datetime) -> dict[str, str]:
    return {s.distinct_id: s.digest() for s in compute_segments(engine, bound, now=now)}


def _write(engine: Engine, *statements) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _next_id(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return (conn.execute(table.select().with_only_columns(table.c.id).order_by(table.c.id.desc()).limit(1)).scalar() or 0) + 1


LATER = NOW + timedelta(hours=3, seconds=1)  # away from the data set's window edges


# Found without the sweep, by a key, an updated_at, last_login or the count of users; the others need the sweep.
SWEEP_ONLY = {
    "entry deleted",
    "task reassigned away (the old assignee)",
    "task deleted",
    "role changed (users has no updated_at)",
    "admin granted through roles",
    "auth provider changed",
}


def _changes(engine: Engine) -> list[tuple[str, Callable[[], object], str]]:
    """(kind of change, the app's write, the user whose segment it changes)."""
    stamp = naive(LATER)
    return [
        (
            "user created with an old created_at (an import)",
            lambda: _write(
                engine,
                insert(users).values(
                    id=0, username="imported", role="user", auth_provider="local", created_at=naive(NOW - timedelta(days=900))
                ),
            ),
            "0",
        ),
        (
            "new entry",
            lambda: _write(
                engine,
                insert(time_entries).values(
                    id=_next_id(engine, time_entries),
                    user_id=2,
                    start_time=stamp,
                    created_at=stamp,
                    source="timer",
                    updated_at=stamp,
                ),
            ),
            "2",
        ),
        (
            "back-dated entry",
            lambda: _write(
                engine,
                insert(time_entries).values(
                    id=_next_id(engine, time_entries),
                    user_id=3,
                    start_time=stamp,
                    created_at=naive(NOW - timedelta(days=40)),
                    source="manual",
                    updated_at=stamp,
                ),
            ),
            "3",
        ),
        (
            "entry edited",
            lambda: _write(
                engine,
                update(time_entries)
                .where(time_entries.c.user_id == 6)
                .values(source="timer", duration_seconds=9999, updated_at=stamp),
            ),
            "6",
        ),
        ("entry deleted", lambda: _write(engine, delete(time_entries).where(time_entries.c.user_id == 10)), "10"),
        (
            "task assigned",
            lambda: _write(
                engine,
                insert(tasks).values(id=_next_id(engine, tasks), project_id=1, assigned_to=12, status="todo", updated_at=stamp),
            ),
            "12",
        ),
        (
            "task completed",
            lambda: _write(
                engine,
                update(tasks).where(tasks.c.assigned_to == 14, tasks.c.status != "done").values(status="done", updated_at=stamp),
            ),
            "14",
        ),
        (
            "task reassigned away (the old assignee)",
            lambda: _write(
                engine,
                update(tasks)
                .where(tasks.c.assigned_to == 15, tasks.c.status == "todo")
                .values(assigned_to=None, updated_at=stamp),
            ),
            "15",
        ),
        ("task deleted", lambda: _write(engine, delete(tasks).where(tasks.c.assigned_to == 16)), "16"),
        (
            "role changed (users has no updated_at)",
            lambda: _write(engine, update(users).where(users.c.id == 18).values(role="admin")),
            "18",
        ),
        ("admin granted through roles", lambda: _write(engine, insert(user_roles).values(user_id=19, role_id=1)), "19"),
        (
            "auth provider changed",
            lambda: _write(engine, update(users).where(users.c.id == 20).values(auth_provider="oidc")),
            "20",
        ),
        ("login", lambda: _write(engine, update(users).where(users.c.id == 21).values(last_login=stamp)), "21"),
        (
            "project archived",
            lambda: _write(engine, update(projects).where(projects.c.id == 1).values(status="archived", updated_at=stamp)),
            "1",
        ),
    ]


@pytest.mark.parametrize("sweep", [True, False], ids=["sweep", "no-sweep"])
def test_every_kind_of_change_is_found_at_the_next_refresh(engine: Engine, sweep: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the sweep (any app up to SWEEP_USERS users) every kind; without it, every kind a column or count shows."""
    if not sweep:
        monkeypatch.setattr(changes, "SWEEP_USERS", 0)
    fill_timetracker(engine, users=40)
    _write(
        engine,
        insert(tasks).values([{"id": 1000 + uid, "project_id": 1, "assigned_to": uid, "status": "todo"} for uid in (14, 15, 16)]),
    )
    bound = bind(TIMETRACKER, engine, app_timezone="UTC")
    state = RefreshState(engine)
    refresh(engine, state, bound, now=NOW)
    now = LATER
    refresh(engine, state, bound, now=now)  # whoever the clock moved in 3 hours
    for kind, write, user in _changes(engine):
        if not sweep and kind in SWEEP_ONLY:
            continue
        before = _full(engine, bound, now).get(user)
        write()
        now += timedelta(seconds=2)
        seen: list = []
        result = refresh(engine, state, bound, now=now, on_change=seen.append)
        want = _full(engine, bound, now)
        assert want[user] != before or kind == "project archived", kind  # the write did change that user
        assert _digests(state) == want, kind
        assert user in {x.distinct_id for x in seen} or kind == "project archived", kind
        assert result.computed < 25 or kind == "project archived", (kind, result.computed)  # its user (a project: its users)
        quiet = refresh(engine, state, bound, now=now + timedelta(seconds=1))
        assert quiet.computed == 0, kind  # found once, not again on every cycle


def test_the_sweep_reaches_every_user_in_turn(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fewer users per sweep than users, a change no column shows is found within ceil(users / SWEEP_USERS) cycles."""
    monkeypatch.setattr(changes, "SWEEP_USERS", 7)
    fill_timetracker(sqlite_engine, users=30)
    bound = bind(TIMETRACKER, sqlite_engine, app_timezone="UTC")
    state = RefreshState(sqlite_engine)
    now = NOW
    refresh(sqlite_engine, state, bound, now=now)
    _write(sqlite_engine, update(users).where(users.c.id == 29).values(role="admin"))
    cycle = 0
    while cycle < 5:  # ceil(30 / 7) = 5
        cycle += 1
        now += timedelta(seconds=1)
        refresh(sqlite_engine, state, bound, now=now)
        if next(state.segments(["29"])).set["role"] == "admin":
            break
    assert cycle <= 5


def test_a_quiet_cycle_reads_a_bounded_slice_and_does_not_count_the_state(sqlite_engine: Engine) -> None:
    """Nothing changed: no count of the state's rows (the last refresh kept it), a sweep slice sized by entries;
    a state row lost behind our back is found again by the sweep."""
    fill_timetracker(sqlite_engine, users=30)
    bound = bind(TIMETRACKER, sqlite_engine, app_timezone="UTC")
    state = RefreshState(sqlite_engine)
    refresh(sqlite_engine, state, bound, now=NOW)
    refresh(sqlite_engine, state, bound, now=NOW + timedelta(seconds=1))
    statements: list[str] = []
    event.listen(sqlite_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    quiet = refresh(sqlite_engine, state, bound, now=NOW + timedelta(seconds=2))
    assert quiet.computed == 0
    assert not [s for s in statements if "count(*)" in s and "otel_segments_user_state" in s]
    assert changes.sweep_size(None) == changes.SWEEP_USERS
    assert changes.sweep_size(100) == changes.SWEEP_ENTRIES // 100  # 100 entries a user: 250 users a slice
    assert changes.sweep_size(10**9) == changes.SWEEP_MIN_USERS and changes.sweep_size(0.5) == changes.SWEEP_USERS

    with sqlite_engine.begin() as conn:
        conn.execute(delete(state.users).where(state.users.c.user_id == "5"))
    found = refresh(sqlite_engine, state, bound, now=NOW + timedelta(seconds=3), on_change=lambda s: None)
    assert found.computed == 1 and [s.distinct_id for s in state.segments(["5"])] == ["5"]


def test_more_changed_users_than_a_sweep_slice_stay_incremental(sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changes, "SWEEP_USERS", 3)
    fill_timetracker(sqlite_engine, users=30)
    bound = bind(TIMETRACKER, sqlite_engine, app_timezone="UTC")
    state = RefreshState(sqlite_engine)
    refresh(sqlite_engine, state, bound, now=NOW)
    refresh(sqlite_engine, state, bound, now=NOW + timedelta(seconds=1))
    stamp = naive(NOW + timedelta(seconds=2))
    rows = [
        {"id": _next_id(sqlite_engine, time_entries) + i, "user_id": uid, "start_time": stamp, "created_at": stamp}
        for i, uid in enumerate(range(1, 11))
    ]
    _write(sqlite_engine, insert(time_entries).values([{**row, "source": "timer", "updated_at": stamp} for row in rows]))
    result = refresh(sqlite_engine, state, bound, now=NOW + timedelta(seconds=3))
    assert not result.full and 10 <= result.computed < 20, result


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "America/Los_Angeles"])
def test_a_zone_far_from_utc_neither_hides_changes_nor_recomputes_forever(engine: Engine, zone: str) -> None:
    """Entries and tasks written in local time (14 h ahead of UTC, or 7-8 h behind), read in the declared zone."""
    fill_timetracker(engine, users=20)
    local = ZoneInfo(zone)
    bound = bind(TIMETRACKER, engine, app_timezone=zone)
    state = RefreshState(engine)
    now = LATER
    refresh(engine, state, bound, now=now)
    assert refresh(engine, state, bound, now=now + timedelta(seconds=1)).computed <= 3
    for step in range(1, 4):
        now += timedelta(minutes=1)
        stamp = now.astimezone(local).replace(tzinfo=None)
        _write(
            engine,
            insert(time_entries).values(
                id=_next_id(engine, time_entries), user_id=4, start_time=stamp, created_at=stamp, source="timer", updated_at=stamp
            ),
        )
        seen: list = []
        refresh(engine, state, bound, now=now, on_change=seen.append)
        assert "4" in {x.distinct_id for x in seen}
        assert next(state.segments(["4"])).set["entries_last_24h"] >= step  # a local "now" is now, not hours off
        assert _digests(state) == _full(engine, bound, now)
        assert refresh(engine, state, bound, now=now + timedelta(seconds=1)).computed == 0


def test_a_zone_the_mapping_gets_wrong_still_hides_no_change(sqlite_engine: Engine) -> None:
    """The app writes Tokyo time but the mapping reads UTC: windows are off by 9 hours, yet every write is found once."""
    fill_timetracker(sqlite_engine, users=10)
    bound = bind(TIMETRACKER, sqlite_engine, app_timezone="UTC")
    state = RefreshState(sqlite_engine)
    now = LATER
    refresh(sqlite_engine, state, bound, now=now)
    for ahead in (True, False):
        now += timedelta(minutes=1)
        stamp = naive(now + (timedelta(hours=9) if ahead else -timedelta(hours=9)))
        _write(
            sqlite_engine,
            insert(time_entries).values(
                id=_next_id(sqlite_engine, time_entries),
                user_id=5,
                start_time=stamp,
                created_at=stamp,
                source="timer",
                updated_at=stamp,
            ),
        )
        seen: list = []
        refresh(sqlite_engine, state, bound, now=now, on_change=seen.append)
        assert [x.distinct_id for x in seen] == ["5"]
        assert refresh(sqlite_engine, state, bound, now=now + timedelta(seconds=1)).computed == 0


def test_naive_columns_are_read_in_their_declared_zones(sqlite_engine: Engine) -> None:
    """users.created_at is UTC, time_entries.created_at in the app's zone (here UTC+5:30)."""
    fill_timetracker(sqlite_engine, users=3)
    with sqlite_engine.begin() as conn:
        conn.execute(delete(time_entries))
        conn.execute(update(users).where(users.c.id == 1).values(created_at=naive(NOW - timedelta(days=7, seconds=-1))))
        kolkata = ZoneInfo("Asia/Kolkata")
        for hours in (23.9, 24.1):  # inside and outside the 24 h window, written in local time
            local = (NOW - timedelta(hours=hours)).astimezone(kolkata).replace(tzinfo=None)
            conn.execute(insert(time_entries).values(user_id=1, start_time=local, created_at=local, source="timer"))
    s = next(
        compute_segments(sqlite_engine, bind(TIMETRACKER, sqlite_engine, app_timezone="Asia/Kolkata"), now=NOW, user_ids=["1"])
    )
    assert s.set["entries_last_24h"] == 1 and s.set["entries_last_7_days"] == 2
    assert s.set["account_age_days"] == 6 and s.set_once["first_login"] == (NOW - timedelta(days=7, seconds=-1)).isoformat()
    read_as_utc = next(
        compute_segments(sqlite_engine, bind(TIMETRACKER, sqlite_engine, app_timezone="UTC"), now=NOW, user_ids=["1"])
    )
    assert read_as_utc.set["entries_last_24h"] == 2  # both look 5.5 h younger when local time is taken for UTC


def test_timetracker_tasks_are_read_as_utc_entries_in_the_app_zone(engine: Engine) -> None:
    """TimeTracker stamps tasks timezone-aware (kept as UTC by the naive column), entries in its local zone."""
    fill_timetracker(engine, users=3)
    kolkata = ZoneInfo("Asia/Kolkata")
    written = NOW - timedelta(hours=2)
    task_id = _next_id(engine, tasks)
    _write(
        engine,
        insert(tasks).values(id=task_id, project_id=1, assigned_to=1, status="todo", updated_at=written),  # aware, as the app
        update(time_entries)
        .where(time_entries.c.user_id == 1)
        .values(updated_at=written.astimezone(kolkata).replace(tzinfo=None)),
    )
    bound = bind(TIMETRACKER, engine, app_timezone=kolkata)
    assert bound.tasks is not None
    with engine.connect() as conn:
        task_stamp = conn.execute(select(tasks.c.updated_at).where(tasks.c.id == task_id)).scalar_one()
        entry_stamp = conn.execute(select(time_entries.c.updated_at).where(time_entries.c.user_id == 1).limit(1)).scalar_one()
    assert read_datetime(task_stamp, bound.zone(bound.tasks.c.updated_at)) == written  # not 5.5 h off
    assert read_datetime(entry_stamp, bound.zone(bound.activity.c.updated_at)) == written


def test_database_timezone_variable(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.database_timezone({}) is timezone.utc
    assert config.database_timezone({"OTEL_SEGMENTS_DATABASE_TIMEZONE": "Europe/Berlin"}) == ZoneInfo("Europe/Berlin")
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert config.database_timezone({"OTEL_SEGMENTS_DATABASE_TIMEZONE": "Mars/Olympus_Mons"}) is timezone.utc
    warnings = [r.getMessage() for r in caplog.records if "OTEL_SEGMENTS_DATABASE_TIMEZONE" in r.getMessage()]
    assert len(warnings) == 1 and "using UTC" in warnings[0]
    monkeypatch.setenv("OTEL_SEGMENTS_DATABASE_TIMEZONE", "Asia/Tokyo")
    assert config.database_timezone() == ZoneInfo("Asia/Tokyo")  # what bind() uses for the app's zone by default
