"""An OS thread, a lock and an event that stay real whatever gevent or eventlet monkey-patched.

The refresh job's database work blocks in C (SQLite, libpq) for seconds; in a
green thread that blocks the whole event loop, every request of the process with
it. So the job runs on an OS thread of its own, and everything it waits on is an
OS primitive too, even in a gunicorn ``-k gevent`` / ``-k eventlet`` worker, which
monkey-patches *after* ``opentelemetry-instrument`` loaded us:

- a ``threading.Thread`` started after patching is a green thread, scheduled on
  the hub of whichever OS thread started it (for the job: the SDK metric reader's
  thread, whose hub runs only while that thread waits on something green);
- locks and events made before patching are OS primitives, made after it green
  ones; mixing them between green and OS threads fails (eventlet: "cannot notify
  on un-acquired lock").

Why the interpreter's own ``_thread`` functions and not the worker library's
thread pool (``gevent.get_hub().threadpool``, ``eventlet.tpool``): the job's
thread lives as long as the process, and a pool is sized for short calls (it would
hold one of its workers for good); the pools give a thread but not the locks and
events the job waits on; and ``_thread`` is one mechanism for gevent, eventlet and
an unpatched process alike. The originals are taken from gevent's or eventlet's
own record when they patched before this module was imported.

Patched modules (socket, ssl, select, subprocess) stay patched for this thread:
gevent and eventlet give it a hub of its own, so its network I/O works, but a
gevent ``subprocess`` only works on the main thread's hub (see
``otel_segments.sinks.posthog``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

_NAMES = ("start_new_thread", "allocate_lock", "get_ident", "RLock")


def eventlet_patched() -> bool:
    """Whether eventlet monkey-patched threading in this process. True from the start of ``monkey_patch()``, before
    ``threading`` is patched and its existing RLocks swapped: not a sign that the patching is over."""
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and bool(patcher.is_monkey_patched("thread"))


def _originals() -> tuple[Callable[..., int], Callable[[], Any], Callable[[], int], type]:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        start, lock, ident, rlock = monkey.get_original("_thread", list(_NAMES))  # the current ones when nothing is patched
        return start, lock, ident, rlock
    if eventlet_patched():
        module = sys.modules["eventlet.patcher"].original("_thread")
    else:
        import _thread as module
    return module.start_new_thread, module.allocate_lock, module.get_ident, module.RLock


# InterpreterRLock: the interpreter's own RLock type, the one eventlet's patching swaps for a green one wherever
# it finds it (see otel_segments.runtime.database.pool_greened).
_start_new_thread, allocate_lock, get_ident, InterpreterRLock = _originals()
Lock = allocate_lock


def _original_sleep() -> Callable[[float], None]:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("time", "sleep")
    if eventlet_patched():
        return sys.modules["eventlet.patcher"].original("time").sleep
    import time

    return time.sleep


_sleep = _original_sleep()


def let_others_run() -> None:
    """Hand the GIL over now, if another thread waits for it (the OS sleep of zero seconds releases it).

    A thread busy in Python code keeps the GIL until the interpreter's switch
    interval (5 ms) asks it to let go, and a request thread waits that long each
    time it needs the GIL back. A loop that calls this every millisecond or so of
    its own work makes those waits as short.
    """
    _sleep(0)


class Event:
    """``threading.Event``'s ``set``/``clear``/``wait`` on OS locks: a gate held while the flag is clear."""

    def __init__(self) -> None:
        self._guard = allocate_lock()
        self._gate = allocate_lock()
        self._gate.acquire()
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._guard:
            if not self._flag:
                self._flag = True
                self._gate.release()

    def clear(self) -> None:
        with self._guard:
            if self._flag:
                self._flag = False
                self._gate.acquire()  # at most a waiter's instant between its acquire and release

    def wait(self, timeout: float | None = None) -> bool:
        if not self._gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        self._gate.release()
        return True


class Thread:
    """An OS thread running ``target``; like a daemon ``threading.Thread``, nobody joins it at exit but its owner."""

    def __init__(self, target: Callable[[], object]) -> None:
        self._target = target
        self._done = allocate_lock()
        self.ident: int | None = None

    def start(self) -> None:
        self._done.acquire()
        self.ident = _start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._done.release()

    def is_alive(self) -> bool:
        return self.ident is not None and self._done.locked()

    def is_current(self) -> bool:
        return self.ident == get_ident()

    def join(self, timeout: float | None = None) -> bool:
        """True when the thread has finished (within ``timeout`` seconds)."""
        if self.ident is None:
            return True
        if not self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        self._done.release()
        return True
