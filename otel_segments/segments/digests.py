"""A full refresh with the state in place asks the database which users' rows changed, so only those cross the wire.

Each user's rule inputs, as the aggregation reads them (the users row, the activity aggregates and the rules'
properties ``sql_rules.py`` computes over them, the task counts), are folded into one text in SQL: the
*rows digest*. The state stores it beside the segment it was computed from (``user_state.rows_digest``). A full
refresh with the state in place computes the digest of every user in one aggregation pass and returns only the
users whose digest differs from the stored one, who have no stored one, or whose stored ``due_at`` passed (a
property that changes with the clock alone, or the maximum age, as in an incremental refresh). Those users
are computed as before, and the segment digest still decides what is sent: the rows digest only skips work,
it never sends or suppresses an update by itself.

Where the comparison runs: in the database, a join of the digest against our state table, when the state lives
in the app's database (the same engine or URL); in Python, batch by batch, when ``OTEL_SEGMENTS_STATE_URL``
points elsewhere (then every user's id and digest crosses the wire, not their rows).

The function, per dialect (a rule, since SQLite has no hash function): the columns' values each quoted
(``quote()`` on SQLite, which writes text, blobs, numbers and NULL distinctly; ``quote_nullable(value::text)``
on PostgreSQL) and joined with commas; PostgreSQL stores the ``md5`` of that text, SQLite the text itself (a few
hundred bytes a user). A digest is only ever compared with one the same database computed; one stored by another
dialect, another session setting or an older state never matches, which costs one recomputation of the user in
Python and resends nothing whose segment did not change. Other dialects do not ask: their full refresh computes
everyone.

What keeps a skipped user right: a stored rows digest always belongs to the rows the stored segment was computed
from. A refresh that stores a changed segment without asking the database (an incremental one) clears it
(``RefreshState.save``), so the next full refresh recomputes that user. The digest covers every column the
aggregation reads for the rules, window counts at this ``now`` included; what changes with the clock alone
and is no column (a day counter) is what ``due_at`` bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, Table, Text, cast, func, literal, or_, select
from sqlalchemy.engine import Engine

from .aggregate import aggregate_users
from .batch import AggregatedUser, recover
from .binding import BoundSchema
from .driver_values import ROW_ERRORS, Problem, cause
from .plan import SCAN
from .queries import SegmentQueries
from .state import RefreshState

_logger = logging.getLogger(__name__)

DIALECTS = ("sqlite", "postgresql")


def rows_digest(columns: Sequence[Any], dialect: str) -> Any:
    """The rows digest of one user's ``columns`` (see the module docstring for the rule per dialect)."""
    if dialect == "postgresql":
        return func.md5(func.concat_ws(",", *[func.quote_nullable(cast(c, Text)) for c in columns]))
    quoted = [func.quote(c) for c in columns]
    out = quoted[0]
    for value in quoted[1:]:
        out = out.op("||")(literal(",")).op("||")(value)
    return out


def digest_query(
    queries: SegmentQueries, *, after: Any, limit: int | None, lo: Any, hi: Any, state: Table | None, now: datetime
) -> Any:
    """(user id, rows digest) of the users after ``after`` (``limit`` of them, or all): those whose digest differs
    from ``state``'s stored one (or who are due, or have none) when ``state`` is given, else every one."""
    bound = queries.bound
    whole = limit is None
    users = queries.users(after=after, limit=limit, derive=True).subquery("digest_users")
    activity = queries.activity(lo, hi, None, whole=whole).subquery("digest_activity")
    u, a = list(users.c), list(activity.c)
    joined = users.outerjoin(activity, a[0] == u[0])
    columns = [*u[1:], *a[1:]]
    if bound.tasks is not None:
        tasks = queries.tasks(lo, hi, None).subquery("digest_tasks")
        t = list(tasks.c)
        joined = joined.outerjoin(tasks, t[0] == u[0])
        columns += t[1:]
    digest = rows_digest(columns, queries.dialect)
    if state is None:
        return select(u[0], digest).select_from(joined)
    inner = select(u[0].label("uid"), digest.label("rows_digest")).select_from(joined).subquery("digests")
    s = state.c
    changed = or_(s.user_id.is_(None), s.rows_digest.is_(None), s.rows_digest != inner.c.rows_digest, s.due_at <= now)
    return (
        select(inner.c.uid, inner.c.rows_digest)
        .select_from(inner.outerjoin(state, s.user_id == cast(inner.c.uid, String)))
        .where(changed)
    )


def same_database(app: Engine, state: Engine) -> bool:
    """Whether a query on ``app`` can join our state table: the same engine, or the same URL."""
    return app is state or app.url == state.url


def changed_users(
    app_engine: Engine,
    bound: BoundSchema,
    state: RefreshState,
    *,
    now: datetime,
    batch_size: int,
    problems: list[Problem],
    retry: set[str],
    digests: dict[str, str],
    app_ids: set[str],
) -> Iterator[AggregatedUser]:
    """The aggregates of the users whose rows digest changed (and of ``retry``), batch by batch; their new rows
    digests are put in ``digests`` (by id) for the caller to store, and every user id seen in ``app_ids``.

    A batch whose digest query fails (a row the database cannot read) is computed whole by the aggregation, which
    sets the bad rows aside (``quarantine.py``), and stores no rows digest for it.
    """
    dialect = app_engine.dialect.name
    queries = SegmentQueries(bound, now, dialect)
    in_sql = same_database(app_engine, state.engine)
    whole = queries.shape == SCAN  # one pass over the table, as the aggregation reads it (``plan.py``)
    last: Any = None
    while True:
        with app_engine.connect() as conn:
            ids = [row[0] for row in conn.execute(queries.ids(after=last, limit=None if whole else batch_size))]
            if not ids:
                return
            query = digest_query(
                queries,
                after=last,
                limit=None if whole else batch_size,
                lo=ids[0],
                hi=ids[-1],
                state=state.users if in_sql else None,
                now=now,
            )
            try:
                found = {str(uid): digest for uid, digest in conn.execute(query)}
            except ROW_ERRORS as error:
                recover(conn, error)  # a lost connection is raised: the cycle fails and is retried
                _logger.debug("otel_segments: rows digests not read (%s): the batch is computed whole", cause(error))
                found = None
        batch = [str(uid) for uid in ids]
        app_ids.update(batch)
        if found is None:
            changed = batch
        else:
            if not in_sql:
                found = _differing(state, found, now)
            digests.update(found)
            changed = sorted(set(found) | (retry & set(batch)))
        if changed:
            yield from aggregate_users(app_engine, bound, now=now, user_ids=changed, batch_size=batch_size, problems=problems)
        if whole or len(ids) < batch_size:
            return
        last = ids[-1]


def _differing(state: RefreshState, found: dict[str, str], now: datetime) -> dict[str, str]:
    """``found``'s users whose digest differs from the stored one, who have none, or who are due: in Python, for a
    state in another database."""
    stored = state.rows_digests(list(found))
    out = {}
    for uid, digest in found.items():
        kept = stored.get(uid)
        if kept is None or kept[0] is None or kept[0] != digest or kept[1] <= now:
            out[uid] = digest
    return out
