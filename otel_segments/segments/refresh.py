"""Incremental refresh: recompute only the users who can have changed, store what changed.

Who can have changed is found in every input table by what it offers (``changes.py``: keys for
inserts, ``updated_at`` for edits, digests for users missing from the state and for projects' statuses, a
rotating fingerprint sweep for what no column shows), plus users whose stored ``due_at`` passed: the first moment a
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
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from . import UserSegment, changes
from .aggregate import DEFAULT_BATCH_SIZE, AggregatedUser, aggregate_users
from .binding import BoundSchema, bind
from .captured import CAPTURE, WINDOWS, ChangeCapture, windows_after_triggers
from .digests import DIALECTS as DIGEST_DIALECTS
from .digests import changed_users
from .driver_values import ROW_ERRORS, Problem, cause
from .prefetch import concurrent_reads
from .rules import utc
from .schema import SchemaMapping
from .state import RefreshState

_logger = logging.getLogger(__name__)
_Row = TypeVar("_Row", bound=tuple[Any, ...])

DEFAULT_MAX_AGE = timedelta(hours=24)
# Beyond this many candidates an incremental refresh walks all users instead (bounded memory, same result).
MAX_CANDIDATES = 200_000
_WRITE_BATCH = 2_000
#: Meta key of the users set aside by the last refresh: candidates again at the next one.
QUARANTINE = "quarantine"
_QUARANTINE_KEPT = 10_000


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did. ``changed`` users now have a new digest and are pending for every sink."""

    full: bool
    computed: int
    changed: int
    now: datetime
    seconds: float
    #: Users whose rows could not be read as they are (named once each by the job): ``skipped`` ones were set
    #: aside and are retried at the next refresh; the others were computed with the value read as NULL.
    problems: tuple[Problem, ...] = ()

    @property
    def quarantined(self) -> int:
        return len({p.user_id for p in self.problems if p.skipped})


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
    capture: ChangeCapture | None = None,
) -> RefreshResult:
    """Recompute the users who can have changed (all of them when ``full`` or on the first run).

    Users whose digest changed are written to ``state`` (and passed to ``on_change``,
    e.g. to update a span-attribute cache); deliver them with
    ``state.pending(sink)`` / ``state.mark_delivered(sink, ...)``. The change
    cursors advance only when the whole refresh succeeded. Run it under the
    lease: it migrates an older state first (raising :class:`~.state.StateVersionError`
    for a newer one). With ``capture`` (exact mode), the candidates are the users the app database's triggers
    recorded, and the change rows read are cleared once the refresh is stored (``captured.py``).
    """
    started = time.perf_counter()
    migrated = state.migrate()
    bound = schema if isinstance(schema, BoundSchema) else bind(schema, app_engine)
    now = utc(now or datetime.now(timezone.utc))
    exact = None if capture is None else capture.find(app_engine, bound, state, now=now, limit=MAX_CANDIDATES)
    if exact is None:
        after_triggers = windows_after_triggers(state)
        found = changes.find(app_engine, bound, state, now=now, limit=MAX_CANDIDATES)
        found.complete = found.complete and not after_triggers
        found.cursors[CAPTURE] = WINDOWS
    else:
        found, captured = exact
    retry = state.meta_values(QUARANTINE).get(QUARANTINE) or []
    if found.user_ids is not None:
        found.user_ids.update(str(uid) for uid in retry)
    user_ids: list[str] | None = None
    if not (full or migrated or not found.complete or found.user_ids is None or state.watermark() is None):
        user_ids = sorted(found.user_ids)
    is_full = user_ids is None
    problems: list[Problem] = []
    digests: dict[str, str] = {}  # rows digests (``digests.py``) of the users about to be computed
    app_ids: set[str] = set()
    users: Iterator[AggregatedUser]
    if is_full and found.state_users > 0 and app_engine.dialect.name in DIGEST_DIALECTS:
        # the state is in place: only the users whose rows changed are computed (all of them after a migration,
        # which stores their rows digests)
        users = changed_users(
            app_engine,
            bound,
            state,
            now=now,
            batch_size=batch_size,
            problems=problems,
            retry={str(uid) for uid in retry},
            digests=digests,
            app_ids=app_ids,
        )
    else:
        # read ahead only when there is a next batch to read
        prefetch = is_full and found.app_users > batch_size and concurrent_reads(app_engine, state.engine)
        users = aggregate_users(
            app_engine, bound, now=now, user_ids=user_ids, batch_size=batch_size, problems=problems, prefetch=prefetch
        )
    computed = changed = 0
    rows = found.state_users  # the state's rows, kept up to date below: the next find() need not count them
    returned: set[str] = set()
    added: set[str] = set()  # users without a state row, to be saved
    for chunk in _chunks(users, _WRITE_BATCH):
        known = state.stored([u.activity.user_id for u in chunk])
        to_save: list[tuple[UserSegment, str, datetime, datetime, str, str | None]] = []
        to_touch: list[tuple[str, datetime, datetime, str, str | None]] = []
        for user in chunk:
            rows_digest = digests.pop(user.activity.user_id, None)
            try:
                segment = user.segment(now)
                digest = segment.digest()
                due = _due(user, now, max_age)
            except ROW_ERRORS as error:  # a value the rules cannot take: this user waits, the others go on
                problems.append(Problem(user.activity.user_id, "rules", cause(error), skipped=True))
                continue
            stored = known.get(segment.distinct_id)
            if stored is None:
                added.add(segment.distinct_id)
            if stored is None or stored[0] != digest:
                to_save.append((segment, digest, now, due, user.inputs, rows_digest))
            elif stored[2] != user.inputs or not now < stored[1] <= due or (rows_digest is not None and stored[3] != rows_digest):
                to_touch.append((segment.distinct_id, now, due, user.inputs, rows_digest))
            # else nothing to write: the stored due time comes no later than the new one (at worst an early recompute)
            returned.add(segment.distinct_id)
        to_save = _stored(state.save, to_save, lambda row: row[0].distinct_id, state.users.name, problems)
        rows += sum(1 for row in to_save if row[0].distinct_id in added)
        _stored(state.touch, to_touch, lambda row: row[0], state.users.name, problems)
        computed += len(chunk)
        changed += len(to_save)
        if on_change is not None:
            for segment, *_ in to_save:
                on_change(segment)
    set_aside = sorted({p.user_id for p in problems if p.skipped})
    returned.update(set_aside)  # they still exist: their state stays until they can be computed
    returned.update(app_ids)  # users the rows digests found unchanged: they exist, their state stays
    gone = found.removed | (set(user_ids or ()) - returned)  # candidates the users table no longer has
    if is_full:
        gone = state.user_ids() - returned
    if gone:
        rows -= state.remove(sorted(gone))
    if is_full:
        rows = state.count()
    cursors = {**found.cursors, changes.STATE_USERS: rows, QUARANTINE: set_aside[:_QUARANTINE_KEPT]}
    state.set_watermark(now, **cursors)
    if exact is not None and capture is not None and captured:
        capture.clear(app_engine, captured)
    result = RefreshResult(
        full=is_full,
        computed=computed,
        changed=changed,
        now=now,
        seconds=time.perf_counter() - started,
        problems=tuple(problems),
    )
    _logger.debug("otel_segments: refresh %s", result)
    return result


