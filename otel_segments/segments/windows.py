"""One input table's change windows: the rows whose key or change stamp moved past a cursor, and their owners.

A cursor is a position in the data, never a time on this process's clock: the highest key, and for each change
stamp the highest ``(stamp, key)`` at or before our ``now`` (read through the column's index each cycle). So a
writer whose clock lags ours, by minutes or days, is followed from its first write, and a row stamped in the
future (a client's clock, a scheduled value) cannot pin the window: it sits above every cursor and is re-read
each cycle until our clock passes it. A window starts at the position a scan recorded at least :data:`SLACK`
ago on our clock, so a row committed up to that late behind a newer one is still read; once the slack has
passed, a bulk import or a bulk ``UPDATE`` is behind the cursor and a quiet cycle reads none of it.

What a window cannot follow is a writer behind the rows already there: rows stamped on a clock ahead of it (a
seed or a migration on another clock, another writer more than the slack ahead) set the position, and its
writes land below it until its clock reaches theirs. So projects, whose rules input is their status alone, are
compared by content instead (``project_status.py``); in entries and tasks such a write is found by the sweep when
it moves a count or a key sum (``changes.py``), and otherwise waits for the maximum age.

Naive stamps are compared in the column's zone; when the zone's offset fell between the cursor and now (a DST
fall-back), the window is widened by the difference, so a stamp in the repeated local hour, earlier on the
wall than the cursor though later in time, is still inside.

A row that fails to read (a view over malformed JSON, a cast that fails for one row) does not stop the scan:
the window is re-read in halves down to the failing rows, whose owners become candidates, where the
aggregation sets them aside (``quarantine.py``) like any poisoned row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Column, and_, func, or_, select
from sqlalchemy.engine import Connection

from .batch import Aggregator, recover
from .binding import BoundSchema
from .driver_values import ROW_ERRORS, as_text, decode, from_text, read_datetime
from .queries import ID_CHUNK, column_time

#: How late a commit may be behind a newer row (or behind a scan) and still be read at once.
SLACK = timedelta(minutes=5)
UNREADABLE = "unreadable"  # the digest of a row that failed to read: its owner is a candidate once, then quarantined


@dataclass(frozen=True)
class Source:
    name: str
    ident: Column | None  # what names a row (the key, or None: its owner and stamps)
    owner: Column | None  # the user the row belongs to (projects: the project)
    key: Column | None
    stamps: tuple[Column, ...]
    inputs: tuple[
        Column, ...
    ] = ()  # what the rules read of a row: an edit inside the window shows even if its stamp did not move


def scan(
    conn: Connection, bound: BoundSchema, reader: Aggregator, source: Source, cursor: dict[str, Any] | None, now: datetime
) -> tuple[set[Any], dict[str, Any]]:
    """The owners of rows that changed since ``cursor``, and the new cursor. No cursor: record one, report nothing."""
    cursor = cursor or {}
    seen: dict[str, list[Any]] = cursor.get("seen", {})
    columns = [source.ident if source.ident is not None else source.owner, source.owner]
    columns += [reader.queries.readable_time(c) for c in source.stamps]
    columns += [reader.queries.readable_time(c) if _is_time(c) else reader.queries.readable_text(c) for c in source.inputs]
    cut = (now - SLACK).isoformat()
    windows = []
    new_scans: list[list[Any]] = []
    if source.key is not None:
        scans = _since(cursor.get("scans", []), cut)
        if scans:
            lo = from_text(source.key, scans[0][1])  # None: the table was empty
            windows.append(source.key > lo if lo is not None else source.key.is_not(None))
        keys = [from_text(source.key, k) for _, k in scans if k is not None]
        top = conn.execute(select(func.max(source.key))).scalar()
        new_scans = [*scans, [now.isoformat(), as_text(max(keys + ([top] if top is not None else []), default=None))]]
    stamps: dict[str, list[list[Any]]] = {}
    for stamp in source.stamps:
        history = _since(cursor.get("stamps", {}).get(stamp.name) or _upgraded(cursor, stamp.name, now), cut)
        position = _position(conn, bound, reader, source, stamp, now)
        # the first scan reads what the next one will read again (ties at the position, rows ahead of our clock),
        # so that those rows are known, not taken for changes
        windows.append(_after(bound, source, stamp, history[0][1] if history else position, now))
        stamps[stamp.name] = [*history, [now.isoformat(), position]]
    rows: list[Any] = []
    unreadable: set[Any] = set()
    for where in windows:
        rows += _read(conn, source, columns, where, unreadable)
    owners: set[Any] = set()
    new_seen: dict[str, list[Any]] = {}
    for ident, owner in unreadable:
        new_seen[ident] = [UNREADABLE, owner]
    for row in _unique(rows):  # the key and stamp windows mostly return the same rows
        ident = str(row[0]) if source.ident is not None else _hash(row[1:])
        new_seen[ident] = [_hash(row), None if row[1] is None else str(row[1])]
    for ident, (digest, owner) in new_seen.items():
        before = seen.get(ident)
        if cursor and (before is None or before[0] != digest):
            owners.add(owner)
            if before is not None:
                owners.add(before[1])
    owners.discard(None)
    return owners, {"scans": new_scans, "stamps": stamps, "seen": new_seen}


def _since(history: list[list[Any]], cut: str) -> list[list[Any]]:
    """The scans from the last one at least :data:`SLACK` ago (where the window starts) on."""
    older = [i for i, (at, _) in enumerate(history) if at <= cut]
    return history[older[-1] if older else 0 :]


def _upgraded(cursor: dict[str, Any], name: str, now: datetime) -> list[list[Any]]:
    """A cursor of the release before positions (the highest stamp seen): its window, once."""
    high = cursor.get("high", {}).get(name)
    if high is None:
        return []
    return [[(now - 2 * SLACK).isoformat(), [(min(datetime.fromisoformat(high), now) - SLACK).isoformat(), None]]]


def _position(
    conn: Connection, bound: BoundSchema, reader: Aggregator, source: Source, stamp: Column, now: datetime
) -> list[Any] | None:
    """The highest ``(stamp, key)`` at or before ``now`` (as an instant, and the key as text); None: no such row.
    The maximum is read as the driver can hand it over (SQLite's date columns hold any text)."""
    highest = reader.queries.readable_time(func.max(stamp))
    top = conn.execute(select(highest).where(stamp <= column_time(bound, stamp, now))).scalar()
    instant = read_datetime(top, bound.zone(stamp))
    if instant is None:
        return None
    key = None
    if source.key is not None:
        key = conn.execute(select(func.max(source.key)).where(stamp == column_time(bound, stamp, instant))).scalar()
    return [instant.astimezone(timezone.utc).isoformat(), as_text(key)]


def _after(bound: BoundSchema, source: Source, stamp: Column, position: list[Any] | None, now: datetime) -> Any:
    """Rows past ``position`` in ``(stamp, key)`` order, in the column's own terms."""
    if position is None:
        return stamp.is_not(None)
    instant = datetime.fromisoformat(position[0])
    lo = column_time(bound, stamp, instant)
    zone = bound.zone(stamp)
    if zone is not None:
        fell = instant.astimezone(zone).utcoffset() - now.astimezone(zone).utcoffset()  # type: ignore[operator]
        if fell > timedelta(0):  # the wall clock went back since: the repeated hour is below ``lo`` on the wall
            return stamp >= lo - fell
    if position[1] is None or source.key is None:
        return stamp >= lo
    return or_(stamp > lo, and_(stamp == lo, source.key > from_text(source.key, position[1])))


def _read(conn: Connection, source: Source, columns: list[Any], where: Any, unreadable: set[Any]) -> list[Any]:
    """The window's rows; when one fails to read, the others, bisected by row (the failing ones in ``unreadable``)."""
    try:
        return list(conn.execute(select(*columns).where(where)).all())
    except ROW_ERRORS as error:
        recover(conn, error)
    name = source.ident if source.ident is not None else source.owner
    owner_of = {row[0]: row[1] for row in conn.execute(select(name, source.owner).where(where)).all()}
    idents = list(owner_of)
    out: list[Any] = []
    stack = [idents[start : start + ID_CHUNK] for start in range(0, len(idents), ID_CHUNK)]
    while stack:
        part = stack.pop()
        try:
            out += conn.execute(select(*columns).where(where, name.in_(part))).all()
        except ROW_ERRORS as error:
            recover(conn, error)
            if len(part) > 1:
                stack += [part[len(part) // 2 :], part[: len(part) // 2]]
                continue
            owner = owner_of.get(part[0])
            unreadable.add((str(part[0]) if source.ident is not None else _hash([owner]), None if owner is None else str(owner)))
    return out


def _unique(rows: list[Any]) -> list[Any]:
    """``rows`` without repeats, in order (rows with a value Python cannot hash are all kept)."""
    try:
        return list(dict.fromkeys(tuple(row) for row in rows))
    except TypeError:
        return rows


def _is_time(column: Column) -> bool:
    try:
        return column.type.python_type is datetime
    except NotImplementedError:
        return False


def _hash(values: Iterable[Any]) -> str:
    return hashlib.sha256(json.dumps([None if v is None else str(decode(v)[0]) for v in values]).encode()).hexdigest()[:16]
