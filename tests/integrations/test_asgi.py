"""A raw ASGI app behind OpenTelemetry's ASGI middleware and ours, driven by httpx's ASGI transport."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

from otel_segments import current_user
from otel_segments.integrations.asgi import UserContextMiddleware

from .conftest import Pipeline, user_part

USERS = {"ann": "admin", "bo": "user"}


def headers(scope: dict) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in scope["headers"]}


def sync_resolver(scope: dict) -> dict | None:
    user = headers(scope).get("x-user")
    if user == "boom":
        raise RuntimeError("auth backend down")
    return {"user_id": user, "role": USERS[user]} if user in USERS else None


async def async_resolver(scope: dict) -> dict | None:
    await asyncio.sleep(0)
    return sync_resolver(scope)


def stack(pipeline: Pipeline, resolver) -> object:
    tracer = pipeline.provider.get_tracer("test")

    async def app(scope: dict, receive, send) -> None:
        assert scope["type"] == "http"
        await asyncio.sleep(0.001)  # let the other requests' tasks interleave with this one
        with tracer.start_as_current_span("handler"):
            user = current_user()
            body = (user.user_id if user else "-").encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    return OpenTelemetryMiddleware(UserContextMiddleware(app, resolver), tracer_provider=pipeline.provider)


async def run_concurrently(app: object, users: list[str]) -> list[str]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        responses = await asyncio.gather(*(client.get("/", headers={"x-user": u} if u else {}) for u in users))
    return [r.text for r in responses]


@pytest.mark.parametrize("resolver", [sync_resolver, async_resolver], ids=["sync", "async"])
def test_concurrent_requests_each_carry_their_own_user(pipeline: Pipeline, resolver) -> None:
    users = ["ann", "bo", ""] * 10
    texts = asyncio.run(run_concurrently(stack(pipeline, resolver), users))
    assert texts == [u or "-" for u in users]
    handlers = pipeline.named("handler")
    servers = [s for s in pipeline.spans() if s.kind.name == "SERVER"]
    assert len(handlers) == len(servers) == 30
    for handler in handlers:
        [server] = [s for s in servers if s.context.span_id == handler.parent.span_id]
        assert user_part(server) == user_part(handler)
        if "user.id" in user_part(handler):
            assert user_part(handler)["app.user.role"] == USERS[user_part(handler)["user.id"]]
    assert sorted(user_part(s).get("user.id", "-") for s in servers) == sorted(u or "-" for u in users)


def test_a_raising_resolver_does_not_break_the_request(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    assert asyncio.run(run_concurrently(stack(pipeline, sync_resolver), ["boom"] * 3)) == ["-"] * 3
    assert len([r for r in caplog.records if "ASGI user resolver failed" in r.getMessage()]) == 1


def test_lifespan_passes_through(pipeline: Pipeline) -> None:
    seen = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["type"])

    async def resolver(scope) -> None:
        raise AssertionError("not called for lifespan")

    asyncio.run(UserContextMiddleware(app, resolver)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]
