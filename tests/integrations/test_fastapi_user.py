"""``traced_user`` in process, with FastAPI's TestClient and a real SDK pipeline: what it reads, and bad input.

The wrapped dependency runs once per request (FastAPI resolves it; the wrapper
never calls it), its result reaches the endpoint unchanged, and a user whose
fields cannot be read costs one log line, never the request.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import Depends, FastAPI, Header
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_segments import SuperPropertiesSpanProcessor, current_user
from otel_segments.integrations.fastapi import traced_user
from otel_segments.spans.properties import ProcessProperties


class Member:
    def __init__(self, pk: int, is_authenticated: bool = True) -> None:
        self.pk = pk
        self.is_authenticated = is_authenticated
        self.roles = ["editor", "viewer"]
        self.email = "m@example.com"


def _app(dependency: Any) -> tuple[TestClient, list[int], InMemorySpanExporter]:
    calls: list[int] = []
    app = FastAPI()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(ProcessProperties("test", "bare", "UTC")))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    def counted(x_user: str = Header("")) -> Any:
        calls.append(1)
        return dependency(x_user)

    @app.get("/")
    async def endpoint(user: Any = Depends(traced_user(counted, role=lambda u: u.roles[0]))) -> dict[str, Any]:  # noqa: B008
        with tracer.start_as_current_span("work"):
            pass
        seen = current_user()
        return {"attributes": dict(seen.attributes) if seen else None, "user": type(user).__name__}

    return TestClient(app), calls, exporter


def test_an_object_user_is_read_once_and_reaches_the_endpoint() -> None:
    client, calls, exporter = _app(lambda header: Member(int(header)) if header else None)
    reply = client.get("/", headers={"x-user": "7"}).json()
    assert reply == {
        "attributes": {"user.roles": ["editor"], "app.user.role": "editor", "user.id": "7"},
        "user": "Member",
    }
    assert calls == [1]
    [work] = exporter.get_finished_spans()
    assert (work.attributes or {}).get("user.id") == "7"
    assert client.get("/").json() == {"attributes": None, "user": "NoneType"}


def test_an_unauthenticated_user_object_is_anonymous() -> None:
    client, _, _ = _app(lambda header: Member(1, is_authenticated=False))
    assert client.get("/").json()["attributes"] is None


def test_a_user_whose_fields_cannot_be_read_is_logged_once_and_the_request_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    class Odd(Member):
        pass

    def odd(header: str) -> Odd:
        user = Odd(3)
        user.roles = []  # role=lambda u: u.roles[0] raises IndexError
        return user

    client, _, _ = _app(odd)
    for _ in range(2):
        assert client.get("/").json() == {"attributes": None, "user": "Odd"}
    assert [r.getMessage() for r in caplog.records if "otel_segments" in r.getMessage()] == [
        "otel_segments: reading the user returned by the app's dependency failed; "
        "the request goes on without user properties (logged once)"
    ]
