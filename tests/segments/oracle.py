"""An independent, straightforward per-user computation: raw rows read one user at a time, arithmetic in Python.

It shares no code with the batched queries or the rules module (thresholds are written out
again here on purpose), so agreement between the two means something.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from otel_segments.segments.schema import SchemaMapping


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def expected(
    engine: Engine, m: SchemaMapping, now: datetime, *, has_projects: bool = True, has_tasks: bool = True
) -> dict[str, dict]:
    u, a = m.users, m.activity
    out: dict[str, dict] = {}
    with engine.connect() as conn:
        users = conn.execute(text(f"SELECT * FROM {u.table}")).mappings().all()
        admin_ids: set[str] = set()
        if u.roles is not None:
            r = u.roles
            for row in conn.execute(
                text(
                    f"SELECT ur.{r.user_id} AS uid, ro.{r.roles_name} AS name FROM {r.table} ur"
                    f" JOIN {r.roles_table} ro ON ro.{r.roles_id} = ur.{r.role_id}"
                )
            ):
                if row.name in r.admin_names:
                    admin_ids.add(str(row.uid))
        projects = {}
        if has_projects and m.projects is not None:
            projects = {
                row[0]: row[1]
                for row in conn.execute(text(f"SELECT {m.projects.id}, {m.projects.status} FROM {m.projects.table}"))
            }
        for user in users:
            uid = user[u.id]
            entries = conn.execute(text(f"SELECT * FROM {a.table} WHERE {a.user_id} = :uid"), {"uid": uid}).mappings().all()
            stamps = [_utc(e[a.timestamp]) for e in entries]
            e24 = sum(1 for s in stamps if s is not None and s >= now - timedelta(hours=24))
            e7 = sum(1 for s in stamps if s is not None and s >= now - timedelta(days=7))
            e30 = sum(1 for s in stamps if s is not None and s >= now - timedelta(days=30))
            total = len(entries)
            p: dict[str, Any] = {}
            if user[u.role] is not None:
                p["role"] = user[u.role]
            p["is_admin"] = user[u.role] in u.admin_role_values or str(uid) in admin_ids
            if user[u.auth_method] is not None:
                p["auth_method"] = user[u.auth_method]
            p["entries_last_24h"] = e24
            p["entries_last_7_days"] = e7
            p["entries_last_30_days"] = e30
            p["entries_all_time"] = total
            p["engagement_level"] = (
                "very_high" if e7 >= 20 else "high" if e7 >= 10 else "medium" if e7 >= 3 else "low" if e7 >= 1 else "inactive"
            )
            p["activity_trend"] = "increasing" if e7 > e30 / 4 else "decreasing" if e7 < e30 / 5 else "stable"
            p["is_active_user"] = e7 > 0
            p["is_power_user"] = e7 >= 10
            p["is_at_risk"] = e7 == 0 and total > 0
            if has_projects and m.projects is not None:
                used = {e[a.project_id] for e in entries if e[a.project_id] is not None and e[a.project_id] in projects}
                p["active_projects_count"] = sum(1 for pid in used if projects[pid] in m.projects.active_values)
                p["total_projects_count"] = len(used)
            if has_tasks and m.tasks is not None:
                k = m.tasks
                statuses = [
                    row[0]
                    for row in conn.execute(text(f"SELECT {k.status} FROM {k.table} WHERE {k.assignee} = :uid"), {"uid": uid})
                ]
                p["assigned_tasks_count"] = sum(
                    1 for s in statuses if s is not None and s not in k.done_values and s not in k.closed_values
                )
                p["completed_tasks_count"] = sum(1 for s in statuses if s in k.done_values)
            timer = sum(1 for e in entries if e[a.source] in a.timer_values)
            manual = sum(1 for e in entries if e[a.source] in a.manual_values)
            # rounded half up from the exact ratio (the reference's round() of a float has binary ties)
            percent = math.floor(Fraction(timer * 1000, timer + manual) + Fraction(1, 2)) / 10 if timer + manual else 0.0
            p["timer_entries_count"] = timer
            p["manual_entries_count"] = manual
            p["timer_usage_percent"] = percent
            p["preferred_tracking_method"] = "timer" if percent > 70 else "mixed" if percent > 30 else "manual"
            p["uses_timer"] = timer > 0
            p["uses_manual_entry"] = manual > 0
            seconds = sum(max(e[a.duration_seconds] or 0, 0) for e in entries)
            p["total_hours_tracked"] = math.floor(Fraction(seconds) / 360 + Fraction(1, 2)) / 10
            created = _utc(user[u.created_at])
            once: dict[str, Any] = {}
            if created is not None:
                age = (now - created).days
                p["account_age_days"] = age
                p["account_age_category"] = (
                    "new" if age < 7 else "recent" if age < 30 else "established" if age < 180 else "long_term"
                )
                p["is_new_user"] = age < 7
                p["is_established_user"] = age >= 30
                once["first_login"] = created.isoformat()
            login = _utc(user[u.last_login])
            if login is not None:
                p["last_login"] = login.isoformat()
                p["days_since_last_login"] = (now - login).days
            p["last_segment_update"] = now.isoformat()
            if user[u.auth_method] is not None:
                once["signup_method"] = user[u.auth_method]
            out[str(uid)] = {"$set": p, "$set_once": once}
    return out
