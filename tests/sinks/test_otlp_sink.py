"""OtlpSegmentSink through the standard OTLP log exporters to the real receivers in tests/receivers.py."""

from __future__ import annotations

import hashlib
import hmac
import socket
import threading
import time
from datetime import datetime, timezone

import pytest
from opentelemetry.sdk.resources import Resource

from otel_segments.runtime.compat import EVENT_NAME_ATTRIBUTE, LOG_RECORDS_HAVE_EVENT_NAME
from otel_segments.segments import UserSegment
from otel_segments.settings.config import Settings
from otel_segments.sinks import DeliveryError
from otel_segments.sinks.otlp import EVENT_NAME, OtlpSegmentSink, log_exporter
from otel_segments.spans.privacy import set_privacy_policy
from tests.delivery import wait_until
from tests.receivers import GrpcReceiver, HttpReceiver, Receiver
from tests.sinks.conftest import Bystander
from tests.slow_peer import SlowPeer, shutdown_mid_delivery

TOKEN = "otlp-bearer-token-xyz"
BASE = Resource({"service.name": "timetracker", "deployment.environment.name": "test"})


def users(n: int, start: int = 0) -> list[UserSegment]:
    return [
        UserSegment(
            str(i),
            set={"engagement_level": "high" if i % 2 else "low", "entries_7d": i, "is_admin": i % 3 == 0},
            set_once={"signup_method": "local"},
        )
        for i in range(start, start + n)
    ]


