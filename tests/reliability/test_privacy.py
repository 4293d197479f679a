"""Nothing that names a person, no raw id under the hash option, and no secret ever leaves the process.

Every path that exists without the refresh job is covered, as the peers decode it:
spans through the real OTLP receivers, segment log records through the OTLP sink,
PostHog events through a local capture endpoint, and every log record (SDK
exporters' own failures included) captured at DEBUG.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry import baggage, propagate
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_segments import SuperPropertiesSpanProcessor, clear_user, set_user, user_context
from otel_segments.segments import UserSegment
from otel_segments.settings import config
from otel_segments.settings.config import Secret, Settings
from otel_segments.sinks import DeliveryError
from otel_segments.sinks.otlp import OtlpSegmentSink, log_exporter
from otel_segments.sinks.posthog import PostHogSink
from otel_segments.spans.baggage import inject_user_baggage
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.privacy import PII_KEYS, set_privacy_policy
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

from .conftest import API_KEY, PROCESS, TOKEN, formatted, make_pipeline

RAW_ID = "raw-user-7c1e55a0"
HASH_KEY = b"privacy-test-key"
# Keys that name a person, spelled as apps spell them, with values that must never be seen outside.
PERSON = {
    "email": "ann.example@mail.invalid",
    "Email": "ann.upper@mail.invalid",
    "username": "ann_the_user",
    "name": "Ann Example",
    "full_name": "Ann Q. Example",
    "firstName": "AnnFirst",
    "last-name": "ExampleLast",
    "phone_number": "+15550100999",
    "ip_address": "203.0.113.77",
}
SAFE = {"plan": "pro", "team_id": 7}


def person_values_in(data: bytes | str) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [v for v in PERSON.values() if v in text]


def raw_requests(receiver: Receiver) -> bytes:
    return b"".join(e.request.SerializeToString() for e in receiver.exports)


@pytest.fixture(params=["http", "grpc"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return request.getfixturevalue(f"{request.param}_receiver")


def span_provider(receiver: Receiver, segments: SegmentCache | None = None) -> TracerProvider:
    headers = {"authorization": f"Bearer {TOKEN}"}
    if type(receiver).__name__ == "GrpcReceiver":
        exporter = GrpcSpanExporter(endpoint=receiver.endpoint, insecure=True, headers=headers, timeout=5)
    else:
        exporter = HttpSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces", headers=headers, timeout=5)
    provider = TracerProvider(resource=Resource({"service.name": "privacy"}))
    provider.add_span_processor(SuperPropertiesSpanProcessor(PROCESS, segments))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def otlp_sink(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> OtlpSegmentSink:
    protocol = "grpc" if type(receiver).__name__ == "GrpcReceiver" else "http/protobuf"
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_TOKEN": TOKEN}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    exporter = log_exporter(Settings.from_env(env), {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}, timeout=5)
    return OtlpSegmentSink(exporter, Resource({"service.name": "privacy"}))


def segment_with_person() -> UserSegment:
    return UserSegment(RAW_ID, set={"engagement_level": "high", **PERSON, **SAFE}, set_once={"signup_method": "oidc", **PERSON})


# ---------------------------------------------------------------------------------------------------------------
# Person keys: dropped on every path by default
# ---------------------------------------------------------------------------------------------------------------


def test_spans_carry_no_person_keys(receiver: Receiver) -> None:
    segments = SegmentCache(10)
    segments.put(RAW_ID, {"engagement_level": "high", **PERSON})  # what a custom schema could compute
    provider = span_provider(receiver, segments)
    with user_context(RAW_ID, role="admin", **PERSON, **SAFE):
        provider.get_tracer("t").start_span("request").end()
    token = set_user(RAW_ID, **PERSON)
    provider.get_tracer("t").start_span("hook").end()
    clear_user(token)
    provider.shutdown()

    spans = {s.name: s for s in receiver.wait_for(lambda r: len(r.spans()) == 2 and r.spans())}
    request = spans["request"].attributes
    assert request["user.id"] == RAW_ID and request["app.user.plan"] == "pro" and request["app.user.engagement_level"] == "high"
    assert person_values_in(raw_requests(receiver)) == []
    for span in spans.values():
        assert not [k for k in span.attributes if k.startswith("app.user.") and k[9:].lower().replace("-", "_") in PII_KEYS]


def test_segment_log_records_carry_no_person_keys(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    otlp_sink(receiver, monkeypatch).deliver([segment_with_person()])
    [record] = receiver.logs()
    assert record.resource["user.id"] == RAW_ID and record.resource["app.user.plan"] == "pro"
    assert person_values_in(raw_requests(receiver)) == []


def test_posthog_events_carry_no_person_keys(capture: Capture) -> None:
    PostHogSink(API_KEY, capture.host, super_properties={}).deliver([segment_with_person()])
    [request] = capture.requests
    body = json.dumps(request["body"])
    assert person_values_in(body) == []
    [event] = capture.events()
    assert event["properties"]["$set"]["plan"] == "pro" and event["properties"]["$set_once"] == {"signup_method": "oidc"}


def test_allow_pii_is_an_explicit_opt_in(capture: Capture, http_receiver: Receiver) -> None:
    """The same paths do send them when the app says so: the tests above prove a filter, not a broken pipe."""
    set_privacy_policy(allow_pii=True)
    provider = span_provider(http_receiver)
    with user_context(RAW_ID, **PERSON):
        provider.get_tracer("t").start_span("request").end()
    provider.shutdown()
    PostHogSink(API_KEY, capture.host, super_properties={}).deliver([segment_with_person()])
    assert sorted(person_values_in(raw_requests(http_receiver))) == sorted(PERSON.values())
    assert sorted(person_values_in(json.dumps(capture.requests[0]["body"]))) == sorted(PERSON.values())


# ---------------------------------------------------------------------------------------------------------------
# The HMAC option: the raw id appears nowhere
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def hashed() -> Iterator[str]:
    import hashlib
    import hmac

    set_privacy_policy(hash_key=HASH_KEY)
    yield hmac.new(HASH_KEY, RAW_ID.encode(), hashlib.sha256).hexdigest()
    set_privacy_policy()


def test_hashed_id_on_spans_and_log_records(receiver: Receiver, hashed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    segments = SegmentCache(10)
    segments.put(RAW_ID, {"engagement_level": "high"})  # the cache is keyed by the raw id, inside the process
    provider = span_provider(receiver, segments)
    with user_context(RAW_ID, role="user"):
        provider.get_tracer("t").start_span("request").end()
        outgoing: dict[str, str] = {}
        propagate.inject(outgoing, context=inject_user_baggage())
    provider.shutdown()
    otlp_sink(receiver, monkeypatch).deliver([UserSegment(RAW_ID, set={"engagement_level": "high"})])

    [span] = receiver.wait_for(lambda r: r.spans())
    assert span.attributes["user.id"] == hashed and span.attributes["app.user.engagement_level"] == "high"
    [record] = receiver.logs()
    assert record.resource["user.id"] == hashed
    assert RAW_ID.encode() not in raw_requests(receiver)
    assert RAW_ID not in json.dumps(outgoing) and hashed in outgoing["baggage"]


# ---------------------------------------------------------------------------------------------------------------
# Secrets never in a log record, a message or a repr
# ---------------------------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_settings_never_show_secrets() -> None:
    settings = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example",
            "OTEL_EXPORTER_OTLP_TOKEN": TOKEN,
            "POSTHOG_API_KEY": API_KEY,
            "OTEL_SEGMENTS_USER_ID_HASH_KEY": "hash-key-secret-9d",
            "OTEL_SEGMENTS_DATABASE_URL": "postgresql://app:db-password-77@db/app",
        }
    )
    shown = " ".join(f"{f(x)}" for x in (settings, settings.token, settings.posthog_api_key) for f in (repr, str))
    for secret in (TOKEN, API_KEY, "hash-key-secret-9d", "db-password-77"):
        assert secret not in shown
    assert settings.token == Secret(TOKEN) and settings.posthog_api_key.reveal() == API_KEY


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_exporters_failing_against_an_unreachable_peer_never_log_the_token(
    protocol: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TOKEN": TOKEN, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(env)
    sink = OtlpSegmentSink(log_exporter(settings, env, timeout=1))
    with pytest.raises(DeliveryError) as raised:
        sink.deliver([UserSegment("1", set={"a": 1})])
    sink.shutdown()
    headers = config.otlp_headers("traces", settings.token, env)
    if protocol == "grpc":
        exporter = GrpcSpanExporter(endpoint=endpoint, insecure=True, headers=headers, timeout=1)
    else:
        exporter = HttpSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers, timeout=1)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("t").start_span("s").end()
    provider.shutdown()

    assert caplog.records, "the exporters said nothing about the failure: nothing was checked"
    assert TOKEN not in formatted(caplog.records) and TOKEN not in str(raised.value)


@pytest.mark.parametrize("answer", [500, 401, 429, "refused"])
def test_posthog_failures_never_log_the_api_key(answer: int | str, capture: Capture, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host = f"http://127.0.0.1:{closed_port()}" if answer == "refused" else capture.host
    if isinstance(answer, int):
        capture.answers = [(answer, {"Retry-After": "1"})]
    sink = PostHogSink(API_KEY, host, super_properties={}, timeout_s=2)
    with pytest.raises(DeliveryError) as raised:
        sink.deliver([UserSegment("1", set={"a": 1})])
    assert API_KEY not in repr(sink) and API_KEY not in str(raised.value)
    assert caplog.records and API_KEY not in formatted(caplog.records)
    sink.shutdown()


def test_plain_http_to_a_remote_host_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.example.com:4318", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN}
    settings = Settings.from_env(env)
    for signal in config.SIGNALS:
        config.otlp_endpoint(signal, settings, env)
        config.otlp_headers(signal, settings.token, env)
    assert [r.getMessage() for r in caplog.records] == [
        "OTEL_EXPORTER_OTLP_ENDPOINT points at collector.example.com over plain http: "
        "the bearer token travels unencrypted; use https"
    ]


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:4318", "http://localhost:4318", "https://collector.example.com"])
def test_loopback_or_https_does_not_warn(endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TOKEN": TOKEN})
    assert not caplog.records


APP = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    import otel_segments
    from opentelemetry import trace
    handle = otel_segments.configure()
    assert handle.enabled, handle.settings.disabled_reason
    from opentelemetry import propagate
    with otel_segments.user_context("{raw_id}", role="user", email="{email}", username="{username}", plan="pro"):
        trace.get_tracer("app").start_span("request").end()
    forged = propagate.extract({{"baggage": "app.user.id=1,app.user.role=admin"}})
    trace.get_tracer("app").start_span("forged", context=forged).end()
    handle.shutdown()
    """
)


