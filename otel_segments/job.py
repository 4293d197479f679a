"""The refresh job: one cycle = lease, incremental refresh, delivery to every sink, cache update.

A cycle is started by :meth:`RefreshJob.kick`, which the
:class:`~otel_segments.reader.SegmentsMetricReader` calls on each collection; it
runs in the job's own worker thread, so a slow database never stalls a metric
export or the host app, and a kick while a cycle runs is ignored (never two
refreshes at once in a process). That thread is an OS thread whatever gevent or
eventlet patched (:mod:`otel_segments.native`), so database work never blocks a
green-thread event loop.

Across a fleet, the cycle runs its refresh and delivery only while it holds the
lease row in the state database; the others just load segments for their own
users from the state tables. Delivery state advances only after a sink accepted a
batch, so a failure anywhere leaves the updates pending for the next cycle:
at-least-once, and exactly-once while the lease holder is not killed between a
sink's acknowledgement and the write that records it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from . import native
from .cache import SegmentCache
from .context import pseudonymize
from .forks import ForkLifecycle
from .lease import Lease
from .segments import UserSegment
from .segments.cohorts import COHORTS
from .segments.refresh import DEFAULT_MAX_AGE, RefreshResult, refresh
from .segments.schema import BoundSchema, SchemaMapping, bind
from .segments.state import RefreshState, StateVersionError
from .sinks import DeliveryError, Refusal, SinkUnsupportedError
from .sinks.posthog import RateLimitedError
from .untraced import untraced

_logger = logging.getLogger(__name__)

GAUGE = "app.segments.users"
SEGMENT_NAME = "app.segment.name"
SEGMENT_VALUE = "app.segment.value"
DEFAULT_INTERVAL = timedelta(seconds=60)
MIN_LEASE_TTL = timedelta(seconds=30)
DEFAULT_DELIVERY_BATCH = 1000
#: After each delivery batch the worker rests this many times the CPU time the batch took: building events is
#: Python work that holds the GIL, and the app's requests in this process wait for it (and for a core).
DELIVERY_PACE = 1.0
#: At shutdown, the share of its bound that a sink's delivery in flight gets to finish before the sinks end it
#: (2 s of the 5 s at exit): a slow but healthy peer answers within it; one that took the connection and never
#: answers (or drips its answer) must not hold the process's exit, which the SDK's own shutdown still follows.
#: A running refresh is not cut short by it (only by the bound).
STOP_GRACE = 0.4
_T = TypeVar("_T")
#: The (property, value) pairs counted for the gauge: every value a cohort names, zeros included.
SEGMENT_VALUES: tuple[tuple[str, str | bool], ...] = tuple(dict.fromkeys((c.property, c.value) for c in COHORTS))


class Sink(Protocol):
    """See :mod:`otel_segments.sinks`: ``deliver`` returns the users refused for good (None: nobody), or raises
    :class:`DeliveryError` naming who was accepted before it stopped; ``shutdown`` may be called from any thread,
    at any time, and ends a delivery in flight instead of waiting for it."""

    def deliver(self, batch: list[UserSegment]) -> Sequence[Refusal] | None: ...

    def shutdown(self, timeout_s: float = 5.0) -> None: ...


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did; ``error`` is the one-line cause when it stopped early."""

    holder: bool = False
    refreshed: RefreshResult | None = None
    delivered: Mapping[str, int] = field(default_factory=dict)
    failed: Mapping[str, str] = field(default_factory=dict)
    #: Per sink, users set aside (their update refused for good); retried each cycle.
    quarantined: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None


