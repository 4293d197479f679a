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

A bad row never stops the others (docs/segments.md, "Bad rows"): the SQL reads what the driver could not
hand over as something it can (PostgreSQL dates outside Python's years 1-9999 as NULL, SQLite text that
is not UTF-8 as bytes, decoded here with replacement; SQLite sums as floats, which cannot overflow), and
each such value is reported as a :class:`Problem` naming the user. A batch that still fails is bisected
down to the users it fails for, who are set aside (reported, not computed) while the rest go on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.types import NullType

from . import UserSegment
from .rules import WINDOWS, UserActivity, next_change, person_properties, utc
from .schema import BoundSchema, SchemaMapping, bind

DEFAULT_BATCH_SIZE = 10_000
_ID_CHUNK = 5_000  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits
# Dates PostgreSQL may hold that its driver can hand over as a Python datetime (years 1-9999); outside them a value
# reads as NULL, like ``infinity``. A timezone-aware value is converted to the session's zone first: a day of margin.
_NAIVE_RANGE = (datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999))
_AWARE_RANGE = (datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30, tzinfo=timezone.utc))
#: What a poisoned row raises while it is read or computed: the batch is bisected to set its users aside.
ROW_ERRORS = (SQLAlchemyError, ValueError, OverflowError, TypeError, ArithmeticError)


@dataclass(frozen=True)
class Problem:
    """A user whose row could not be read as it is: ``skipped`` users were set aside (not computed this cycle);
    the others were computed with the value read as ``cause`` says (NULL, replacement characters)."""

    user_id: str
    where: str  # table.column, or the table when the column is unknown
    cause: str
    skipped: bool = False


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
    problems: list[Problem] | None = None,
) -> Iterator[AggregatedUser]:
    """Every user's (or only ``user_ids``') aggregates; users whose rows cannot be read are appended to ``problems``."""
    bound = schema if isinstance(schema, BoundSchema) else bind(schema, engine)
    queries = _Queries(bound, utc(now), engine.dialect.name)
    found = problems if problems is not None else []
    with engine.connect() as conn:
        if user_ids is None:
            last: Any = None
            while True:
                try:
                    users = queries.fetch_users(conn, after=last, limit=batch_size, problems=found)
                except ROW_ERRORS as error:
                    _recover(conn, error)
                    ids = [row[0] for row in conn.execute(queries.ids(after=last, limit=batch_size))]
                    if not ids:
                        raise
                    last = ids[-1]
                    yield from queries.bisect(conn, ids, found, error)
                    if len(ids) < batch_size:
                        return
                    continue
                if not users:
                    return
                last = users[-1][0]
                yield from queries.safe_batch(conn, users, found)
                if len(users) < batch_size:
                    return
        else:
            ids = queries.coerce_ids(user_ids)
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                try:
                    users = queries.fetch_users(conn, ids=chunk, problems=found)
                except ROW_ERRORS as error:
                    _recover(conn, error)
                    yield from queries.bisect(conn, chunk, found, error)
                    continue
                if users:
                    yield from queries.safe_batch(conn, users, found, ids=chunk)


def _recover(conn: Connection, error: BaseException) -> None:
    """After a failed statement: roll back (PostgreSQL refuses anything else in an aborted transaction).

    A lost connection is not a bad row: it is raised, and the cycle retries later.
    """
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        raise error
    conn.rollback()


class _StageError(Exception):
    """Which table's query failed, for the warning that names it."""

    def __init__(self, table: str, error: BaseException) -> None:
        super().__init__(table)
        self.table = table
        self.error = error