def test_configure_end_to_end_plain_http_hashed_id_no_person_no_secret_no_baggage(http_receiver: Receiver) -> None:
    """The default path: configure() from the environment, in a process of its own, to a non-loopback address.

    0.0.0.0 reaches this machine's receiver yet is not loopback, so the plain-http warning must appear, once.
    A header value with a newline is one the HTTP client refuses, quoting it whole into the exporter's error
    log, on every export: it must be dropped before, and the other headers still sent.
    """
    endpoint = f"http://0.0.0.0:{http_receiver.port}"
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SEGMENTS_USER_ID_HASH_KEY=HASH_KEY.decode(),
        OTEL_SERVICE_NAME="privacy-app",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_EXPORTER_OTLP_HEADERS="x-api-key=hdr%0Asecret-31,x-team=core",
    )
    env.pop("PYTHONPATH", None)
    code = APP.format(raw_id=RAW_ID, email=PERSON["email"], username=PERSON["username"])
    result = subprocess.run([str(VENV_BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]

    spans = {s.name: s.attributes for s in http_receiver.wait_for(lambda r: len(r.spans()) == 2 and r.spans())}
    assert spans["request"]["app.user.plan"] == "pro" and len(spans["request"]["user.id"]) == 64
    assert not [k for k in spans["forged"] if k.startswith(("user.", "app.user."))]  # baggage is not trusted by default
    assert RAW_ID.encode() not in raw_requests(http_receiver)
    assert person_values_in(raw_requests(http_receiver)) == []
    headers = http_receiver.of("traces")[0].headers
    assert headers["authorization"] == f"Bearer {TOKEN}" and headers["x-team"] == "core" and "x-api-key" not in headers
    for secret in (TOKEN, HASH_KEY.decode(), "secret-31"):
        assert secret not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "plain http" in line]) == 1, result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------
