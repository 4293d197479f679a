"""Users whose rows fail to read are set aside, never the refresh: a failing batch is computed in halves down to one
user, and those that still fail alone are reported (``Problem``, skipped) while everyone else is computed.

A row fails to read when a view over malformed JSON or a cast fails for it, or a value is out of the driver's range;
the aggregation of a batch then raises for all of its users. Bisection finds the few: ``log2(batch)`` queries per
poisoned user.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from .batch import AggregatedUser, Aggregator, recover
from .driver_values import ROW_ERRORS, Problem, StageError, cause
from .queries import ID_CHUNK

#: How many users outside a failing set are tried before every failure is taken for the database's.
PROBES = 3


def safe_batch(
    reader: Aggregator,
    conn: Connection,
    users: Sequence[Any],
    problems: list[Problem],
    *,
    ids: Sequence[Any] | None = None,
    whole: bool = False,
) -> Iterator[AggregatedUser]:
    """:meth:`Aggregator.batch`, or when it fails, :func:`bisect` over its users: one poisoned user never stops the others.
    ``whole``: ``users`` are every user of the table (see :func:`.plan.activity_shape`)."""
    mark = len(problems)
    try:
        built = reader.batch(conn, users, ids=ids, problems=problems, whole=whole)
    except (*ROW_ERRORS, StageError) as error:
        del problems[mark:]  # the bisection reports them again, for the users it computes
        recover(conn, error.error if isinstance(error, StageError) else error)
        yield from bisect(reader, conn, [row[0] for row in users], problems, error)
        return
    yield from built


def bisect(
    reader: Aggregator, conn: Connection, ids: Sequence[Any], problems: list[Problem], error: BaseException
) -> Iterator[AggregatedUser]:
    """The users of ``ids`` computed in halves down to one; the users that still fail alone are set aside.

    When every user of several fails alone and a user outside them fails too (or there is none), nothing is wrong
    with a row: the error is the database's, and is raised. Those users may just be the only candidates of an
    incremental cycle, each with a poisoned row: then another user's aggregation works, and they are set aside.
    """
    done: list[AggregatedUser] = []
    skipped: list[Problem] = []
    failing: list[Any] = []
    stack = [list(ids)]
    while stack:
        part = stack.pop()
        mark = len(problems)
        try:
            users = reader.fetch_users(conn, ids=part, problems=problems, derive=True)
            done.extend(reader.batch(conn, users, ids=part, problems=problems))
        except (*ROW_ERRORS, StageError) as failure:
            del problems[mark:]
            err = failure.error if isinstance(failure, StageError) else failure
            recover(conn, err)
            if len(part) > 1:
                half = len(part) // 2
                stack += [part[half:], part[:half]]
                continue
            where = failure.table if isinstance(failure, StageError) else reader.bound.users.name
            skipped.append(Problem(str(part[0]), _locate(reader, conn, part[0], where), cause(err), skipped=True))
            failing.append(part[0])
    if len(skipped) > 1 and not done and not _works_for_another(reader, conn, failing):
        raise error.error if isinstance(error, StageError) else error
    problems.extend(skipped)
    yield from done


def _works_for_another(reader: Aggregator, conn: Connection, failing: Sequence[Any]) -> bool:
    """The aggregation of a user outside ``failing`` runs (of :data:`PROBES` others, one is enough: another may have a
    poisoned row too): what failed for each of them was in their rows."""
    uid = reader.bound.users.c[reader.mapping.users.id]
    try:
        others = conn.execute(select(uid).where(uid.not_in(failing[:ID_CHUNK])).limit(PROBES)).scalars().all()
    except ROW_ERRORS as error:
        recover(conn, error)
        return False
    for other in others:
        try:
            list(reader.batch(conn, reader.fetch_users(conn, ids=[other], problems=[], derive=True), ids=[other]))
        except (*ROW_ERRORS, StageError) as failure:
            recover(conn, failure.error if isinstance(failure, StageError) else failure)
            continue
        return True
    return False


def _locate(reader: Aggregator, conn: Connection, user_id: Any, table: str) -> str:
    """``table.column``: the first of the table's mapped columns that fails to read alone for the user."""
    m = reader.mapping
    if table == reader.bound.users.name:
        t, owner, names = (
            reader.bound.users,
            m.users.id,
            (m.users.created_at, m.users.last_login, m.users.role, m.users.auth_method),
        )
    elif table == reader.bound.activity.name:
        a = m.activity
        t, owner, names = reader.bound.activity, a.user_id, (a.timestamp, a.source, a.duration_seconds, a.project_id)
    elif reader.bound.tasks is not None and table == reader.bound.tasks.name and m.tasks is not None:
        t, owner, names = reader.bound.tasks, m.tasks.assignee, (m.tasks.status,)
    else:
        return table
    for name in names:
        if not name:
            continue
        try:
            conn.execute(select(t.c[name]).where(t.c[owner] == user_id)).all()
            if name == getattr(m.activity, "duration_seconds", None) and t is reader.bound.activity:
                conn.execute(select(func.sum(t.c[name])).where(t.c[owner] == user_id)).all()
        except ROW_ERRORS as error:
            recover(conn, error)
            return f"{table}.{name}"
    return table
