"""The job's stop at exit, bounded whatever the peers do.

A delivery in flight gets :data:`STOP_GRACE` of the bound to finish, then the sinks end it (they abort their
requests); one whose peer already answered it with a failure (down, refusing: its exporter is only backing off
to retry) gets no grace. A running refresh is not cut short by the grace, only by the bound. The flush that
follows (what is pending, then the lease released) is ended the same way, as soon as its peer fails it or just
before the bound, by timers of the :mod:`~otel_segments.runtime.watchdog` (whose thread already runs: Python 3.12
starts none at exit).
"""

from __future__ import annotations

import time
from _thread import LockType
from collections.abc import Callable
from typing import Protocol

from ..runtime import native, watchdog

#: At shutdown, the share of its bound that a sink's delivery in flight gets to finish before the sinks end it
#: (2 s of the 5 s at exit): a slow but healthy peer answers within it; one that took the connection and never
#: answers (or drips its answer) must not hold the process's exit, which the SDK's own shutdown still follows.
#: A running refresh is not cut short by it (only by the bound).
STOP_GRACE = 0.4

#: What the flush at shutdown leaves of its bound for ending the sinks' requests and releasing the lease.
_STOP_MARGIN_S = 0.5
#: How often the stop looks at a delivery in flight (whether it is done, late or failing).
_POLL_S = 0.05


class Stoppable(Protocol):
    """What the stop needs of :class:`~.delivery.Delivery`."""

    @property
    def delivering_since(self) -> float | None: ...

    def failing(self) -> bool: ...

    def shutdown_sinks(self, deadline: float) -> None: ...

    def close(self, deadline: float) -> None: ...


def stop_within(
    timeout_s: float,
    *,
    worker: native.Thread | None,
    delivery: Stoppable,
    cycle_lock: LockType,
    paused: Callable[[], bool],
    flush: Callable[..., None],
) -> None:
    """Wait for the ``worker``'s cycle, then ``flush(deadline, deliver=...)`` under the ``cycle_lock``, in ``timeout_s``.

    ``flush`` is told not to deliver when a stuck delivery was just ended: its peer is not answering.
    """
    stop_at = time.monotonic()
    deadline = stop_at + timeout_s
    ended = False
    if worker is not None and not worker.is_current():
        grace = timeout_s * STOP_GRACE
        # A running refresh may finish (the flush then delivers what it found); a delivery stuck on its peer
        # is ended after the grace; whatever it is, the worker gets no more than the bound.
        while not worker.join(timeout=_POLL_S) and not ended:
            since = delivery.delivering_since
            now = time.monotonic()
            late = since is not None and (delivery.failing() or now - max(since, stop_at) >= grace)
            if now >= deadline - _STOP_MARGIN_S or late:
                delivery.shutdown_sinks(deadline)  # the worker's delivery fails at once; its cycle ends
                ended = True
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
    if not paused() and cycle_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        alarm = _Alarm(delivery, deadline)
        try:
            flush(deadline, deliver=not ended)
        finally:
            alarm.cancel()
            cycle_lock.release()
    delivery.close(deadline)


class _Alarm:
    """Ends the flush's delivery (from the watchdog's thread, the flush runs in the stopping one) just before the
    bound, or as soon as its peer answered it with a failure: a healthy peer still gets what is pending."""

    def __init__(self, delivery: Stoppable, deadline: float) -> None:
        self._delivery = delivery
        self._deadline = deadline
        self._timer: watchdog.Timer | None = None
        self._cancelled = False
        self._arm()

    def _arm(self) -> None:
        wait = min(_POLL_S, self._deadline - _STOP_MARGIN_S - time.monotonic())
        self._timer = watchdog.call_later(max(0.0, wait), self._check)

    def _check(self) -> None:
        if self._cancelled:
            return
        if time.monotonic() >= self._deadline - _STOP_MARGIN_S or self._delivery.failing():
            self._delivery.shutdown_sinks(self._deadline)
        else:
            self._arm()

    def cancel(self) -> None:
        self._cancelled = True
        if self._timer is not None:
            self._timer.cancel()
