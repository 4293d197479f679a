"""The refresh job: one cycle = lease, incremental refresh, span cache update, delivery to every sink.

A cycle is started by :meth:`RefreshJob.kick`, which the
:class:`~otel_segments.job.reader.SegmentsMetricReader` calls on each collection; it
runs in the job's own worker thread, so a slow database never stalls a metric
export or the host app, and a kick while a cycle runs is ignored (never two
refreshes at once in a process). That thread is an OS thread whatever gevent or
eventlet patched (:mod:`otel_segments.runtime.native`), so database work never blocks a
green-thread event loop.

Across a fleet, the cycle runs its refresh and delivery only while it holds the
lease row in the state database; the others just load segments for their own
users from the state tables. Delivery state advances only after a sink accepted a
batch, so a failure anywhere leaves the updates pending for the next cycle:
at-least-once, and exactly-once while the lease holder is not killed between a
sink's acknowledgement and the write that records it.

:class:`RefreshJob` drives cycles and its own stop; the rest is lent to
collaborators: :mod:`~otel_segments.job.delivery` (the sinks),
:mod:`~otel_segments.job.forks` (``fork()``), :mod:`~otel_segments.job.stop` (its bounded stop),
:mod:`~otel_segments.job.reporting` (what it logs) and :mod:`~otel_segments.job.cohort_sizes` (the gauge).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy.engine import Engine

from ..runtime import native, watchdog
from ..runtime.untraced import untraced
from ..segments.binding import BoundSchema, bind
from ..segments.captured import capture_for
from ..segments.refresh import DEFAULT_MAX_AGE, RefreshResult, refresh
from ..segments.schema import SchemaMapping
from ..segments.state import RefreshState, StateVersionError
from ..spans.cache import SegmentCache
from .cohort_sizes import count, observations
from .delivery import Delivery, Sink
from .forks import ForkLifecycle
from .lease import Lease
from .reporting import Reporter, cause_of
from .shared_database import create_tables, release_connections
from .stop import stop_within

_logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = timedelta(seconds=60)
MIN_LEASE_TTL = timedelta(seconds=30)
DEFAULT_DELIVERY_BATCH = 1000


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
        change_capture: str = "windows",
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
        #: Exact mode (``OTEL_SEGMENTS_CHANGE_CAPTURE=triggers``): changes recorded by the app database's triggers.
        self._capture = capture_for(change_capture)
        self._state: RefreshState | None = None
        self._bound: BoundSchema | None = None
        self._lease: Lease | None = None
        self._counts: dict[tuple[str, str | bool], int] | None = None
        self._reporter = Reporter()
        self._init_process_state()
        self._paused = False
        self._shut = False
        #: ``time.monotonic()`` by which :meth:`shutdown` ends, once called: the gauge's last export keeps to it too.
        self.stop_deadline: float | None = None
        self._cycles = 0
        self._delivery = Delivery(
            sinks or {},
            stopped=lambda: self._stopping or self._paused,
            rest=lambda seconds: self._wake.wait(seconds),
            on_failure=self._reporter.sink_failed,
        )
        self._forks = ForkLifecycle(
            [self.app_engine, self.state_engine],
            cycle_lock=lambda: self._cycle_lock,
            cycles=lambda: self._cycles,
            on_child=self._forked_child,
            on_prefork_master=self._forked_while_starting,
        )
        self._forks.register()

    def _init_process_state(self) -> None:
        # OS primitives and an OS thread even under gevent or eventlet: see otel_segments.runtime.native
        self._cycle_lock = native.Lock()
        self._wake = native.Event()
        self._thread: native.Thread | None = None
        self._stopping = False
        self._cycle_started: float | None = None  # monotonic start of the running cycle
        self._holder = False  # held the lease at the last cycle: only then is there anything to flush at exit

    # -- driving ---------------------------------------------------------------------------------------------

    def kick(self) -> bool:
        """Ask for a cycle without waiting for it; False when one is already running (or the job is stopped)."""
        if self._stopping or self._paused:
            return False
        if self._cycle_lock.locked():
            self._reporter.stuck(self._cycle_started, self.lease_ttl)
            return False
        if self._thread is None or not self._thread.is_alive():
            watchdog.start()  # now, while threads can start: the stop at exit needs its timers (Python 3.12 starts none then)
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
            self._forks.repool_if_greened()
            with untraced():
                result = self._cycle(now)
        except StateVersionError as error:  # a newer release's state: say so once and run no more cycles
            self._stopping = True
            _logger.warning("otel_segments: %s", error)
            result = CycleResult(error=str(error))
        except Exception as error:  # noqa: BLE001 - the job must never take the host app down
            result = CycleResult(error=cause_of(error))
            self._reporter.failed(result.error, error)
        else:
            if result.error is None and not result.failed:
                self._reporter.worked()
        finally:
            release_connections([self.app_engine, self.state_engine])
            self._cycle_started = None
            self._cycle_lock.release()
        return result

    def _cycle(self, now: datetime | None) -> CycleResult:
        state, lease = self._ensure_state()
        self._holder = lease.acquire(self.lease_ttl)
        if not self._holder:
            self._counts = None  # only the holder reports cohort sizes, so a fleet reports each once
            self._sync_cache(state)
            return CycleResult(holder=False)
        refreshed = refresh(self.app_engine, state, self._ensure_bound(), now=now, max_age=self.max_age, capture=self._capture)
        self._reporter.problems(refreshed)
        if refreshed.changed or self._counts is None:
            self._counts = count(state.segments())
        self._sync_cache(state)  # spans need the stored segment, not its delivery: a backlog may take minutes
        delivered, failed = self._delivery.run(state, lease, lease_ttl=self.lease_ttl, batch=self.delivery_batch)
        quarantined = self._delivery.quarantined()
        if refreshed.quarantined:
            quarantined["refresh"] = refreshed.quarantined
        return CycleResult(holder=True, refreshed=refreshed, delivered=delivered, failed=failed, quarantined=quarantined)

    def _ensure_state(self) -> tuple[RefreshState, Lease]:
        if self._state is None:
            self._state = create_tables(lambda: RefreshState(self.state_engine))
        if self._lease is None:
            self._lease = create_tables(lambda: Lease(self.state_engine))
        return self._state, self._lease

    def _ensure_bound(self) -> BoundSchema:
        if self._bound is None:
            self._bound = bind(self.schema, self.app_engine)  # reflection: a wrong mapping fails here, by name
        return self._bound

    # -- what other parts read -------------------------------------------------------------------------------

    def cohort_sizes(self) -> Mapping[tuple[str, str | bool], int]:
        """Users per (property, value) after the last refresh this process ran; empty when it does not hold the lease."""
        return dict(self._counts or {})

    def observe(self, options: CallbackOptions | None = None) -> Iterable[Observation]:
        """Callback of the ``app.segments.users`` gauge: reads finished counts, never the database."""
        yield from observations(self._counts or {})

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
        self.stop_deadline = time.monotonic() + timeout_s
        self._stopping = True
        self._wake.set()
        stop_within(
            timeout_s,
            worker=self._thread,
            delivery=self._delivery,
            cycle_lock=self._cycle_lock,
            paused=lambda: self._paused,
            flush=self._flush,
        )

    def _flush(self, deadline: float, *, deliver: bool = True) -> None:
        """Deliver what is pending (unless a stuck delivery was just ended: its peer is not answering) and release the lease."""
        if self._state is None or self._lease is None or self._cycles == 0 or not self._holder:
            return  # only the last lease holder has anything to deliver: a fleet stopping together connects once
        try:
            if not self._lease.acquire(self.lease_ttl):
                return
            if deliver:
                self._delivery.run(
                    self._state, self._lease, lease_ttl=self.lease_ttl, batch=self.delivery_batch, deadline=deadline
                )
            self._lease.release()
        except Exception as error:  # noqa: BLE001
            self._reporter.failed(cause_of(error), error)

    def _forked_child(self) -> None:
        # The parent's thread does not exist here and its locks may be held: start afresh, as a new lease holder.
        self._init_process_state()
        self._reporter.forget_failures()
        self._paused = self._shut
        self._delivery.forget_sinks()
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
                self._reporter.failed(cause_of(error), error)