class StateWriteError(RuntimeError):
    """The state database refused a whole write (a lock it could not get, a read-only or vanished database): the
    refresh fails, with one line, and its cursors stay where they were, so its changes are found again."""


def _stored(
    write: Callable[[list[_Row]], None], rows: list[_Row], user: Callable[[_Row], str], table: str, problems: list[Problem]
) -> list[_Row]:
    """``write(rows)``, bisected when it fails so that a row the state database refuses sets aside only its user;
    the rows written.

    A failure of the database rather than of a row raises :class:`StateWriteError` instead: an
    ``OperationalError`` (a lock or statement timeout, a lost connection, SQLite's locked or read-only file)
    at once, without a retry per row; anything else once bisecting found that no row of several could be
    written. Setting every user aside would blame each of them, one line each, and let the cycle move its
    cursors on as if it had worked.
    """
    try:
        write(rows)
        return rows
    except ROW_ERRORS as error:
        if _database_wide(error):
            raise StateWriteError(f"the state table {table} could not be written ({cause(error)})") from error
        if len(rows) <= 1:
            problems.extend(Problem(user(row), table, cause(error), skipped=True) for row in rows)
            return []
        refused: list[Problem] = []
        written = _halves(write, rows, user, table, refused)
        if not written:
            raise StateWriteError(f"the state table {table} refused every row of a write ({cause(error)})") from error
        problems.extend(refused)
        return written


def _database_wide(error: BaseException) -> bool:
    return isinstance(error, OperationalError) or (isinstance(error, DBAPIError) and error.connection_invalidated)


def _halves(
    write: Callable[[list[_Row]], None], rows: list[_Row], user: Callable[[_Row], str], table: str, problems: list[Problem]
) -> list[_Row]:
    """Each half of ``rows`` written on its own, and each half that fails bisected down to the rows refused."""
    written: list[_Row] = []
    for part in (rows[: len(rows) // 2], rows[len(rows) // 2 :]):
        try:
            write(part)
            written += part
        except ROW_ERRORS as error:
            if _database_wide(error):
                raise StateWriteError(f"the state table {table} could not be written ({cause(error)})") from error
            if len(part) == 1:
                problems.append(Problem(user(part[0]), table, cause(error), skipped=True))
            else:
                written += _halves(write, part, user, table, problems)
    return written


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
