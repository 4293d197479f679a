import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy

from otel_segments.job import lease as lease_module
from otel_segments.job.lease import Lease
from otel_segments.runtime.database import APPLICATION_NAME, engine_for
from tests.delivery import wait_until

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = request.getfixturevalue("postgres_database")
    engine = sqlalchemy.create_engine(url)
    yield engine
    engine.dispose()


def test_one_holder_at_a_time_and_takeover_after_expiry(engine):
    a, b = Lease(engine, holder="a"), Lease(engine, holder="b")
    ttl = timedelta(seconds=60)
    assert a.acquire(ttl, T0)
    assert not b.acquire(ttl, T0 + timedelta(seconds=1))
    assert a.acquire(ttl, T0 + timedelta(seconds=30))  # renewal
    assert not b.acquire(ttl, T0 + timedelta(seconds=89))
    assert b.acquire(ttl, T0 + timedelta(seconds=91))  # a stopped renewing
    assert not a.acquire(ttl, T0 + timedelta(seconds=92))


def test_release_lets_another_take_over(engine):
    a, b = Lease(engine, holder="a"), Lease(engine, holder="b")
    assert a.acquire(timedelta(minutes=5), T0)
    a.release()
    assert b.acquire(timedelta(minutes=5), T0 + timedelta(seconds=1))


def test_concurrent_acquire_has_exactly_one_winner(engine):
    from concurrent.futures import ThreadPoolExecutor

    leases = [Lease(engine, holder=f"h{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda lease: lease.acquire(timedelta(minutes=1), T0), leases))
    assert sum(won) == 1


def test_a_host_clock_ahead_by_more_than_the_ttl_does_not_take_a_live_lease(postgres_database, monkeypatch):
    """Expiry is judged by the database's clock: a host running an hour ahead sees the live lease as live."""
    engine = engine_for(postgres_database)
    a, b = Lease(engine, holder="a"), Lease(engine, holder="b")
    ttl = timedelta(seconds=60)
    assert a.acquire(ttl)

    class HourAhead(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(hours=1)

    monkeypatch.setattr(lease_module, "datetime", HourAhead)
    assert not b.acquire(ttl)
    assert a.acquire(ttl)  # the holder renews, on the same clock
    engine.dispose()


def test_a_lease_expires_by_the_database_clock(postgres_database):
    engine = engine_for(postgres_database)
    a, b = Lease(engine, holder="a"), Lease(engine, holder="b")
    assert a.acquire(timedelta(seconds=1))
    assert not b.acquire(timedelta(seconds=60))
    wait_until(lambda: b.acquire(timedelta(seconds=60)), "b takes the lease once a's second is over", timeout=30)
    assert not a.acquire(timedelta(seconds=60))
    engine.dispose()


def test_a_held_lock_on_the_lease_row_fails_the_acquire_and_frees_the_connection(postgres_database):
    """An operator's ``SELECT ... FOR UPDATE`` (or a holder frozen mid-transaction) must not hold the fleet forever."""
    engine = engine_for(postgres_database)
    holder = Lease(engine, holder="a")
    assert holder.acquire(timedelta(seconds=60))
    operator = sqlalchemy.create_engine(postgres_database)
    outcome: list[object] = []

    def acquire() -> None:
        try:
            outcome.append(holder.acquire(timedelta(seconds=60)))  # the renewal must update the locked row
        except sqlalchemy.exc.OperationalError as error:
            outcome.append(error)

    with operator.connect() as held:
        held.execute(sqlalchemy.text("SELECT * FROM otel_segments_lease FOR UPDATE"))
        thread = threading.Thread(target=acquire, daemon=True)
        thread.start()
        thread.join(30)  # the lock timeout is 5 s; 30 s bounds the wait on a loaded machine
        waiting = held.execute(
            sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND wait_event_type = 'Lock'"),
            {"name": APPLICATION_NAME},
        ).scalar()
        held.rollback()
    thread.join(30)
    engine.dispose()
    operator.dispose()
    assert len(outcome) == 1 and isinstance(outcome[0], sqlalchemy.exc.OperationalError), outcome
    assert "lock timeout" in str(outcome[0])
    assert waiting == 0  # no session of ours is left waiting on the lock


def test_our_sessions_carry_their_own_timeouts_and_the_url_options_still_win(postgres_database):
    url = sqlalchemy.make_url(postgres_database).update_query_dict({"options": "-c lock_timeout=2000"})
    for given, lock_timeout in ((postgres_database, "5s"), (url.render_as_string(hide_password=False), "2s")):
        engine = engine_for(given)
        with engine.connect() as conn:
            shown = {
                name: conn.execute(sqlalchemy.text(f"SHOW {name}")).scalar()
                for name in ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
            }
        engine.dispose()
        assert shown == {"lock_timeout": lock_timeout, "statement_timeout": "5min", "idle_in_transaction_session_timeout": "1min"}


def test_sqlite_waits_for_a_lock_its_busy_timeout_then_fails(tmp_path):
    engine = engine_for(f"sqlite:///{tmp_path}/state.db")
    Lease(engine, holder="a").acquire(timedelta(seconds=60))
    with sqlite3.connect(tmp_path / "state.db", isolation_level=None) as writer:
        writer.execute("BEGIN IMMEDIATE")  # another process's write transaction
        with pytest.raises(sqlalchemy.exc.OperationalError, match="database is locked"):
            Lease(engine, holder="b").acquire(timedelta(seconds=60))
        writer.execute("ROLLBACK")
    engine.dispose()
