"""Ordering under takeover: a holder frozen between taking the lease and sending sends nothing when it resumes.

Holder A takes the lease (2 s), reads its batch and freezes just before its sink sends (the widest window:
a SIGSTOP, a debugger or a stalled VM at that point). Its lease expires; B takes over, the users change, B
delivers their newer ``$set``. When A resumes, the request it was about to send must not leave: PostHog
applies ``$set`` in arrival order, so A's older values would overwrite B's newer ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from otel_segments.job.delivery import Delivery
from otel_segments.job.lease import Lease
from otel_segments.segments import UserSegment
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.sinks import Refusal
from otel_segments.sinks.posthog import PostHogSink
from tests.delivery import wait_until
from tests.segments.data import NOW
from tests.sinks.conftest import Capture

API_KEY = "phc_takeover_key"
USERS = 6


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    eng = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    create_demo_database(eng, users_count=USERS, seed=4, now=NOW)
    yield eng
    eng.dispose()


class _FrozenBeforeSending(PostHogSink):
    """A real PostHog sink whose first delivery stops, as a frozen process would, just before it sends."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.frozen = threading.Event()
        self.resume = threading.Event()

    def deliver(self, batch: list[UserSegment]) -> Sequence[Refusal] | None:
        if not self.frozen.is_set():
            self.frozen.set()
            assert self.resume.wait(60)
        return super().deliver(batch)


def _delivery(sink: PostHogSink) -> Delivery:
    return Delivery({"posthog": lambda: sink}, stopped=lambda: False, rest=lambda _s: None, on_failure=lambda _c: None)


def test_a_holder_resumed_after_its_successor_delivered_sends_nothing(engine: Engine, capture: Capture) -> None:
    state = RefreshState(engine)
    refresh(engine, state, TIMETRACKER, now=NOW)
    older = {segment.distinct_id: segment.digest() for segment in state.segments()}

    frozen_sink = _FrozenBeforeSending(API_KEY, capture.host, super_properties={})
    a = Lease(engine, holder="a")
    outcome: list[object] = []

    def holder_a() -> None:
        try:
            outcome.append(_delivery(frozen_sink).run(state, a, lease_ttl=timedelta(seconds=2), batch=100))
        except Exception as error:  # noqa: BLE001 - reported below
            outcome.append(error)

    thread = threading.Thread(target=holder_a, daemon=True)
    thread.start()
    assert frozen_sink.frozen.wait(30)

    b = Lease(engine, holder="b")
    wait_until(lambda: b.acquire(timedelta(seconds=60)), "B takes the lease once A's has expired", timeout=30)
    with engine.begin() as conn:  # every user changes while A is frozen
        conn.execute(sqlalchemy.text("UPDATE users SET role = 'admin'"))
    refresh(engine, state, TIMETRACKER, now=NOW + timedelta(seconds=1), full=True)
    newer = {segment.distinct_id: segment.digest() for segment in state.segments()}
    assert newer != older  # else this test shows nothing
    delivered, failed = _delivery(PostHogSink(API_KEY, capture.host, super_properties={})).run(
        state, b, lease_ttl=timedelta(seconds=60), batch=100
    )
    assert failed == {} and delivered == {"posthog": USERS}
    after_b = len(capture.requests)
    latest = capture.by_user()

    frozen_sink.resume.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(outcome) == 1 and not isinstance(outcome[0], BaseException), outcome
    assert len(capture.requests) == after_b, "the resumed holder sent its older batch after its successor's"
    assert capture.by_user() == latest
    assert state.pending("posthog") == []  # B's delivery stands; nothing is owed
    frozen_sink.shutdown()
