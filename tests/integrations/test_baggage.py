"""W3C baggage: untrusted by default, read only when trusted, injected with the hashed id when a key is set."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

import pytest
from opentelemetry import baggage, propagate
from opentelemetry.context import Context
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from werkzeug.test import Client

import otel_segments.spans.processor as processor_module
from otel_segments import SuperPropertiesSpanProcessor, user_context
from otel_segments.integrations.wsgi import UserContextMiddleware
from otel_segments.spans.baggage import inject_user_baggage, user_baggage, user_from_baggage
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.privacy import set_privacy_policy

from .conftest import PROCESS, Pipeline, make_pipeline, user_part

FORGED = {"baggage": "app.user.id=1,app.user.role=admin,app.user.is_admin=true"}


@pytest.fixture
def hash_key() -> Iterator[bytes]:
    key = b"fleet-key"
    set_privacy_policy(hash_key=key)
    yield key
    set_privacy_policy()


def downstream(pipeline: Pipeline, local_user: dict | None = None) -> Client:
    """A service behind OpenTelemetry's WSGI middleware, which extracts incoming baggage into the context."""
    tracer = pipeline.provider.get_tracer("test")

    def app(environ, start_response):
        with tracer.start_as_current_span("handler"):
            pass
        start_response("200 OK", [])
        return [b"ok"]

    return Client(OpenTelemetryMiddleware(UserContextMiddleware(app, lambda _: local_user), tracer_provider=pipeline.provider))


def received(pipeline: Pipeline, headers: dict[str, str], local_user: dict | None = None) -> list[dict]:
    assert downstream(pipeline, local_user).get("/", headers=headers, buffered=True).status_code == 200
    spans = pipeline.spans()
    assert len(spans) == 2
    pipeline.provider.shutdown()
    return [user_part(s) | {k: v for k, v in (s.attributes or {}).items() if k.startswith("app.user.")} for s in spans]


def test_forged_baggage_is_ignored_by_default_without_parsing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(processor_module, "user_from_baggage", lambda ctx: calls.append(ctx))
    assert received(make_pipeline(), FORGED) == [{}, {}]
    assert calls == []  # the processor never looked at the baggage


def test_trusted_baggage_names_the_user_on_every_span() -> None:
    expected = {"user.id": "1", "user.roles": ("admin",), "app.user.role": "admin"}
    assert received(make_pipeline(trust_baggage=True), FORGED) == [expected, expected]  # no is_admin from baggage


def test_a_local_user_wins_over_trusted_baggage() -> None:
    spans = received(make_pipeline(trust_baggage=True), FORGED, local_user={"user_id": "9", "role": "user"})
    assert [s["user.id"] for s in spans] == ["9", "9"]
    assert all(s["app.user.role"] == "user" for s in spans)


def test_trusted_baggage_gets_the_users_segment() -> None:
    segments = SegmentCache(10)
    segments.put("1", {"engagement_level": "very_high"})
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(PROCESS, segments, trust_baggage=True))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ctx = baggage.set_baggage("app.user.id", "1")
    provider.get_tracer("t").start_span("s", context=ctx).end()
    [span] = exporter.get_finished_spans()
    assert span.attributes["app.user.engagement_level"] == "very_high"
    assert span.attributes["deployment.environment.name"] == "test"


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"app.user.id": "x" * 257}, None),
        ({"app.user.id": "a\nb"}, None),
        ({"app.user.id": ""}, None),
        ({"app.user.id": "7", "app.user.role": "r\x00"}, {"user.id": "7"}),
        ({"app.user.id": "7", "app.user.role": "r" * 65}, {"user.id": "7"}),
        ({"other": "1"}, None),
    ],
)
def test_trusted_values_that_cannot_be_an_id_or_role_are_ignored(entries: dict[str, str], expected: dict | None) -> None:
    ctx = Context()
    for key, value in entries.items():
        ctx = baggage.set_baggage(key, value, ctx)
    found = user_from_baggage(ctx)
    assert (None if found is None else dict(found[1])) == expected


def test_inject_round_trip_to_a_trusting_service() -> None:
    headers: dict[str, str] = {}
    with user_context("42", role="editor", is_admin=False, team="core"), user_baggage():
        propagate.inject(headers)
    assert "app.user.id=42" in headers["baggage"] and "app.user.role=editor" in headers["baggage"]
    assert "core" not in headers["baggage"]  # only the id and the role travel
    spans = received(make_pipeline(trust_baggage=True), headers)
    assert spans == [{"user.id": "42", "user.roles": ("editor",), "app.user.role": "editor"}] * 2


def test_with_a_hash_key_only_the_pseudonym_travels_and_matches_downstream(hash_key: bytes) -> None:
    headers: dict[str, str] = {}
    with user_context("42", role="editor") as user, user_baggage():
        propagate.inject(headers)
        upstream_id = user.attributes["user.id"]
    assert upstream_id == hmac.new(hash_key, b"42", hashlib.sha256).hexdigest()
    assert f"app.user.pseudo_id={upstream_id}" in headers["baggage"]
    assert "=42" not in headers["baggage"]
    spans = received(make_pipeline(trust_baggage=True), headers)
    assert [s["user.id"] for s in spans] == [upstream_id] * 2  # not hashed twice


def test_anonymous_inject_drops_what_a_client_sent_and_keeps_the_rest() -> None:
    ctx = baggage.set_baggage("app.user.role", "admin", baggage.set_baggage("tenant", "acme"))
    assert dict(baggage.get_all(inject_user_baggage(ctx))) == {"tenant": "acme"}
