"""A raw WSGI app behind OpenTelemetry's WSGI middleware and ours, driven over Werkzeug's WSGI client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from werkzeug.test import Client

from otel_segments import current_user
from otel_segments.integrations.wsgi import UserContextMiddleware

from .conftest import Pipeline, user_part

TOKENS = {"t-ann": {"user_id": "ann", "role": "admin", "is_admin": True}, "t-bo": {"user_id": "bo", "role": "user"}}


def resolve(environ: dict) -> dict | None:
    token = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")
    if token == "boom":
        raise RuntimeError("auth backend down")
    return TOKENS.get(token)


def client(pipeline: Pipeline) -> Client:
    tracer = pipeline.provider.get_tracer("test")

    def app(environ: dict, start_response) -> object:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def body():
            with tracer.start_as_current_span("stream"):  # runs while the server iterates the body
                user = current_user()
                yield (user.user_id if user else "-").encode()

        return body()

    stack = OpenTelemetryMiddleware(UserContextMiddleware(app, resolve), tracer_provider=pipeline.provider)
    return Client(stack)


def test_each_request_gets_its_own_user_on_server_and_streamed_spans(pipeline: Pipeline) -> None:
    c = client(pipeline)
    headers = [{"Authorization": "Bearer t-ann"}, {"Authorization": "Bearer t-bo"}, {}] * 10

    def call(h: dict) -> tuple[str, str]:
        response = c.get("/", headers=h, buffered=True)  # reads and closes the body, as a server does
        leaked = current_user()
        return response.get_data(as_text=True), "leak" if leaked else ""

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, headers))
    assert [r[0] for r in results] == ["ann", "bo", "-"] * 10
    assert not any(r[1] for r in results)
    servers = [s for s in pipeline.spans() if s.kind.name == "SERVER"]
    streams = pipeline.named("stream")
    assert len(servers) == len(streams) == 30
    for stream in streams:
        [parent] = [s for s in servers if s.context.span_id == stream.parent.span_id]
        assert user_part(parent) == user_part(stream)
    assert sorted(user_part(s).get("user.id", "-") for s in servers) == sorted(["ann", "bo", "-"] * 10)
    ann = next(s for s in servers if user_part(s).get("user.id") == "ann")
    assert user_part(ann)["app.user.is_admin"] is True


def test_a_raising_resolver_does_not_break_the_request(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    c = client(pipeline)
    for _ in range(3):
        response = c.get("/", headers={"Authorization": "Bearer boom"}, buffered=True)
        assert response.status_code == 200 and response.get_data(as_text=True) == "-"
    assert len([r for r in caplog.records if "WSGI user resolver failed" in r.getMessage()]) == 1
