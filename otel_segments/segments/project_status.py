"""Which projects changed, found by what the rules read of them: a digest of every project's (id, status) in buckets.

A project's stamp cannot find its change. The rules read one thing of a project, whether it exists and is
active, and the projects table is written rarely and by anyone: a seed or a migration, an admin tool, the app.
When the rows' stamps were written on a clock ahead of the writer that archives a project later (seeded on the
job's clock while the app's lags by days), its new ``updated_at`` falls below the position a change window starts
at (``windows.py``, which follows the highest stamp) and the project is never read; the project's users kept
their active-projects count until the maximum age. So projects are compared by content, as the users' presence
is (``presence.py``): per bucket of projects by id, [projects, sum of a hash of (id, status)], computed in the
database. A status change, a project added or removed, shows whatever its stamps say, and without any
``updated_at``.

A quiet cycle asks one aggregate without grouping over ``projects`` (a small table). When it moved, the buckets
are read, and the users with entries in a project of a changed bucket are candidates: one read of the entries'
project column, whose bucket is computed the same way, so a removed project's users are found too (and when a
project was removed, the users with entries of no project: what ``ON DELETE SET NULL`` leaves). Dialects
without a hash function for us keep the change window (``changes.py``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text, and_, cast, func, or_, select
from sqlalchemy.engine import Connection

from .binding import BoundSchema
from .presence import bucket_by, changed_buckets, hash_function, integers, whole
from .queries import ID_CHUNK


def digested(conn: Connection, bound: BoundSchema) -> bool:
    """Whether projects matter to the rules here and the database can digest them (else the change window reads them)."""
    return (
        bound.projects is not None
        and bound.mapping.projects is not None
        and bool(bound.mapping.activity.project_id)
        and hash_function(conn) is not None
    )


def changed_project_users(
    conn: Connection, bound: BoundSchema, stored: dict[str, list[int]] | None
) -> tuple[set[str], dict[str, list[int]]]:
    """The users with entries in a project of a bucket whose digest differs from ``stored``, and the digest to
    store. No ``stored`` digest: record one, report nobody (the refresh is then a full one)."""
    pid, mixed, bucket = _mixed(conn, bound)
    n, total = conn.execute(select(func.count(), func.sum(mixed)).where(pid.is_not(None))).one()
    if stored is not None and (int(n), int(total or 0)) == whole(stored):
        return set(), stored  # a quiet cycle: one aggregate without grouping
    query = select(bucket, func.count(), func.sum(mixed)).where(pid.is_not(None)).group_by(bucket)
    now = {str(int(b)): [int(c), int(s or 0)] for b, c, s in conn.execute(query)}
    if stored is None:
        return set(), now
    changed = changed_buckets(now, stored)
    if not changed:
        return set(), now
    a = bound.mapping.activity
    assert a.project_id
    entries = bound.activity.c[a.project_id]
    owner = bound.activity.c[a.user_id]
    in_bucket = bucket_by(conn, entries, integers(conn, pid))
    affected = and_(entries.is_not(None), in_bucket.in_(changed))
    if any(now.get(b, [0, 0])[0] < count for b, (count, _) in stored.items()):
        # a project deleted: a foreign key's ON DELETE SET NULL took it off its entries with no stamp moved, so the
        # users with an entry of no project are candidates too (a rare event, and a bounded read of one column)
        affected = or_(affected, entries.is_(None))
    query = select(owner).distinct().where(owner.is_not(None), affected)
    return {str(row[0]) for row in conn.execution_options(yield_per=ID_CHUNK).execute(query)}, now


def _mixed(conn: Connection, bound: BoundSchema) -> tuple[Any, Any, Any]:
    """The projects' id column, the hash of (id, status) per project and its bucket."""
    p, table = bound.mapping.projects, bound.projects
    assert p is not None and table is not None
    pid = table.c[p.id]
    hashed = hash_function(conn)
    assert hashed is not None
    ident = cast(pid, Text).concat("|").concat(func.coalesce(cast(table.c[p.status], Text), ""))
    return pid, hashed(ident), bucket_by(conn, pid, integers(conn, pid))
