"""A TimeTracker-shaped database at scale, stored as an app stores it: entries appended in time order.

Users' entries interleave (each new row belongs to a random user), so one user's entries are spread over
the whole table, as in a real app's table and unlike data generated user by user. Generated inside the
database (SQLite's recursive CTE, PostgreSQL's generate_series): 10M rows in about a minute.
"""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import Engine, func, insert, select, text

from otel_segments.segments.demo import metadata, time_entries

SPAN_DAYS = 90
#: The indexes docs/segments.md recommends ("Indexes"), by table: what the plans of the full and incremental
#: refresh read. The demo's own single-column indexes (time_entries.user_id, created_at, updated_at; tasks.
#: assigned_to, updated_at) are created too.
RECOMMENDED = {
    "postgresql": [
        "CREATE INDEX ix_time_entries_user_covering ON time_entries (user_id, project_id)"
        " INCLUDE (created_at, source, duration_seconds, id)",
    ],
    "sqlite": [
        "CREATE INDEX ix_time_entries_user_covering ON time_entries (user_id, project_id, created_at, source, duration_seconds)",
    ],
}


def build(engine: Engine, n_users: int, n_entries: int, now: datetime) -> float:
    """Create and fill the tables (dropping what was there); seconds taken."""
    started = time.perf_counter()
    metadata.drop_all(engine)
    metadata.create_all(engine)
    dialect = engine.dialect.name
    with engine.begin() as conn:
        for index in (*time_entries.indexes, *metadata.tables["tasks"].indexes):
            conn.execute(text(f"DROP INDEX {index.name}"))  # bulk load first, index after
    n_projects = max(10, n_users // 10)
    stamp = now.replace(tzinfo=None, microsecond=0)
    params = {"u": n_users, "n": n_entries, "p": n_projects, "k": n_users * 3, "now": stamp, "span": SPAN_DAYS * 86400}
    with engine.begin() as conn:
        conn.execute(insert(metadata.tables["roles"]), [{"id": 1, "name": "admin"}, {"id": 2, "name": "super_admin"}])
        if dialect == "sqlite":
            params["now"] = stamp.isoformat(sep=" ")
        for statement in _SQLITE if dialect == "sqlite" else _POSTGRESQL:
            conn.execute(text(statement), params)
    with engine.begin() as conn:
        for index in (*time_entries.indexes, *metadata.tables["tasks"].indexes):
            index.create(conn)
        for statement in RECOMMENDED.get(dialect, []):
            conn.execute(text(statement))
    with engine.connect() as conn:
        if dialect == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM ANALYZE")  # what autovacuum does after a bulk load: visibility map, statistics
        else:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(time_entries)).scalar() == n_entries
    return time.perf_counter() - started


