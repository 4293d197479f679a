"""All users' aggregates, streamed in keyset batches, without letting one bad row stop the others.

Each batch runs :class:`~.queries.SegmentQueries`' few aggregate queries over its slice of users (``batch.py``), so
memory stays bounded by the batch size at any number of users; with ``prefetch``, the next batch is read on a
second connection while this one is computed (``prefetch.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from . import UserSegment
from .batch import AggregatedUser, Aggregator, recover
from .binding import BoundSchema, bind
from .driver_values import ROW_ERRORS, Problem
from .prefetch import Resume, batches, concurrent_reads
from .quarantine import bisect, safe_batch
from .queries import ID_CHUNK
from .rules import utc
from .schema import SchemaMapping

DEFAULT_BATCH_SIZE = 10_000


def compute_segments(
    engine: Engine,
    schema: SchemaMapping | BoundSchema,
    *,
    now: datetime,
    user_ids: Iterable[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[UserSegment]:
    """Every user's (or only ``user_ids``') :class:`UserSegment`, in user id order, streamed."""
    prefetch = concurrent_reads(engine)
    for user in aggregate_users(engine, schema, now=now, user_ids=user_ids, batch_size=batch_size, prefetch=prefetch):
        yield user.segment(now)


def aggregate_users(
    engine: Engine,
    schema: SchemaMapping | BoundSchema,
    *,
    now: datetime,
    user_ids: Iterable[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    problems: list[Problem] | None = None,
    prefetch: bool = False,
) -> Iterator[AggregatedUser]:
    """Every user's (or only ``user_ids``') aggregates; users whose rows cannot be read are appended to ``problems``.

    ``prefetch``: for every user, read the next batch on a second connection while the caller computes this
    one (``prefetch.py``; only where :func:`.prefetch.concurrent_reads` allows it).
    """
    bound = schema if isinstance(schema, BoundSchema) else bind(schema, engine)
    reader = Aggregator(bound, utc(now), engine.dialect.name)
    found = problems if problems is not None else []
    last: Any = None
    if user_ids is None and prefetch:
        for item in batches(engine, reader, batch_size):
            if isinstance(item, Resume):
                last = item.after
                break
            found.extend(item.problems)
            yield from reader.build(item.users, item.activity, item.tasks, found)
        else:
            return
    with engine.connect() as conn:
        if user_ids is None:
            while True:
                try:
                    users, whole = reader.fetch_batch(conn, after=last, limit=batch_size, problems=found)
                except ROW_ERRORS as error:
                    recover(conn, error)
                    ids = [row[0] for row in conn.execute(reader.queries.ids(after=last, limit=batch_size))]
                    if not ids:
                        raise
                    last = ids[-1]
                    yield from bisect(reader, conn, ids, found, error)
                    if len(ids) < batch_size:
                        return
                    continue
                if not users:
                    return
                last = users[-1][0]
                yield from safe_batch(reader, conn, users, found, whole=whole)
                if len(users) < batch_size:
                    return
        else:
            ids = reader.queries.coerce_ids(user_ids)
            for start in range(0, len(ids), ID_CHUNK):
                chunk = ids[start : start + ID_CHUNK]
                try:
                    users = reader.fetch_users(conn, ids=chunk, problems=found, derive=True)
                except ROW_ERRORS as error:
                    recover(conn, error)
                    yield from bisect(reader, conn, chunk, found, error)
                    continue
                if users:
                    yield from safe_batch(reader, conn, users, found, ids=chunk)
