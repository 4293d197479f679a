"""One app for every server model: Flask (WSGI: gunicorn's workers, ``flask run``) and ASGI (uvicorn).

Run under ``opentelemetry-instrument`` with ``OTEL_SEGMENTS_DATABASE_URL`` set, so
the refresh job runs in the serving process. ``GET /work/<user>`` runs as that
user (Flask: the Flask integration's ``init_app``; ASGI: ``UserContextMiddleware``
inside OpenTelemetry's ASGI middleware), opens one manual span ``handle`` that
records which user the request was for (``app.request.user``), does a little CPU,
and answers JSON: the user, the process id, the segment the span cache has for
the user, and whether a refresh cycle was running when the answer was made (the
one peek at otel_segments internals: a test sees requests served *during* a
refresh, which a green-thread event loop blocked by the job could not do).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from flask import Flask, jsonify, request
from opentelemetry import trace

from otel_segments.configuration import configured
from otel_segments.integrations.asgi import UserContextMiddleware
from otel_segments.integrations.flask import init_app

tracer = trace.get_tracer("tests.apps.server_app")


def work(user: str) -> dict[str, Any]:
    with tracer.start_as_current_span("handle") as span:
        span.set_attribute("app.request.user", user)
        digest = hashlib.sha256(user.encode() * 500).hexdigest()
    handle = configured()
    job = handle.job if handle is not None else None
    segment = (handle.segments.get(user) if handle is not None and handle.segments is not None else None) or {}
    return {
        "user": user,
        "pid": os.getpid(),
        "digest": digest[:8],
        "engagement_level": segment.get("app.user.engagement_level"),
        "refreshing": bool(job is not None and job._cycle_lock.locked()),
    }


app = Flask(__name__)
init_app(app, user_loader=lambda: {"user_id": request.view_args["user"], "role": "user"} if request.view_args else None)


@app.get("/work/<user>")
def work_view(user: str) -> Any:
    return jsonify(work(user))


async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps(work(scope["path"].rsplit("/", 1)[-1])).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _asgi_user(scope: dict[str, Any]) -> dict[str, Any] | None:
    return {"user_id": scope["path"].rsplit("/", 1)[-1], "role": "user"} if scope["path"].startswith("/work/") else None


def _asgi_app() -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    return OpenTelemetryMiddleware(UserContextMiddleware(_asgi, resolver=_asgi_user))


asgi_app = _asgi_app()
