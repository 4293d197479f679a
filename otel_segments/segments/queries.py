"""All users' segments in a few aggregate queries, streamed in keyset batches.

Per batch of users (ordered by id, ``id > last`` keyset) there are at most four
queries whatever the batch size: the users (with admin status), one conditional
aggregation over activity grouped by user, one over activity joined to projects,
one over tasks. The aggregates are restricted to the batch's id range, so each
reads only its slice of the activity index and memory stays bounded by the
batch size, at any number of users. The same SQLAlchemy Core runs on SQLite
and PostgreSQL. Naive datetimes are read in the zone the mapping declares for
their column (bound parameters are converted to it), so windows and ages are
exact whatever zone the app writes in.

:func:`input_fingerprints` is the sweep's cheaper pass over a slice of users: the
rule inputs that no change column shows (the users row, admin roles, task counts,
entry count and key sum), hashed per user.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, String, and_, case, exists, false, func, literal, select, type_coerce
from sqlalchemy.engine import Connection, Engine

from . import UserSegment
from .rules import WINDOWS, UserActivity, next_change, person_properties, utc
from .schema import BoundSchema, SchemaMapping, bind

DEFAULT_BATCH_SIZE = 10_000
_ID_CHUNK = 5_000  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True)
class AggregatedUser:
    """One user's aggregates, plus the oldest entry inside each window (for :func:`rules.next_change`)."""

    activity: UserActivity
    oldest_in_window: dict[timedelta, datetime | None]
    inputs: str = ""  # fingerprint of the rule inputs the sweep compares (see :func:`input_fingerprints`)

    def segment(self, now: datetime) -> UserSegment:
        return person_properties(self.activity, now=now)

    def due_at(self, now: datetime) -> datetime | None:
        return next_change(self.activity, self.oldest_in_window, now=now)


