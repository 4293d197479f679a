"""Incremental refresh: recompute only the users who can have changed, store what changed.

Who can have changed is found in every input table by what it offers (``changes.py``: keys for
inserts, ``updated_at`` for edits, counts for users missing from the state, a rotating fingerprint
sweep for what no column shows), plus users whose stored ``due_at`` passed: the first moment a
property changes with the clock alone (an entry leaving the 24 h / 7 d / 30 d window, a day counter
ticking), capped by ``max_age`` (default 24 h), which bounds whatever nothing else sees.

Everything else keeps its stored segment. A restart reads the cursors and due times from the state
tables, so it neither recomputes nor resends everyone. The first refresh of a state, and the first
after this release migrated an older one, compute everyone; digests that did not change are not
sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy.engine import Engine

from . import UserSegment, changes
from .queries import DEFAULT_BATCH_SIZE, AggregatedUser, aggregate_users
from .rules import utc
from .schema import BoundSchema, SchemaMapping, bind
from .state import RefreshState

_logger = logging.getLogger(__name__)

DEFAULT_MAX_AGE = timedelta(hours=24)
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
    ``state.pending(sink)`` / ``state.mark_delivered(sink, ...)``. The change
    cursors advance only when the whole refresh succeeded. Run it under the
    lease: it migrates an older state first (raising :class:`~.state.StateVersionError`
    for a newer one).
    """
    started = time.perf_counter()
    migrated = state.migrate()
    bound = schema if isinstance(schema, BoundSchema) else bind(schema, app_engine)
    now = utc(now or datetime.now(timezone.utc))
    found = changes.find(app_engine, bound, state, now=now, limit=MAX_CANDIDATES)
    user_ids: list[str] | None = None
    if not (full or migrated or not found.complete or found.user_ids is None or state.watermark() is None):
        user_ids = sorted(found.user_ids)
    is_full = user_ids is None
    users = aggregate_users(app_engine, bound, now=now, user_ids=user_ids, batch_size=batch_size)
    computed = changed = 0
    returned: set[str] = set()
    for chunk in _chunks(users, _WRITE_BATCH):
        known = state.digests([u.activity.user_id for u in chunk])
        to_save: list[tuple[UserSegment, str, datetime, datetime, str]] = []
        to_touch: list[tuple[str, datetime, datetime, str]] = []
        for user in chunk:
            segment = user.segment(now)
            digest = segment.digest()
            due = _due(user, now, max_age)
            if known.get(segment.distinct_id) == digest:
                to_touch.append((segment.distinct_id, now, due, user.inputs))
            else:
                to_save.append((segment, digest, now, due, user.inputs))
            returned.add(segment.distinct_id)
        state.save(to_save)
        state.touch(to_touch)
        computed += len(chunk)
        changed += len(to_save)
        if on_change is not None:
            for segment, *_ in to_save:
                on_change(segment)
    gone = found.removed | (set(user_ids or ()) - returned)  # candidates the users table no longer has
    if is_full:
        gone = state.user_ids() - returned
    if gone:
        state.remove(sorted(gone))
    state.set_watermark(now, **found.cursors)
    result = RefreshResult(full=is_full, computed=computed, changed=changed, now=now, seconds=time.perf_counter() - started)
    _logger.debug("otel_segments: refresh %s", result)
    return result


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
