"""A plain WSGI app for the gunicorn ``--preload`` tests: no OpenTelemetry set-up code, only who the user is.

``opentelemetry-instrument gunicorn --preload -w 4 gunicorn_app:app`` loads it once
in the master; each request (``X-User-Id`` header) runs in ``user_context`` with a
manual span, and answers JSON with the worker's pid and the segment the span
cache has for the user, so a test knows which processes are workers.

Two test knobs, read in the master before the fork: ``TEST_LEASE_TTL_S``
shortens the refresh lease of the job that ``configure()`` built (default 30 s),
so a restart after ``kill -9`` takes over within seconds; ``TEST_IMPORT_DELAY_S``
makes the import as slow as a big app's (Django's), so the master lives through
refresh intervals before it forks.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from opentelemetry import trace

import otel_segments
from otel_segments.configuration import configured

time.sleep(float(os.environ.get("TEST_IMPORT_DELAY_S", "0")))
tracer = trace.get_tracer("tests.apps.gunicorn_app")

_handle = configured()
if _handle is not None and _handle.job is not None and os.environ.get("TEST_LEASE_TTL_S"):
    _handle.job.lease_ttl = timedelta(seconds=float(os.environ["TEST_LEASE_TTL_S"]))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    user = environ.get("HTTP_X_USER_ID") or "anonymous"
    with otel_segments.user_context(user, role="user", auth_method="password"):
        with tracer.start_as_current_span("handle") as span:
            segment = (_handle.segments.get(user) if _handle is not None and _handle.segments is not None else None) or {}
            span.set_attribute("app.request.worker", os.getpid())
    body = json.dumps({"pid": os.getpid(), "user": user, "engagement_level": segment.get("app.user.engagement_level")})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]
