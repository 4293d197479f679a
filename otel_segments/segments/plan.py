"""The query shape for the indexes an app has, and the one index worth adding, said once.

Apps have the index their ORM made (``time_entries.user_id``), rarely the covering one docs/segments.md
recommends. The aggregation reads the activity table's indexes (reflected with it) and picks the shape they
make fastest; without the covering index the job says once, at INFO, what it would gain and how to create it.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from .binding import BoundSchema

_logger = logging.getLogger(__name__)

#: Measured by ``benchmarks/bench_indexes.py`` (10k users / 1M entries in time order, SQLite, one run beside other load).
INDEX_GAIN = (
    "Measured at 10k users / 1M entries stored in time order (SQLite): a full aggregation pass took 8.7 s with"
    " the index against 15.8 s with only the user_id index (1.8x faster); on PostgreSQL docs/segments.md"
    ' ("Indexes") measured 7.8 s against 12.7 s at 100k users / 10M entries'
)


#: How :meth:`SegmentQueries.activity` reads the entries of a batch that holds every user (``activity_shape``).
ROLL_UP = "roll-up"  # the batch's id range, through the indexes the planner picks
SCAN = "scan"  # the whole table in one pass, the user index ignored


def activity_shape(bound: BoundSchema, dialect: str) -> str:
    """:data:`SCAN` on SQLite when the activity table's index on the user does not lead with (user, project).

    Entries are stored in time order, so one user's entries lie on pages all over the table. With the
    covering index a batch reads its slice in order; with only the app's own ``user_id`` index, SQLite still
    follows it (for the range, and to order the grouping) and fetches every entry's row by a random read,
    slower than reading the table once and sorting (``benchmarks/bench_indexes.py``: 25.8 s against 11.4 s at
    10k users / 1M entries, same run). A batch holding every user (the common case up to the batch size) is
    therefore read by one scan. PostgreSQL's planner makes that choice itself (a sequential scan and a hash).
    """
    a = bound.mapping.activity
    if dialect == "sqlite" and a.project_id and covering_index(bound) is None and _leading(bound, [a.user_id]):
        return SCAN  # with no index on the user at all, the range is read by a scan anyway
    return ROLL_UP


def not_indexed(column: Any) -> Any:
    """SQLite's ``+column``: the same value, which no index can serve (the planner then scans the table)."""
    return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)


def covering_index(bound: BoundSchema) -> Any:
    """The activity table's index leading with (user, project), or None."""
    a = bound.mapping.activity
    return _leading(bound, [a.user_id, a.project_id])


def _leading(bound: BoundSchema, names: list[str | None]) -> Any:
    """The activity table's first index whose columns start with ``names``, or None."""
    for index in bound.activity.indexes:
        if [getattr(c, "name", None) for c in index.columns][: len(names)] == names:
            return index
    return None


def covering_statement(bound: BoundSchema, dialect: str) -> str | None:
    """The ``CREATE INDEX`` that lets a batch read only its slice of the entries, in (user, project) order; None
    when the activity table has it (or has no project to roll up by)."""
    a = bound.mapping.activity
    if not a.project_id or covering_index(bound) is not None:
        return None
    table = bound.activity.name
    rest = [n for n in (a.timestamp, a.source, a.duration_seconds) if n]
    key = bound.change_columns.get(table, (None, None))[0]
    name = f"ix_{table}_segments"
    if dialect == "postgresql":
        included = ", ".join([*rest, *([key] if key else [])])
        return f"CREATE INDEX {name} ON {table} ({a.user_id}, {a.project_id}) INCLUDE ({included})"
    return f"CREATE INDEX {name} ON {table} ({', '.join([a.user_id, a.project_id, *rest])})"


_advised: set[tuple[str, str]] = set()
_logger = logging.getLogger(__name__)


def advise_index(bound: BoundSchema, dialect: str) -> None:
    """Say once, at INFO, which index makes the aggregation faster, with the statement to create it.

    The aggregation works without it (``queries.activity_shape`` picks the shape the indexes make fastest),
    so this is advice, not a warning; the figures are ``benchmarks/bench_indexes.py``'s (docs/segments.md).
    """
    statement = covering_statement(bound, dialect)
    if statement is None or (dialect, bound.activity.name) in _advised:
        return
    _advised.add((dialect, bound.activity.name))
    _logger.info(
        "otel_segments: %s has no index leading with (%s, %s): each batch of a full pass reads its users' entries from"
        " the table. %s. Create it with: %s",
        bound.activity.name,
        bound.mapping.activity.user_id,
        bound.mapping.activity.project_id,
        INDEX_GAIN,
        statement,
    )
