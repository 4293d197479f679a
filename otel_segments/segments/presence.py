"""The app's users' presence: a digest of every user's (id, created_at), computed where the rows are.

A user deleted and another added in one cycle, or an id reused for a new account, leave the count as it was; this
digest moves (``changes.py`` then reads the ids of the buckets that moved). A quiet cycle asks only its total, one
aggregate without grouping; the buckets are asked when the total moved.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import Integer, Text, cast, func, select
from sqlalchemy.engine import Connection

from .batch import Aggregator
from .driver_values import decode

#: Buckets of users by id (a power of two).
PRESENCE_BUCKETS = 64


def presence(conn: Connection, reader: Aggregator) -> dict[str, list[int]] | None:
    """Per bucket of users by a hash of their id: [users, sum of a hash of (id, created_at)], computed where the rows
    are (one aggregate, no row leaves the database). A user deleted and another added in one cycle, or an id reused
    for a new account, change it though the count stays. None where the database has no hash function for us."""
    found = _mixed(conn, reader)
    if found is None:
        return None
    uid, mixed, bucket = found
    query = select(bucket, func.count(), func.sum(mixed)).where(uid.is_not(None)).group_by(bucket)
    return {str(int(b)): [int(n), int(total or 0)] for b, n, total in conn.execute(query)}


def presence_total(conn: Connection, reader: Aggregator) -> tuple[int, int] | None:
    """(users, sum) of :func:`presence` over all buckets, by one aggregate without grouping: no sort of the users
    (``benchmarks/bench_scale.py``, quiet cycles, measures both). A quiet cycle asks only this."""
    found = _mixed(conn, reader)
    if found is None:
        return None
    uid, mixed, _ = found
    n, total = conn.execute(select(func.count(), func.sum(mixed)).where(uid.is_not(None))).one()
    return int(n), int(total or 0)


def _mixed(conn: Connection, reader: Aggregator) -> tuple[Any, Any, Any] | None:
    """The users' id column, the hash of (id, created_at) per user and its bucket; None without a hash function."""
    u = reader.mapping.users
    uid = reader.bound.users.c[u.id]
    if integers(conn, uid):  # SQLite, integer ids: arithmetic, no call into Python per row
        stamp = func.coalesce(func.julianday(reader.bound.users.c[u.created_at]), 0) if u.created_at else 0
        return uid, (uid * 2654435761 + cast(stamp * 86_400_000, Integer)) % 2147483647, uid.op("&")(PRESENCE_BUCKETS - 1)
    hashed = hash_function(conn)
    if hashed is None:
        return None
    ident = cast(uid, Text)
    if u.created_at:
        ident = ident.concat("|").concat(func.coalesce(cast(reader.bound.users.c[u.created_at], Text), ""))
    return uid, hashed(ident), bucket_of(conn, reader)


def whole(stored: dict[str, list[int]]) -> tuple[int, int]:
    """The (users, sum) of stored buckets: what :func:`presence_total` returns for the same users."""
    return sum(n for n, _ in stored.values()), sum(total for _, total in stored.values())


def changed_buckets(now: dict[str, list[int]], stored: dict[str, list[int]]) -> list[int]:
    """The buckets whose [count, digest] differs between two digests (in either one only, too)."""
    return sorted({int(b) for b in set(now) | set(stored) if now.get(b) != stored.get(b)})


def integers(conn: Connection, uid: Any) -> bool:
    try:
        return conn.dialect.name == "sqlite" and uid.type.python_type is int
    except NotImplementedError:
        return False


def bucket_of(conn: Connection, reader: Aggregator) -> Any:
    uid = reader.bound.users.c[reader.mapping.users.id]
    return bucket_by(conn, uid, integers(conn, uid))


def bucket_by(conn: Connection, column: Any, integer: bool) -> Any:
    """The bucket of ``column``'s value: the value itself, masked, when ``integer`` (SQLite's integer ids: no call into
    Python per row), else a hash of its text. ``integer`` is decided once per kind of id, so that another column
    holding the same ids (the entries' project) falls in the same buckets."""
    if integer:
        return column.op("&")(PRESENCE_BUCKETS - 1)
    hashed = hash_function(conn)
    assert hashed is not None
    return hashed(cast(column, Text)).op("&")(PRESENCE_BUCKETS - 1)


def hash_function(conn: Connection) -> Any:
    """PostgreSQL's ``hashtext``; on SQLite (which has none) ours, registered on the connection; else None."""
    if conn.dialect.name == "postgresql":
        return func.hashtext
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        create = getattr(raw, "create_function", None)
        if create is not None:
            create("otel_segments_hash", 1, _hash31, deterministic=True)
            return func.otel_segments_hash
    return None


def _hash31(value: Any) -> int:
    text = value if isinstance(value, str) else str(decode(value)[0])
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "big") >> 1
