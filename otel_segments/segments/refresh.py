"""Incremental refresh: recompute only the users who can have changed, store what changed.

A user can have changed since the last refresh (its watermark) when:

- it has activity stamped after the watermark (or edited after it, when the
  mapping names an ``updated_at`` column), or it is new, or it logged in;
- the clock alone moved one of its properties: an entry left the 24 h / 7 d /
  30 d window, or a day counter ticked (account age, hence its 7/30/180-day
  category; days since login). Each user's next such moment is stored as its
  ``due_at`` when it is computed, so these are found with one indexed query;
- its segment is older than ``max_age`` (default 24 h): this catches what no
  watermark can see, such as deleted entries or back-dated imports.

Everything else keeps its stored segment. A restart reads the watermark and
due times from the state tables, so it neither recomputes nor resends everyone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.engine import Engine

from . import UserSegment
from .queries import DEFAULT_BATCH_SIZE, AggregatedUser, aggregate_users
from .rules import utc
from .schema import BoundSchema, SchemaMapping, bind
from .state import RefreshState

_logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE = timedelta(hours=24)
# Rows committed late can carry a timestamp slightly before the watermark: look back this far.
LATE_COMMIT_SLACK = timedelta(minutes=5)
# Beyond this many candidates an incremental refresh walks all users instead (bounded memory, same result).
MAX_CANDIDATES = 200_000
_WRITE_BATCH = 2_000


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did. ``changed`` users now have a new digest and are pending for every sink."""

    full: bool
    computed: int
    changed: int
    now: datetime
    seconds: float


def refresh(
    app_engine: Engine,
    state: RefreshState,
    schema: SchemaMapping | BoundSchema,
    *,
    now: datetime | None = None,
    full: bool = False,
    max_age: timedelta = DEFAULT_MAX_AGE,
    on_change: Callable[[UserSegment], None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> RefreshResult:
    """Recompute the users who can have changed (all of them when ``full`` or on the first run).

    Users whose digest changed are written to ``state`` (and passed to ``on_change``,
    e.g. to update a span-attribute cache); deliver them with
    ``state.pending(sink)`` / ``state.mark_delivered(sink, ...)``. The watermark
    advances only when the whole refresh succeeded.
    """
    started = time.perf_counter()
    bound = schema if isinstance(schema, BoundSchema) else bind(schema, app_engine)
    now = utc(now or datetime.now(timezone.utc))
    watermark = state.watermark()
    user_ids: list[str] | None = None
    if not full and watermark is not None:
        user_ids = candidates(app_engine, bound, state, since=watermark - LATE_COMMIT_SLACK, now=now)
    is_full = user_ids is None
    users = aggregate_users(app_engine, bound, now=now, user_ids=user_ids, batch_size=batch_size)
    computed = changed = 0
    for chunk in _chunks(users, _WRITE_BATCH):
        known = state.digests([u.activity.user_id for u in chunk])
        to_save: list[tuple[UserSegment, str, datetime, datetime]] = []
        to_touch: list[tuple[str, datetime, datetime]] = []
        for user in chunk:
            segment = user.segment(now)
            digest = segment.digest()
            due = _due(user, now, max_age)
            if known.get(segment.distinct_id) == digest:
                to_touch.append((segment.distinct_id, now, due))
            else:
                to_save.append((segment, digest, now, due))
        state.save(to_save)
        state.touch(to_touch)
        computed += len(chunk)
        changed += len(to_save)
        if on_change is not None:
            for segment, *_ in to_save:
                on_change(segment)
    state.set_watermark(now)
    result = RefreshResult(full=is_full, computed=computed, changed=changed, now=now, seconds=time.perf_counter() - started)
    _logger.debug("otel_segments: refresh %s", result)
    return result


def candidates(
    app_engine: Engine, bound: BoundSchema, state: RefreshState, *, since: datetime, now: datetime
) -> list[str] | None:
    """User ids that can have changed since ``since``, or None when there are so many that a full walk is cheaper."""
    found: set[str] = set()

    def add(values: Iterator[Any]) -> bool:
        for value in values:
            found.add(str(value))
            if len(found) > MAX_CANDIDATES:
                return False
        return True

    mapping = bound.mapping
    a, u = mapping.activity, mapping.users
    act, users = bound.activity, bound.users
    stamps = [act.c[a.timestamp]] + ([act.c[a.updated_at]] if a.updated_at else [])
    # No DISTINCT: SQLite would then walk the whole user_id index in order (to skip a sort) and test every
    # row's timestamp, instead of the timestamp index's few recent rows; the set below removes duplicates.
    activity_query = select(act.c[a.user_id]).where(or_(*[c > _param(c, since) for c in stamps]))
    user_stamps = [users.c[name] for name in (u.created_at, u.last_login) if name]
    with app_engine.connect() as conn:
        if not add(row[0] for row in conn.execute(activity_query)):
            return None
        if user_stamps:
            users_query = select(users.c[u.id]).where(or_(*[c > _param(c, since) for c in user_stamps]))
            if not add(row[0] for row in conn.execute(users_query)):
                return None
    if not add(iter(state.due(now))):
        return None
    return sorted(found)


def _param(column: Any, value: datetime) -> datetime:
    return value if getattr(column.type, "timezone", False) else value.replace(tzinfo=None)


def _due(user: AggregatedUser, now: datetime, max_age: timedelta) -> datetime:
    oldest_allowed = now + max_age
    clock = user.due_at(now)
    return oldest_allowed if clock is None else min(clock, oldest_allowed)


def _chunks(items: Iterator[AggregatedUser], size: int) -> Iterator[list[AggregatedUser]]:
    chunk: list[AggregatedUser] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
