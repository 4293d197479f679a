"""Refresh and delivery state, in tables the plugin creates in a state database (default: the app's).

The tables and their rows are ``state_tables.py``'s. ``schema_version`` (in the meta table): version 1
is what releases before the version existed wrote (no ``schema_version`` row); version 2 adds
``user_state.inputs``, the fingerprint the sweep compares; version 3 adds ``user_state.rows_digest``, what a
full refresh compares in the database (``digests.py``; NULL in a migrated state until the next full refresh).
A process migrates an older state in place at its first refresh, which runs under the lease, so once per
fleet (:meth:`RefreshState.migrate`); stored digests stay, so nothing is resent. A process that finds a newer
version than it knows raises :class:`StateVersionError` and runs no refresh.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Text,
    and_,
    bindparam,
    delete,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine

from . import UserSegment
from .rules import utc
from .state_tables import HASHED, ID_CHUNK, properties_json, segment_from_row, state_key, tables, upsert

SCHEMA_VERSION = 3  # what this release writes; see the module docstring for each version


class StateVersionError(Exception):
    """The state was written by a newer release than this one: this process must not refresh it."""


class RefreshState:
    """The state tables in one database; created on first use (``CREATE TABLE IF NOT EXISTS``)."""

    WATERMARK = "watermark"
    VERSION = "schema_version"

    def __init__(self, engine: Engine, *, table_prefix: str = "otel_segments_") -> None:
        self.engine = engine
        metadata, self.users, self.delivery, self.meta = tables(table_prefix)
        metadata.create_all(engine, checkfirst=True)  # only the missing tables: an older state keeps its own until migrate()
        with engine.begin() as conn:
            unversioned = conn.execute(select(self.meta.c.value).where(self.meta.c.key == self.VERSION)).scalar() is None
            if unversioned and "rows_digest" in {c["name"] for c in inspect(conn).get_columns(self.users.name)}:
                upsert(conn, self.meta, [{"key": self.VERSION, "value": str(SCHEMA_VERSION)}], ["key"])  # created here
        self.check_version()

    # -- versions -------------------------------------------------------------------------------

    def version(self) -> int:
        """The state's schema version: 1 for a state written before versions existed."""
        with self.engine.connect() as conn:
            value = conn.execute(select(self.meta.c.value).where(self.meta.c.key == self.VERSION)).scalar()
        return int(value) if value else 1

    def check_version(self) -> int:
        version = self.version()
        if version > SCHEMA_VERSION:
            raise StateVersionError(
                f"the segment state was written by a newer otel_segments (state schema {version}, this release knows "
                f"up to {SCHEMA_VERSION}); segments stay off in this process: upgrade it"
            )
        return version

    def migrate(self) -> bool:
        """Bring an older state to this release's version in place; True when it did. Run it under the lease."""
        version = self.check_version()
        if version == SCHEMA_VERSION:
            return False
        with self.engine.begin() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns(self.users.name)}
            if version < 2 and "inputs" not in columns:
                conn.execute(text(f"ALTER TABLE {self.users.name} ADD COLUMN inputs VARCHAR(32)"))
            if version < 3 and "rows_digest" not in columns:
                conn.execute(text(f"ALTER TABLE {self.users.name} ADD COLUMN rows_digest TEXT"))
            upsert(conn, self.meta, [{"key": self.VERSION, "value": str(SCHEMA_VERSION)}], ["key"])
        return True

    # -- refresh side ---------------------------------------------------------------------------

    def watermark(self) -> datetime | None:
        """The ``now`` of the last completed refresh, or None before the first."""
        with self.engine.connect() as conn:
            value = conn.execute(select(self.meta.c.value).where(self.meta.c.key == self.WATERMARK)).scalar()
        return datetime.fromisoformat(value) if value else None

    def set_watermark(self, when: datetime, **values: Any) -> None:
        """Record a completed refresh at ``when``, with other meta values (JSON) written in the same transaction."""
        rows = [{"key": self.WATERMARK, "value": utc(when).isoformat()}]
        rows += [{"key": key, "value": json.dumps(value, sort_keys=True)} for key, value in values.items()]
        with self.engine.begin() as conn:
            upsert(conn, self.meta, rows, ["key"])

    def meta_values(self, prefix: str) -> dict[str, Any]:
        """The JSON meta values whose key starts with ``prefix``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.meta.c.key, self.meta.c.value).where(self.meta.c.key.startswith(prefix)))
            return {row[0]: json.loads(row[1]) for row in rows}

    def forget(self, prefix: str, *, keep: Sequence[str] = ()) -> None:
        """Delete the meta values whose key starts with ``prefix``, but those in ``keep``."""
        with self.engine.begin() as conn:
            conn.execute(delete(self.meta).where(self.meta.c.key.startswith(prefix), self.meta.c.key.not_in(list(keep))))

    def inputs(self, user_ids: Sequence[str]) -> dict[str, str | None]:
        """The stored input fingerprint of each of ``user_ids`` that has a state row (None: not recorded yet)."""
        return self._by_user(self.users.c.inputs, user_ids)

    def _by_user(self, column: Any, user_ids: Sequence[str], *more: Any) -> dict[str, Any]:
        """``column`` (a tuple with ``more`` columns) of each of ``user_ids`` that has a state row, by the app's id."""
        keys = {state_key(uid): uid for uid in user_ids}
        ordered = list(keys)
        out: dict[str, Any] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ordered), ID_CHUNK):
                chunk = ordered[start : start + ID_CHUNK]
                query = select(self.users.c.user_id, column, *more).where(self.users.c.user_id.in_(chunk))
                if more:
                    out.update((keys[row[0]], tuple(row[1:])) for row in conn.execute(query))
                else:
                    out.update((keys[row[0]], row[1]) for row in conn.execute(query))
        return out

    def _app_ids(self, conn: Connection, keys: Iterable[str]) -> Iterator[str]:
        """The app's ids of stored keys: a hashed key's id is read from its properties."""
        hashed = []
        for key in keys:
            if key.startswith(HASHED):
                hashed.append(key)
            else:
                yield key
        for start in range(0, len(hashed), ID_CHUNK):
            query = select(self.users.c.user_id, self.users.c.properties).where(
                self.users.c.user_id.in_(hashed[start : start + ID_CHUNK])
            )
            for row in conn.execute(query):
                yield segment_from_row(row[0], row[1]).distinct_id

    def user_ids(self) -> set[str]:
        with self.engine.connect() as conn:
            keys = [row[0] for row in conn.execution_options(yield_per=ID_CHUNK).execute(select(self.users.c.user_id))]
            return set(self._app_ids(conn, keys))

    def remove(self, user_ids: Sequence[str]) -> int:
        """Forget users that no longer exist in the app (their delivery rows stay, unused); how many rows went."""
        keys = [state_key(uid) for uid in user_ids]
        removed = 0
        with self.engine.begin() as conn:
            for start in range(0, len(keys), ID_CHUNK):
                result = conn.execute(delete(self.users).where(self.users.c.user_id.in_(keys[start : start + ID_CHUNK])))
                removed += max(result.rowcount, 0)
        return removed

    def stored(self, user_ids: Sequence[str]) -> dict[str, tuple[str, datetime, str | None, str | None]]:
        """(digest, due_at, inputs, rows_digest) of each of ``user_ids`` that has a state row."""
        u = self.users.c
        found = self._by_user(u.digest, user_ids, u.due_at, u.inputs, u.rows_digest)
        return {uid: (digest, utc(due), inputs, rows) for uid, (digest, due, inputs, rows) in found.items()}

    def rows_digests(self, user_ids: Sequence[str]) -> dict[str, tuple[str | None, datetime]]:
        """(rows_digest, due_at) of each of ``user_ids`` that has a state row: what ``digests.py`` compares in Python."""
        found = self._by_user(self.users.c.rows_digest, user_ids, self.users.c.due_at)
        return {uid: (rows, utc(due)) for uid, (rows, due) in found.items()}

    def due(self, now: datetime) -> Iterator[str]:
        """Users whose segment can have changed with the clock alone, or is older than the maximum age."""
        with self.engine.connect() as conn:
            query = select(self.users.c.user_id).where(self.users.c.due_at <= utc(now))
            keys = [row[0] for row in conn.execution_options(yield_per=ID_CHUNK).execute(query)]
            yield from self._app_ids(conn, keys)

    def save(self, rows: Sequence[tuple[UserSegment, str, datetime, datetime, str | None, str | None]]) -> None:
        """Store (segment, digest, computed_at, due_at, inputs, rows_digest) for users whose digest changed.

        ``rows_digest`` None (the refresh did not ask the database for it) clears the stored one: a stored rows
        digest always belongs to the rows the stored segment was computed from (``digests.py``)."""
        if not rows:
            return
        values = [
            {
                "user_id": state_key(segment.distinct_id),
                "digest": digest,
                "computed_at": utc(computed_at),
                "due_at": utc(due_at),
                "properties": properties_json(segment),
                "inputs": inputs,
                "rows_digest": rows_digest,
            }
            for segment, digest, computed_at, due_at, inputs, rows_digest in rows
        ]
        with self.engine.begin() as conn:
            upsert(conn, self.users, values, ["user_id"])

    def touch(self, rows: Sequence[tuple[str, datetime, datetime, str | None, str | None]]) -> None:
        """Advance computed_at / due_at / inputs / rows_digest of users recomputed with an unchanged digest
        (properties stay). A rows digest of None keeps the stored one: the segment it belongs to did not change."""
        if not rows:
            return
        statement = (
            update(self.users)
            .where(self.users.c.user_id == bindparam("uid"))
            .values(
                computed_at=bindparam("computed"),
                due_at=bindparam("due"),
                inputs=bindparam("fp"),
                rows_digest=func.coalesce(bindparam("rows", type_=Text), self.users.c.rows_digest),
            )
        )
        values = [{"uid": state_key(u), "computed": utc(c), "due": utc(d), "fp": f, "rows": r} for u, c, d, f, r in rows]
        with self.engine.begin() as conn:
            conn.execute(statement, values)

    # -- read side ------------------------------------------------------------------------------

    def segments(self, user_ids: Sequence[str] | None = None) -> Iterator[UserSegment]:
        """Stored segments (all, or ``user_ids``'), e.g. to fill a cache after a restart without recomputing."""
        with self.engine.connect() as conn:
            if user_ids is None:
                query = select(self.users.c.user_id, self.users.c.properties).order_by(self.users.c.user_id)
                for row in conn.execution_options(yield_per=ID_CHUNK).execute(query):
                    yield segment_from_row(row[0], row[1])
                return
            keys = [state_key(uid) for uid in user_ids]
            for start in range(0, len(keys), ID_CHUNK):
                chunk = keys[start : start + ID_CHUNK]
                query = select(self.users.c.user_id, self.users.c.properties).where(self.users.c.user_id.in_(chunk))
                for row in conn.execute(query):
                    yield segment_from_row(row[0], row[1])

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(self.users)).scalar() or 0)

    # -- delivery side --------------------------------------------------------------------------

    def pending(self, sink: str, limit: int = 1000, *, after: str | None = None) -> list[UserSegment]:
        """Up to ``limit`` users, in user id order, whose computed digest has not been delivered to ``sink``.

        Deliver them, then call :meth:`mark_delivered` with ``(distinct_id, segment.digest())``
        for the ones the sink accepted. Pass the last id of a batch as ``after`` to get
        the next: each query then walks the primary key from there and stops after
        ``limit`` matches, so a whole pass costs one walk of the table, not one per batch.
        """
        u, d = self.users, self.delivery
        query = (
            select(u.c.user_id, u.c.properties)
            .select_from(u.outerjoin(d, and_(d.c.sink == sink, d.c.user_id == u.c.user_id)))
            .where(or_(d.c.digest.is_(None), d.c.digest != u.c.digest))
            .order_by(u.c.user_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(u.c.user_id > state_key(after))
        with self.engine.connect() as conn:
            return [segment_from_row(row[0], row[1]) for row in conn.execute(query)]

    def mark_delivered(self, sink: str, delivered: Iterable[tuple[str, str]], *, now: datetime | None = None) -> None:
        """Record that ``sink`` accepted these ``(user_id, digest)`` pairs."""
        when = utc(now or datetime.now(timezone.utc))
        values = [{"sink": sink, "user_id": state_key(uid), "digest": digest, "delivered_at": when} for uid, digest in delivered]
        if values:
            with self.engine.begin() as conn:
                upsert(conn, self.delivery, values, ["sink", "user_id"])