class _Queries:
    """The SQL for one bound schema at one ``now``."""

    def __init__(self, bound: BoundSchema, now: datetime, dialect: str = "") -> None:
        self.bound = bound
        self.now = now
        self.mapping = bound.mapping
        self.dialect = dialect
        u, a = self.mapping.users, self.mapping.activity
        self._zones = (
            self._zone(u.created_at, bound.users),
            self._zone(u.last_login, bound.users),
            self._zone(a.timestamp, bound.activity),
        )
        self._where = tuple(
            f"{table.name}.{name}"
            for table, name in (
                (bound.users, u.created_at),
                (bound.users, u.last_login),
                (bound.activity, a.timestamp),
                (bound.activity, a.duration_seconds),
            )
        )

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
            columns.append(self._readable_text(t.c[name]) if name else literal(None))
        columns.append(self._is_admin())
        columns.append(self._out_of_range(t, (u.created_at, u.last_login)))
        query = select(*columns).where(uid.is_not(None))  # a NULL id names no one (possible in views and legacy tables)
        if ids is not None:
            query = query.where(uid.in_(ids))
        elif after is not None:
            query = query.where(uid > after)
        query = query.order_by(uid)
        return query.limit(limit) if limit else query

    def ids(self, *, after: Any, limit: int) -> Any:
        """The next ``limit`` user ids alone: what a batch whose users row cannot be read is bisected over."""
        uid = self.bound.users.c[self.mapping.users.id]
        query = select(uid).where(uid.is_not(None))
        if after is not None:
            query = query.where(uid > after)
        return query.order_by(uid).limit(limit)

    def fetch_users(self, conn: Connection, *, problems: list[Problem], **where: Any) -> list[tuple[Any, ...]]:
        """:meth:`users` rows as Python values: text decoded (with replacement when it is not UTF-8), each
        value that was not readable as it is reported in ``problems``. The last column (what PostgreSQL
        read as NULL) is dropped."""
        u = self.mapping.users
        table = self.bound.users.name
        out = []
        for uid, created_at, last_login, role, auth, admin, out_of_range in conn.execute(self.users(**where)):
            created_at, last_login = _decode(created_at)[0], _decode(last_login)[0]
            texts = []
            for name, value in ((u.role, role), (u.auth_method, auth)):
                text, bad = _decode(value)
                if bad:
                    problems.append(Problem(str(uid), f"{table}.{name}", "not valid UTF-8, read with replacement characters"))
                texts.append(text)
            if out_of_range:
                for name in str(out_of_range).split(","):
                    problems.append(Problem(str(uid), f"{table}.{name}", "date outside years 1-9999, read as NULL"))
            out.append((uid, created_at, last_login, texts[0], texts[1], admin))
        return out

    def safe_batch(
        self, conn: Connection, users: Sequence[Any], problems: list[Problem], *, ids: Sequence[Any] | None = None
    ) -> Iterator[AggregatedUser]:
        """:meth:`batch`, or when it fails, :meth:`bisect` over its users: one poisoned user never stops the others."""
        mark = len(problems)
        try:
            built = self.batch(conn, users, ids=ids, problems=problems)
        except (*ROW_ERRORS, _StageError) as error:
            del problems[mark:]  # the bisection reports them again, for the users it computes
            _recover(conn, error.error if isinstance(error, _StageError) else error)
            yield from self.bisect(conn, [row[0] for row in users], problems, error)
            return
        yield from built

    def bisect(
        self, conn: Connection, ids: Sequence[Any], problems: list[Problem], error: BaseException
    ) -> Iterator[AggregatedUser]:
        """The users of ``ids`` computed in halves down to one; the users that still fail alone are set aside.

        When every user of several fails alone, nothing is wrong with a row: the error is the database's, and is raised.
        """
        done: list[AggregatedUser] = []
        skipped: list[Problem] = []
        stack = [list(ids)]
        while stack:
            part = stack.pop()
            mark = len(problems)
            try:
                users = self.fetch_users(conn, ids=part, problems=problems)
                done.extend(self.batch(conn, users, ids=part, problems=problems))
            except (*ROW_ERRORS, _StageError) as failure:
                del problems[mark:]
                cause = failure.error if isinstance(failure, _StageError) else failure
                _recover(conn, cause)
                if len(part) > 1:
                    half = len(part) // 2
                    stack += [part[half:], part[:half]]
                    continue
                where = failure.table if isinstance(failure, _StageError) else self.bound.users.name
                skipped.append(Problem(str(part[0]), self._locate(conn, part[0], where), _cause(cause), skipped=True))
        if len(skipped) > 1 and not done:
            raise error.error if isinstance(error, _StageError) else error
        problems.extend(skipped)
        yield from done

    def _locate(self, conn: Connection, user_id: Any, table: str) -> str:
        """``table.column``: the first of the table's mapped columns that fails to read alone for the user."""
        m = self.mapping
        if table == self.bound.users.name:
            t, owner, names = (
                self.bound.users,
                m.users.id,
                (m.users.created_at, m.users.last_login, m.users.role, m.users.auth_method),
            )
        elif table == self.bound.activity.name:
            a = m.activity
            t, owner, names = self.bound.activity, a.user_id, (a.timestamp, a.source, a.duration_seconds, a.project_id)
        elif self.bound.tasks is not None and table == self.bound.tasks.name and m.tasks is not None:
            t, owner, names = self.bound.tasks, m.tasks.assignee, (m.tasks.status,)
        else:
            return table
        for name in names:
            if not name:
                continue
            try:
                conn.execute(select(t.c[name]).where(t.c[owner] == user_id)).all()
                if name == getattr(m.activity, "duration_seconds", None) and t is self.bound.activity:
                    conn.execute(select(func.sum(t.c[name])).where(t.c[owner] == user_id)).all()
            except ROW_ERRORS as error:
                _recover(conn, error)
                return f"{table}.{name}"
        return table

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

    def batch(
        self, conn: Connection, users: Sequence[Any], *, ids: Sequence[Any] | None, problems: list[Problem] | None = None
    ) -> Iterator[AggregatedUser]:
        """The users' aggregates (rows of :meth:`fetch_users`), streamed: the queries run at once, and a failing
        one raises :class:`_StageError` naming its table."""
        lo, hi = users[0][0], users[-1][0]
        problems = problems if problems is not None else []

        def rows(table: Any, query: Any) -> dict[Any, Any]:
            try:
                return {row[0]: row for row in conn.execute(query)}
            except ROW_ERRORS as error:
                raise _StageError(table.name, error) from error

        activity = rows(self.bound.activity, self._activity(lo, hi, ids))
        projects = rows(self.bound.activity, self._projects(lo, hi, ids)) if self.bound.projects is not None else None
        tasks = rows(self.bound.tasks, self._tasks(lo, hi, ids)) if self.bound.tasks is not None else None
        return self._build(users, activity, projects, tasks, problems)

    def _build(
        self,
        users: Sequence[Any],
        activity: dict[Any, Any],
        projects: dict[Any, Any] | None,
        tasks: dict[Any, Any] | None,
        problems: list[Problem],
    ) -> Iterator[AggregatedUser]:
        """The aggregates user by user, streamed; a user whose values the rules cannot take is set aside alone."""
        for user in users:
            try:
                built = self._one(user, activity, projects, tasks, problems)
            except ROW_ERRORS as error:
                problems.append(Problem(str(user[0]), self.bound.users.name, _cause(error), skipped=True))
                continue
            yield built

    def _one(
        self,
        user: Sequence[Any],
        activity: dict[Any, Any],
        projects: dict[Any, Any] | None,
        tasks: dict[Any, Any] | None,
        problems: list[Problem],
    ) -> AggregatedUser:
        a = self.mapping.activity
        created_zone, login_zone, entry_zone = self._zones
        created_where, login_where, entry_where, duration_where = self._where
        uid, created_at, last_login, role, auth, admin = user

        def when(value: Any, zone: tzinfo | None, where: str) -> datetime | None:
            read = _datetime(value, zone)
            if read is None and value is not None:
                # the value is not logged: a date column may hold any text
                problems.append(Problem(str(uid), where, "not a date in years 1-9999, read as NULL"))
            return read

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
            if abs(counts["total_seconds"]) >= _INT64:
                problems.append(Problem(str(uid), duration_where, "sum beyond a 64-bit integer, summed as a float"))
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
            created_at=when(created_at, created_zone, created_where),
            last_login=when(last_login, login_zone, login_where),
            role=None if role is None else str(role),
            is_admin=None if admin is None else bool(admin),
            auth_method=None if auth is None else str(auth),
            **counts,
        )
        if act and self.dialect == "postgresql" and act[9 + len(WINDOWS)]:
            problems.append(
                Problem(
                    str(uid),
                    entry_where,
                    f"{act[9 + len(WINDOWS)]} entries dated outside years 1-9999: counted, dates read as NULL",
                )
            )
        oldest = {w: when(act[8 + i], entry_zone, entry_where) if act else None for i, w in enumerate(WINDOWS)}
        t = tasks.get(uid) if tasks is not None else None
        inputs = fingerprint(
            (created_at, last_login, role, auth, admin),
            (act[1], act[8 + len(WINDOWS)]) if act else (0, None),
            (t[1], t[2]) if t else None,
        )
        return AggregatedUser(activity=row, oldest_in_window=oldest, inputs=inputs)

    def _readable_time(self, column: Any) -> Any:
        """A timestamp as the driver can hand it over, whatever the row holds; :func:`_datetime` finishes the job.

        SQLite keeps any text in a date column, which SQLAlchemy's own parser rejects with an exception: we
        take it as bytes (it may not be UTF-8, see :meth:`_readable_text`; a number becomes its text). PostgreSQL's ``infinity``
        and years outside 1-9999 have no Python datetime (psycopg raises): we read them as NULL.
        """
        if self.dialect == "sqlite":  # one CAST, no CASE: SQLite would compute an aggregate once per mention
            return type_coerce(cast(column, LargeBinary), NullType())
        if self.dialect == "postgresql":
            return case((self._in_range(column), column), else_=None)  # infinity and years beyond 1-9999
        return column

    def _in_range(self, column: Any) -> ColumnElement[bool]:
        first, last = _AWARE_RANGE if getattr(column.type, "timezone", False) else _NAIVE_RANGE
        return and_(column >= literal(first, column.type), column <= literal(last, column.type))

    def _out_of_range(self, table: Any, names: Sequence[str | None]) -> Any:
        """PostgreSQL: the names of the date columns (comma-separated) that :meth:`_readable_time` reads as NULL
        though they hold a finite date, for the warning; elsewhere NULL (Python finds those itself)."""
        names = [n for n in names if n]
        if self.dialect != "postgresql" or not names:
            return literal(None)
        parts = [case((and_(func.isfinite(table.c[n]), not_(self._in_range(table.c[n]))), literal(n)), else_=None) for n in names]
        return func.concat_ws(",", *parts)

    def _readable_text(self, column: Any) -> Any:
        """A text column as the driver can hand it over: SQLite keeps any bytes in a text column and Python's
        driver raises on one that is not UTF-8 (for the whole query), so SQLite text is read as bytes and
        decoded here (:func:`_decode`)."""
        if self.dialect == "sqlite":
            return type_coerce(case((func.typeof(column) == "text", cast(column, LargeBinary)), else_=column), NullType())
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
            positive = case((duration > 0, duration), else_=0)  # a negative duration is a bad row: 0
            # SQLite's integer sum raises on overflow, for the whole query; total() sums as a float
            columns.append(func.total(positive) if self.dialect == "sqlite" else func.sum(positive))
        else:
            columns.append(literal(None))
        columns += [self._readable_time(func.min(case((cond, ts), else_=None))) for cond in in_window]
        columns.append(self._key_sum())
        if self.dialect == "postgresql":  # entries whose date reads as NULL though finite, for the warning
            columns.append(func.sum(case((and_(func.isfinite(ts), not_(self._in_range(ts))), 1), else_=0)))
        return select(*columns).where(self._range(uid, lo, hi, ids)).group_by(uid)

    def _key_sum(self) -> Any:
        """Sum of the entries' keys: with the count, it changes when an entry is deleted, moved or committed late."""
        key = self.bound.change_columns.get(self.bound.activity.name, (None, None))[0]
        return func.sum(self.bound.activity.c[key]) if key else literal(None)

    def input_fingerprints(self, conn: Connection, *, after: Any, limit: int) -> tuple[list[tuple[str, str]], Any]:
        """(user id, fingerprint) for up to ``limit`` users after ``after`` in id order, and the last id (None at the end)."""
        users = self.fetch_users(conn, after=after, limit=limit, problems=[])
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
    value = _decode(value)[0]
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    if value.tzinfo is not None:
        try:
            value.astimezone(timezone.utc)  # 9999-12-31T23:00-05:00 or 0001-01-01T00:00+01:00: no such UTC instant
        except (OverflowError, ValueError):
            return None
        return value
    try:
        return value.replace(tzinfo=zone or timezone.utc).astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return value.replace(tzinfo=timezone.utc)  # 9999-12-31 east of UTC: past the last date, keep it as it is


_INT64 = 2**63


def _decode(value: Any) -> tuple[Any, bool]:
    """Text as :meth:`_Queries._readable_text` hands it over, as str; True when it was not valid UTF-8."""
    if not isinstance(value, bytes | bytearray | memoryview):
        return value, False
    raw = bytes(value)
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), True


def _cause(error: BaseException) -> str:
    """The error's class and first line, from the driver's own error when SQLAlchemy wraps one (no SQL, no parameters)."""
    inner = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = str(inner).strip().splitlines()[0][:200] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
