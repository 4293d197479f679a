"""PostHogSink against a local capture endpoint: real SDK, real HTTP, decoded bodies."""

from __future__ import annotations

import logging
import os
import socket
import threading

import pytest

from otel_segments.context import set_privacy_policy
from otel_segments.segments import UserSegment
from otel_segments.sinks import DeliveryError
from otel_segments.sinks.posthog import PostHogSink, RateLimitedError
from tests.sinks.conftest import Capture

API_KEY = "phc_test_secret_key_0123456789"
SUPER = {"deployment.environment.name": "test", "app.deployment.method": "native"}


def users(n: int, start: int = 0) -> list[UserSegment]:
    return [
        UserSegment(
            str(i),
            set={"engagement_level": "high" if i % 2 else "low", "entries_7d": i, "is_admin": i % 3 == 0},
            set_once={"first_login": f"2024-01-{i % 28 + 1:02d}T00:00:00+00:00", "signup_method": "local"},
        )
        for i in range(start, start + n)
    ]


def sink(capture: Capture, **kwargs: object) -> PostHogSink:
    kwargs.setdefault("super_properties", SUPER)
    return PostHogSink(API_KEY, capture.host, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("gzip", [False, True])
def test_each_user_becomes_one_set_event_with_set_and_set_once(capture: Capture, gzip: bool) -> None:
    batch = users(5)
    sink(capture, gzip=gzip).deliver(batch)

    assert len(capture.requests) == 1
    request = capture.requests[0]
    assert request["path"] == "/batch/"
    assert (request["headers"].get("Content-Encoding") == "gzip") is gzip
    assert request["body"]["api_key"] == API_KEY
    received = capture.by_user()
    assert set(received) == {u.distinct_id for u in batch}
    for user in batch:
        event = received[user.distinct_id]
        assert event["event"] == "$set"
        assert event["properties"]["$set"] == user.set
        assert event["properties"]["$set_once"] == user.set_once
        # the client's super_properties are merged into the event the SDK built
        assert {k: event["properties"][k] for k in SUPER} == SUPER
        assert event["properties"]["$lib"] == "posthog-python"
        assert event["uuid"] and event["timestamp"]
    assert len({e["uuid"] for e in capture.events()}) == len(batch)


def test_default_super_properties_are_the_process_properties(capture: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_ENV", "staging")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setenv("TZ", "Europe/Paris")
    posthog_sink = PostHogSink(API_KEY, capture.host)
    posthog_sink.deliver(users(1))

    properties = capture.events()[0]["properties"]
    assert properties["deployment.environment.name"] == "staging"
    assert properties["app.timezone"] == "Europe/Paris"
    assert posthog_sink.super_properties["deployment.environment.name"] == "staging"


def test_none_values_and_person_names_are_left_out(capture: Capture) -> None:
    segment = UserSegment("7", set={"engagement_level": "high", "email": "a@b.c", "gone": None}, set_once={"name": "Ann"})
    try:
        sink(capture).deliver([segment])
        set_privacy_policy(allow_pii=True)
        sink(capture).deliver([segment])
    finally:
        set_privacy_policy()

    first, second = capture.events()
    assert first["properties"]["$set"] == {"engagement_level": "high"}
    assert "$set_once" not in first["properties"]
    assert second["properties"]["$set"] == {"engagement_level": "high", "email": "a@b.c"}
    assert second["properties"]["$set_once"] == {"name": "Ann"}


def test_500_raises_then_recovery_delivers_everything(capture: Capture) -> None:
    batch = users(250)
    posthog_sink = sink(capture, batch_size=100)
    capture.answers = [(200, {}), (500, {})]

    with pytest.raises(DeliveryError, match=r"HTTP 500.*100 of 250 updates were accepted"):
        posthog_sink.deliver(batch)
    assert len(capture.requests) == 2  # it stopped at the failing batch

    posthog_sink.deliver(batch)  # the job's next cycle sends the same users again
    assert set(capture.by_user()) == {u.distinct_id for u in batch}
    assert len(capture.requests) == 5


def test_timeout_raises(capture: Capture) -> None:
    capture.delay_s = 1.0
    with pytest.raises(DeliveryError, match=r"did not answer within 0\.2s"):
        sink(capture, timeout_s=0.2).deliver(users(3))


def test_connection_refused_raises() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the sink connects: nothing listens there
    with pytest.raises(DeliveryError, match=r"could not reach PostHog at http://127.0.0.1:\d+ \(connection refused\)"):
        PostHogSink(API_KEY, f"http://127.0.0.1:{port}", super_properties={}).deliver(users(3))


def test_429_reports_retry_after_and_holds_off_until_then(capture: Capture) -> None:
    posthog_sink = sink(capture)
    capture.answers = [(429, {"Retry-After": "30"})]

    with pytest.raises(RateLimitedError, match="rate-limited") as raised:
        posthog_sink.deliver(users(3))
    assert raised.value.retry_after_s == 30
    with pytest.raises(RateLimitedError, match="asked us to wait"):
        posthog_sink.deliver(users(3))
    assert len(capture.requests) == 1  # the second call did not knock again


def test_429_without_a_wait_lets_the_next_cycle_through(capture: Capture) -> None:
    posthog_sink = sink(capture)
    capture.answers = [(429, {"Retry-After": "0"})]
    with pytest.raises(RateLimitedError):
        posthog_sink.deliver(users(3))
    posthog_sink.deliver(users(3))
    assert set(capture.by_user()) == {"0", "1", "2"}


def test_capture_mode_v1_in_the_environment_does_not_change_the_endpoint(
    capture: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTHOG_CAPTURE_MODE", "v1")
    sink(capture).deliver(users(2))
    assert [r["path"] for r in capture.requests] == ["/batch/"]
    assert len(capture.events()) == 2


def test_ten_thousand_users_none_lost(capture: Capture) -> None:
    batch = users(10_000)
    sink(capture).deliver(batch)
    assert len({e["distinct_id"] for e in capture.events()}) == 10_000
    assert len(capture.events()) == 10_000
    assert len(capture.requests) == 10  # batch_size 1000


def test_large_events_are_split_to_stay_under_the_request_limit(capture: Capture) -> None:
    batch = [UserSegment(str(i), set={"blob": "x" * 200_000}) for i in range(40)]  # ~8 MB in all
    sink(capture).deliver(batch)
    assert len(capture.requests) >= 2
    assert all(r["size"] <= 5 * 1024 * 1024 + 1024 for r in capture.requests)
    assert set(capture.by_user()) == {str(i) for i in range(40)}


def test_an_event_over_the_posthog_limit_fails_the_batch_instead_of_vanishing(capture: Capture) -> None:
    with pytest.raises(DeliveryError, match="over PostHog's 900 KiB event limit"):
        sink(capture).deliver([UserSegment("1", set={"blob": "x" * 6_000_000})])


def test_the_api_key_never_shows(capture: Capture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    posthog_sink = sink(capture)
    capture.answers = [(500, {})]
    with pytest.raises(DeliveryError) as raised:
        posthog_sink.deliver(users(2))
    posthog_sink.deliver(users(2))

    assert API_KEY not in repr(posthog_sink)
    assert API_KEY not in str(raised.value)
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(vars(posthog_sink))


def test_no_thread_at_construction_or_delivery(capture: Capture) -> None:
    before = set(threading.enumerate())
    posthog_sink = sink(capture)
    posthog_sink.deliver(users(3))
    assert set(threading.enumerate()) == before
    posthog_sink.shutdown(1.0)
    assert set(threading.enumerate()) == before


def test_shut_down_sink_refuses_instead_of_pretending(capture: Capture) -> None:
    posthog_sink = sink(capture)
    posthog_sink.shutdown(1.0)
    with pytest.raises(DeliveryError, match="shut down"):
        posthog_sink.deliver(users(1))
    assert capture.requests == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_delivers_with_its_own_client_and_connection(capture: Capture) -> None:
    posthog_sink = sink(capture)
    posthog_sink.deliver(users(1, start=0))  # the parent has a client and a pooled connection now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            posthog_sink.deliver(users(1, start=1))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    posthog_sink.deliver(users(1, start=2))  # the parent's own connection still works
    assert set(capture.by_user()) == {"0", "1", "2"}