class RefreshJob:
    """Refreshes segments and delivers them; owns one worker thread, started on the first :meth:`kick`.

    ``sinks`` maps a sink name (its key in the delivery state) to a factory: sinks
    are built in the worker, once per process, so a forked child never reuses its
    parent's connections.
    """

    def __init__(
        self,
        app_engine: Engine,
        schema: SchemaMapping,
        *,
        state_engine: Engine | None = None,
        sinks: Mapping[str, Callable[[], Sink]] | None = None,
        cache: SegmentCache | None = None,
        interval: timedelta = DEFAULT_INTERVAL,
        max_age: timedelta = DEFAULT_MAX_AGE,
        lease_ttl: timedelta | None = None,
        delivery_batch: int = DEFAULT_DELIVERY_BATCH,
    ) -> None:
        self.app_engine = app_engine
        self.state_engine = state_engine or app_engine
        self.schema = schema
        self.cache = cache
        self.interval = interval
        self.max_age = max_age
        # Renewed before every delivery batch; long enough that a live holder never loses it between cycles.
        self.lease_ttl = lease_ttl or max(2 * interval, MIN_LEASE_TTL)
        self.delivery_batch = delivery_batch
        self._sink_factories = dict(sinks or {})
        self._sinks: dict[str, Sink] = {}
        self._state: RefreshState | None = None
        self._bound: BoundSchema | None = None
        self._lease: Lease | None = None
        self._counts: dict[tuple[str, str | bool], int] | None = None
        #: Per sink, user id -> digest of the update the peer refused for good (named once per update).
        self._quarantine: dict[str, dict[str, str]] = {}
        #: (user id, table.column, cause) the refresh reported and a warning named; ``_set_aside_count`` of them skipped.
        self._problems: set[tuple[str, str, str]] = set()
        self._set_aside_count = 0
        self._init_process_state()
        self._paused = False
        self._shut = False
        self._cycles = 0
        self._forks = ForkLifecycle(
            [self.app_engine, self.state_engine],
            cycle_lock=lambda: self._cycle_lock,
            cycles=lambda: self._cycles,
            on_child=self._forked_child,
            on_prefork_master=self._forked_while_starting,
        )
        self._forks.register()

    def _init_process_state(self) -> None:
        # OS primitives and an OS thread even under gevent or eventlet: see otel_segments.native
        self._cycle_lock = native.Lock()
        self._wake = native.Event()
        self._thread: native.Thread | None = None
        self._stopping = False
        self._last_error: str | None = None
        self._cycle_started: float | None = None  # monotonic start of the running cycle
        self._stuck_reported: float | None = None  # start of the last cycle reported as stuck
        self._delivering_since: float | None = None  # monotonic start of the sink.deliver() call in flight
        self._holder = False  # held the lease at the last cycle: only then is there anything to flush at exit

    # -- driving ---------------------------------------------------------------------------------------------

    def kick(self) -> bool:
        """Ask for a cycle without waiting for it; False when one is already running (or the job is stopped)."""
        if self._stopping or self._paused:
            return False
        if self._cycle_lock.locked():
            self._report_if_stuck()
            return False
        if self._thread is None or not self._thread.is_alive():
            self._thread = native.Thread(self._work)
            self._thread.start()
        self._wake.set()
        return True

    def _work(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            if self._paused:
                self._hand_over()
                return
            self.run_cycle()

    def run_cycle(self, now: datetime | None = None) -> CycleResult | None:
        """Run one cycle in the calling thread; None when another is running. Never raises."""
        if not self._cycle_lock.acquire(blocking=False):
            return None
        try:
            self._cycles += 1
            self._cycle_started = time.monotonic()
            self._forks.repool_if_patched()
            with untraced():
                result = self._cycle(now)
        except StateVersionError as error:  # a newer release's state: say so once and run no more cycles
            self._stopping = True
            _logger.warning("otel_segments: %s", error)
            result = CycleResult(error=str(error))
        except Exception as error:  # noqa: BLE001 - the job must never take the host app down
            result = CycleResult(error=_cause(error))
            self._report(result.error, error)
        else:
            if result.error is None and not result.failed and self._last_error is not None:
                _logger.info("otel_segments: segment refresh works again")
                self._last_error = None
        finally:
            self._release_connections()
            self._cycle_started = None
            self._cycle_lock.release()
        return result

    def _release_connections(self) -> None:
        """Close our pooled connections to a database server: between cycles a process of ours holds none.

        A fleet of processes each keeping a pooled connection would hold one per process for good
        (200 processes past PostgreSQL's default ``max_connections`` of 100) and the app's own would be
        refused. A cycle reconnects once per engine. SQLite's are files, cheap to keep, and an in-memory
        database lives only as long as its connection: those stay.
        """
        for engine in {id(e): e for e in (self.app_engine, self.state_engine)}.values():
            if engine.dialect.name != "sqlite":
                try:
                    engine.dispose()
                except Exception:
                    _logger.debug("otel_segments: closing pooled connections failed", exc_info=True)

    def _cycle(self, now: datetime | None) -> CycleResult:
        state, lease = self._ensure_state()
        self._holder = lease.acquire(self.lease_ttl)
        if not self._holder:
            self._counts = None  # only the holder reports cohort sizes, so a fleet reports each once
            self._sync_cache(state)
            return CycleResult(holder=False)
        refreshed = refresh(self.app_engine, state, self._ensure_bound(), now=now, max_age=self.max_age)
        self._name_problems(refreshed)
        if refreshed.changed or self._counts is None:
            self._counts = _count(state.segments())
        delivered: dict[str, int] = {}
        failed: dict[str, str] = {}
        for name in list(self._sink_factories):
            try:
                delivered[name] = self._deliver(name, state, lease)
            except SinkUnsupportedError as error:
                self._drop_sink(name, error)
            except DeliveryError as error:
                failed[name] = str(error)
                self._report_sink(name, error)
        self._sync_cache(state)
        quarantined = {name: len(users) for name, users in self._quarantine.items() if users}
        if refreshed.quarantined:
            quarantined["refresh"] = refreshed.quarantined
        return CycleResult(holder=True, refreshed=refreshed, delivered=delivered, failed=failed, quarantined=quarantined)

    def _ensure_state(self) -> tuple[RefreshState, Lease]:
        if self._state is None:
            self._state = _create_tables(lambda: RefreshState(self.state_engine))
        if self._lease is None:
            self._lease = _create_tables(lambda: Lease(self.state_engine))
        return self._state, self._lease

    def _ensure_bound(self) -> BoundSchema:
        if self._bound is None:
            self._bound = bind(self.schema, self.app_engine)  # reflection: a wrong mapping fails here, by name
        return self._bound

    # -- delivery --------------------------------------------------------------------------------------------

    def _sink(self, name: str) -> Sink:
        sink = self._sinks.get(name)
        if sink is None:
            sink = self._sinks[name] = self._sink_factories[name]()
        return sink

    def _deliver(self, name: str, state: RefreshState, lease: Lease, deadline: float | None = None) -> int:
        """Send everything pending for ``name``, batch by batch; the lease is renewed before each batch.

        Users a sink accepted are marked delivered, even when it stopped short; users it
        refused for good are set aside (:meth:`_set_aside`) and stay pending, and the
        next batch goes on after them, so they never hold up the rest of the queue.
        """
        if (self._stopping or self._paused) and deadline is None:
            return 0
        try:
            sink = self._sink(name)
        except Exception as error:
            raise DeliveryError(f"could not set up the sink ({_cause(error)})") from error
        sent = 0
        after: str | None = None
        while deadline is None or time.monotonic() < deadline:
            if (self._stopping or self._paused) and deadline is None:
                break
            batch = state.pending(name, limit=self.delivery_batch, after=after)
            if not batch:
                break
            after = batch[-1].distinct_id
            if not lease.acquire(self.lease_ttl):
                _logger.info("otel_segments: the refresh lease passed to another process; it delivers the rest")
                break
            busy = time.thread_time()
            self._delivering_since = time.monotonic()
            try:
                refused = sink.deliver(batch) or ()
            except DeliveryError as error:
                self._record(name, state, batch, error.accepted, error.refused)
                raise
            finally:
                self._delivering_since = None
            sent += self._record(name, state, batch, None, refused)
            if deadline is None:  # a stop or a hand-over sets the wake event, and ends the pause
                self._wake.wait((time.thread_time() - busy) * DELIVERY_PACE)
        return sent

    def _record(
        self,
        name: str,
        state: RefreshState,
        batch: Sequence[UserSegment],
        accepted: Iterable[str] | None,
        refused: Iterable[Refusal],
    ) -> int:
        """Mark ``accepted`` (None: all of ``batch``) delivered, except the refused, whom it sets aside; how many were marked."""
        digests = {segment.distinct_id: segment.digest() for segment in batch}
        refused = list(refused)
        left_out = {refusal.distinct_id for refusal in refused}
        ids = digests if accepted is None else accepted
        done = [(user, digests[user]) for user in ids if user in digests and user not in left_out]
        if done:
            state.mark_delivered(name, done)
        quarantine = self._quarantine.setdefault(name, {})
        for user, _ in done:
            quarantine.pop(user, None)
        for refusal in refused:
            self._set_aside(name, refusal, digests.get(refusal.distinct_id, ""))
        return len(done)

    def _set_aside(self, name: str, refusal: Refusal, digest: str) -> None:
        """One WARNING per user and update the peer refused for good; it stays pending and is tried again each cycle."""
        quarantine = self._quarantine.setdefault(name, {})
        if quarantine.get(refusal.distinct_id) == digest:
            return
        quarantine[refusal.distinct_id] = digest
        _logger.warning(
            "otel_segments: %s refused user %s for good, set aside and retried each cycle (%d set aside now): %s",
            name,
            pseudonymize(str(refusal.distinct_id)),
            len(quarantine),
            refusal.cause,
        )

    def _name_problems(self, refreshed: RefreshResult) -> None:
        """One WARNING per user, place and cause the refresh could not read as it is (once per process);
        users it set aside are counted in the line, and retried by every refresh until they can be computed."""
        named = self._problems
        current = {(p.user_id, p.where, p.cause): p for p in refreshed.problems}
        set_aside = refreshed.quarantined
        for key, problem in current.items():
            if key in named:
                continue
            if problem.skipped:
                _logger.warning(
                    "otel_segments: user %s set aside, retried each cycle (%d set aside now): %s: %s",
                    pseudonymize(problem.user_id),
                    set_aside,
                    problem.where,
                    problem.cause,
                )
            else:
                _logger.warning("otel_segments: user %s: %s: %s", pseudonymize(problem.user_id), problem.where, problem.cause)
        if len(named) > _NAMED_MAX:  # bounded memory; a problem still there is named again, once
            named.clear()
        named.update(current)
        if not set_aside and self._set_aside_count:
            _logger.info("otel_segments: no user is set aside any more")
        self._set_aside_count = set_aside

    # -- what other parts read -------------------------------------------------------------------------------

    def cohort_sizes(self) -> Mapping[tuple[str, str | bool], int]:
        """Users per (property, value) after the last refresh this process ran; empty when it does not hold the lease."""
        return dict(self._counts or {})

    def observe(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        """Callback of the ``app.segments.users`` gauge: reads finished counts, never the database."""
        for (prop, value), count in (self._counts or {}).items():
            text = str(value).lower() if isinstance(value, bool) else value
            yield Observation(count, {SEGMENT_NAME: prop, SEGMENT_VALUE: text})

    def _sync_cache(self, state: RefreshState) -> None:
        """Load the stored segment of every user this process has cached or seen; ``{}`` marks a user with none."""
        if self.cache is None:
            return
        wanted = self.cache.wanted()
        if not wanted:
            return
        found = {segment.distinct_id: segment for segment in state.segments(wanted)}
        for user_id in wanted:
            segment = found.get(user_id)
            self.cache.put(user_id, {**segment.set_once, **segment.set} if segment else {})

    # -- lifecycle -------------------------------------------------------------------------------------------

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the worker, deliver what is pending while time allows, release the lease; bounded by ``timeout_s``."""
        if self._shut:
            return
        self._shut = True
        with untraced():  # called from the app's thread (atexit, the SDK's shutdown): its I/O is ours all the same
            self._stop(timeout_s)

    def _stop(self, timeout_s: float) -> None:
        """Within ``timeout_s`` whatever the peers do: a delivery in flight gets :data:`STOP_GRACE` of it to finish, then
        the sinks end it (they abort their requests); the flush is ended the same way just before the bound."""
        stop_at = time.monotonic()
        deadline = stop_at + timeout_s
        self._stopping = True
        self._wake.set()
        thread = self._thread
        ended = False
        if thread is not None and not thread.is_current():
            grace = timeout_s * STOP_GRACE
            # A running refresh may finish (the flush then delivers what it found); a delivery stuck on its peer
            # is ended after the grace; whatever it is, the worker gets no more than the bound.
            while not thread.join(timeout=0.05) and not ended:
                since = self._delivering_since
                now = time.monotonic()
                if now >= deadline - _STOP_MARGIN_S or (since is not None and now - max(since, stop_at) >= grace):
                    self._shutdown_sinks(deadline)  # the worker's delivery fails at once; its cycle ends
                    ended = True
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if not self._paused and self._cycle_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            alarm = _Alarm(max(0.0, deadline - _STOP_MARGIN_S - time.monotonic()), lambda: self._shutdown_sinks(deadline))
            try:
                self._flush(deadline, deliver=not ended)
            finally:
                alarm.cancel()
                self._cycle_lock.release()
        self._shutdown_sinks(deadline)
        self._sinks.clear()

    def _shutdown_sinks(self, deadline: float) -> None:
        for name, sink in list(self._sinks.items()):
            try:
                sink.shutdown(timeout_s=max(0.1, deadline - time.monotonic()))
            except Exception:
                _logger.warning("otel_segments: the %s sink did not shut down cleanly", name, exc_info=True)

    def _flush(self, deadline: float, *, deliver: bool = True) -> None:
        """Deliver what is pending (unless a stuck delivery was just ended: its peer is not answering) and release the lease."""
        if self._state is None or self._lease is None or self._cycles == 0 or not self._holder:
            return  # only the last lease holder has anything to deliver: a fleet stopping together connects once
        try:
            if not self._lease.acquire(self.lease_ttl):
                return
            for name in list(self._sink_factories) if deliver else ():
                try:
                    self._deliver(name, self._state, self._lease, deadline)
                except SinkUnsupportedError as error:
                    self._drop_sink(name, error)
                except DeliveryError as error:
                    self._report_sink(name, error)
            self._lease.release()
        except Exception as error:  # noqa: BLE001
            self._report(_cause(error), error)

    def _forked_child(self) -> None:
        # The parent's thread does not exist here and its locks may be held: start afresh, as a new lease holder.
        self._init_process_state()
        self._paused = self._shut
        self._sinks = {}
        self._counts = None
        if self._lease is not None:
            self._lease.reset_holder()

    def _forked_while_starting(self) -> None:
        if self._paused:
            return
        self._paused = True
        self._counts = None  # the holder among the children reports cohort sizes; ours would go stale
        _logger.debug("otel_segments: process forked while starting up; the refresh runs in the children")
        if self._thread is not None and self._thread.is_alive():
            self._wake.set()  # the worker thread gives the lease up once its cycle, if one is running, is over
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give up the lease now, so a child takes over at its next cycle instead of after the lease TTL."""
        with self._cycle_lock, untraced():  # a pre-fork server forks again soon: this write must not straddle a fork
            self._counts = None
            if self._lease is None:
                return
            try:
                self._lease.release()
            except Exception as error:  # noqa: BLE001 - the children take over when the lease expires
                self._report(_cause(error), error)

    # -- reporting -------------------------------------------------------------------------------------------

    def _report(self, cause: str, error: BaseException) -> None:
        self._last_error = cause
        _logger.warning("otel_segments: segment refresh failed, retrying next cycle: %s", cause)
        _logger.debug("otel_segments: refresh failure details", exc_info=error)

    def _report_if_stuck(self) -> None:
        """Once per cycle that outlives its lease: a peer that took the connection and never answers blocks it, silently.

        The database drivers have no timeout for an answer that never comes (a lock
        wait, a hung server, a half-open connection), so such a cycle waits until the
        connection breaks; meanwhile the kicks that find it running say so, once.
        """
        started = self._cycle_started
        if started is None or started == self._stuck_reported:
            return
        running = time.monotonic() - started
        if running <= self.lease_ttl.total_seconds():
            return
        self._stuck_reported = started
        self._last_error = "stuck"  # the next cycle that succeeds says so
        _logger.warning(
            "otel_segments: the segment refresh has been running for %.0fs, longer than its %.0fs lease: "
            "a database or sink stopped answering? No other refresh starts in this process until it returns",
            running,
            self.lease_ttl.total_seconds(),
        )

    def _drop_sink(self, name: str, error: SinkUnsupportedError) -> None:
        """A peer that will never take this sink's data: say so once and stop; its updates stay pending."""
        self._sink_factories.pop(name, None)
        sink = self._sinks.pop(name, None)
        _logger.warning("otel_segments: %s", error)
        if sink is not None:
            try:
                sink.shutdown(timeout_s=1.0)
            except Exception:
                _logger.debug("otel_segments: the %s sink did not shut down cleanly", name, exc_info=True)

    def _report_sink(self, name: str, error: DeliveryError) -> None:
        self._last_error = str(error)
        wait = error.retry_after_s if isinstance(error, RateLimitedError) else None
        retry = f" (retry after {wait:.0f}s)" if wait else ""
        _logger.warning("otel_segments: %s delivery failed, updates stay pending%s: %s", name, retry, error)


#: How many (user, place, cause) the job remembers having named.
_NAMED_MAX = 100_000
#: What the flush at shutdown leaves of its bound for ending the sinks' requests and releasing the lease.
_STOP_MARGIN_S = 0.5


class _Alarm:
    """Calls ``action`` once after ``seconds`` on an OS thread of its own, unless cancelled first."""

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        self._cancelled = native.Event()
        self._seconds = seconds
        self._action = action
        native.Thread(self._run).start()

    def _run(self) -> None:
        if not self._cancelled.wait(self._seconds):
            self._action()

    def cancel(self) -> None:
        self._cancelled.set()


def _count(segments: Iterable[UserSegment]) -> dict[tuple[str, str | bool], int]:
    counts: Counter[tuple[str, str | bool]] = Counter({key: 0 for key in SEGMENT_VALUES})
    wanted = set(SEGMENT_VALUES)
    for segment in segments:
        for prop, value in segment.set.items():
            if isinstance(value, str | bool) and (prop, value) in wanted:
                counts[(prop, value)] += 1
    return dict(counts)


def _create_tables(make: Callable[[], _T]) -> _T:
    """Processes starting together race to create the state tables, one table at a time, so a process can
    lose once per table: each loss means another made progress, and a later look finds the tables there.
    Any other error (the database is away) is raised at once."""
    for pause in (0.05, 0.1, 0.15, 0.2):
        try:
            return make()
        except DBAPIError as error:
            # SQLite: "table ... already exists"; PostgreSQL: DuplicateTable, or a unique violation in its catalog
            if not (isinstance(error, IntegrityError) or "already exists" in str(error.orig)):
                raise
            time.sleep(pause)
    return make()


def _cause(error: BaseException) -> str:
    """The error's class and first line, from the driver's own error when SQLAlchemy wraps one (no SQL, no URL)."""
    inner = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = str(inner).strip().splitlines()[0][:300] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
