"""PostHogSink against a local capture endpoint: real SDK, real HTTP, decoded bodies."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import pytest

from otel_segments.segments import UserSegment
from otel_segments.sinks import DeliveryError, Refusal
from otel_segments.sinks.posthog import PostHogSink, RateLimitedError
from otel_segments.spans.privacy import set_privacy_policy
from tests.sinks.conftest import Bystander, Capture
from tests.slow_peer import DRIP, SlowPeer, shutdown_mid_delivery

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


def test_events_over_the_posthog_limit_are_refused_and_everyone_else_delivered(capture: Capture) -> None:
    """PostHog drops an event over 900 KiB; such users are refused for good (never sent), the rest go out."""
    batch = users(3000)
    batch[1000] = UserSegment(batch[1000].distinct_id, set={"role": "r" * (950 * 1024)})
    batch[2500] = UserSegment(batch[2500].distinct_id, set={"role": "r" * (2 * 1024 * 1024)})

    refused = sink(capture).deliver(batch)

    assert [r.distinct_id for r in refused] == ["1000", "2500"]
    assert all("over PostHog's 900 KiB event limit" in r.cause and "1000" not in r.cause for r in refused)
    received = [e["distinct_id"] for e in capture.events()]
    assert sorted(received, key=int) == [str(i) for i in range(3000) if i not in (1000, 2500)]  # each once


def test_a_413_splits_the_batch_down_to_the_user_it_refuses(capture: Capture) -> None:
    """A proxy with a 256 KiB body limit: halves go again until only the user too large for it is left, refused alone."""
    capture.max_body = 256 * 1024
    batch = [UserSegment(str(i), set={"blob": "x" * 2000}) for i in range(400)]  # ~0.9 MB in all
    batch[123] = UserSegment("123", set={"blob": "y" * 300_000})  # under PostHog's event limit, over the proxy's

    refused = sink(capture).deliver(batch)

    assert refused == [Refusal("123", "PostHog answered HTTP 413 to its update alone")]
    assert any(r["status"] == 413 for r in capture.requests)
    received = [e["distinct_id"] for e in capture.events()]
    assert sorted(received, key=int) == [str(i) for i in range(400) if i != 123]  # nobody twice, nobody lost


def test_a_failure_names_the_users_accepted_before_it(capture: Capture) -> None:
    capture.answers = [(200, {}), (503, {})]
    with pytest.raises(DeliveryError) as raised:
        sink(capture, batch_size=100).deliver(users(250))
    assert raised.value.accepted == tuple(str(i) for i in range(100))


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed(capture: Capture, bystander: Bystander, status: int) -> None:
    """301/302/303 would turn the POST into a body-less GET there; 307/308 would post the api_key there."""
    capture.answers = [(status, {"Location": f"http://user:pw@{bystander.url[7:]}/batch/?token=abc"})]
    posthog_sink = sink(capture)

    with pytest.raises(DeliveryError) as raised:
        posthog_sink.deliver(users(3))

    assert bystander.requests == []  # the other host received nothing, neither GET nor POST
    assert raised.value.accepted == ()  # nobody counts as delivered
    message = str(raised.value)
    assert f"HTTP {status} redirecting to {bystander.url}/batch/" in message
    assert "pw" not in message and "token" not in message and API_KEY not in message
    assert len(capture.requests) == 1


@pytest.mark.parametrize("closing", [False, True], ids=["keep-alive", "connection-close"])
def test_a_dripping_answer_fails_the_batch_within_the_timeout(closing: bool) -> None:
    """200 headers at once, then a byte every 2 s: each read gets a byte in time; the total deadline ends it."""
    drip_peer = SlowPeer(DRIP, interval_s=2.0, closing=closing)
    try:
        posthog_sink = PostHogSink(API_KEY, drip_peer.url, super_properties={}, timeout_s=3)
        started = time.monotonic()
        with pytest.raises(DeliveryError, match=r"did not answer within 3s"):
            posthog_sink.deliver(users(3))
        # The bound is the sink's 3 s timeout; 2 s of margin for a loaded machine (the drip alone would last 200,000 s).
        assert time.monotonic() - started < 3 + 2
        assert len(drip_peer.accepted) == 1  # no second attempt after the deadline
    finally:
        drip_peer.close()


def test_shutdown_ends_a_delivery_stuck_on_a_peer_that_never_answers(hang_peer: SlowPeer) -> None:
    posthog_sink = PostHogSink(API_KEY, hang_peer.url, super_properties={}, timeout_s=60)
    took, outcome, alive = shutdown_mid_delivery(posthog_sink, users(3), hang_peer, timeout_s=1.0)
    # shutdown() never waits for the stuck delivery (its bound here: 1 s; 1 s of margin for a loaded machine),
    # and the delivery fails at once instead of after its 60 s timeout.
    assert took < 1 + 1
    assert not alive
    assert len(outcome) == 1 and isinstance(outcome[0], DeliveryError), outcome
    assert "shut down mid-delivery" in str(outcome[0])


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
