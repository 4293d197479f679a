"""Delivery to the sinks: pending updates, batch by batch, recorded only as far as each sink accepted them.

:class:`Delivery` owns the sinks (built on first use, in the process that uses
them) and the users each one refused for good; the job says when to deliver and
what stops it. A user accepted is marked delivered even when its sink stopped
short; a user refused for good is set aside and stays pending, and the next batch
goes on after it, so one poisoned update never holds up the rest of the queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Protocol

from ..segments import UserSegment
from ..segments.state import RefreshState
from ..sinks import DeliveryError, RateLimitedError, Refusal, SinkUnsupportedError
from ..sinks.transport import fenced
from ..spans.privacy import pseudonymize
from .lease import Lease
from .reporting import cause_of

#: The job's own logger: its lines keep the name users already filter on.
_logger = logging.getLogger("otel_segments.job")

#: After each delivery batch the worker rests this many times the CPU time the batch took: building events is
#: Python work that holds the GIL, and the app's requests in this process wait for it (and for a core).
DELIVERY_PACE = 1.0


class Sink(Protocol):
    """See :mod:`otel_segments.sinks`: ``deliver`` returns the users refused for good (None: nobody), or raises
    :class:`DeliveryError` naming who was accepted before it stopped; ``shutdown`` may be called from any thread,
    at any time, and ends a delivery in flight instead of waiting for it. A sink may also have ``failing``, read from
    another thread: its delivery in flight was already answered with a failure and is only being retried (see
    :class:`~otel_segments.sinks.otlp.OtlpSegmentSink`); one without says no."""

    def deliver(self, batch: list[UserSegment]) -> Sequence[Refusal] | None: ...

    def shutdown(self, timeout_s: float = 5.0) -> None: ...


class Delivery:
    """The job's sinks: ``sinks`` maps a sink's name (its key in the delivery state) to a factory.

    ``stopped`` says whether the job is stopping or paused (a cycle's delivery then
    ends between batches); ``rest`` waits that many seconds unless the job is woken;
    ``on_failure`` gets the one-line cause of a failed delivery before it is logged.
    """

    def __init__(
        self,
        sinks: Mapping[str, Callable[[], Sink]],
        *,
        stopped: Callable[[], bool],
        rest: Callable[[float], object],
        on_failure: Callable[[str], None],
    ) -> None:
        self._factories = dict(sinks)
        self._sinks: dict[str, Sink] = {}
        self._stopped = stopped
        self._rest = rest
        self._on_failure = on_failure
        #: Per sink, user id -> digest of the update the peer refused for good (named once per update).
        self._quarantine: dict[str, dict[str, str]] = {}
        self.delivering_since: float | None = None  # monotonic start of the sink.deliver() call in flight
        self._in_flight: Sink | None = None  # the sink of that call

    def run(
        self,
        state: RefreshState,
        lease: Lease,
        *,
        lease_ttl: timedelta,
        batch: int,
        deadline: float | None = None,
    ) -> tuple[dict[str, int], dict[str, str]]:
        """Deliver to every sink: how many each took, and the cause for each that failed (its updates stay pending).

        ``deadline`` is the flush at shutdown: it delivers until then, stopped or not, without resting.
        """
        delivered: dict[str, int] = {}
        failed: dict[str, str] = {}
        for name in list(self._factories):
            try:
                delivered[name] = self._deliver(name, state, lease, lease_ttl, batch, deadline)
            except SinkUnsupportedError as error:
                self._drop_sink(name, error)
            except DeliveryError as error:
                failed[name] = str(error)
                self._report_sink(name, error)
        return delivered, failed

    def failing(self) -> bool:
        """The delivery in flight was already answered with a failure and its sink is only retrying (see :class:`Sink`)."""
        sink = self._in_flight
        return sink is not None and bool(getattr(sink, "failing", False))

    def quarantined(self) -> dict[str, int]:
        """Per sink, how many users it refused for good (only sinks with any)."""
        return {name: len(users) for name, users in self._quarantine.items() if users}

    def shutdown_sinks(self, deadline: float) -> None:
        """Shut every sink down, which ends its delivery in flight; they are built again if used."""
        for name, sink in list(self._sinks.items()):
            try:
                sink.shutdown(timeout_s=max(0.1, deadline - time.monotonic()))
            except Exception:
                _logger.warning("otel_segments: the %s sink did not shut down cleanly", name, exc_info=True)

    def close(self, deadline: float) -> None:
        """At the job's end: the sinks are shut down and let go."""
        self.shutdown_sinks(deadline)
        self._sinks.clear()

    def forget_sinks(self) -> None:
        """In a forked child: the parent's sinks, their connections and their delivery in flight stay the parent's."""
        self._sinks = {}
        self._in_flight = self.delivering_since = None

    def _sink(self, name: str) -> Sink:
        sink = self._sinks.get(name)
        if sink is None:
            sink = self._sinks[name] = self._factories[name]()
        return sink

    def _deliver(
        self, name: str, state: RefreshState, lease: Lease, lease_ttl: timedelta, limit: int, deadline: float | None
    ) -> int:
        """Send everything pending for ``name``, batch by batch; the lease is renewed before each batch."""
        if self._stopped() and deadline is None:
            return 0
        try:
            sink = self._sink(name)
        except Exception as error:
            raise DeliveryError(f"could not set up the sink ({cause_of(error)})") from error
        sent = 0
        after: str | None = None
        while deadline is None or time.monotonic() < deadline:
            if self._stopped() and deadline is None:
                break
            # The lease first, then the batch: what is read is what no other holder can deliver meanwhile.
            if not lease.acquire(lease_ttl):
                _logger.info("otel_segments: the refresh lease passed to another process; it delivers the rest")
                break
            batch = state.pending(name, limit=limit, after=after)
            if not batch:
                break
            after = batch[-1].distinct_id
            busy = time.thread_time()
            self._in_flight, self.delivering_since = sink, time.monotonic()
            try:
                # Fenced by the lease up to the moment each request leaves: see Lease.held.
                with fenced(lease.held):
                    if not lease.held():
                        raise DeliveryError("not sent: the refresh lease expired before the batch left")
                    refused = sink.deliver(batch) or ()
            except DeliveryError as error:
                self._record(name, state, batch, error.accepted, error.refused)
                if not lease.held():  # frozen past the lease: the successor delivers the rest, in order
                    _logger.info("otel_segments: the refresh lease expired mid-delivery; another process delivers the rest")
                    break
                raise
            finally:
                self._in_flight = self.delivering_since = None
            sent += self._record(name, state, batch, None, refused)
            if deadline is None:  # a stop or a hand-over sets the wake event, and ends the pause
                self._rest((time.thread_time() - busy) * DELIVERY_PACE)
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

    def _drop_sink(self, name: str, error: SinkUnsupportedError) -> None:
        """A peer that will never take this sink's data: say so once and stop; its updates stay pending."""
        self._factories.pop(name, None)
        sink = self._sinks.pop(name, None)
        _logger.warning("otel_segments: %s", error)
        if sink is not None:
            try:
                sink.shutdown(timeout_s=1.0)
            except Exception:
                _logger.debug("otel_segments: the %s sink did not shut down cleanly", name, exc_info=True)

    def _report_sink(self, name: str, error: DeliveryError) -> None:
        self._on_failure(str(error))
        wait = error.retry_after_s if isinstance(error, RateLimitedError) else None
        retry = f" (retry after {wait:.0f}s)" if wait else ""
        _logger.warning("otel_segments: %s delivery failed, updates stay pending%s: %s", name, retry, error)
