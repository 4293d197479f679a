"""One batch of users: their aggregate rows read, each user's :class:`AggregatedUser` built, bad rows set aside.

A bad row never stops the others (docs/segments.md, "Bad rows"): values the driver could not hand over are read
as ``driver_values.py`` says and reported as a :class:`~.driver_values.Problem` naming the user; a batch that
still fails is bisected down to the users it fails for (``quarantine.py``), who are set aside (reported, not
computed) while the rest go on.

Each user's rule inputs that no change column shows are fingerprinted as they are read (``fingerprints.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from . import UserSegment, sql_rules
from .binding import BoundSchema
from .driver_values import ROW_ERRORS, Problem, StageError, cause, decode, read_datetime
from .fingerprints import fingerprint
from .plan import advise_index
from .queries import BAD_DATES, DERIVED, KEY_SUM, OLDEST, PROJECTS, SegmentQueries
from .rules import WINDOWS, UserActivity, next_change, person_properties


@dataclass(frozen=True)
class AggregatedUser:
    """One user's aggregates, plus the oldest entry inside each window (for :func:`rules.next_change`)."""

    activity: UserActivity
    oldest_in_window: dict[timedelta, datetime | None]
    inputs: str = ""  # fingerprint of the rule inputs the sweep compares (see ``fingerprints.py``)

    derived: dict[str, object] | None = None  # the rules' properties as the database computed them

    def segment(self, now: datetime) -> UserSegment:
        return person_properties(self.activity, now=now, derived=self.derived)

    def due_at(self, now: datetime) -> datetime | None:
        return next_change(self.activity, self.oldest_in_window, now=now)


def recover(conn: Connection, error: BaseException) -> None:
    """After a failed statement: roll back (PostgreSQL refuses anything else in an aborted transaction).

    A lost connection is not a bad row: it is raised, and the cycle retries later.
    """
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        raise error
    conn.rollback()


