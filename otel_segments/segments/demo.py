"""A synthetic TimeTracker-like data set: users (admins through the roles table), projects, tasks, entries over 90 days.

Deterministic for a seed. User profiles are mixed so that every cohort has
members: power users, regulars, declining and dormant ones, brand-new accounts,
timer lovers and manual typists. Names and emails are obviously fake; they are
there to show that they never leave the process.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from sqlalchemy import Column, DateTime, ForeignKey, Integer, MetaData, String, Table, insert
from sqlalchemy.engine import Engine

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(80), nullable=False),
    Column("email", String(200)),
    Column("full_name", String(200)),
    Column("role", String(20), nullable=False, default="user"),
    Column("created_at", DateTime, nullable=False),
    Column("last_login", DateTime),
    Column("auth_provider", String(20), nullable=False, default="local"),
)
roles = Table("roles", metadata, Column("id", Integer, primary_key=True), Column("name", String(50), nullable=False))
user_roles = Table(
    "user_roles",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("role_id", Integer, ForeignKey("roles.id"), primary_key=True),
)
projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("updated_at", DateTime),
)
tasks = Table(
    "tasks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id")),
    Column("assigned_to", Integer, ForeignKey("users.id"), index=True),
    Column("status", String(20), nullable=False),
    Column("updated_at", DateTime, index=True),
)
time_entries = Table(
    "time_entries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("project_id", Integer, ForeignKey("projects.id")),
    Column("task_id", Integer, ForeignKey("tasks.id")),
    Column("start_time", DateTime, nullable=False),
    Column("end_time", DateTime),
    Column("created_at", DateTime, nullable=False, index=True),
    Column("source", String(20), nullable=False, default="manual"),
    Column("duration_seconds", Integer),
    Column("updated_at", DateTime, index=True),
)

DAYS = 90
_PROFILES = (
    # (weight, entries per day, share of days in the last week active, timer share)
    ("power", 0.10, 4.0, 1.0, 0.9),
    ("regular", 0.35, 1.2, 1.0, 0.5),
    ("declining", 0.20, 1.5, 0.0, 0.3),
    ("occasional", 0.20, 0.3, 0.5, 0.1),
    ("dormant", 0.10, 0.0, 0.0, 0.0),
    ("new", 0.05, 2.0, 1.0, 0.6),
)
_TASK_STATUSES = ("todo", "in_progress", "review", "done", "done", "cancelled")
_PROJECT_STATUSES = ("active", "active", "active", "inactive", "archived")


def _naive(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def create_demo_database(engine: Engine, *, users_count: int = 500, seed: int = 7, now: datetime | None = None) -> dict[str, int]:
    """Create the tables and fill them; returns row counts. ``now`` defaults to the current time (UTC)."""
    rng = random.Random(seed)
    now = now or datetime.now(timezone.utc)
    metadata.create_all(engine)
    project_count = max(3, users_count // 10)
    user_rows, role_rows, project_rows, task_rows, entry_rows = [], [], [], [], []
    project_rows = [
        {"id": i, "name": f"Project {i}", "status": rng.choice(_PROJECT_STATUSES)} for i in range(1, project_count + 1)
    ]
    weights = [p[1] for p in _PROFILES]
    entry_id = 0
    for uid in range(1, users_count + 1):
        name, _, per_day, last_week_share, timer_share = rng.choices(_PROFILES, weights)[0]
        if name == "new":
            age_days = rng.uniform(0.5, 6.5)
        else:
            age_days = rng.choice((rng.uniform(7, 29), rng.uniform(30, 179), rng.uniform(180, 900)))
        created = now - timedelta(days=age_days)
        last_login = None if name == "dormant" and rng.random() < 0.5 else now - timedelta(days=rng.uniform(0, min(age_days, 40)))
        role = "admin" if rng.random() < 0.03 else "user"
        user_rows.append(
            {
                "id": uid,
                "username": f"demo{uid}",
                "email": f"demo{uid}@example.invalid",
                "full_name": f"Demo User {uid}",
                "role": role,
                "created_at": _naive(created),
                "last_login": _naive(last_login) if last_login else None,
                "auth_provider": rng.choice(("local", "local", "local", "oidc", "ldap")),
            }
        )
        if role == "user" and rng.random() < 0.04:
            role_rows.append({"user_id": uid, "role_id": rng.choice((1, 2))})
        home_projects = rng.sample(range(1, project_count + 1), k=min(project_count, rng.randint(1, 4)))
        for day in range(min(DAYS, int(age_days) + 1)):
            in_last_week = day < 7
            if in_last_week and rng.random() >= last_week_share:
                continue
            count = _poisson(rng, per_day)
            for _ in range(count):
                entry_id += 1
                created_entry = now - timedelta(days=day, seconds=rng.uniform(0, 86_399))
                if created_entry < created:
                    continue
                seconds = rng.randint(300, 4 * 3600)
                timer = rng.random() < timer_share
                entry_rows.append(
                    {
                        "id": entry_id,
                        "user_id": uid,
                        "project_id": rng.choice(home_projects) if rng.random() < 0.9 else None,
                        "task_id": None,
                        "start_time": _naive(created_entry - timedelta(seconds=seconds)),
                        "end_time": _naive(created_entry),
                        "created_at": _naive(created_entry),
                        "source": rng.choice(("timer", "auto")) if timer else "manual",
                        "duration_seconds": seconds if rng.random() > 0.02 else None,
                        "updated_at": _naive(created_entry),
                    }
                )
    for tid in range(1, users_count * 3 + 1):
        task_rows.append(
            {
                "id": tid,
                "project_id": rng.randint(1, project_count),
                "assigned_to": rng.randint(1, users_count) if rng.random() < 0.8 else None,
                "status": rng.choice(_TASK_STATUSES),
            }
        )
    with engine.begin() as conn:
        conn.execute(insert(roles), [{"id": 1, "name": "admin"}, {"id": 2, "name": "super_admin"}, {"id": 3, "name": "viewer"}])
        conn.execute(insert(users), user_rows)
        conn.execute(insert(projects), project_rows)
        if role_rows:
            conn.execute(insert(user_roles), role_rows)
        conn.execute(insert(tasks), task_rows)
        if entry_rows:
            conn.execute(insert(time_entries), entry_rows)
    return {"users": len(user_rows), "projects": len(project_rows), "tasks": len(task_rows), "time_entries": len(entry_rows)}


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; the means here are small."""
    if mean <= 0:
        return 0
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
