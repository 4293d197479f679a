"""The state tables and how a row is written: definitions, keys, the stored JSON, the upsert.

``otel_segments_user_state``: per user, the digest of the last computed
properties, when they were computed, when they are next due (the first moment a
property changes with the clock alone, or the maximum age), the input fingerprint
the sweep compares, the properties themselves as JSON so a restarted process
fills its cache without recomputing, and the digest of the rows the stored properties were computed from
(``digests.py``; NULL when the refresh that stored them did not ask the database for it).

``otel_segments_delivery``: per (sink, user), the digest last delivered. A user
is pending for a sink while its computed digest differs from its delivered one,
so a crash between compute and delivery resends rather than loses an update.

``otel_segments_meta``: the watermark, the change cursors (``changes.py``) and
``schema_version`` (``state.py``).

User ids are stored as they are when the ``user_id`` columns can hold them (at most 255 characters, no NUL,
valid UTF-8); any other id is stored as a fixed-length key (:func:`state_key`, a hash) and the app's id is
kept in the ``properties`` JSON (as ``distinct_id``), where delivery reads it. No migration: ids that fit
keep the key they always had.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, Text, and_, delete
from sqlalchemy.engine import Connection

from . import UserSegment

ID_CHUNK = 5_000
_ID_LENGTH = 255  # of the user_id columns
HASHED = "~sha256:"  # a stored key that is the hash of an app's id; an app's id that starts with it is hashed too


def state_key(user_id: str) -> str:
    """The key a user id is stored under: the id itself when the state's columns can hold it, else its hash."""
    if len(user_id) <= _ID_LENGTH and "\x00" not in user_id and not user_id.startswith(HASHED):
        try:
            user_id.encode("utf-8")
            return user_id
        except UnicodeEncodeError:
            pass
    return HASHED + hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()


def tables(prefix: str) -> tuple[MetaData, Table, Table, Table]:
    metadata = MetaData()
    users = Table(
        f"{prefix}user_state",
        metadata,
        Column("user_id", String(_ID_LENGTH), primary_key=True),
        Column("digest", String(64), nullable=False),
        Column("computed_at", DateTime(timezone=True), nullable=False),
        Column("due_at", DateTime(timezone=True), nullable=False),
        Column("properties", Text, nullable=False),
        Column("inputs", String(32)),  # version 2
        Column("rows_digest", Text),  # version 3: ``digests.py``
    )
    Index(f"{prefix}user_state_due_at", users.c.due_at)
    delivery = Table(
        f"{prefix}delivery",
        metadata,
        Column("sink", String(100), primary_key=True),
        Column("user_id", String(_ID_LENGTH), primary_key=True),
        Column("digest", String(64), nullable=False),
        Column("delivered_at", DateTime(timezone=True), nullable=False),
    )
    meta = Table(f"{prefix}meta", metadata, Column("key", String(100), primary_key=True), Column("value", Text, nullable=False))
    return metadata, users, delivery, meta


def segment_from_row(key: str, properties: str) -> UserSegment:
    data = json.loads(properties)
    return UserSegment(distinct_id=data.get("distinct_id", key), set=data.get("$set", {}), set_once=data.get("$set_once", {}))


def properties_json(segment: UserSegment) -> str:
    """The stored JSON; it carries the app's id when the key is not the id (JSON escapes NUL: never sent to the database)."""
    data: dict[str, Any] = {"$set": segment.set, "$set_once": segment.set_once}
    if state_key(segment.distinct_id) != segment.distinct_id:
        data["distinct_id"] = segment.distinct_id
    return json.dumps(data, sort_keys=True)


def upsert(conn: Connection, table: Table, values: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT ... ON CONFLICT DO UPDATE on SQLite and PostgreSQL; delete-then-insert elsewhere."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        for start in range(0, len(values), ID_CHUNK):
            statement = insert(table)
            statement = statement.on_conflict_do_update(
                index_elements=keys, set_={c.name: statement.excluded[c.name] for c in table.c if c.name not in keys}
            )
            conn.execute(statement, values[start : start + ID_CHUNK])
        return
    for row in values:
        conn.execute(delete(table).where(and_(*[table.c[k] == row[k] for k in keys])))
    conn.execute(table.insert(), values)
