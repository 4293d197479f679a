"""Generated data sets with every edge the rules have: window boundaries, nulls, unknown sources, admins both ways."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, insert
from sqlalchemy.engine import Engine

from otel_segments.segments.demo import metadata as timetracker_metadata
from otel_segments.segments.schema import ActivityTable, ProjectsTable, SchemaMapping, TasksTable, UsersTable

NOW = datetime(2025, 6, 15, 12, 0, 0, tzinfo=timezone.utc)

# Offsets (before NOW) that sit on and around every window edge.
_EDGES = [timedelta(hours=24), timedelta(days=7), timedelta(days=30)]
_EDGE_OFFSETS = [e + d for e in _EDGES for d in (-timedelta(microseconds=1), timedelta(0), timedelta(seconds=1))]


def naive(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def fill_timetracker(engine: Engine, users: int = 60, seed: int = 1, now: datetime = NOW) -> None:
    """TimeTracker tables (the demo's), with admins by role and by roles table, and edge-case entries."""
    rng = random.Random(seed)
    md = timetracker_metadata
    md.create_all(engine)
    t = md.tables
    user_rows, roles_rows, entries, tasks = [], [], [], []
    ages = [0.5, 6.9, 7.0, 7.1, 29.99, 30.0, 179.9, 180.0, 400.0]
    for uid in range(1, users + 1):
        age = ages[uid % len(ages)] if uid <= 2 * len(ages) else rng.uniform(0, 500)
        created = now - timedelta(days=age)
        login = None if uid % 5 == 0 else now - timedelta(days=rng.uniform(0, min(age, 60)))
        user_rows.append(
            {
                "id": uid,
                "username": f"u{uid}",
                "email": f"u{uid}@example.invalid",
                "full_name": "Secret Name",
                "role": "admin" if uid % 17 == 0 else ("viewer" if uid % 13 == 0 else "user"),
                "created_at": naive(created),
                "last_login": naive(login) if login else None,
                "auth_provider": ("local", "oidc", "ldap")[uid % 3],
            }
        )
        if uid % 11 == 0:
            roles_rows.append({"user_id": uid, "role_id": 2})  # super_admin
        if uid % 7 == 0:
            roles_rows.append({"user_id": uid, "role_id": 3})  # viewer: not an admin
        if uid % 9 == 4:
            continue  # no entries at all
        per_user = rng.choice((0, 1, 2, 3, 9, 10, 11, 19, 20, 25, 60))
        offsets = [timedelta(days=rng.uniform(0, 90)) for _ in range(per_user)]
        if uid % 4 == 0:
            offsets += rng.sample(_EDGE_OFFSETS, 3)
        if uid % 3 == 0:  # a recent burst: 7-day counts on and around 10 and 20
            offsets += [timedelta(days=rng.uniform(0, 6.9)) for _ in range(rng.choice((9, 10, 19, 20)))]
        for off in offsets:
            entries.append(
                {
                    "user_id": uid,
                    "project_id": rng.choice((None, 1, 2, 3, 4, 5)),
                    "start_time": naive(now - off - timedelta(hours=1)),
                    "created_at": naive(now - off),
                    "source": rng.choice(("timer", "auto", "manual", "manual", "import")),
                    "duration_seconds": rng.choice((None, rng.randint(60, 20_000))),
                }
            )
    for tid in range(1, users * 2):
        tasks.append(
            {
                "id": tid,
                "project_id": 1,
                "assigned_to": rng.choice((None, *range(1, users + 1))),
                "status": rng.choice(("todo", "in_progress", "review", "done", "cancelled")),
            }
        )
    with engine.begin() as conn:
        conn.execute(
            insert(t["roles"]), [{"id": 1, "name": "admin"}, {"id": 2, "name": "super_admin"}, {"id": 3, "name": "viewer"}]
        )
        conn.execute(insert(t["users"]), user_rows)
        conn.execute(
            insert(t["projects"]),
            [
                {"id": i, "name": f"p{i}", "status": s}
                for i, s in enumerate(("active", "archived", "active", "inactive", "active"), 1)
            ],
        )
        for name, rows in (("user_roles", roles_rows), ("tasks", tasks), ("time_entries", entries)):
            if rows:
                conn.execute(insert(t[name]), rows)


# Another app: other table and column names, string ids, timezone-aware columns, no roles table.
OTHER = SchemaMapping(
    name="crm",
    users=UsersTable(
        table="members",
        id="member_key",
        created_at="joined",
        last_login="seen",
        role="kind",
        admin_role_values=("owner", "staff"),
        auth_method="sso",
        roles=None,
    ),
    activity=ActivityTable(
        table="work_log",
        user_id="member",
        timestamp="logged",
        source="how",
        timer_values=("stopwatch",),
        manual_values=("typed", "csv"),
        duration_seconds="secs",
        project_id="job",
    ),
    projects=ProjectsTable(table="jobs", id="job_pk", status="state", active_values=("open", "running")),
    tasks=TasksTable(table="todo", assignee="owner", status="state", done_values=("finished",), closed_values=("dropped",)),
)

other_metadata = MetaData()
Table(
    "members",
    other_metadata,
    Column("member_key", String(40), primary_key=True),
    Column("kind", String(20)),
    Column("joined", DateTime(timezone=True)),
    Column("seen", DateTime(timezone=True)),
    Column("sso", String(20)),
)
Table(
    "work_log",
    other_metadata,
    Column("pk", Integer, primary_key=True),
    Column("member", String(40), index=True),
    Column("logged", DateTime(timezone=True)),
    Column("how", String(20)),
    Column("secs", Integer),
    Column("job", Integer),
)
Table("jobs", other_metadata, Column("job_pk", Integer, primary_key=True), Column("state", String(20)))
Table("todo", other_metadata, Column("pk", Integer, primary_key=True), Column("owner", String(40)), Column("state", String(20)))


def other_key(i: int) -> str:
    # Mixed case and digits: string ordering differs between collations and Python, which keyset batching must survive.
    return ("Ab", "ab", "B9", "b1", "_z", "Z")[i % 6] + f"-{i:04x}"


def fill_other(engine: Engine, users: int = 40, seed: int = 2, now: datetime = NOW, *, with_optional: bool = True) -> None:
    rng = random.Random(seed)
    tables = [other_metadata.tables["members"], other_metadata.tables["work_log"]]
    if with_optional:
        tables += [other_metadata.tables["jobs"], other_metadata.tables["todo"]]
    other_metadata.create_all(engine, tables=tables)
    t = other_metadata.tables
    members, logs, todos = [], [], []
    for i in range(users):
        key = other_key(i)
        members.append(
            {
                "member_key": key,
                "kind": rng.choice(("owner", "staff", "member", "member", None)),
                "joined": None if i % 10 == 3 else now - timedelta(days=rng.uniform(0, 300)),
                "seen": None if i % 4 == 1 else now - timedelta(hours=rng.uniform(0, 900)),
                "sso": rng.choice(("google", "saml", None)),
            }
        )
        for _ in range(rng.choice((0, 1, 4, 12, 30))):
            logs.append(
                {
                    "member": key,
                    "logged": now - (rng.choice(_EDGE_OFFSETS) if rng.random() < 0.2 else timedelta(days=rng.uniform(0, 60))),
                    "how": rng.choice(("stopwatch", "typed", "csv", None)),
                    "secs": rng.choice((None, rng.randint(1, 9000))),
                    "job": rng.choice((None, 1, 2, 3)),
                }
            )
        for _ in range(rng.randint(0, 4)):
            todos.append({"owner": key, "state": rng.choice(("new", "finished", "dropped", None))})
    with engine.begin() as conn:
        conn.execute(insert(t["members"]), members)
        if logs:
            conn.execute(insert(t["work_log"]), logs)
        if with_optional:
            conn.execute(
                insert(t["jobs"]),
                [{"job_pk": 1, "state": "open"}, {"job_pk": 2, "state": "closed"}, {"job_pk": 3, "state": "running"}],
            )
            if todos:
                conn.execute(insert(t["todo"]), todos)