# Users joined over 800 days, logged in over 60; one admin in 40. Tasks and projects last changed over the 90 days.
# Entries: the i-th of n at now - span + i*span/n (time order, as appended); the owner from multiplicative hashes
# of i, skewed (uniform x uniform: a few heavy users, a long tail of light ones), each user in three projects.
# Deterministic, so both databases hold the same entries (SQLite would also evaluate a random() once per mention).
_SQLITE = [
    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :u) "
    "INSERT INTO users (id, username, role, created_at, last_login, auth_provider) "
    "SELECT i, 'u' || i, CASE WHEN i % 40 = 0 THEN 'admin' ELSE 'user' END, "
    "strftime('%Y-%m-%d %H:%M:%S', :now, '-' || (abs(random()) % (800 * 86400)) || ' seconds') || '.000000', "
    "strftime('%Y-%m-%d %H:%M:%S', :now, '-' || (abs(random()) % (60 * 86400)) || ' seconds') || '.000000', "
    "CASE i % 3 WHEN 0 THEN 'oidc' ELSE 'local' END FROM s",
    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :p) "
    "INSERT INTO projects (id, name, status, updated_at) "
    "SELECT i, 'p' || i, CASE WHEN i % 4 = 0 THEN 'archived' ELSE 'active' END, "
    "strftime('%Y-%m-%d %H:%M:%S', :now, '-' || (abs(random()) % :span) || ' seconds') || '.000000' FROM s",
    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :k) "
    "INSERT INTO tasks (id, project_id, assigned_to, status, updated_at) SELECT i, 1 + i % :p, 1 + abs(random()) % :u, "
    "CASE abs(random()) % 5 WHEN 0 THEN 'done' WHEN 1 THEN 'cancelled' WHEN 2 THEN 'in_progress' ELSE 'todo' END, "
    "strftime('%Y-%m-%d %H:%M:%S', :now, '-' || (abs(random()) % :span) || ' seconds') || '.000000' FROM s",
    "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
    "INSERT INTO time_entries (id, user_id, project_id, start_time, created_at, updated_at, source, duration_seconds) "
    "SELECT i, u, 1 + (u * 7 + i % 3) % :p, t, t, t, "
    "CASE abs(random()) % 3 WHEN 0 THEN 'timer' WHEN 1 THEN 'auto' ELSE 'manual' END, 300 + abs(random()) % 7200 "
    "FROM (SELECT i, 1 + ((i * 2654435761) % 1000003 % :u) * (1 + (i * 40503) % 101) / 102 AS u, "
    "strftime('%Y-%m-%d %H:%M:%S', :now, '-' || ((:n - i) * :span / :n) || ' seconds') || '.000000' AS t FROM s)",
]
_POSTGRESQL = [
    "INSERT INTO users (id, username, role, created_at, last_login, auth_provider) "
    "SELECT i, 'u' || i, CASE WHEN i % 40 = 0 THEN 'admin' ELSE 'user' END, "
    "CAST(:now AS timestamp) - random() * interval '800 days', CAST(:now AS timestamp) - random() * interval '60 days', "
    "CASE i % 3 WHEN 0 THEN 'oidc' ELSE 'local' END FROM generate_series(1, :u) AS i",
    "INSERT INTO projects (id, name, status, updated_at) "
    "SELECT i, 'p' || i, CASE WHEN i % 4 = 0 THEN 'archived' ELSE 'active' END, "
    "CAST(:now AS timestamp) - random() * :span * interval '1 second' FROM generate_series(1, :p) AS i",
    "INSERT INTO tasks (id, project_id, assigned_to, status, updated_at) "
    "SELECT i, 1 + i % :p, 1 + floor(random() * :u)::int, "
    "(ARRAY['done', 'cancelled', 'in_progress', 'todo', 'todo'])[1 + floor(random() * 5)::int], "
    "CAST(:now AS timestamp) - random() * :span * interval '1 second' "
    "FROM generate_series(1, :k) AS i",
    "INSERT INTO time_entries (id, user_id, project_id, start_time, created_at, updated_at, source, duration_seconds) "
    "SELECT i, u, 1 + (u * 7 + i % 3) % :p, t, t, t, "
    "(ARRAY['timer', 'auto', 'manual'])[1 + floor(random() * 3)::int], 300 + floor(random() * 7200)::int "
    "FROM (SELECT i, 1 + ((i * 2654435761) % 1000003 % :u) * (1 + (i * 40503) % 101) / 102 AS u, "
    "CAST(:now AS timestamp) - (:n - i) * (CAST(:span AS float8) / :n) * interval '1 second' AS t "
    "FROM generate_series(CAST(1 AS bigint), :n) AS i) AS g",
    "SELECT setval(pg_get_serial_sequence('time_entries', 'id'), :n)",
    "SELECT setval(pg_get_serial_sequence('tasks', 'id'), :k)",
    "SELECT setval(pg_get_serial_sequence('users', 'id'), :u)",
    "SELECT setval(pg_get_serial_sequence('projects', 'id'), :p)",
]
