"""Incremental refresh: only users who can have changed are recomputed, and the result equals a full computation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import create_engine, insert, update
from sqlalchemy.engine import Engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.demo import metadata, time_entries, users
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState

from .data import NOW, fill_timetracker, naive


def _digests(state: RefreshState) -> dict[str, str]:
    return {s.distinct_id: s.digest() for s in state.segments()}


def _full(engine: Engine, now) -> dict[str, str]:
    return {s.distinct_id: s.digest() for s in compute_segments(engine, TIMETRACKER, now=now)}


def test_incremental_refresh(engine: Engine) -> None:
    fill_timetracker(engine, users=60)
    state = RefreshState(engine)
    first = refresh(engine, state, TIMETRACKER, now=NOW)
    assert (first.full, first.computed, first.changed) == (True, 60, 60)
    assert _digests(state) == _full(engine, NOW)

    # One second later no data changed, but entries generated on the window edges left their windows:
    # exactly those users are recomputed, and the state matches a full computation.
    tick = refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=1))
    assert not tick.full and 0 < tick.changed <= tick.computed < 20
    assert _digests(state) == _full(engine, NOW + timedelta(seconds=1))
    quiet = refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=2))
    assert quiet.changed == 0

    # One user tracks time: that user (and only users due by the clock) is recomputed and changes.
    later = NOW + timedelta(minutes=10)
    with engine.begin() as conn:
        conn.execute(
            insert(time_entries), [{"user_id": 2, "start_time": naive(later), "created_at": naive(later), "source": "timer"}]
        )
    seen: list[str] = []
    result = refresh(engine, state, TIMETRACKER, now=later, on_change=lambda s: seen.append(s.distinct_id))
    assert "2" in seen and result.computed < 15
    assert _digests(state) == _full(engine, later)

    # A login is noticed.
    with engine.begin() as conn:
        conn.execute(update(users).where(users.c.id == 5).values(last_login=naive(later + timedelta(minutes=1))))
    seen.clear()
    refresh(engine, state, TIMETRACKER, now=later + timedelta(minutes=2), on_change=lambda s: seen.append(s.distinct_id))
    assert "5" in seen

    # Time passes in steps across 24 h / 7 d / 30 d window edges and account-age edges with no new data:
    # after each step the stored state equals a full computation at that moment.
    now = later + timedelta(minutes=2)
    for step in (timedelta(hours=3), timedelta(hours=22), timedelta(days=2), timedelta(days=5), timedelta(days=1)):
        now += step
        r = refresh(engine, state, TIMETRACKER, now=now)
        assert _digests(state) == _full(engine, now), step
        assert not r.full


def test_window_edge_alone_triggers_recompute(sqlite_engine: Engine) -> None:
    metadata.create_all(sqlite_engine)
    created = NOW - timedelta(days=100, hours=5)  # far from a day tick at the times below
    with sqlite_engine.begin() as conn:
        conn.execute(
            insert(users), [{"id": 1, "username": "x", "role": "user", "created_at": naive(created), "auth_provider": "local"}]
        )
        stamp = NOW - timedelta(hours=23)
        conn.execute(
            insert(time_entries), [{"user_id": 1, "start_time": naive(stamp), "created_at": naive(stamp), "source": "manual"}]
        )
    state = RefreshState(sqlite_engine)
    refresh(sqlite_engine, state, TIMETRACKER, now=NOW)
    before = refresh(sqlite_engine, state, TIMETRACKER, now=NOW + timedelta(minutes=30))
    assert before.computed == 0
    after = refresh(sqlite_engine, state, TIMETRACKER, now=NOW + timedelta(hours=1, seconds=1))
    assert (after.computed, after.changed) == (1, 1)
    assert next(state.segments()).set["entries_last_24h"] == 0


def test_max_age_recomputes_everyone(sqlite_engine: Engine) -> None:
    fill_timetracker(sqlite_engine, users=20)
    state = RefreshState(sqlite_engine)
    refresh(sqlite_engine, state, TIMETRACKER, now=NOW, max_age=timedelta(hours=1))
    r = refresh(sqlite_engine, state, TIMETRACKER, now=NOW + timedelta(hours=1, seconds=1), max_age=timedelta(hours=1))
    assert r.computed == 20


def test_restart_does_not_recompute_or_resend(tmp_path) -> None:
    app = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    state_url = f"sqlite:///{tmp_path / 'state.db'}"  # a separate state database
    fill_timetracker(app, users=30)
    state = RefreshState(create_engine(state_url))
    refresh(app, state, TIMETRACKER, now=NOW)
    refresh(app, state, TIMETRACKER, now=NOW + timedelta(seconds=2))  # past the entries generated on window edges
    pending = state.pending("posthog", limit=1000)
    assert len(pending) == 30
    state.mark_delivered("posthog", [(s.distinct_id, s.digest()) for s in pending], now=NOW)
    assert state.pending("posthog") == []
    assert len(state.pending("otlp", limit=5)) == 5  # each sink has its own delivery state

    restarted = RefreshState(create_engine(state_url))
    assert len(list(restarted.segments())) == 30  # a cache can be filled without recomputing
    r = refresh(app, restarted, TIMETRACKER, now=NOW + timedelta(seconds=30))
    assert not r.full and r.computed < 10 and r.changed == 0
    assert restarted.pending("posthog") == []

    with app.begin() as conn:
        conn.execute(
            insert(time_entries),
            [{"user_id": 7, "start_time": naive(NOW), "created_at": naive(NOW + timedelta(seconds=40)), "source": "timer"}],
        )
    refresh(app, restarted, TIMETRACKER, now=NOW + timedelta(minutes=1))
    again = restarted.pending("posthog")
    assert [s.distinct_id for s in again] == ["7"]
    assert again[0].set["entries_last_24h"] >= 1


def test_full_refresh_flag(sqlite_engine: Engine) -> None:
    fill_timetracker(sqlite_engine, users=10)
    state = RefreshState(sqlite_engine)
    refresh(sqlite_engine, state, TIMETRACKER, now=NOW)
    r = refresh(sqlite_engine, state, TIMETRACKER, now=NOW, full=True)
    assert (r.full, r.computed, r.changed) == (True, 10, 0)


@pytest.mark.parametrize("limit", [1, 3])
def test_pending_limit(sqlite_engine: Engine, limit: int) -> None:
    fill_timetracker(sqlite_engine, users=5)
    state = RefreshState(sqlite_engine)
    refresh(sqlite_engine, state, TIMETRACKER, now=NOW)
    assert len(state.pending("s", limit=limit)) == limit
