"""The real-data situations of issue 21 that fooled change detection, each found at the next refresh.

Each test was run against the code before the fix and failed there: a poisoned row inside a change window
(it stopped every refresh), ids JSON cannot encode (uuid), a writer whose stamps lag ours and a row stamped in
the future, a DST fall-back, a user deleted and another added in one cycle, the re-reading of a bulk update
on every quiet cycle, and a warning that quoted a row's value.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Uuid, delete, func, insert, select, text, update
from sqlalchemy.engine import Engine

from otel_segments.segments import changes
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import BoundSchema, bind
from otel_segments.segments.demo import create_demo_database, projects, tasks, time_entries, user_roles, users
from otel_segments.segments.driver_values import cause
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER, ActivityTable, SchemaMapping, UsersTable
from otel_segments.segments.state import RefreshState

from .data import NOW, fill_timetracker, naive

LATER = NOW + timedelta(hours=3, seconds=1)


def _full(engine: Engine, bound, now: datetime) -> dict[str, str]:
    return {s.distinct_id: s.digest() for s in compute_segments(engine, bound, now=now)}


def _digests(state: RefreshState) -> dict[str, str]:
    return {s.distinct_id: s.digest() for s in state.segments()}


def _write(engine: Engine, *statements) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _entry_of(engine: Engine, user_id: int) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.min(time_entries.c.id)).where(time_entries.c.user_id == user_id)).scalar_one())


# -- 1. a poisoned row inside a change window --------------------------------------------------------------------


VIEWS = replace(TIMETRACKER, name="views", activity=replace(TIMETRACKER.activity, table="entries_v"))


def _refreshed_through_a_poisoning_view(engine: Engine) -> tuple[BoundSchema, RefreshState]:
    """A demo database whose entries are read through a view that fails on a row whose source is 'poison' (each row
    evaluated on its own, as a view over malformed JSON is), refreshed twice: the change windows are in place."""
    create_demo_database(engine, users_count=30, seed=4, now=NOW)
    fails = "abs(-9223372036854775807 - 1)" if engine.dialect.name == "sqlite" else "1 / (id - id)"
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE VIEW entries_v AS SELECT id, user_id, project_id, start_time, created_at, updated_at, source, "
                f"CASE WHEN source = 'poison' THEN {fails} ELSE duration_seconds END AS duration_seconds FROM time_entries"
            )
        )
    bound = bind(VIEWS, engine, app_timezone="UTC")
    state = RefreshState(engine)
    refresh(engine, state, bound, now=LATER)
    refresh(engine, state, bound, now=LATER + timedelta(seconds=1))
    return bound, state


def test_a_poisoned_row_inside_a_change_window_sets_aside_its_user_alone(engine: Engine) -> None:
    bound, state = _refreshed_through_a_poisoning_view(engine)
    with engine.connect() as conn:
        poisoned, edited = [
            r[0] for r in conn.execute(select(time_entries.c.user_id).distinct().order_by(time_entries.c.user_id).limit(2))
        ]
    stamp = naive(LATER + timedelta(seconds=2))
    _write(
        engine,
        update(time_entries).where(time_entries.c.id == _entry_of(engine, poisoned)).values(source="poison", updated_at=stamp),
        update(time_entries)
        .where(time_entries.c.id == _entry_of(engine, edited))
        .values(duration_seconds=4321, updated_at=stamp),
    )
    for second in (3, 4):  # every cycle, while the row stays in the window
        seen: list = []
        result = refresh(engine, state, bound, now=LATER + timedelta(seconds=second), on_change=seen.append)
        assert not result.full
        assert [(p.user_id, p.skipped) for p in result.problems] == [(str(poisoned), True)]
        if second == 3:
            assert str(edited) in {s.distinct_id for s in seen}  # the others' changes go on
    want = _full(engine, bind(TIMETRACKER, engine, app_timezone="UTC"), LATER + timedelta(seconds=4))
    got = _digests(state)
    assert {u: d for u, d in got.items() if u != str(poisoned)} == {u: d for u, d in want.items() if u != str(poisoned)}


def test_two_poisoned_rows_as_the_only_changes_of_a_cycle_set_aside_their_users_not_the_refresh(engine: Engine) -> None:
    # every candidate failing alone was taken for the database's error: the refresh raised, every cycle (the property
    # test found it: two entries poisoned in one step, nothing else changed)
    bound, state = _refreshed_through_a_poisoning_view(engine)
    with engine.connect() as conn:
        owners = [r[0] for r in conn.execute(select(time_entries.c.user_id).distinct().order_by(time_entries.c.user_id).limit(2))]
    stamp = naive(LATER + timedelta(seconds=2))
    _write(
        engine,
        *(
            update(time_entries).where(time_entries.c.id == _entry_of(engine, owner)).values(source="poison", updated_at=stamp)
            for owner in owners
        ),
    )
    result = refresh(engine, state, bound, now=LATER + timedelta(seconds=3))
    assert sorted((p.user_id, p.skipped) for p in result.problems) == sorted((str(o), True) for o in owners)
    want = _full(engine, bind(TIMETRACKER, engine, app_timezone="UTC"), LATER + timedelta(seconds=3))
    assert {u: d for u, d in _digests(state).items() if u not in map(str, owners)} == {
        u: d for u, d in want.items() if u not in map(str, owners)
    }


# -- 2. ids JSON cannot encode ---------------------------------------------------------------------------------------

UUIDS = SchemaMapping(
    name="uuids",
    users=UsersTable(table="accounts", id="id", last_login=None, role="role", auth_method=None, roles=None),
    activity=ActivityTable(
        table="events", user_id="account", timestamp="at", source=None, duration_seconds=None, project_id=None, key="pk"
    ),
    projects=None,
    tasks=None,
)


def test_uuid_user_ids_are_kept_in_the_state_as_text_and_read_back_as_uuids(engine: Engine, monkeypatch) -> None:
    monkeypatch.setattr(changes, "SWEEP_USERS", 3)
    monkeypatch.setattr(changes, "SWEEP_MIN_USERS", 3)
    md = MetaData()
    accounts = Table(
        "accounts", md, Column("id", Uuid, primary_key=True), Column("role", String(20)), Column("created_at", DateTime)
    )
    events = Table("events", md, Column("pk", Integer, primary_key=True), Column("account", Uuid), Column("at", DateTime))
    md.create_all(engine)
    ids = [uuid.UUID(int=i * 7919) for i in range(1, 11)]
    _write(
        engine,
        insert(accounts).values([{"id": i, "role": "user", "created_at": naive(NOW - timedelta(days=3))} for i in ids]),
        insert(events).values([{"account": i, "at": naive(NOW - timedelta(hours=1))} for i in ids]),
    )
    bound = bind(UUIDS, engine, app_timezone="UTC")
    state = RefreshState(engine)
    assert refresh(engine, state, bound, now=NOW).full
    target = sorted(ids)[-1]  # the last slice of the sweep
    [shown] = [d for d in _digests(state) if d.replace("-", "") == target.hex]  # SQLite hands the id over as hex text
    _write(engine, update(accounts).where(accounts.c.id == target).values(role="admin"))
    found = False
    for second in range(1, 6):  # ceil(10 / 3) = 4 slices
        result = refresh(engine, state, bound, now=NOW + timedelta(seconds=second))
        assert not result.full
        found = found or next(state.segments([shown])).set["role"] == "admin"
    assert found
    assert _digests(state) == _full(engine, bound, NOW + timedelta(seconds=5))


def test_a_uuid_or_text_id_mapped_as_the_growing_key_is_not_read_as_one(engine: Engine, caplog) -> None:
    # Django's mapping names auth_user.id the key; a custom user model with a UUIDField primary key makes it a uuid,
    # which has no max() on PostgreSQL and no order that grows: every refresh failed. A text id is the same
    md = MetaData()
    accounts, named = (
        Table(name, md, Column("id", kind, primary_key=True), Column("role", String(20)), Column("created_at", DateTime))
        for name, kind in (("accounts", Uuid), ("named", String(36)))
    )
    Table("events", md, Column("pk", Integer, primary_key=True), Column("account", Uuid), Column("at", DateTime))
    md.create_all(engine)
    first = uuid.UUID(int=11)
    _write(
        engine,
        insert(accounts).values(id=first, role="user", created_at=naive(NOW - timedelta(days=3))),
        insert(named).values(id="n1", role="user", created_at=naive(NOW - timedelta(days=3))),
    )
    keyed = replace(UUIDS, users=replace(UUIDS.users, key="id"))
    with caplog.at_level(logging.INFO, logger="otel_segments"):
        bound = bind(keyed, engine, app_timezone="UTC")
        texts = bind(replace(keyed, users=replace(keyed.users, table="named")), engine, app_timezone="UTC")
    said = [r.getMessage() for r in caplog.records if "not a key that grows on insert" in r.getMessage()]
    assert len(said) == 2 and "accounts.id is a " in said[0] and "named.id is a " in said[1], said
    assert bound.change_columns["accounts"] == (None, None) and bound.change_columns["events"] == ("pk", None)
    state = RefreshState(engine)
    assert refresh(engine, state, bound, now=NOW).full
    later = uuid.UUID(int=5)  # below the first: no key would have found it anyway
    _write(engine, insert(accounts).values(id=later, role="admin", created_at=naive(NOW - timedelta(days=1))))
    result = refresh(engine, state, bound, now=NOW + timedelta(seconds=1))
    assert not result.full and not result.problems
    assert _digests(state) == _full(engine, bound, NOW + timedelta(seconds=1))
    assert len(_digests(state)) == 2
    assert texts.change_columns["named"] == (None, None)


# -- 3. the data's own clock ------------------------------------------------------------------------------------


@pytest.mark.parametrize("future_row", [False, True], ids=["lagging-writer", "lagging-writer-and-a-future-row"])
def test_a_writer_whose_stamps_lag_ours_is_followed(engine: Engine, future_row: bool, monkeypatch) -> None:
    """The app's stamps are 10 minutes behind the job's clock (twice the slack), from the start; with a row stamped
    a month ahead too. Edits in place (no new key) are found at the next cycle, and found once."""
    monkeypatch.setattr(changes, "SWEEP_USERS", 0)  # the sweep does not see a duration edit anyway
    fill_timetracker(engine, users=20)
    lag = timedelta(minutes=10)
    if future_row:
        _write(
            engine,
            update(time_entries)
            .where(time_entries.c.id == _entry_of(engine, 1))
            .values(updated_at=naive(LATER + timedelta(days=30))),
        )
    bound = bind(TIMETRACKER, engine, app_timezone="UTC")
    state = RefreshState(engine)
    now = LATER
    refresh(engine, state, bound, now=now)
    for step, user in enumerate((2, 3, 6, 8), 1):
        now += timedelta(minutes=1)
        _write(
            engine,
            update(time_entries)
            .where(time_entries.c.id == _entry_of(engine, user))
            .values(duration_seconds=1000 + step, updated_at=naive(now - lag)),
        )
        seen: list = []
        refresh(engine, state, bound, now=now + timedelta(seconds=1), on_change=seen.append)
        assert str(user) in {s.distinct_id for s in seen}, step
        assert _digests(state) == _full(engine, bound, now + timedelta(seconds=1))
        assert refresh(engine, state, bound, now=now + timedelta(seconds=2)).computed == 0


# -- 4. DST fall-back ------------------------------------------------------------------------------------------------


def test_an_edit_in_the_repeated_hour_of_a_fall_back_is_found(engine: Engine, monkeypatch) -> None:
    """New York falls back at 06:00 UTC on 2025-11-02 (02:00 EDT -> 01:00 EST): naive local stamps repeat 01:00-02:00."""
    monkeypatch.setattr(changes, "SWEEP_USERS", 0)
    local = ZoneInfo("America/New_York")
    before = datetime(2025, 11, 2, 5, 58, tzinfo=timezone.utc)  # 01:58 EDT, the first occurrence
    fill_timetracker(engine, users=20, now=before - timedelta(hours=2))
    bound = bind(TIMETRACKER, engine, app_timezone="America/New_York")
    state = RefreshState(engine)
    refresh(engine, state, bound, now=before - timedelta(hours=1))

    def edit(user: int, at: datetime) -> None:
        stamp = at.astimezone(local).replace(tzinfo=None)
        _write(
            engine,
            update(time_entries)
            .where(time_entries.c.id == _entry_of(engine, user))
            .values(duration_seconds=777 + user, updated_at=stamp),
        )

    edit(2, before)
    refresh(engine, state, bound, now=before + timedelta(minutes=1))
    after = datetime(2025, 11, 2, 6, 20, tzinfo=timezone.utc)  # 01:20 EST, the second occurrence
    edit(3, after)
    seen: list = []
    refresh(engine, state, bound, now=after + timedelta(minutes=1), on_change=seen.append)
    assert "3" in {s.distinct_id for s in seen}
    assert _digests(state) == _full(engine, bound, after + timedelta(minutes=1))


# -- 5. a user deleted and another added in the same cycle ---------------------------------------------------------


def _delete_user(engine: Engine, user_id: int) -> None:
    _write(
        engine,
        delete(time_entries).where(time_entries.c.user_id == user_id),
        update(tasks).where(tasks.c.assigned_to == user_id).values(assigned_to=None),
        delete(user_roles).where(user_roles.c.user_id == user_id),
        delete(users).where(users.c.id == user_id),
    )


@pytest.mark.parametrize("reuse", [False, True], ids=["another-id", "the-same-id"])
def test_a_user_deleted_and_another_added_in_one_cycle_are_both_found(engine: Engine, reuse: bool, monkeypatch) -> None:
    monkeypatch.setattr(changes, "SWEEP_USERS", 0)  # the promise is "next cycle", not "when the sweep comes round"
    fill_timetracker(engine, users=20)
    assert projects is not None
    bound = bind(TIMETRACKER, engine, app_timezone="UTC")
    state = RefreshState(engine)
    refresh(engine, state, bound, now=LATER)
    refresh(engine, state, bound, now=LATER + timedelta(seconds=1))
    _delete_user(engine, 7)
    new_id = 7 if reuse else 0  # below the highest key: an import, or an id reused for a new account
    _write(
        engine,
        insert(users).values(
            id=new_id, username="new", role="viewer", auth_provider="ldap", created_at=naive(NOW - timedelta(days=2))
        ),
    )
    result = refresh(engine, state, bound, now=LATER + timedelta(seconds=2))
    assert not result.full
    assert _digests(state) == _full(engine, bound, LATER + timedelta(seconds=2))
    assert next(state.segments([str(new_id)])).set["role"] == "viewer"


# -- 6. a quiet cycle after a bulk update reads a bounded number of rows ------------------------------------------


def test_a_quiet_cycle_after_a_bulk_update_or_import_reads_no_old_rows(sqlite_engine: Engine) -> None:
    """Once the slack has passed, the rows of a bulk UPDATE (one stamp for all) or a bulk import are not read again:
    the cursors advance by (stamp, key), and what the scan stores shrinks back to nothing."""
    engine = sqlite_engine
    fill_timetracker(engine, users=40)
    bound = bind(TIMETRACKER, engine, app_timezone="UTC")
    state = RefreshState(engine)
    refresh(engine, state, bound, now=LATER)
    stamp = naive(LATER + timedelta(seconds=1))
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(time_entries)).scalar_one()
    top = _entry_of(engine, 1) + count + 10
    _write(
        engine,
        update(time_entries).values(updated_at=stamp),
        insert(time_entries).values(
            [
                {
                    "id": top + i,
                    "user_id": 1 + i % 40,
                    "start_time": stamp,
                    "created_at": stamp,
                    "source": "import",
                    "updated_at": stamp,
                }
                for i in range(2_000)
            ]
        ),
    )
    refresh(engine, state, bound, now=LATER + timedelta(seconds=2))
    for minutes in (1, 10, 11):
        refresh(engine, state, bound, now=LATER + timedelta(minutes=minutes))
    cursor = state.meta_values(changes.PREFIX)[changes.PREFIX + "activity"]
    assert cursor["seen"] == {}  # nothing was read by the last quiet cycle
    assert _digests(state) == _full(engine, bound, LATER + timedelta(minutes=11))


# -- 7. warnings never quote a value -------------------------------------------------------------------------------


def test_a_drivers_quoted_value_is_stripped_from_the_cause() -> None:
    error = ValueError('invalid input syntax for type integer: "call alice.smith@example.com re invoice"')
    assert "alice" not in cause(error) and "invalid input syntax for type integer" in cause(error)
    assert "bob" not in cause(ValueError("value 'bob@example.com' is out of range for type integer"))
    assert cause(ValueError("division by zero")) == "ValueError: division by zero"


@pytest.mark.postgres
def test_a_failing_cast_sets_aside_its_user_without_logging_the_value(postgres_database: str, caplog) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(postgres_database)
    try:
        create_demo_database(engine, users_count=20, seed=4, now=NOW)
        with engine.begin() as conn:
            poisoned = conn.execute(select(func.min(time_entries.c.user_id))).scalar_one()
            conn.execute(
                text(
                    "CREATE VIEW entries_v AS SELECT id, user_id, project_id, start_time, created_at, updated_at, source, "
                    f"CASE WHEN user_id = {poisoned} THEN CAST('call alice.smith@example.com re ' || source AS integer) "
                    "ELSE duration_seconds END AS duration_seconds FROM time_entries"
                )
            )
        state = RefreshState(engine)
        with caplog.at_level(logging.DEBUG, logger="otel_segments"):
            result = refresh(engine, state, VIEWS, now=LATER)
        assert [(p.user_id, p.skipped) for p in result.problems] == [(str(poisoned), True)]
        assert "invalid input syntax" in result.problems[0].cause
        assert "alice" not in repr(result.problems) and "alice" not in caplog.text
    finally:
        engine.dispose()
