"""What ``fork()`` (and monkey-patching) means for the refresh job: a pre-fork master hands the refresh to its
children, SQLite lock state never crosses a fork, and no connection pool outlives eventlet's patching.

Two things happen at a fork, and :class:`ForkLifecycle` decides both, so the job
only says what to do:

- in the child, the parent's worker thread does not exist and its locks may be
  held: the job starts afresh there, as a new lease candidate (``on_child``), and
  the parent's pooled connections are left to the parent;
- in the parent, a fork soon after start-up, or before the first cycle, is a
  pre-fork server (gunicorn ``--preload``) forking its workers: the job stops
  refreshing there and the children do it (``on_prefork_master``).

And a process may be monkey-patched after the job's engines were made (gunicorn's
eventlet worker patches once ``opentelemetry-instrument`` loaded us):
:meth:`ForkLifecycle.repool_if_greened` gives the engines new pools then.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from _thread import LockType
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy.engine import Engine

from ..runtime import database
from .reporting import cause_of

#: A process that forks this soon after building the job (or before its first cycle) is taken for a pre-fork
#: server's master (gunicorn --preload): it stops refreshing and its children do it. A slow app import can
#: outlast several short refresh intervals, so "before the first cycle" alone would leave the master in charge.
PREFORK_WINDOW = timedelta(seconds=60)
#: How long a fork() waits for a running cycle on SQLite to finish (see ForkLifecycle.before).
FORK_WAIT = timedelta(seconds=10)

_logger = logging.getLogger(__name__)


class ForkLifecycle:
    """The job's fork hooks: registered with ``os.register_at_fork`` by :meth:`register`, callable directly in tests.

    ``engines`` are the job's databases; ``cycle_lock`` gives the lock a cycle
    holds while it runs (the job makes a new one in a child); ``cycles`` how many
    cycles this process ran.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        *,
        cycle_lock: Callable[[], LockType],
        cycles: Callable[[], int],
        on_child: Callable[[], None],
        on_prefork_master: Callable[[], None],
        prefork_window: timedelta = PREFORK_WINDOW,
        fork_wait: timedelta = FORK_WAIT,
    ) -> None:
        self.engines = list({id(e): e for e in engines}.values())
        self._cycle_lock = cycle_lock
        self._cycles = cycles
        self._on_child = on_child
        self._on_prefork_master = on_prefork_master
        self.prefork_window = prefork_window
        self.fork_wait = fork_wait
        self.started = time.monotonic()
        self._held: LockType | None = None

    def register(self) -> None:
        """Run the hooks at every ``fork()`` while this object lives (a weak reference: it never keeps a job alive)."""
        if not hasattr(os, "register_at_fork"):
            return
        ref = weakref.ref(self)

        def call(hook: Callable[[ForkLifecycle], None]) -> Callable[[], None]:
            def run() -> None:
                if (alive := ref()) is None:
                    return
                try:
                    hook(alive)
                except Exception as error:  # noqa: BLE001 - the app's fork() must go on whatever happens to ours
                    _logger.warning("otel_segments: preparing the refresh job for a fork failed: %s", cause_of(error))

            return run

        os.register_at_fork(
            before=call(ForkLifecycle.before),
            after_in_parent=call(ForkLifecycle.after_in_parent),
            after_in_child=call(ForkLifecycle.after_in_child),
        )

    def repool_if_greened(self) -> None:
        """``eventlet.monkey_patch()`` swaps every RLock it can reach for a green one, the mutex of SQLAlchemy's pool
        queue included, while the queue's Conditions keep the methods of the lock they were made with: from then
        on every check-in fails ("cannot notify on un-acquired lock"), every cycle with it. So an engine whose pool
        was greened gets a new one, made with the primitives the process now has; the old one is dropped, not
        closed (closing goes through that queue). Checked at every cycle and fork, not once: a pool made while
        eventlet patches may be greened after it was made."""
        for engine in self.engines:
            if database.pool_greened(engine):
                engine.dispose(close=False)

    def before(self) -> None:
        """SQLite keeps its lock state per process: a query of ours running across fork() leaves the child
        believing it holds locks it does not, and then its writes, and everyone's, fail as "database is
        locked" (sqlite.org/howtocorrupt.html). So wait for the running cycle, and close our idle SQLite
        connections; the after-fork hooks let cycles run again. Client-server databases need none of this."""
        sqlite = [engine for engine in self.engines if engine.dialect.name == "sqlite"]
        if not sqlite:
            return
        lock = self._cycle_lock()
        if lock.acquire(timeout=self.fork_wait.total_seconds()):
            self._held = lock
        self.repool_if_greened()
        for engine in sqlite:
            engine.dispose()

    def after_in_parent(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()
        if self._cycles() and time.monotonic() - self.started >= self.prefork_window.total_seconds():
            return
        # Forking while starting up is a pre-fork server (gunicorn --preload): the workers do the work.
        self._on_prefork_master()

    def after_in_child(self) -> None:
        # The parent's lock is the parent's (the child makes its own): the child never releases it.
        self._held = None
        self.started = time.monotonic()
        self._on_child()
        for engine in self.engines:
            engine.dispose(close=False)  # the parent's pooled connections stay the parent's
