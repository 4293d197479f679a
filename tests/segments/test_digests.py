"""Only changes cross the wire: a full refresh with the state in place computes only the users whose rows changed.

The rows digest (``segments/digests.py``) is compared in the database when the state lives there, in Python when
it lives elsewhere; both on SQLite and PostgreSQL. Each single edit of a rule input finds exactly its user, and
what is stored and pending afterwards is what a computation of everyone gives.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.digests import digest_query
from otel_segments.segments.queries import SegmentQueries
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState

from .data import NOW, fill_timetracker, naive, timetracker_metadata

T = NOW + timedelta(seconds=1)
tables = timetracker_metadata.tables
users, entries, tasks, user_roles = tables["users"], tables["time_entries"], tables["tasks"], tables["user_roles"]


def _first_entry(conn: Connection, uid: int) -> int:
    return conn.execute(select(entries.c.id).where(entries.c.user_id == uid).order_by(entries.c.id)).scalars().first()


def _first_task(conn: Connection, uid: int) -> int:
    return conn.execute(select(tasks.c.id).where(tasks.c.assigned_to == uid).order_by(tasks.c.id)).scalars().first()


# (the user it changes, the edit): one rule input each
EDITS: list[tuple[int, Callable[[Connection], object]]] = [
    (5, lambda c: c.execute(update(users).where(users.c.id == 5).values(role="viewer"))),
    (6, lambda c: c.execute(update(users).where(users.c.id == 6).values(last_login=naive(NOW - timedelta(hours=3))))),
    (7, lambda c: c.execute(update(users).where(users.c.id == 7).values(created_at=naive(NOW - timedelta(days=3))))),
    (8, lambda c: c.execute(update(users).where(users.c.id == 8).values(auth_provider="saml"))),
    (9, lambda c: c.execute(insert(user_roles).values(user_id=9, role_id=2))),  # an admin by the roles table
    (10, lambda c: c.execute(insert(entries).values(user_id=10, start_time=naive(NOW), created_at=naive(NOW), source="timer"))),
    (11, lambda c: c.execute(delete(entries).where(entries.c.id == _first_entry(c, 11)))),
    (12, lambda c: c.execute(update(entries).where(entries.c.id == _first_entry(c, 12)).values(duration_seconds=12_345))),
    (14, lambda c: c.execute(update(entries).where(entries.c.id == _first_entry(c, 14)).values(source="no-such-source"))),
    (15, lambda c: c.execute(update(entries).where(entries.c.user_id == 15).values(project_id=3))),
    (16, lambda c: c.execute(insert(tasks).values(id=1000, project_id=1, assigned_to=16, status="todo"))),
    (18, lambda c: c.execute(update(tasks).where(tasks.c.id == _first_task(c, 18)).values(assigned_to=None))),
]


@pytest.fixture(params=["state in the app's database", "state elsewhere"])
def state(request: pytest.FixtureRequest, engine: Engine, tmp_path) -> RefreshState:
    if request.param == "state elsewhere":
        return RefreshState(create_engine(f"sqlite:///{tmp_path / 'state.sqlite'}"))
    return RefreshState(engine)


def _in_place(engine: Engine, state: RefreshState) -> None:
    """Every user computed and delivered, their rows digests stored."""
    fill_timetracker(engine, users=40)
    refresh(engine, state, TIMETRACKER, now=NOW)  # an empty state: everyone computed, no rows digest asked
    refresh(engine, state, TIMETRACKER, now=T, full=True)  # the state in place: the digests are stored
    state.mark_delivered("posthog", [(s.distinct_id, s.digest()) for s in state.segments()])


def _stored_is_computed(engine: Engine, state: RefreshState) -> None:
    expected = {s.distinct_id: s.digest() for s in compute_segments(engine, TIMETRACKER, now=T)}
    assert {s.distinct_id: s.digest() for s in state.segments()} == expected


def test_an_unchanged_database_computes_no_one(engine: Engine, state: RefreshState) -> None:
    _in_place(engine, state)
    quiet = refresh(engine, state, TIMETRACKER, now=T, full=True)
    assert (quiet.full, quiet.computed, quiet.changed) == (True, 0, 0)
    assert state.count() == 40 and state.pending("posthog") == []
    if state.engine is engine:  # the join returns no row at all, not rows filtered in Python
        queries = SegmentQueries(bind(TIMETRACKER, engine), T, engine.dialect.name)
        query = digest_query(queries, after=None, limit=None, lo=1, hi=40, state=state.users, now=T)
        with engine.connect() as conn:
            assert conn.execute(query).all() == []


def test_each_single_edit_finds_exactly_its_user(engine: Engine, state: RefreshState) -> None:
    _in_place(engine, state)
    for uid, edit in EDITS:
        with engine.begin() as conn:
            edit(conn)
        result = refresh(engine, state, TIMETRACKER, now=T, full=True)
        assert result.computed == 1, uid
        assert [s.distinct_id for s in state.pending("posthog")] == [str(uid)], uid  # its segment changed: resent
        state.mark_delivered("posthog", [(s.distinct_id, s.digest()) for s in state.segments([str(uid)])])
    _stored_is_computed(engine, state)


def test_a_user_deleted_and_another_added_in_one_cycle(engine: Engine, state: RefreshState) -> None:
    _in_place(engine, state)
    with engine.begin() as conn:
        conn.execute(delete(user_roles).where(user_roles.c.user_id == 3))
        conn.execute(update(tasks).where(tasks.c.assigned_to == 3).values(assigned_to=None))
        conn.execute(delete(entries).where(entries.c.user_id == 3))
        conn.execute(delete(users).where(users.c.id == 3))
        conn.execute(insert(users).values(id=41, username="u41", role="user", created_at=naive(NOW - timedelta(days=2))))
    result = refresh(engine, state, TIMETRACKER, now=T, full=True)
    assert result.computed == 1  # the new user; the deleted one is found by its id, not computed
    assert "3" not in state.user_ids() and "41" in state.user_ids() and state.count() == 40
    _stored_is_computed(engine, state)


def test_an_incremental_change_clears_the_rows_digest(engine: Engine, state: RefreshState) -> None:
    """A segment stored without asking the database for its rows digest is recomputed by the next full refresh,
    even when the rows went back to what the old digest describes."""
    _in_place(engine, state)
    with engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == 5).values(role="viewer"))
    found = refresh(engine, state, TIMETRACKER, now=T, full=False)
    assert not found.full and found.changed == 1
    with state.engine.connect() as conn:
        assert conn.execute(select(state.users.c.rows_digest).where(state.users.c.user_id == "5")).scalar() is None
    with engine.begin() as conn:  # back to the rows the stored digest was computed from
        conn.execute(update(users).where(users.c.id == 5).values(role="user"))
    result = refresh(engine, state, TIMETRACKER, now=T, full=True)
    assert result.computed == 1 and result.changed == 1
    _stored_is_computed(engine, state)
