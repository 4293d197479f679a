"""Upgrades keep the state: the state the previous release wrote is migrated in place, once, and nothing is resent;
a state written by a newer release stops this one with one line instead of failing every cycle."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, Text, insert, select
from sqlalchemy.engine import Engine

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import SCHEMA_VERSION, RefreshState, StateVersionError

from .data import NOW, fill_timetracker


def _previous_release_state(engine: Engine) -> None:
    """The state tables exactly as the release before versions (commit c7ad572) created them, filled as it filled them:
    every user computed and delivered to PostHog, the watermark set. A frozen copy: later edits to state.py must not change it."""
    md = MetaData()
    users = Table(
        "otel_segments_user_state",
        md,
        Column("user_id", String(255), primary_key=True),
        Column("digest", String(64), nullable=False),
        Column("computed_at", DateTime(timezone=True), nullable=False),
        Column("due_at", DateTime(timezone=True), nullable=False),
        Column("properties", Text, nullable=False),
    )
    Index("otel_segments_user_state_due_at", users.c.due_at)
    delivery = Table(
        "otel_segments_delivery",
        md,
        Column("sink", String(100), primary_key=True),
        Column("user_id", String(255), primary_key=True),
        Column("digest", String(64), nullable=False),
        Column("delivered_at", DateTime(timezone=True), nullable=False),
    )
    meta = Table("otel_segments_meta", md, Column("key", String(100), primary_key=True), Column("value", Text, nullable=False))
    md.create_all(engine)
    segments = list(compute_segments(engine, TIMETRACKER, now=NOW))
    with engine.begin() as conn:
        conn.execute(
            insert(users),
            [
                {
                    "user_id": s.distinct_id,
                    "digest": s.digest(),
                    "computed_at": NOW,
                    "due_at": NOW + timedelta(hours=24),
                    "properties": json.dumps({"$set": s.set, "$set_once": s.set_once}, sort_keys=True),
                }
                for s in segments
            ],
        )
        conn.execute(
            insert(delivery),
            [{"sink": "posthog", "user_id": s.distinct_id, "digest": s.digest(), "delivered_at": NOW} for s in segments],
        )
        conn.execute(insert(meta), [{"key": "watermark", "value": NOW.isoformat()}])


def test_previous_release_state_is_migrated_once_without_resending(engine: Engine) -> None:
    fill_timetracker(engine, users=30)
    _previous_release_state(engine)
    state = RefreshState(engine)  # opening it changes nothing: the migration waits for a refresh, under the lease
    assert state.version() == 1
    assert len(state.pending("posthog")) == 0

    later = NOW + timedelta(minutes=1)
    result = refresh(engine, state, TIMETRACKER, now=later)
    assert state.version() == SCHEMA_VERSION
    assert result.full and result.computed == 30
    # Only users whose properties really moved in that minute (entries on window edges) are pending, not everyone.
    expected_changed = {
        s.distinct_id
        for s in compute_segments(engine, TIMETRACKER, now=later)
        if s.digest() != _digest_at(engine, NOW, s.distinct_id)
    }
    assert {s.distinct_id for s in state.pending("posthog")} == expected_changed
    assert len(expected_changed) < 30

    other = RefreshState(engine)  # another process of the fleet, later: nothing left to migrate
    assert other.migrate() is False
    quiet = refresh(engine, other, TIMETRACKER, now=later + timedelta(seconds=1))
    assert not quiet.full and quiet.changed == 0


def _digest_at(engine: Engine, now, user_id: str) -> str:
    return next(compute_segments(engine, TIMETRACKER, now=now, user_ids=[user_id])).digest()


def test_a_newer_state_stops_this_release_with_one_line(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    fill_timetracker(engine, users=5)
    state = RefreshState(engine)
    refresh(engine, state, TIMETRACKER, now=NOW)
    with engine.begin() as conn:
        conn.execute(state.meta.update().where(state.meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(StateVersionError, match="newer otel_segments"):
        RefreshState(engine)
    with pytest.raises(StateVersionError):
        refresh(engine, state, TIMETRACKER, now=NOW + timedelta(minutes=1))  # a process that opened it before the upgrade

    caplog.set_level(logging.WARNING, logger="otel_segments")
    job = RefreshJob(engine, TIMETRACKER)
    first = job.run_cycle(now=NOW + timedelta(minutes=2))
    assert first is not None and "newer otel_segments" in (first.error or "")
    assert job.kick() is False  # off: no worker, no more cycles
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("otel_segments")]
    assert len(lines) == 1 and "newer otel_segments" in lines[0] and "\n" not in lines[0]
    job.shutdown(timeout_s=2)
    with engine.connect() as conn:  # and it wrote nothing
        assert conn.execute(select(state.meta.c.value).where(state.meta.c.key == "schema_version")).scalar() == str(
            SCHEMA_VERSION + 1
        )


def test_a_new_state_is_created_at_this_version(engine: Engine) -> None:
    fill_timetracker(engine, users=3)
    assert RefreshState(engine).version() == SCHEMA_VERSION
