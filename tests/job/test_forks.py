"""ForkLifecycle alone: its hooks called directly, no fork (tests/job/test_lifecycle.py forks for real)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
import weakref
from datetime import timedelta

from sqlalchemy import create_engine, text

from otel_segments.job.forks import ForkLifecycle


class Calls:
    def __init__(self) -> None:
        self.child = 0
        self.master = 0
        self.cycles = 0

    def lifecycle(self, engines, lock, **kwargs) -> ForkLifecycle:
        def child() -> None:
            self.child += 1

        def master() -> None:
            self.master += 1

        return ForkLifecycle(
            engines, cycle_lock=lambda: lock, cycles=lambda: self.cycles, on_child=child, on_prefork_master=master, **kwargs
        )


def test_on_sqlite_a_fork_waits_for_the_running_cycle_and_holds_off_the_next(tmp_path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        conn.execute(text("select 1"))
    assert engine.pool.checkedin() == 1
    lock = threading.Lock()
    lifecycle = Calls().lifecycle([engine, engine], lock)
    lock.acquire()  # a cycle is running
    threading.Timer(0.3, lock.release).start()
    started = time.monotonic()
    lifecycle.before()
    assert time.monotonic() - started >= 0.25  # it waited for the cycle
    assert lock.locked()  # and no cycle starts while the process forks
    assert engine.pool.checkedin() == 0  # the idle SQLite connection was closed before the fork
    lifecycle.after_in_parent()
    assert not lock.locked()


def test_a_cycle_outliving_the_fork_wait_is_not_released_by_the_hooks(tmp_path) -> None:
    lock = threading.Lock()
    lifecycle = Calls().lifecycle([create_engine(f"sqlite:///{tmp_path / 'a.db'}")], lock, fork_wait=timedelta(seconds=0.05))
    lock.acquire()  # the cycle's own hold
    lifecycle.before()
    lifecycle.after_in_parent()
    assert lock.locked()  # still the cycle's: only the cycle releases it
    lock.release()


def test_client_server_databases_fork_without_waiting() -> None:
    lock = threading.Lock()
    engine = create_engine("postgresql+psycopg://app@127.0.0.1:1/app")  # never connects
    lifecycle = Calls().lifecycle([engine], lock)
    lock.acquire()
    started = time.monotonic()
    lifecycle.before()
    assert time.monotonic() - started < 0.1
    lifecycle.after_in_parent()
    assert lock.locked()  # not taken by the hooks, so not released by them
    lock.release()


def test_a_fork_while_starting_up_is_a_prefork_master() -> None:
    calls = Calls()
    lifecycle = calls.lifecycle([], threading.Lock(), prefork_window=timedelta(seconds=60))
    lifecycle.after_in_parent()  # before any cycle
    calls.cycles = 3
    lifecycle.after_in_parent()  # after cycles, but within the window (a slow import outlasting intervals)
    assert calls.master == 2


def test_a_fork_later_in_life_changes_nothing_in_the_parent() -> None:
    calls = Calls()
    lifecycle = calls.lifecycle([], threading.Lock(), prefork_window=timedelta(0))
    calls.cycles = 1
    lifecycle.after_in_parent()
    assert calls.master == 0
    calls.cycles = 0  # no cycle yet: still a master forking its workers, however late
    lifecycle.after_in_parent()
    assert calls.master == 1


def test_the_child_starts_afresh(tmp_path) -> None:
    calls = Calls()
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    with engine.connect() as conn:
        conn.execute(text("select 1"))
    lifecycle = calls.lifecycle([engine], threading.Lock(), prefork_window=timedelta(seconds=60))
    lifecycle.started -= 120
    lifecycle.after_in_child()
    assert calls.child == 1 and calls.master == 0
    assert time.monotonic() - lifecycle.started < 1  # its own start-up window begins now
    assert engine.pool.checkedin() == 0  # a new pool: the parent's connections are left to the parent


def test_registering_keeps_nothing_alive() -> None:
    lifecycle = Calls().lifecycle([], threading.Lock())
    lifecycle.register()
    ref = weakref.ref(lifecycle)
    del lifecycle
    gc.collect()
    assert ref() is None


#: A process that eventlet patches while it holds our engines, as gunicorn's eventlet worker does in its master after
#: ``opentelemetry-instrument`` loaded us. eventlet records that it patched ``thread`` before it imports its green
#: modules and patches ``threading``: a pool the job's cycle makes in that window has the interpreter's locks and is
#: greened later. ``_green_time_modules``, the import eventlet makes in that window, is wrapped to run a cycle there.
#: (A fork hook of ours once failed in CI on a greened pool that a one-shot "eventlet has patched" flag kept.)
EVENTLET_PATCH = """
import json, sys, threading
from sqlalchemy import text
import eventlet.patcher
from otel_segments.job.forks import ForkLifecycle
from otel_segments.runtime.database import engine_for, pool_greened

def use(engine):
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except RuntimeError as error:
        return str(error)
    return "ok"

engine, bystander = engine_for(sys.argv[1]), engine_for(sys.argv[1])
use(engine), use(bystander)
lifecycle = ForkLifecycle([engine], cycle_lock=threading.Lock, cycles=lambda: 1, on_child=lambda: None,
                          on_prefork_master=lambda: None)
seen = {}
green_time_modules = eventlet.patcher._green_time_modules

def a_cycle_then_green_time_modules():
    seen["patched_in_the_window"] = eventlet.patcher.is_monkey_patched("thread")
    lifecycle.repool_if_greened()  # what the job's cycle does first
    engine.dispose(close=False)  # a pool made now, as the flag this replaces did
    seen["cycle_in_the_window"] = use(engine)  # it leaves a connection in that pool
    return green_time_modules()

eventlet.patcher._green_time_modules = a_cycle_then_green_time_modules
eventlet.monkey_patch()
seen["greened"] = [pool_greened(engine), pool_greened(bystander)]
seen["bystander"] = use(bystander)
lifecycle.before()  # what os.fork() calls: it must not fail on the greened pool
lifecycle.after_in_parent()
seen["after_fork_hooks"] = [pool_greened(engine), use(engine)]
pool = engine.pool
lifecycle.repool_if_greened()
seen["kept"] = engine.pool is pool
print(json.dumps(seen))
"""


def test_a_pool_greened_by_eventlet_is_replaced_even_when_made_while_eventlet_patched(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", EVENTLET_PATCH, f"sqlite:///{tmp_path / 'a.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["patched_in_the_window"]  # eventlet says it patched before it has: a flag of that would be too early
    assert seen["cycle_in_the_window"] == "ok"
    assert seen["greened"] == [True, True]  # made before the walk, by a cycle or at start-up
    assert seen["bystander"] == "cannot notify on un-acquired lock"  # what a greened pool does to every check-in
    assert seen["after_fork_hooks"] == [False, "ok"]  # the fork hook gave the engine a new pool, and it works
    assert seen["kept"]  # a pool made after the patch is left alone: no new pool every cycle
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_a_hook_that_fails_is_one_warning_and_the_fork_goes_on(caplog) -> None:
    def fail() -> None:
        raise OSError("the state database is away")

    lifecycle = ForkLifecycle([], cycle_lock=threading.Lock, cycles=lambda: 0, on_child=lambda: None, on_prefork_master=fail)
    lifecycle.register()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "otel_segments.job.forks"]
    assert warnings == ["otel_segments: preparing the refresh job for a fork failed: OSError: the state database is away"]
