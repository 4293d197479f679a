"""Proof that exact mode misses nothing, with no exception named: the histories of
``test_incremental_equals_full.py`` (writers behind and ahead of the job's clock, zones with a spring-forward or a
fall-back, users replaced with ids reused, bulk imports and updates, ...) plus raw SQL edits that move no timestamp,
with the change-capture triggers on, on SQLite and PostgreSQL. After every step the state an incremental refresh
leaves equals a full recompute at the same ``now``, for every user: the silent fix the windows accept is not
accepted here.
"""

from __future__ import annotations

import os
from datetime import timedelta, timezone

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Engine

from otel_segments.segments.captured import ChangeCapture
from otel_segments.segments.refresh import RefreshResult, refresh
from otel_segments.segments.triggers import CHANGE_TABLE, create_ddl

from .test_incremental_equals_full import DRIFT, IDS, MAX_AGE, OFFSET, PROFILE, WRITER, ZONES, History, naive

# The suite's run: 8 histories of 25 steps (about 30 s a database on a loaded machine); a longer run by the variable.
EXACT_PROFILE = settings(PROFILE, max_examples=int(os.environ.get("OTEL_SEGMENTS_PROPERTY_EXAMPLES", "8")))


class ExactHistory(History):
    def __init__(self) -> None:
        with self.engine.begin() as conn:  # the previous history's change rows: a fresh change table per history
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {CHANGE_TABLE}")
        super().__init__()

    @initialize(zone=st.sampled_from(ZONES), fall=st.booleans(), writer=WRITER, drift=DRIFT, ids=IDS)
    def start(self, zone: str, fall: bool, writer: timedelta, drift: float, ids: str) -> None:
        self.begin(zone, fall, writer, drift, ids)
        with self.engine.begin() as conn:
            for statement in create_ddl(conn, self.bound):
                conn.execute(statement)
        self.capture = ChangeCapture()
        self.refresh()

    def refresh(self) -> RefreshResult:
        return refresh(self.engine, self.state, self.bound, now=self.now, max_age=MAX_AGE, capture=self.capture)

    @precondition(lambda self: self.entries)
    @rule(data=st.data())
    def silent_fix(self, data) -> None:
        """A duration corrected in SQL, no updated_at moved: no longer an accepted difference."""
        eid = data.draw(st.sampled_from(self.entries))
        duration = data.draw(st.integers(0, 50000))
        self.write(update(self.db.time_entries).where(self.db.time_entries.c.id == eid).values(duration_seconds=duration))

    @precondition(lambda self: self.entries and self.users)
    @rule(data=st.data(), what=st.sampled_from(("move", "backdate", "source", "project")))
    def raw_entry_edit(self, data, what: str) -> None:
        """An entry moved, back-dated, re-sourced or re-filed by hand: no updated_at moves."""
        eid = data.draw(st.sampled_from(self.entries))
        values: dict = {
            "move": lambda: {"user_id": data.draw(st.sampled_from(self.users))},
            "backdate": lambda: {"created_at": naive(self.now + data.draw(OFFSET), self.zone)},
            "source": lambda: {"source": data.draw(st.sampled_from(("timer", "manual", "import")))},
            "project": lambda: {"project_id": data.draw(st.sampled_from((None, *self.projects)))},
        }[what]()
        self.write(update(self.db.time_entries).where(self.db.time_entries.c.id == eid).values(**values))

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def raw_task_reassign(self, data) -> None:
        tid = data.draw(st.sampled_from(self.tasks))
        assignee = data.draw(st.one_of(st.none(), st.sampled_from(self.users))) if self.users else None
        self.write(update(self.db.tasks).where(self.db.tasks.c.id == tid).values(assigned_to=assignee))

    @precondition(lambda self: self.users)
    @rule(data=st.data(), created=OFFSET)
    def raw_account_date(self, data, created: timedelta) -> None:
        uid = data.draw(st.sampled_from(self.users))
        self.write(
            update(self.db.users).where(self.db.users.c.id == uid).values(created_at=naive(self.now + created, timezone.utc))
        )

    @precondition(lambda self: self.users)
    @rule(data=st.data())
    def rename_held_role(self, data) -> None:
        """Role 2 granted to a user (and refreshed), then renamed from or to an admin name: the holder's admin status
        flips with no write to its users or user_roles rows."""
        self.grant_role_two(data)
        self.refresh()
        with self.engine.begin() as conn:
            name = conn.execute(select(self.db.roles.c.name).where(self.db.roles.c.id == 2)).scalar()
            conn.execute(
                update(self.db.roles)
                .where(self.db.roles.c.id == 2)
                .values(name="viewer" if name == "super_admin" else "super_admin")
            )

    @precondition(lambda self: self.entries)
    @rule(duration=st.integers(0, 9000))
    def raw_bulk_update(self, duration: int) -> None:
        """One UPDATE of every entry, no stamp moved: on PostgreSQL one change row per owner for the statement."""
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE time_entries SET duration_seconds = :d"), {"d": duration})

    @precondition(lambda self: self.users)
    @rule(data=st.data())
    def revoke_all_grants(self, data) -> None:
        uid = data.draw(st.sampled_from(self.users))
        self.write(delete(self.db.user_roles).where(self.db.user_roles.c.user_id == uid))

    @precondition(lambda self: self.users)
    @rule(data=st.data())
    def grant_role_two(self, data) -> None:
        """The role :meth:`rename_role` renames, granted."""
        uid = data.draw(st.sampled_from(self.users))
        with self.engine.begin() as conn:
            conn.execute(delete(self.db.user_roles).where(self.db.user_roles.c.user_id == uid, self.db.user_roles.c.role_id == 2))
            conn.execute(insert(self.db.user_roles), [{"user_id": uid, "role_id": 2}])


def test_exact_mode_equals_full_recompute_after_every_step(engine: Engine) -> None:
    ExactHistory.engine = engine
    ExactHistory.TestCase.settings = EXACT_PROFILE
    ExactHistory.TestCase().runTest()
