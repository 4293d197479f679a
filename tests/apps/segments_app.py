"""A Flask app whose only otel_segments code is the Flask integration saying who the user is (end-to-end test).

Run under ``opentelemetry-instrument`` with ``OTEL_SEGMENTS_DATABASE_URL`` set. It
serves requests for user ``3`` (and ``7``), as an app would, until its spans can
carry the user's segment, i.e. until the refresh job has run and the span cache
knows the user (the only peek at otel_segments internals, to know when to stop),
serves one more, prints ``served <n>`` and exits; the SDK flushes at exit.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from flask import Flask, jsonify, request
from opentelemetry import trace

from otel_segments.configuration import configured
from otel_segments.integrations.flask import init_app

app = Flask(__name__)
tracer = trace.get_tracer("tests.apps.segments_app")


def request_user() -> dict[str, Any] | None:
    """The user from ``X-User-Id``, as an auth proxy would say it."""
    user_id = request.headers.get("X-User-Id")
    return {"user_id": user_id, "role": "user", "auth_method": "password"} if user_id else None


init_app(app, user_loader=request_user)


@app.get("/timer")
def timer() -> Any:
    with tracer.start_as_current_span("stop-timer"):
        return jsonify(ok=True)


def main() -> int:
    client = app.test_client()
    served = 0
    handle = configured()
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
    while time.monotonic() < deadline:
        for user in ("3", "7"):
            served += client.get("/timer", headers={"X-User-Id": user}).status_code == 200
        if handle is not None and handle.segments is not None and handle.segments.get("3"):
            break
        time.sleep(0.1)
    served += client.get("/timer", headers={"X-User-Id": "3"}).status_code == 200
    print(f"served {served}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
