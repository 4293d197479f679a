"""The SQL that reads every rule input, for one bound schema at one ``now``: SQLAlchemy Core, no execution.

Per batch of users (ordered by id, ``id > last`` keyset) there are three queries whatever the batch size:
the users (with admin status), one conditional aggregation over activity (rolled up per project and joined
to the projects), one over tasks. The aggregates are restricted to the batch's id range, so each
reads only its slice of the activity index. The same Core runs on SQLite and PostgreSQL. Naive datetimes
are compared in the zone the mapping declares for their column (bound parameters are converted to it).

Values a driver cannot hand over (SQLite text that is not UTF-8 or not a date, PostgreSQL dates outside
Python's years 1-9999) are selected as something it can (bytes, NULL): ``driver_values.py`` reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone, tzinfo
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
    null,
    select,
    true,
    type_coerce,
)
from sqlalchemy.types import NullType

from . import sql_rules
from .binding import BoundSchema
from .plan import SCAN, activity_shape, not_indexed
from .rules import WINDOWS

ID_CHUNK = 5_000  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits
#: Positions in :meth:`SegmentQueries.activity` rows: user id, count, one count per window, timer, manual,
#: seconds, then the oldest entry per window, the key sum, PostgreSQL's unreadable dates, projects used and active,
#: then the rules' properties.
OLDEST = 8
KEY_SUM = OLDEST + len(WINDOWS)
BAD_DATES = KEY_SUM + 1
PROJECTS = BAD_DATES + 1
DERIVED = PROJECTS + 2  # then :data:`.sql_rules.ACTIVITY`
PER_SECONDS = 6  # the seconds in the roll-up's columns (no user id)
# Dates PostgreSQL may hold that its driver can hand over as a Python datetime (years 1-9999); outside them a value
# reads as NULL, like ``infinity``. A timezone-aware value is converted to the session's zone first: a day of margin.
_NAIVE_RANGE = (datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999999))
_AWARE_RANGE = (datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30, tzinfo=timezone.utc))


class SegmentQueries:
    """The SQL for one bound schema at one ``now``."""

    def __init__(self, bound: BoundSchema, now: datetime, dialect: str = "") -> None:
        self.bound = bound
        self.now = now
        self.mapping = bound.mapping
        self.dialect = dialect
        self.shape = activity_shape(bound, dialect)

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

    def zone(self, name: str | None, table: Any) -> tzinfo | None:
        return self.bound.zone(table.c[name]) if name else None

    def users(
        self, *, after: Any = None, limit: int | None = None, ids: Sequence[Any] | None = None, derive: bool = False
    ) -> Any:
        """The users' columns; with ``derive``, then :data:`.sql_rules.AGE` and ``days_since_last_login`` (NULL
        where unknown or left to the reference)."""
        u = self.mapping.users
        t = self.bound.users
        uid = t.c[u.id]
        columns: list[Any] = [uid]
        for name in (u.created_at, u.last_login):
            columns.append(self.readable_time(t.c[name]) if name else literal(None))
        columns.append(self.readable_text(t.c[u.role]) if u.role else self._group_role())
        columns.append(self.readable_text(t.c[u.auth_method]) if u.auth_method else literal(None))
        columns.append(self._is_admin())
        columns.append(self._out_of_range(t, (u.created_at, u.last_login)))
        if derive:
            created, login = (self._days(t.c[name]) if name else literal(None) for name in (u.created_at, u.last_login))
            columns += [*sql_rules.age_properties(created), login]
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

    def _group_role(self) -> Any:
        """The role the user's roles name (``RolesAssociation.role_names``; Django's groups): one correlated
        subquery per user, on the association's user column (an index Django creates)."""
        r = self.mapping.users.roles
        if self.bound.roles is None or r is None or r.role_names is None:
            return literal(None)
        association, roles = self.bound.roles
        t = self.bound.users
        held = (association.c[r.user_id] == t.c[self.mapping.users.id], association.c[r.role_id] == roles.c[r.roles_id])
        name = roles.c[r.roles_name]
        if not r.role_names:
            first = select(name).where(*held).order_by(association.c[r.role_id]).limit(1).scalar_subquery()
            return self.readable_text(first)
        rank = case(*[(name == group, index) for index, (group, _) in enumerate(r.role_names)], else_=None)
        best = select(func.min(rank)).where(*held).scalar_subquery()
        return case(*[(best == index, literal(role)) for index, (_, role) in enumerate(r.role_names)], else_=None)

    def _is_admin(self) -> Any:
        u = self.mapping.users
        t = self.bound.users
        conditions: list[ColumnElement[bool]] = []
        if u.admin:
            conditions.append(t.c[u.admin] == true())
        if u.role:
            conditions.append(t.c[u.role].in_(u.admin_role_values))
        if self.bound.roles is not None and u.roles is not None and u.roles.admin_names:
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

    def readable_time(self, column: Any) -> Any:
        """A timestamp as the driver can hand it over, whatever the row holds; ``driver_values.read_datetime``
        finishes the job.

        SQLite keeps any text in a date column, which SQLAlchemy's own parser rejects with an exception: we
        take it as bytes (it may not be UTF-8, see :meth:`readable_text`; a number becomes its text). PostgreSQL's ``infinity``
        and years outside 1-9999 have no Python datetime (psycopg raises): we read them as NULL.
        """
        if self.dialect == "sqlite":  # one CAST, no CASE: SQLite would compute an aggregate once per mention
            return type_coerce(cast(column, LargeBinary), NullType())
        if self.dialect == "postgresql":
            return case((self._in_range(column), column), else_=None)  # infinity and years beyond 1-9999
        return column

    def _days(self, column: Any) -> Any:
        return sql_rules.whole_days(column, self.bound.zone(column), self.now, self.dialect, self._in_range)

    def _in_range(self, column: Any) -> ColumnElement[bool]:
        return in_range(column)

    def _out_of_range(self, table: Any, names: Sequence[str | None]) -> Any:
        """PostgreSQL: the names of the date columns (comma-separated) that :meth:`_readable_time` reads as NULL
        though they hold a finite date, for the warning; elsewhere NULL (Python finds those itself)."""
        names = [n for n in names if n]
        if self.dialect != "postgresql" or not names:
            return literal(None)
        parts = [case((and_(func.isfinite(table.c[n]), not_(self._in_range(table.c[n]))), literal(n)), else_=None) for n in names]
        return func.concat_ws(",", *parts)

    def readable_text(self, column: Any) -> Any:
        """A text column as the driver can hand it over: SQLite keeps any bytes in a text column and Python's
        driver raises on one that is not UTF-8 (for the whole query), so SQLite text is read as bytes and
        decoded here (:func:`.driver_values.decode`)."""
        if self.dialect == "sqlite":
            return type_coerce(case((func.typeof(column) == "text", cast(column, LargeBinary)), else_=column), NullType())
        return column

    def owned_by(self, column: Any, lo: Any, hi: Any, ids: Sequence[Any] | None) -> ColumnElement[bool]:
        return column.in_(ids) if ids is not None else and_(column >= lo, column <= hi)

    def activity(self, lo: Any, hi: Any, ids: Sequence[Any] | None, *, whole: bool = False) -> Any:
        """Each user's entries in one scan: counts per window, sources, seconds, the oldest entry per window, the
        key sum and (when projects are mapped) the projects used and active. Positions: :data:`OLDEST` onwards.

        With projects, the entries are grouped per (user, project) first and that roll-up joined to the
        projects: one pass in the order of an index on (user, project), no ``count(DISTINCT)`` sort.
        """
        a, p = self.mapping.activity, self.mapping.projects
        t, pt = self.bound.activity, self.bound.projects
        uid, ts = t.c[a.user_id], t.c[a.timestamp]
        owned: Any = self.owned_by(uid, lo, hi, ids)
        if whole and self.shape == SCAN:
            uid = not_indexed(uid)
            owned = uid.is_not(None)  # a NULL user's entries would take the place of the row of a user without any
        in_window = [ts >= self._time(ts, self.now - w) for w in WINDOWS]
        per: list[Any] = [func.count(), *[func.sum(case((cond, 1), else_=0)) for cond in in_window]]
        if a.source:
            source = t.c[a.source]
            per.append(func.sum(case((source.in_(a.timer_values) if a.timer_values else false(), 1), else_=0)))
            per.append(func.sum(case((source.in_(a.manual_values) if a.manual_values else false(), 1), else_=0)))
        else:
            per += [None, None]
        if a.duration_seconds:
            duration = t.c[a.duration_seconds]
            positive = case((duration > 0, duration), else_=0)  # a negative duration is a bad row: 0
            per.append(self._sum(positive))
        else:
            per.append(None)
        per += [func.min(case((cond, ts), else_=None)) for cond in in_window]
        key = self.bound.change_columns.get(t.name, (None, None))[0]
        per.append(func.sum(t.c[key]) if key else None)
        if self.dialect == "postgresql":  # entries whose date reads as NULL though finite, for the warning
            per.append(func.sum(case((and_(func.isfinite(ts), not_(self._in_range(ts))), 1), else_=0)))
        else:
            per.append(None)
        mins = range(OLDEST - 1, OLDEST - 1 + len(WINDOWS))  # positions in ``per`` (which lacks the user id)
        if pt is None or p is None or not a.project_id:
            columns = [literal(None) if c is None else self.readable_time(c) if i in mins else c for i, c in enumerate(per)]
            columns = [uid, *columns, literal(None), literal(None)]
            return self._derived(select(*columns).where(owned).group_by(uid), per)
        pid = t.c[a.project_id]
        labelled = [uid.label("uid"), pid.label("pid")] + [c.label(f"c{i}") for i, c in enumerate(per) if c is not None]
        rolled = select(*labelled).where(owned).group_by(uid, pid).subquery("per_project")
        r = rolled.c
        columns = [r.uid]
        for i, c in enumerate(per):
            if c is None:
                columns.append(literal(None))
            elif i in mins:
                columns.append(self.readable_time(func.min(r[f"c{i}"])))
            else:
                columns.append(self._sum(r[f"c{i}"]) if i == PER_SECONDS else func.sum(r[f"c{i}"]))
        active = case((pt.c[p.status].in_(p.active_values), 1), else_=None)
        columns += [func.count(pt.c[p.id]), func.count(active)]
        joined = rolled.outerjoin(pt, pt.c[p.id] == r.pid)
        return self._derived(select(*columns).select_from(joined).group_by(r.uid), per)

    def _derived(self, aggregates: Any, per: list[Any]) -> Any:
        """``aggregates`` then :data:`.sql_rules.ACTIVITY`, evaluated over its columns (each aggregate computed once),
        and one more row whose user id is NULL: the properties of a user without entries (zeros in)."""
        inner = aggregates.subquery("aggregates")
        c = list(inner.c)
        timer, manual, seconds = ((c[i] if per[i - 1] is not None else None) for i in (5, 6, 7))
        derived = sql_rules.activity_properties(c[3], c[4], c[1], timer, manual, seconds, self.dialect)
        zero = literal(0)
        timer_, manual_, seconds_ = (None if column is None else zero for column in (timer, manual, seconds))
        idle = sql_rules.activity_properties(zero, zero, zero, timer_, manual_, seconds_, self.dialect)
        return select(*c, *derived).union_all(select(*[null()] * len(c), *idle))

    def _sum(self, value: Any) -> Any:
        """SQLite's integer sum raises on overflow, for the whole query; total() sums as a float."""
        return func.total(value) if self.dialect == "sqlite" else func.sum(value)

    def key_sum(self) -> Any:
        """Sum of the entries' keys: with the count, it changes when an entry is deleted, moved or committed late."""
        key = self.bound.change_columns.get(self.bound.activity.name, (None, None))[0]
        return func.sum(self.bound.activity.c[key]) if key else literal(None)

    def tasks(self, lo: Any, hi: Any, ids: Sequence[Any] | None) -> Any:
        k = self.mapping.tasks
        assert k is not None and self.bound.tasks is not None
        t = self.bound.tasks
        assignee, status = t.c[k.assignee], t.c[k.status]
        not_open = (*k.done_values, *k.closed_values)
        open_ = and_(status.is_not(None), status.not_in(not_open)) if not_open else status.is_not(None)
        done = status.in_(k.done_values) if k.done_values else false()
        return (
            select(assignee, func.sum(case((open_, 1), else_=0)), func.sum(case((done, 1), else_=0)))
            .where(self.owned_by(assignee, lo, hi, ids))
            .group_by(assignee)
        )


def in_range(column: Any) -> ColumnElement[bool]:
    """PostgreSQL: the dates its driver can hand over as a Python datetime (not ``infinity``, years 1-9999)."""
    first, last = _AWARE_RANGE if getattr(column.type, "timezone", False) else _NAIVE_RANGE
    return and_(column >= literal(first, column.type), column <= literal(last, column.type))


def column_time(bound: BoundSchema, column: Any, value: datetime) -> datetime:
    """``value`` (aware) as a parameter comparable with ``column``: naive in the column's declared zone when it is naive."""
    zone = bound.zone(column)
    if zone is None:
        return value
    return value.astimezone(zone).replace(tzinfo=None)