# Untrusted baggage is never promoted to user properties
# ---------------------------------------------------------------------------------------------------------------

FORGED = {"baggage": "app.user.id=1,app.user.role=admin,app.user.is_admin=true,app.user.email=evil%40x.invalid"}


@pytest.mark.parametrize(("value", "trusted"), [(None, False), ("false", False), ("garbage", False), ("true", True)])
def test_incoming_baggage_is_promoted_only_when_trusted(value: str | None, trusted: bool) -> None:
    env = {} if value is None else {"OTEL_SEGMENTS_TRUST_BAGGAGE": value}
    pipeline = make_pipeline(trust_baggage=Settings.from_env(env).trust_baggage)
    incoming = propagate.extract(FORGED)
    assert baggage.get_baggage("app.user.role", incoming) == "admin"  # the forged entry did arrive

    pipeline.tracer.start_span("anonymous", context=incoming).end()
    with user_context("local-7", role="viewer"):
        pipeline.tracer.start_span("signed-in", context=incoming).end()
    spans = {s.name: dict(s.attributes or {}) for s in pipeline.spans()}
    pipeline.provider.shutdown()

    signed_in = spans["signed-in"]
    assert (signed_in["user.id"], signed_in["app.user.role"]) == ("local-7", "viewer")  # the local user always wins
    anonymous = spans["anonymous"]
    if trusted:
        assert (anonymous["user.id"], anonymous["app.user.role"]) == ("1", "admin")
    else:
        assert not [k for k in anonymous if k.startswith(("user.", "app.user."))]
    for attributes in spans.values():
        assert "app.user.is_admin" not in attributes or attributes["app.user.is_admin"] is not True
        assert "evil@x.invalid" not in repr(attributes)
