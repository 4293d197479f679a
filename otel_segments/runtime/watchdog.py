"""One OS thread per process that ends what overran its time: a request past its deadline, a flush at exit.

Why one long-lived thread and not a thread per timer: Python 3.12 refuses to start
any thread once the interpreter has begun to exit (``RuntimeError: can't create new
thread at interpreter shutdown``, from ``atexit`` callbacks and from threads alike;
3.10, 3.11 and 3.13 allow it). The job's stop runs at exit and its delivery there
needs each request bounded, so whatever times them must already be running:
:func:`start` is called when the job starts working, and :func:`call_later` only
queues an entry for this thread. It is an OS thread whatever gevent or eventlet
patched (:mod:`otel_segments.runtime.native`).

Actions run one after the other on this thread: each must be quick (ending
sockets, setting a flag), never I/O that waits on a peer. After ``fork()`` the
child starts with no timer and no thread (the parent's does not exist there); the
next :func:`start` or :func:`call_later` makes it again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import native

_logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Timer:
    """An action due at a monotonic ``deadline``; :meth:`cancel` keeps it from running if it has not yet."""

    deadline: float
    action: Callable[[], object] = field(repr=False)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class _Watchdog:
    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Start afresh (in a forked child: the parent's thread and timers do not exist here; its lock may be held)."""
        self._lock = native.Lock()
        self._wake = native.Event()
        self._due: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._thread: native.Thread | None = None

    def start(self) -> bool:
        """Make sure the thread runs; False when it cannot start (the interpreter is exiting: Python 3.12)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return True
            thread = native.Thread(self._run)
            try:
                thread.start()
            except RuntimeError as error:
                _logger.debug("otel_segments: no watchdog thread (%s); timers will not fire", error)
                return False
            self._thread = thread
            return True

    def call_later(self, seconds: float, action: Callable[[], object]) -> Timer:
        timer = Timer(time.monotonic() + max(seconds, 0.0), action)
        with self._lock:
            heapq.heappush(self._due, (timer.deadline, next(self._order), timer))
        self.start()
        self._wake.set()
        return timer

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before looking: a timer queued after this wakes the wait below
            now = time.monotonic()
            due = []
            with self._lock:
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due)[2])
                while self._due and self._due[0][2].cancelled:  # finished requests: forgotten, not kept until due
                    heapq.heappop(self._due)
                wait = self._due[0][0] - now if self._due else None
            for timer in due:
                if timer.cancelled:
                    continue
                try:
                    timer.action()
                except Exception:
                    _logger.debug("otel_segments: a watchdog action failed", exc_info=True)
            self._wake.wait(wait)


_watchdog = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watchdog.forget)


def start() -> bool:
    """Start the watchdog thread now, while threads can still start (before the interpreter begins to exit)."""
    return _watchdog.start()


def call_later(seconds: float, action: Callable[[], object]) -> Timer:
    """Run ``action`` on the watchdog thread in ``seconds``, unless the returned :class:`Timer` is cancelled first."""
    return _watchdog.call_later(seconds, action)