class Aggregator:
    """Runs :class:`~.queries.SegmentQueries` for batches of users and builds their :class:`AggregatedUser`."""

    def __init__(self, bound: BoundSchema, now: datetime, dialect: str = "") -> None:
        self.bound = bound
        self.mapping = bound.mapping
        self.queries = SegmentQueries(bound, now, dialect)
        advise_index(bound, dialect)
        q = self.queries
        u, a = self.mapping.users, self.mapping.activity
        self._zones = tuple(
            _unless_utc(q.zone(name, table))
            for name, table in ((u.created_at, bound.users), (u.last_login, bound.users), (a.timestamp, bound.activity))
        )
        self._idle: tuple[Any, ...] = ()  # the rules' properties of a user without entries (the activity query's NULL row)
        self._where = tuple(
            f"{table.name}.{name}"
            for table, name in (
                (bound.users, u.created_at),
                (bound.users, u.last_login),
                (bound.activity, a.timestamp),
                (bound.activity, a.duration_seconds),
            )
        )

    def fetch_users(
        self, conn: Connection, *, problems: list[Problem], derive: bool = False, **where: Any
    ) -> list[tuple[Any, ...]]:
        """:meth:`~.queries.SegmentQueries.users` rows as Python values: text decoded (with replacement when
        it is not UTF-8), each value that was not readable as it is reported in ``problems``. The column of what
        PostgreSQL read as NULL is dropped; with ``derive``, the database's age properties follow, as a dict."""
        u = self.mapping.users
        table = self.bound.users.name
        out = []
        for uid, created_at, last_login, role, auth, admin, out_of_range, *days in conn.execute(
            self.queries.users(derive=derive, **where)
        ):
            created_at, last_login = decode(created_at)[0], decode(last_login)[0]
            texts = []
            for name, value in ((u.role, role), (u.auth_method, auth)):
                text, bad = decode(value)
                if bad:
                    problems.append(Problem(str(uid), f"{table}.{name}", "not valid UTF-8, read with replacement characters"))
                texts.append(text)
            if out_of_range:
                for name in str(out_of_range).split(","):
                    problems.append(Problem(str(uid), f"{table}.{name}", "date outside years 1-9999, read as NULL"))
            row = (uid, created_at, last_login, texts[0], texts[1], admin)
            out.append((*row, dict(zip((*sql_rules.AGE, "days_since_last_login"), days, strict=True))) if derive else row)
        return out

    def fetch_batch(
        self, conn: Connection, *, after: Any, limit: int, problems: list[Problem]
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """The next keyset batch of :meth:`fetch_users` (with the derived columns), and whether it holds every user:
        the first batch reads one user more to know it, which lets one scan serve it (``plan.py``)."""
        read: list[Problem] = []
        users = self.fetch_users(conn, after=after, limit=limit + (after is None), problems=read, derive=True)
        whole = after is None and len(users) <= limit
        if not whole and len(users) > limit:
            dropped = str(users[-1][0])  # read again by the next batch, with its problems
            users, read = users[:limit], [p for p in read if p.user_id != dropped]
        problems.extend(read)
        return users, whole

    def batch(
        self,
        conn: Connection,
        users: Sequence[Any],
        *,
        ids: Sequence[Any] | None,
        problems: list[Problem] | None = None,
        whole: bool = False,
    ) -> Iterator[AggregatedUser]:
        """The users' aggregates (rows of :meth:`fetch_users`), streamed: the queries run at once, and a failing
        one raises :class:`StageError` naming its table."""
        activity, tasks = self.fetch(conn, users, ids, whole=whole)
        return self.build(users, activity, tasks, problems if problems is not None else [])

    def fetch(
        self, conn: Connection, users: Sequence[Any], ids: Sequence[Any] | None, *, whole: bool = False
    ) -> tuple[dict[Any, Any], dict[Any, Any] | None]:
        """The activity and task rows of ``users`` (of ``ids`` when given, else of their id range), by user."""
        lo, hi = users[0][0], users[-1][0]

        def rows(table: Any, query: Any) -> dict[Any, Any]:
            try:
                return {row[0]: row for row in conn.execute(query).all()}
            except ROW_ERRORS as error:
                raise StageError(table.name, error) from error

        activity = rows(self.bound.activity, self.queries.activity(lo, hi, ids, whole=whole))
        self._idle = tuple(activity.pop(None)[DERIVED:])
        tasks = rows(self.bound.tasks, self.queries.tasks(lo, hi, ids)) if self.bound.tasks is not None else None
        return activity, tasks

    def build(
        self,
        users: Sequence[Any],
        activity: dict[Any, Any],
        tasks: dict[Any, Any] | None,
        problems: list[Problem],
    ) -> Iterator[AggregatedUser]:
        """The aggregates user by user, streamed; a user whose values the rules cannot take is set aside alone."""
        for user in users:
            try:
                built = self._one(user, activity, tasks, problems)
            except ROW_ERRORS as error:
                problems.append(Problem(str(user[0]), self.bound.users.name, cause(error), skipped=True))
                continue
            yield built

    def _one(
        self,
        user: Sequence[Any],
        activity: dict[Any, Any],
        tasks: dict[Any, Any] | None,
        problems: list[Problem],
    ) -> AggregatedUser:
        a = self.mapping.activity
        created_zone, login_zone, entry_zone = self._zones
        created_where, login_where, entry_where, duration_where = self._where
        uid, created_at, last_login, role, auth, admin, ages = user

        def when(value: Any, zone: tzinfo | None, where: str) -> datetime | None:
            read = read_datetime(value, zone)
            if read is None and value is not None:
                # the value is not logged: a date column may hold any text
                problems.append(Problem(str(uid), where, "not a date in years 1-9999, read as NULL"))
            return read

        act = activity.get(uid)
        counts = dict(
            entries_all_time=int(act[1] or 0) if act else 0,
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
        if self.bound.projects is not None:
            counts["total_projects"] = int(act[PROJECTS] or 0) if act else 0
            counts["active_projects"] = int(act[PROJECTS + 1] or 0) if act else 0
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
        if act and act[BAD_DATES]:
            cause_ = f"{act[BAD_DATES]} entries dated outside years 1-9999: counted, dates read as NULL"
            problems.append(Problem(str(uid), entry_where, cause_))
        derived = sql_rules.read_properties(row, act[DERIVED:] if act else self._idle, ages, self.queries.now)
        oldest = {w: when(act[OLDEST + i], entry_zone, entry_where) if act else None for i, w in enumerate(WINDOWS)}
        t = tasks.get(uid) if tasks is not None else None
        inputs = fingerprint(
            (created_at, last_login, role, auth, admin),
            (act[1], act[KEY_SUM]) if act else (0, None),
            (t[1], t[2]) if t else None,
        )
        return AggregatedUser(activity=row, oldest_in_window=oldest, inputs=inputs, derived=derived)


def _unless_utc(zone: tzinfo | None) -> tzinfo | None:
    """None for UTC, whichever object names it: ``read_datetime`` then takes its fast path."""
    if zone is None or zone is timezone.utc or getattr(zone, "key", None) in ("UTC", "Etc/UTC"):
        return None
    return zone


_INT64 = 2**63
