"""ForkLifecycle alone: its hooks called directly, no fork (tests/job/test_lifecycle.py forks for real)."""

from __future__ import annotations

import gc
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


def test_pools_made_before_eventlet_patched_the_process_are_replaced_once(tmp_path, monkeypatch) -> None:
    from otel_segments.runtime import native

    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    lifecycle = Calls().lifecycle([engine], threading.Lock())
    before = engine.pool
    lifecycle.repool_if_patched()
    assert engine.pool is before  # not patched: nothing to do
    monkeypatch.setattr(native, "eventlet_patched", lambda: True)
    lifecycle.repool_if_patched()
    patched = engine.pool
    assert patched is not before  # a pool made now, with the primitives the process now has
    lifecycle.repool_if_patched()
    assert engine.pool is patched  # once