def exporter_for(endpoint: str, protocol: str, monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> object:
    """The exporter the plugin would build from the environment: protocol, endpoint, token."""
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TOKEN", TOKEN)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    kwargs.setdefault("timeout", 2)
    return log_exporter(Settings.from_env(), **kwargs)


@pytest.fixture(params=["http/protobuf", "grpc"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return request.getfixturevalue("http_receiver" if request.param == "http/protobuf" else "grpc_receiver")


@pytest.fixture
def sink(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> OtlpSegmentSink:
    protocol = "grpc" if type(receiver).__name__ == "GrpcReceiver" else "http/protobuf"
    return OtlpSegmentSink(exporter_for(receiver.endpoint, protocol, monkeypatch), BASE)  # type: ignore[arg-type]


def test_each_user_is_a_record_whose_resource_is_the_user(receiver: Receiver, sink: OtlpSegmentSink) -> None:
    batch = users(20)
    sink.deliver(batch)

    logs = receiver.logs()
    assert len(logs) == 20
    by_user = {log.resource["user.id"]: log for log in logs}
    assert set(by_user) == {u.distinct_id for u in batch}
    for user in batch:
        log = by_user[user.distinct_id]
        assert log.event_name == EVENT_NAME
        assert log.resource == {
            "service.name": "timetracker",
            "deployment.environment.name": "test",
            "user.id": user.distinct_id,
            "app.user.engagement_level": user.set["engagement_level"],
            "app.user.entries_7d": user.set["entries_7d"],
            "app.user.is_admin": user.set["is_admin"],
            "app.user.signup_method": "local",
        }
        # before OpenTelemetry 1.35 a record has no event_name field: the name is an attribute (otel_segments.runtime.compat)
        assert log.attributes == ({} if LOG_RECORDS_HAVE_EVENT_NAME else {EVENT_NAME_ATTRIBUTE: EVENT_NAME})
    # one ResourceLogs per user: a collector sees each user as its own entity
    assert sum(len(e.request.resource_logs) for e in receiver.of("logs")) == 20
    assert {e.headers["authorization"] for e in receiver.of("logs")} == {f"Bearer {TOKEN}"}


def test_user_id_is_pseudonymised_when_a_hash_key_is_set(receiver: Receiver, sink: OtlpSegmentSink) -> None:
    set_privacy_policy(hash_key=b"k3y")
    try:
        sink.deliver(users(1, start=42))
    finally:
        set_privacy_policy()
    (log,) = receiver.logs()
    assert log.resource["user.id"] == hmac.new(b"k3y", b"42", hashlib.sha256).hexdigest()
    assert "42" not in log.resource.values()


def test_values_become_valid_attributes_or_are_left_out(http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = OtlpSegmentSink(exporter_for(http_receiver.endpoint, "http/protobuf", monkeypatch), BASE)  # type: ignore[arg-type]
    segment = UserSegment(
        "9",
        set={"gone": None, "tags": ["a", "b"], "ratio": 0.5, "odd": {"nested": 1}, "email": "a@b.c", "plan": "pro"},
        set_once={"first_login": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "plan": "free"},
    )
    sink.deliver([segment])
    (log,) = http_receiver.logs()
    user = {k: v for k, v in log.resource.items() if k.startswith("app.user.")}
    assert user == {
        "app.user.tags": ("a", "b"),
        "app.user.ratio": 0.5,
        "app.user.plan": "pro",  # $set wins over $set_once
        "app.user.first_login": "2024-01-02T03:04:05+00:00",
    }


def test_a_collector_answering_503_fails_the_delivery_then_recovery_delivers(
    http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = OtlpSegmentSink(exporter_for(http_receiver.endpoint, "http/protobuf", monkeypatch, timeout=1), BASE)  # type: ignore[arg-type]
    http_receiver.status = 503
    with pytest.raises(DeliveryError, match="could not deliver a batch of 5 user records"):
        sink.deliver(users(5))
    http_receiver.status = 200
    http_receiver.exports.clear()
    sink.deliver(users(5))
    assert {log.resource["user.id"] for log in http_receiver.logs()} == {"0", "1", "2", "3", "4"}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_unreachable_collector_fails_the_delivery(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = OtlpSegmentSink(exporter_for(f"http://127.0.0.1:{port}", protocol, monkeypatch, timeout=1), BASE)  # type: ignore[arg-type]
    with pytest.raises(DeliveryError) as raised:
        sink.deliver(users(3))
    assert TOKEN not in str(raised.value)


def test_batches_are_exported_in_chunks_and_all_arrive(http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = exporter_for(http_receiver.endpoint, "http/protobuf", monkeypatch)
    sink = OtlpSegmentSink(exporter, BASE, batch_size=100)  # type: ignore[arg-type]
    sink.deliver(users(250))
    assert len(http_receiver.of("logs")) == 3
    assert len({log.resource["user.id"] for log in http_receiver.logs()}) == 250


def test_a_logger_provider_is_refused_because_it_cannot_confirm_delivery() -> None:
    from opentelemetry.sdk._logs import LoggerProvider

    with pytest.raises(TypeError, match="LogRecordExporter"):
        OtlpSegmentSink(LoggerProvider(), BASE)  # type: ignore[arg-type]


def test_shut_down_sink_refuses(http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = OtlpSegmentSink(exporter_for(http_receiver.endpoint, "http/protobuf", monkeypatch), BASE)  # type: ignore[arg-type]
    sink.shutdown(1.0)
    with pytest.raises(DeliveryError, match="shut down"):
        sink.deliver(users(1))
    assert http_receiver.of("logs") == []


def test_a_collector_redirect_is_a_failure_naming_its_location(
    http_receiver: Receiver, bystander: Bystander, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http-to-https ingress answers 308: the SDK would count it as exported (any status < 400); we do not."""
    http_receiver.redirect = (308, f"http://user:pw@{bystander.url[7:]}/v1/logs?sig=abc")
    sink = OtlpSegmentSink(exporter_for(http_receiver.endpoint, "http/protobuf", monkeypatch), BASE)  # type: ignore[arg-type]

    with pytest.raises(DeliveryError) as raised:
        sink.deliver(users(40))

    assert raised.value.accepted == ()
    assert f"HTTP 308 redirecting to {bystander.url}/v1/logs" in str(raised.value)
    assert "pw" not in str(raised.value) and "sig" not in str(raised.value)
    assert bystander.requests == []  # the body never went to the other host
    assert http_receiver.logs() == []


def _padded(n: int, pad: int) -> list[UserSegment]:
    return [UserSegment(str(i), set={"role": f"{i}:" + "r" * pad}) for i in range(n)]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_collector_body_limit_splits_batches_and_refuses_only_the_user_over_it(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 MiB limit: HTTP 413 from a proxy's body limit, gRPC RESOURCE_EXHAUSTED from the server's own message limit.

    Batches of 512 users of ~4 KiB (~2 MiB) are split until they fit; each user arrives exactly once; the one
    user of 2 MiB is refused alone, and the SDK's own retries of RESOURCE_EXHAUSTED are cut short.
    """
    limit = 1024 * 1024
    receiver: Receiver
    if protocol == "http/protobuf":
        receiver = HttpReceiver()
        receiver.max_body = limit
    else:
        receiver = GrpcReceiver(max_message=limit)
    try:
        batch = _padded(1200, 4000)
        batch[700] = UserSegment("700", set={"role": "x" * (2 * 1024 * 1024)})
        sink = OtlpSegmentSink(exporter_for(receiver.endpoint, protocol, monkeypatch, timeout=5), BASE)  # type: ignore[arg-type]

        refused = sink.deliver(batch)

        assert [r.distinct_id for r in refused] == ["700"]
        assert "too large" in refused[0].cause and ("413" in refused[0].cause or "RESOURCE_EXHAUSTED" in refused[0].cause)
        received = [log.resource["user.id"] for log in receiver.logs()]
        assert sorted(received, key=int) == [str(i) for i in range(1200) if i != 700]  # each exactly once
    finally:
        receiver.close()


def test_a_dripping_collector_fails_the_batch_within_the_timeout(drip_peer: SlowPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = OtlpSegmentSink(exporter_for(drip_peer.url, "http/protobuf", monkeypatch, timeout=3), BASE)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(DeliveryError):
        sink.deliver(users(3))
    # The exporter's 3 s timeout is the bound; 2 s of margin for a loaded machine (the drip would last 200,000 s).
    assert time.monotonic() - started < 3 + 2


def test_shutdown_ends_a_delivery_stuck_on_a_collector_that_never_answers(
    hang_peer: SlowPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = OtlpSegmentSink(exporter_for(hang_peer.url, "http/protobuf", monkeypatch, timeout=60), BASE)  # type: ignore[arg-type]
    took, outcome, alive = shutdown_mid_delivery(sink, users(3), hang_peer, timeout_s=1.0)
    # Bound: 1 s, with 1 s of margin for a loaded machine; the export fails at once, not after its 60 s timeout.
    assert took < 1 + 1
    assert not alive
    assert len(outcome) == 1 and isinstance(outcome[0], DeliveryError), outcome


def _delivering(sink: OtlpSegmentSink) -> tuple[threading.Thread, list[BaseException]]:
    outcome: list[BaseException] = []

    def deliver() -> None:
        try:
            sink.deliver(users(3))
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=deliver, daemon=True)
    worker.start()
    return worker, outcome


@pytest.mark.parametrize("peer", ["down/http/protobuf", "down/grpc", "503/http/protobuf"])
def test_a_delivery_the_collector_failed_says_it_is_only_retrying(
    peer: str, http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the job's stop reads at exit to end such a delivery at once instead of granting it a grace (issue 24)."""
    kind, protocol = peer.split("/", 1)
    if kind == "503":
        http_receiver.status = 503
        endpoint = http_receiver.endpoint
    else:
        with socket.socket() as s:  # bound, never listening: every connection is refused
            s.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    # A 60 s timeout: the exporter retries for that long unless it is shut down.
    sink = OtlpSegmentSink(exporter_for(endpoint, protocol, monkeypatch, timeout=60), BASE)  # type: ignore[arg-type]
    assert not sink.failing
    worker, outcome = _delivering(sink)
    wait_until(lambda: sink.failing or not worker.is_alive(), "the sink saying its delivery was answered with a failure", 30)
    if worker.is_alive():  # retrying (1.45); 1.27's HTTP exporter retries no refused connection: it failed at once
        sink.shutdown(timeout_s=1.0)
    worker.join(30)
    assert not worker.is_alive() and len(outcome) == 1 and isinstance(outcome[0], DeliveryError), outcome
    assert not sink.failing  # nothing in flight any more


def test_a_delivery_waiting_on_a_collector_that_has_not_answered_yet_is_not_failing(
    hang_peer: SlowPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow collector may still take the batch: the stop gives such a delivery its grace."""
    sink = OtlpSegmentSink(exporter_for(hang_peer.url, "http/protobuf", monkeypatch, timeout=60), BASE)  # type: ignore[arg-type]
    worker, outcome = _delivering(sink)
    wait_until(lambda: hang_peer.first_bytes, "the delivery reaching the peer", 30)
    assert worker.is_alive() and not sink.failing
    sink.shutdown(timeout_s=1.0)
    worker.join(30)
    assert not worker.is_alive() and len(outcome) == 1, outcome
