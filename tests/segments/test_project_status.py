"""A project's status change is found at the next incremental refresh whatever its stamp says (issue 21), on SQLite
and PostgreSQL: archived by a writer whose clock is days behind the rows' stamps, changed without moving
``updated_at``, removed; and a quiet cycle finds nobody."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, insert, text, update
from sqlalchemy.engine import Engine

from otel_segments.segments import changes
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.demo import metadata, projects, time_entries, users
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState

from .test_incremental_equals_full import History

NOW = datetime(2025, 3, 29, 23, 30, tzinfo=timezone.utc)
BEHIND = timedelta(days=2)  # the app's writer's clock against ours (and the projects' stamps)


def _naive(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _write(engine: Engine, *statements) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def app(engine: Engine) -> Engine:
    """Projects seeded on our clock, users 1000 and 999 (an import) with entries in projects 1 and 2."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        stamp = _naive(NOW)
        conn.execute(insert(projects), [{"id": p, "name": f"p{p}", "status": "active", "updated_at": stamp} for p in (1, 2, 3)])
        written = _naive(NOW - BEHIND)
        conn.execute(insert(users), [{"id": uid, "username": f"u{uid}", "created_at": written} for uid in (1000, 999)])
        rows = [(1, 1000, 1, 1), (2, 999, 2, 30), (3, 999, 2, 7), (4, 1000, None, 3)]
        conn.execute(
            insert(time_entries),
            [
                {
                    "id": eid,
                    "user_id": uid,
                    "project_id": pid,
                    "start_time": _naive(NOW - BEHIND - timedelta(days=days)),
                    "created_at": _naive(NOW - BEHIND - timedelta(days=days)),
                    "source": "timer",
                    "duration_seconds": 60,
                    "updated_at": written,
                }
                for eid, uid, pid, days in rows
            ],
        )
    return engine


WRITES: dict[str, Callable[[datetime], list[object]]] = {
    "archived by a writer behind the stamps": lambda now: [
        update(projects).where(projects.c.id == 2).values(status="inactive", updated_at=_naive(now - BEHIND))
    ],
    "archived without moving updated_at": lambda now: [update(projects).where(projects.c.id == 2).values(status="archived")],
    "removed, its entries kept (no foreign key)": lambda now: [delete(projects).where(projects.c.id == 2)],
    "removed, ON DELETE SET NULL on its entries": lambda now: [  # what the foreign key's action writes: no stamp moved
        update(time_entries).where(time_entries.c.project_id == 2).values(project_id=None),
        delete(projects).where(projects.c.id == 2),
    ],
}


@pytest.mark.parametrize("kind", sorted(WRITES))
def test_a_project_change_makes_its_users_candidates_whatever_its_stamp(app: Engine, kind: str) -> None:
    if kind.startswith("removed, its entries kept") and app.dialect.name == "postgresql":  # SQLite does not enforce it by default
        _write(app, text("ALTER TABLE time_entries DROP CONSTRAINT time_entries_project_id_fkey"))
    bound = bind(TIMETRACKER, app)
    state = RefreshState(app)
    refresh(app, state, bound, now=NOW)
    later = NOW + timedelta(minutes=1)
    before = {s.distinct_id: s.digest() for s in state.segments()}
    _write(app, *WRITES[kind](later))
    result = refresh(app, state, bound, now=later)
    got = {s.distinct_id: s.digest() for s in state.segments()}
    want = {s.distinct_id: s.digest() for s in compute_segments(app, bound, now=later)}
    assert got == want
    assert want["999"] != before["999"]  # the write did change that user's segment
    assert not result.full


def test_a_quiet_cycle_finds_no_project_change(app: Engine) -> None:
    bound = bind(TIMETRACKER, app)
    state = RefreshState(app)
    refresh(app, state, bound, now=NOW)
    refresh(app, state, bound, now=NOW + timedelta(minutes=1))
    found = changes.find(app, bound, state, now=NOW + timedelta(minutes=2), limit=1000)
    assert found.complete and found.user_ids == set()


def test_the_history_the_property_found(engine: Engine) -> None:
    """The failing history of ``test_incremental_equals_full`` (issue 21), step by step: the writer 2 days behind
    ours, an imported user 999 with entries back-dated 30 and 7 days in project 2, a bulk update, project 2
    made inactive (stamped 2 days below the projects' seed)."""

    class Data:
        def __init__(self, *values: object) -> None:
            self.values = list(values)

        def draw(self, strategy: object) -> object:
            return self.values.pop(0)

    History.engine = engine
    history = History()
    history.start(zone="UTC", fall=False, writer=-BEHIND)
    entry = {"skew": timedelta(0), "source": "timer", "duration": 60}
    steps = [
        lambda: history.add_user(created=timedelta(0), imported=True, role="user", auth="local"),
        lambda: history.add_entry(Data(999, 2), offset=-timedelta(days=30), **entry),  # user 999, project 2
        lambda: history.add_entry(Data(999, 2), offset=-timedelta(days=7), **entry),
        lambda: history.bulk_update(skew=timedelta(0), duration=120),
        lambda: history.set_project_status(Data(2), status="inactive", skew=timedelta(0)),
    ]
    for step in steps:
        step()
        history.incremental_equals_full()
