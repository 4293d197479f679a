"""Proof that the incremental refresh misses nothing: random histories of a TimeTracker database, and after every step
the state an incremental refresh leaves equals a full recompute at the same ``now``, on SQLite and PostgreSQL.

The app writes ``users`` and ``projects`` in UTC and ``time_entries`` and ``tasks`` in its local zone (a zone drawn
per history, west and east of UTC, with and without daylight saving; a spring-forward or a fall-back inside the run),
from writers whose clocks are up to 4 minutes apart, as TimeTracker does, and whose clock is behind or ahead of the
job's by up to days (issue 21). Users are created with any ``created_at`` (past, future, now) and some are imported with
ids below the newest; a user is deleted and another created in one step, with the old id or an import's; entries
are inserted (any time, back-dated or ahead), edited, moved and deleted; thousands of entries are imported or updated
in one statement with one stamp; tasks are assigned, reassigned, completed, reopened and deleted; roles and admin
grants change; users log in; projects are archived, or deleted (their entries and tasks set to no project, as
``ON DELETE SET NULL`` does); the clock jumps across window and day edges.

A writer's clock may also drift against ours (running slow or fast, up to half the speed of real time). And half the
histories read the entries through a view that fails on a row an edit "poisons" (as a view over malformed JSON, or a
failing cast, does): its user is set aside while the row is poisoned, everyone else is refreshed, and once an edit
cures the row (or moves or deletes it) the user is correct again at the next cycle.

The one difference the design accepts is named: ``silent_fix``, a hand edit in SQL that moves no ``updated_at`` and
changes no count or key (a duration corrected in place). Such a user may stay stale until the maximum age, never longer.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import MetaData, String, Uuid, delete, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.demo import metadata
from otel_segments.segments.refresh import RefreshResult, refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState

START = datetime(2025, 3, 29, 23, 30, tzinfo=timezone.utc)  # a day before Europe's clocks change
FALL = datetime(2025, 11, 1, 23, 30, tzinfo=timezone.utc)  # a day before New York's fall back (06:00 UTC, Nov 2)
MAX_AGE = timedelta(hours=24)
ZONES = ("UTC", "America/Los_Angeles", "Europe/Berlin", "Asia/Kolkata", "Pacific/Kiritimati", "America/New_York")
# The app's writers' clock against ours, for a whole history: behind or ahead by minutes to days (the writers then
# differ among themselves by half SKEW at most: windows need writers within SLACK of each other, not of us).
WRITER = st.sampled_from([0, 0, -600, 600, -2 * 86400, 3 * 86400]).map(lambda s: timedelta(seconds=s))
# How fast the writer's clock runs against ours, minus one: stamps still move forward, slower or faster than real time.
DRIFT = st.sampled_from([0.0, 0.0, 0.001, -0.001, 0.05, -0.05, 0.5, -0.5])
IDS = st.sampled_from(("integer", "integer", "text", "uuid"))  # the type of the app's user ids
SKEW = st.integers(-240, 240).map(lambda s: timedelta(seconds=s))  # writers' clocks, seconds from ours
OFFSET = st.one_of(
    st.integers(-45 * 86400, 2 * 3600),  # any time from 45 days back to 2 hours ahead
    st.sampled_from([-86400, -7 * 86400, -30 * 86400]).flatmap(lambda e: st.integers(e - 5, e + 5)),  # on window edges
).map(lambda s: timedelta(seconds=s))
#: The entries as the app reads them through a view: a 'poison' row fails to read (SQLite: an integer overflow;
#: PostgreSQL: a division by zero), each row evaluated on its own, as a view over malformed JSON or a failing cast is.
POISON = "poison"
ENTRIES_VIEW = replace(TIMETRACKER, name="entries-view", activity=replace(TIMETRACKER.activity, table="entries_v"))
FAILS = {"sqlite": "abs(-9223372036854775807 - 1)", "postgresql": "1 / (id - id)"}
STATUSES = ("todo", "in_progress", "review", "done", "cancelled")
PROJECTS = (1, 2, 3)

PROFILE = settings(
    max_examples=int(os.environ.get("OTEL_SEGMENTS_PROPERTY_EXAMPLES", "30")),
    stateful_step_count=25,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),  # CI: the same histories every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def tables(ids: str, dialect: str) -> MetaData:
    """The demo tables with user ids (and every column naming one) of type ``ids``."""
    if ids == "integer":
        return metadata
    copy = MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(copy)
    for table, column in (("users", "id"), ("user_roles", "user_id"), ("tasks", "assigned_to"), ("time_entries", "user_id")):
        copy.tables[table].c[column].type = Uuid() if ids == "uuid" and dialect == "postgresql" else String(36)
    return copy


def naive(value: datetime, zone: ZoneInfo | timezone) -> datetime:
    return value.astimezone(zone).replace(tzinfo=None)


class History(RuleBasedStateMachine):
    engine: Engine
    view = False  # the entries read through the poisoning view

    def __init__(self) -> None:
        super().__init__()
        engine = self.engine
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP VIEW IF EXISTS entries_v")
        metadata.drop_all(engine)
        RefreshState(engine)  # make sure the state tables exist, then empty them: a fresh state per history
        with engine.begin() as conn:
            for name in ("otel_segments_delivery", "otel_segments_user_state", "otel_segments_meta"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        self.now = START
        self.writer = timedelta(0)
        self.users: list[Any] = []
        self.entries: list[int] = []
        self.tasks: list[int] = []
        self.next_user = 1000
        self.next_import = 999
        self.next_entry = 1
        self.next_task = 1
        self.stale_until: dict[str, datetime] = {}  # silent fixes: the user may be stale until then

    def begin(self, zone: str, fall: bool, writer: timedelta, drift: float, ids: str) -> None:
        """The app's tables with user ids of type ``ids``; the history's zone, start and writer clock; the state and
        both bindings (the job's and the oracle's)."""
        self.ids = ids
        app = tables(ids, self.engine.dialect.name)
        self.db = SimpleNamespace(**app.tables)  # the tables as the app declares them (a bind is cast to its type)
        with self.engine.begin() as conn:
            app.create_all(conn)
            conn.execute(insert(self.db.roles), [{"id": 1, "name": "admin"}, {"id": 2, "name": "viewer"}])
            conn.execute(
                insert(self.db.projects),
                [{"id": p, "name": f"p{p}", "status": "active", "updated_at": naive(START, timezone.utc)} for p in PROJECTS],
            )
            if self.view:
                fails = FAILS[self.engine.dialect.name]
                columns = "id, user_id, project_id, start_time, created_at, updated_at, source"
                conn.execute(
                    text(
                        f"CREATE VIEW entries_v AS SELECT {columns}, CASE WHEN source = '{POISON}' THEN {fails} "
                        "ELSE duration_seconds END AS duration_seconds FROM time_entries"
                    )
                )
        self.projects = list(PROJECTS)
        self.zone = ZoneInfo(zone)
        self.now = FALL if fall else START  # a spring-forward (Europe) or a fall-back (America) inside the run
        self.writer = writer
        self.drift = drift
        self.bound = bind(ENTRIES_VIEW if self.view else TIMETRACKER, self.engine, app_timezone=zone)
        self.tables = bind(TIMETRACKER, self.engine, app_timezone=zone)  # the oracle reads the tables themselves
        self.state = RefreshState(self.engine)

    @initialize(zone=st.sampled_from(ZONES), fall=st.booleans(), writer=WRITER, drift=DRIFT, ids=IDS, view=st.booleans())
    def start(
        self, zone: str, fall: bool, writer: timedelta, drift: float = 0.0, ids: str = "integer", view: bool = False
    ) -> None:
        self.view = view
        self.begin(zone, fall, writer, drift, ids)
        self.refresh()

    def user_id(self, n: int) -> Any:
        """The app's id for the n-th account: its integer, the integer as text (which sorts otherwise), or a uuid
        derived from it (no order at all; PostgreSQL's own type, text on SQLite as apps store it there)."""
        if self.ids == "integer":
            return n
        if self.ids == "text":
            return str(n)
        derived = uuid.UUID(bytes=hashlib.md5(str(n).encode()).digest())
        return derived if self.engine.dialect.name == "postgresql" else str(derived)

    # -- the app's writes ------------------------------------------------------------------------------------

    def clock(self, skew: timedelta) -> datetime:
        """The writing app's clock: ours, plus the history's offset, plus this write's skew."""
        return self.now + self.writer + (skew / 2 if self.writer else skew)

    def local(self, skew: timedelta = timedelta(0)) -> datetime:
        return naive(self.clock(skew), self.zone)

    def utc(self, skew: timedelta = timedelta(0)) -> datetime:
        return naive(self.clock(skew), timezone.utc)

    def write(self, statement, rows=None) -> None:
        with self.engine.begin() as conn:
            conn.execute(statement, rows) if rows is not None else conn.execute(statement)

    @rule(
        created=st.one_of(OFFSET, st.just(timedelta(0)), st.integers(1, 90 * 86400).map(lambda s: timedelta(seconds=s))),
        imported=st.booleans(),
        role=st.sampled_from(("user", "admin")),
        auth=st.sampled_from(("local", "oidc")),
    )
    def add_user(self, created: timedelta, imported: bool, role: str, auth: str) -> None:
        if imported:  # an import: an id below the newest, a creation date from any time
            n, self.next_import = self.next_import, self.next_import - 1
        else:
            n, self.next_user = self.next_user, self.next_user + 1
        uid = self.user_id(n)
        row = {
            "id": uid,
            "username": f"u{uid}",
            "role": role,
            "auth_provider": auth,
            "created_at": naive(self.now - created, timezone.utc),
        }
        self.write(insert(self.db.users), [row])
        self.users.append(uid)

    @precondition(lambda self: self.users)
    @rule(
        data=st.data(),
        offset=OFFSET,
        skew=SKEW,
        source=st.sampled_from(("timer", "auto", "manual", "import")),
        duration=st.one_of(st.none(), st.integers(-10, 20000)),
    )
    def add_entry(self, data, offset: timedelta, skew: timedelta, source: str, duration) -> None:
        uid = data.draw(st.sampled_from(self.users))
        project = data.draw(st.sampled_from((None, *self.projects)))
        created = self.local(offset + skew)
        row = {
            "id": self.next_entry,
            "user_id": uid,
            "project_id": project,
            "start_time": created,
            "created_at": created,
            "source": source,
            "duration_seconds": duration,
            "updated_at": self.local(skew),
        }
        self.write(insert(self.db.time_entries), [row])
        self.entries.append(self.next_entry)
        self.next_entry += 1

    @precondition(lambda self: self.entries)
    @rule(data=st.data(), skew=SKEW, change=st.sampled_from(("created_at", "duration", "source", "project", "user")))
    def edit_entry(self, data, skew: timedelta, change: str) -> None:
        eid = data.draw(st.sampled_from(self.entries))
        values: dict = {"updated_at": self.local(skew)}
        if change == "created_at":
            values["created_at"] = naive(self.now + data.draw(OFFSET), self.zone)
        elif change == "duration":
            values["duration_seconds"] = data.draw(st.integers(0, 9000))
        elif change == "source":
            values["source"] = data.draw(st.sampled_from(("timer", "manual")))
        elif change == "project":
            values["project_id"] = data.draw(st.sampled_from((None, *self.projects)))
        else:
            values["user_id"] = data.draw(st.sampled_from(self.users))
        self.write(update(self.db.time_entries).where(self.db.time_entries.c.id == eid).values(**values))

    @precondition(lambda self: self.entries)
    @rule(data=st.data())
    def delete_entry(self, data) -> None:
        eid = data.draw(st.sampled_from(self.entries))
        self.write(delete(self.db.time_entries).where(self.db.time_entries.c.id == eid))
        self.entries.remove(eid)

    @precondition(lambda self: self.users)
    @rule(data=st.data(), status=st.sampled_from(STATUSES), skew=SKEW)
    def add_task(self, data, status: str, skew: timedelta) -> None:
        assignee = data.draw(st.one_of(st.none(), st.sampled_from(self.users)))
        row = {
            "id": self.next_task,
            "project_id": self.projects[0] if self.projects else None,
            "assigned_to": assignee,
            "status": status,
            "updated_at": self.local(skew),
        }
        self.write(insert(self.db.tasks), [row])
        self.tasks.append(self.next_task)
        self.next_task += 1

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), skew=SKEW, reassign=st.booleans())
    def change_task(self, data, skew: timedelta, reassign: bool) -> None:
        tid = data.draw(st.sampled_from(self.tasks))
        values: dict = {"updated_at": self.local(skew)}
        if reassign:
            values["assigned_to"] = data.draw(st.one_of(st.none(), st.sampled_from(self.users)))
        else:  # completed, reopened, cancelled
            values["status"] = data.draw(st.sampled_from(STATUSES))
        self.write(update(self.db.tasks).where(self.db.tasks.c.id == tid).values(**values))

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def delete_task(self, data) -> None:
        tid = data.draw(st.sampled_from(self.tasks))
        self.write(delete(self.db.tasks).where(self.db.tasks.c.id == tid))
        self.tasks.remove(tid)

    @precondition(lambda self: self.users)
    @rule(data=st.data(), role=st.sampled_from(("user", "admin", "viewer")), auth=st.sampled_from(("local", "oidc", "ldap")))
    def change_role(self, data, role: str, auth: str) -> None:
        uid = data.draw(st.sampled_from(self.users))
        self.write(
            update(self.db.users).where(self.db.users.c.id == uid).values(role=role, auth_provider=auth)
        )  # users has no updated_at

    @precondition(lambda self: self.users)
    @rule(data=st.data(), grant=st.booleans(), role_id=st.sampled_from((1, 2)))
    def grant_role(self, data, grant: bool, role_id: int) -> None:
        uid = data.draw(st.sampled_from(self.users))
        with self.engine.begin() as conn:
            conn.execute(
                delete(self.db.user_roles).where(self.db.user_roles.c.user_id == uid, self.db.user_roles.c.role_id == role_id)
            )
            if grant:
                conn.execute(insert(self.db.user_roles), [{"user_id": uid, "role_id": role_id}])

    @precondition(lambda self: self.users)
    @rule(data=st.data(), skew=SKEW)
    def login(self, data, skew: timedelta) -> None:
        uid = data.draw(st.sampled_from(self.users))
        self.write(update(self.db.users).where(self.db.users.c.id == uid).values(last_login=self.utc(skew)))

    @precondition(lambda self: self.projects)
    @rule(data=st.data(), status=st.sampled_from(("active", "archived", "inactive")), skew=SKEW)
    def set_project_status(self, data, status: str, skew: timedelta) -> None:
        project = data.draw(st.sampled_from(self.projects))
        self.write(
            update(self.db.projects).where(self.db.projects.c.id == project).values(status=status, updated_at=self.utc(skew))
        )

    @precondition(lambda self: self.projects)
    @rule(data=st.data())
    def delete_project(self, data) -> None:
        """A project deleted under foreign keys with ON DELETE SET NULL: its entries and tasks lose it, no stamp moved."""
        project = data.draw(st.sampled_from(self.projects))
        with self.engine.begin() as conn:
            for table in (self.db.time_entries, self.db.tasks):
                conn.execute(update(table).where(table.c.project_id == project).values(project_id=None))
            conn.execute(delete(self.db.projects).where(self.db.projects.c.id == project))
        self.projects.remove(project)

    @precondition(lambda self: self.users)
    @rule(data=st.data(), reuse=st.booleans(), role=st.sampled_from(("user", "admin", "viewer")))
    def replace_user(self, data, reuse: bool, role: str) -> None:
        """A user deleted and another created in the same step; the new account takes the old id, or an import's."""
        old = data.draw(st.sampled_from(self.users))
        if reuse:
            uid = old
        else:
            uid, self.next_import = self.user_id(self.next_import), self.next_import - 1
        with self.engine.begin() as conn:
            gone = [row.id for row in conn.execute(self.db.time_entries.select().where(self.db.time_entries.c.user_id == old))]
            conn.execute(delete(self.db.time_entries).where(self.db.time_entries.c.user_id == old))
            conn.execute(
                update(self.db.tasks).where(self.db.tasks.c.assigned_to == old).values(assigned_to=None, updated_at=self.local())
            )
            conn.execute(delete(self.db.user_roles).where(self.db.user_roles.c.user_id == old))
            conn.execute(delete(self.db.users).where(self.db.users.c.id == old))
            created = naive(self.now - data.draw(OFFSET), timezone.utc)
            conn.execute(insert(self.db.users), [{"id": uid, "username": f"n{uid}", "role": role, "created_at": created}])
        self.entries = [e for e in self.entries if e not in gone]
        self.users.remove(old)
        self.users.append(uid)

    @precondition(lambda self: self.users)
    @rule(data=st.data(), count=st.sampled_from((300, 2_000)), skew=SKEW)
    def bulk_insert(self, data, count: int, skew: timedelta) -> None:
        """An import: thousands of entries with one stamp."""
        owners = data.draw(st.lists(st.sampled_from(self.users), min_size=1, max_size=5))
        stamp = self.local(skew)
        rows = [
            {
                "id": self.next_entry + i,
                "user_id": owners[i % len(owners)],
                "start_time": stamp,
                "created_at": stamp,
                "source": "import",
                "duration_seconds": 60,
                "updated_at": stamp,
            }
            for i in range(count)
        ]
        self.write(insert(self.db.time_entries), rows)
        self.entries += [row["id"] for row in rows]
        self.next_entry += count

    @precondition(lambda self: self.entries)
    @rule(skew=SKEW, duration=st.integers(0, 9000))
    def bulk_update(self, skew: timedelta, duration: int) -> None:
        """One UPDATE of every entry, one stamp for all."""
        self.write(update(self.db.time_entries).values(duration_seconds=duration, updated_at=self.local(skew)))

    @rule(
        step=st.one_of(
            st.sampled_from([timedelta(seconds=1), timedelta(minutes=1), timedelta(minutes=7), timedelta(hours=1)]),
            st.sampled_from([timedelta(hours=24), timedelta(days=7), timedelta(days=30), timedelta(days=1, seconds=1)]),
            st.integers(1, 3 * 86400).map(lambda s: timedelta(seconds=s)),
        )
    )
    def advance_clock(self, step: timedelta) -> None:
        self.now += step
        self.writer += step * self.drift

    @precondition(lambda self: self.view and self.entries)
    @rule(data=st.data(), skew=SKEW)
    def poison_entry(self, data, skew: timedelta) -> None:
        """An edit leaves a row the app's view cannot read: its user is set aside while it stays so."""
        eid = data.draw(st.sampled_from(self.entries))
        self.write(
            update(self.db.time_entries)
            .where(self.db.time_entries.c.id == eid)
            .values(source=POISON, updated_at=self.local(skew))
        )

    @precondition(lambda self: self.view and self.entries)
    @rule(skew=SKEW)
    def cure_entries(self, skew: timedelta) -> None:
        """The app repairs every poisoned row (an ordinary edit): their users are correct again at the next cycle."""
        cured = (
            update(self.db.time_entries)
            .where(self.db.time_entries.c.source == POISON)
            .values(source="manual", updated_at=self.local(skew))
        )
        self.write(cured)

    @precondition(lambda self: self.entries)
    @rule(data=st.data())
    def silent_fix(self, data) -> None:
        """The accepted difference: a duration corrected in SQL, no updated_at moved, no count or key changed."""
        eid = data.draw(st.sampled_from(self.entries))
        with self.engine.begin() as conn:
            owner = conn.execute(self.db.time_entries.select().where(self.db.time_entries.c.id == eid)).one().user_id
            conn.execute(
                update(self.db.time_entries)
                .where(self.db.time_entries.c.id == eid)
                .values(duration_seconds=data.draw(st.integers(0, 50000)))
            )
        self.stale_until.setdefault(str(owner), self.now + MAX_AGE)

    # -- after every step ------------------------------------------------------------------------------------

    def refresh(self) -> RefreshResult:
        return refresh(self.engine, self.state, self.bound, now=self.now, max_age=MAX_AGE)

    @invariant()
    def incremental_equals_full(self) -> None:
        if not hasattr(self, "state"):
            return
        with self.engine.connect() as conn:
            poisoned = {
                str(u)
                for u in conn.scalars(select(self.db.time_entries.c.user_id).where(self.db.time_entries.c.source == POISON))
            }
            everyone = {str(u) for u in conn.scalars(select(self.db.users.c.id))}
        try:
            result = self.refresh()
        except SQLAlchemyError:
            # the one named exception: when every user of several has a poisoned row, nothing tells bad rows from a
            # broken view or database, and the refresh raises it (one "segment refresh failed"), as documented
            assert len(everyone) > 1 and everyone <= poisoned, (everyone, poisoned)
            return
        # a poisoned user is set aside, never anyone else; the others are as the full recompute says
        assert {p.user_id for p in result.problems if p.skipped} <= poisoned, result.problems
        got = {s.distinct_id: s.digest() for s in self.state.segments() if s.distinct_id not in poisoned}
        want = {
            s.distinct_id: s.digest()
            for s in compute_segments(self.engine, self.tables, now=self.now)
            if s.distinct_id not in poisoned
        }
        assert set(got) == set(want)
        differ = {uid for uid in want if got[uid] != want[uid]}
        accepted = {uid for uid in differ if uid in self.stale_until and self.now < self.stale_until[uid]}
        assert differ == accepted, f"stale after an incremental refresh at {self.now}: {sorted(differ - accepted)}"
        for uid in [u for u in self.stale_until if u not in differ or self.now >= self.stale_until[u]]:
            del self.stale_until[uid]  # recomputed (or due): no longer accepted


def test_incremental_refresh_equals_full_recompute(engine: Engine) -> None:
    History.engine = engine
    History.TestCase.settings = PROFILE
    History.TestCase().runTest()
