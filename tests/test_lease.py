from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy

from otel_segments.job.lease import Lease

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