def compute_segments(
    engine: Engine,
    schema: SchemaMapping | BoundSchema,
    *,
    now: datetime,
    user_ids: Iterable[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[UserSegment]:
    """Every user's (or only ``user_ids``') :class:`UserSegment`, in user id order, streamed."""
    for user in aggregate_users(engine, schema, now=now, user_ids=user_ids, batch_size=batch_size):
        yield user.segment(now)


def aggregate_users(
    engine: Engine,
    schema: SchemaMapping | BoundSchema,
    *,
    now: datetime,
    user_ids: Iterable[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[AggregatedUser]:
    bound = schema if isinstance(schema, BoundSchema) else bind(schema, engine)
    queries = _Queries(bound, utc(now), engine.dialect.name)
    with engine.connect() as conn:
        if user_ids is None:
            last: Any = None
            while True:
                users = conn.execute(queries.users(after=last, limit=batch_size)).all()
                if not users:
                    return
                last = users[-1][0]
                yield from queries.batch(conn, users, ids=None)
                if len(users) < batch_size:
                    return
        else:
            ids = queries.coerce_ids(user_ids)
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                users = conn.execute(queries.users(ids=chunk)).all()
                if users:
                    yield from queries.batch(conn, users, ids=chunk)


class _Queries:
    """The SQL for one bound schema at one ``now``."""

    def __init__(self, bound: BoundSchema, now: datetime, dialect: str = "") -> None:
        self.bound = bound
        self.now = now
        self.mapping = bound.mapping
        self.dialect = dialect

    def coerce_ids(self, user_ids: Iterable[str]) -> list[Any]:
        """distinct_ids are strings; compare them as the id column's own type, sorted and unique."""
        python_type: type | None
        try:
            python_type = self.bound.users.c[self.mapping.users.id].type.python_type
        except NotImplementedError:
            python_type = None
        out = set()
        for raw in user_ids:
            if python_type is int:
                try:
                    out.add(int(raw))
                except (TypeError, ValueError):
                    continue  # cannot be a user of this table
            else:
                out.add(str(raw))
        return sorted(out)

    def _time(self, column: Any, value: datetime) -> datetime:
        """A bound parameter comparable with ``column``: aware for timezone columns, naive in the column's zone otherwise."""
        return column_time(self.bound, column, value)

    def _zone(self, name: str | None, table: Any) -> tzinfo | None:
        return self.bound.zone(table.c[name]) if name else None

    def users(self, *, after: Any = None, limit: int | None = None, ids: Sequence[Any] | None = None) -> Any:
        u = self.mapping.users
        t = self.bound.users
        uid = t.c[u.id]
        columns: list[Any] = [uid]
        for name in (u.created_at, u.last_login):
            columns.append(self._readable_time(t.c[name]) if name else literal(None))
        for name in (u.role, u.auth_method):
            columns.append(t.c[name] if name else literal(None))
        columns.append(self._is_admin())
        query = select(*columns).where(uid.is_not(None))  # a NULL id names no one (possible in views and legacy tables)
        if ids is not None:
            query = query.where(uid.in_(ids))
        elif after is not None:
            query = query.where(uid > after)
        query = query.order_by(uid)
        return query.limit(limit) if limit else query

    def _is_admin(self) -> Any:
        u = self.mapping.users
        t = self.bound.users
        conditions: list[ColumnElement[bool]] = []
        if u.role:
            conditions.append(t.c[u.role].in_(u.admin_role_values))
        if self.bound.roles is not None and u.roles is not None:
            r = u.roles
            association, roles = self.bound.roles
            conditions.append(
                exists().where(
                    association.c[r.user_id] == t.c[u.id],
                    association.c[r.role_id] == roles.c[r.roles_id],
                    roles.c[r.roles_name].in_(r.admin_names),
                )
            )
        if not conditions:
            return literal(None)
        return case(*[(c, 1) for c in conditions], else_=0)

    def batch(self, conn: Connection, users: Sequence[Any], *, ids: Sequence[Any] | None) -> Iterator[AggregatedUser]:
        lo, hi = users[0][0], users[-1][0]
        activity = {row[0]: row for row in conn.execute(self._activity(lo, hi, ids))}
        projects = {row[0]: row for row in conn.execute(self._projects(lo, hi, ids))} if self.bound.projects is not None else None
        tasks = {row[0]: row for row in conn.execute(self._tasks(lo, hi, ids))} if self.bound.tasks is not None else None
        a, u = self.mapping.activity, self.mapping.users
        created_zone, login_zone = self._zone(u.created_at, self.bound.users), self._zone(u.last_login, self.bound.users)
        entry_zone = self._zone(a.timestamp, self.bound.activity)
        for uid, created_at, last_login, role, auth, admin in users:
            act = activity.get(uid)
            counts = dict(
                entries_all_time=act[1] if act else 0,
                entries_24h=int(act[2] or 0) if act else 0,
                entries_7d=int(act[3] or 0) if act else 0,
                entries_30d=int(act[4] or 0) if act else 0,
            )
            if a.source:
                counts["timer_entries"] = int(act[5] or 0) if act else 0
                counts["manual_entries"] = int(act[6] or 0) if act else 0
            if a.duration_seconds:
                counts["total_seconds"] = float(act[7] or 0) if act else 0.0
            if projects is not None:
                p = projects.get(uid)
                counts["total_projects"] = p[1] if p else 0
                counts["active_projects"] = p[2] if p else 0
            if tasks is not None:
                t = tasks.get(uid)
                counts["assigned_tasks"] = int(t[1] or 0) if t else 0
                counts["completed_tasks"] = int(t[2] or 0) if t else 0
            row = UserActivity(
                user_id=str(uid),
                created_at=_datetime(created_at, created_zone),
                last_login=_datetime(last_login, login_zone),
                role=None if role is None else str(role),
                is_admin=None if admin is None else bool(admin),
                auth_method=None if auth is None else str(auth),
                **counts,
            )
            oldest = {w: _datetime(act[8 + i], entry_zone) if act else None for i, w in enumerate(WINDOWS)}
            t = tasks.get(uid) if tasks is not None else None
            inputs = fingerprint(
                (created_at, last_login, role, auth, admin),
                (act[1], act[8 + len(WINDOWS)]) if act else (0, None),
                (t[1], t[2]) if t else None,
            )
            yield AggregatedUser(activity=row, oldest_in_window=oldest, inputs=inputs)

    def _readable_time(self, column: Any) -> Any:
        """A timestamp as the driver can hand it over, whatever the row holds; :func:`_datetime` finishes the job.

        SQLite keeps any text in a date column, which SQLAlchemy's own parser rejects with an exception: we
        take the text. PostgreSQL's ``infinity`` has no Python datetime (psycopg raises): we read it as NULL.
        """
        if self.dialect == "sqlite":
            return type_coerce(column, String)
        if self.dialect == "postgresql":
            return case((func.isfinite(column), column), else_=None)
        return column

    def _range(self, column: Any, lo: Any, hi: Any, ids: Sequence[Any] | None) -> ColumnElement[bool]:
        return column.in_(ids) if ids is not None else and_(column >= lo, column <= hi)

    def _activity(self, lo: Any, hi: Any, ids: Sequence[Any] | None) -> Any:
        a = self.mapping.activity
        t = self.bound.activity
        uid, ts = t.c[a.user_id], t.c[a.timestamp]
        since = [self._time(ts, self.now - w) for w in WINDOWS]
        in_window = [ts >= s for s in since]
        columns: list[Any] = [uid, func.count()]
        columns += [func.sum(case((cond, 1), else_=0)) for cond in in_window]
        if a.source:
            source = t.c[a.source]
            columns.append(func.sum(case((source.in_(a.timer_values) if a.timer_values else false(), 1), else_=0)))
            columns.append(func.sum(case((source.in_(a.manual_values) if a.manual_values else false(), 1), else_=0)))
        else:
            columns += [literal(None), literal(None)]
        if a.duration_seconds:
            duration = t.c[a.duration_seconds]
            columns.append(func.sum(case((duration > 0, duration), else_=0)))  # a negative duration is a bad row: 0
        else:
            columns.append(literal(None))
        columns += [self._readable_time(func.min(case((cond, ts), else_=None))) for cond in in_window]
        columns.append(self._key_sum())
        return select(*columns).where(self._range(uid, lo, hi, ids)).group_by(uid)

    def _key_sum(self) -> Any:
        """Sum of the entries' keys: with the count, it changes when an entry is deleted, moved or committed late."""
        key = self.bound.change_columns.get(self.bound.activity.name, (None, None))[0]
        return func.sum(self.bound.activity.c[key]) if key else literal(None)

    def input_fingerprints(self, conn: Connection, *, after: Any, limit: int) -> tuple[list[tuple[str, str]], Any]:
        """(user id, fingerprint) for up to ``limit`` users after ``after`` in id order, and the last id (None at the end)."""
        users = conn.execute(self.users(after=after, limit=limit)).all()
        if not users:
            return [], None
        lo, hi = users[0][0], users[-1][0]
        a = self.mapping.activity
        t = self.bound.activity
        uid = t.c[a.user_id]
        light = select(uid, func.count(), self._key_sum()).where(self._range(uid, lo, hi, None)).group_by(uid)
        activity = {row[0]: row for row in conn.execute(light)}
        tasks = {row[0]: row for row in conn.execute(self._tasks(lo, hi, None))} if self.bound.tasks is not None else None
        out = []
        for user_id, created_at, last_login, role, auth, admin in users:
            act = activity.get(user_id)
            k = tasks.get(user_id) if tasks is not None else None
            out.append(
                (
                    str(user_id),
                    fingerprint(
                        (created_at, last_login, role, auth, admin),
                        (act[1], act[2]) if act else (0, None),
                        (k[1], k[2]) if k else None,
                    ),
                )
            )
        return out, (users[-1][0] if len(users) >= limit else None)

    def _projects(self, lo: Any, hi: Any, ids: Sequence[Any] | None) -> Any:
        a, p = self.mapping.activity, self.mapping.projects
        assert p is not None and a.project_id and self.bound.projects is not None
        t, pt = self.bound.activity, self.bound.projects
        uid, pid = t.c[a.user_id], t.c[a.project_id]
        active = case((pt.c[p.status].in_(p.active_values), pid), else_=None)
        return (
            select(uid, func.count(pid.distinct()), func.count(active.distinct()))
            .select_from(t.join(pt, pt.c[p.id] == pid))
            .where(self._range(uid, lo, hi, ids))
            .group_by(uid)
        )

    def _tasks(self, lo: Any, hi: Any, ids: Sequence[Any] | None) -> Any:
        k = self.mapping.tasks
        assert k is not None and self.bound.tasks is not None
        t = self.bound.tasks
        assignee, status = t.c[k.assignee], t.c[k.status]
        not_open = (*k.done_values, *k.closed_values)
        open_ = and_(status.is_not(None), status.not_in(not_open)) if not_open else status.is_not(None)
        done = status.in_(k.done_values) if k.done_values else false()
        return (
            select(assignee, func.sum(case((open_, 1), else_=0)), func.sum(case((done, 1), else_=0)))
            .where(self._range(assignee, lo, hi, ids))
            .group_by(assignee)
        )


def fingerprint(user_row: Sequence[Any], entries: Sequence[Any], tasks: Sequence[Any] | None) -> str:
    """A short hash of one user's rule inputs that no change column reveals, as the queries return them.

    ``repr`` of the driver's values (str, int, Decimal, datetime) is stable across processes, unlike ``hash()``.
    """
    open_, done = (int(tasks[0] or 0), int(tasks[1] or 0)) if tasks is not None else (0, 0)
    payload = (tuple(user_row), int(entries[0] or 0), _number(entries[1]), open_, done)
    return hashlib.blake2b(repr(payload).encode(), digest_size=16).hexdigest()


def _number(value: Any) -> int | str | None:
    """A sum as PostgreSQL (Decimal) or SQLite (int) returns it, as one value."""
    if value is None:
        return None
    try:
        return int(value) if int(value) == value else str(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)


def column_time(bound: BoundSchema, column: Any, value: datetime) -> datetime:
    """``value`` (aware) as a parameter comparable with ``column``: naive in the column's declared zone when it is naive."""
    zone = bound.zone(column)
    if zone is None:
        return value
    return value.astimezone(zone).replace(tzinfo=None)


def _datetime(value: Any, zone: tzinfo | None = None) -> datetime | None:
    """Dates from any driver as aware datetimes: a naive value is in ``zone`` (UTC when None).

    SQLite may hand back text for untyped columns. A naive local time that a zone's clock change skips or
    repeats is read with ``fold=0``, as :mod:`zoneinfo` does.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    if value.tzinfo is not None:
        return value
    try:
        return value.replace(tzinfo=zone or timezone.utc).astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return value.replace(tzinfo=timezone.utc)  # 9999-12-31 east of UTC: past the last date, keep it as it is
