"""A Flask app that serves requests for the users listed in ``users.txt`` until ``stop`` exists (end-to-end test).

Run under ``opentelemetry-instrument`` with ``OTEL_SEGMENTS_DATABASE_URL`` set; its only otel_segments code is the
Flask integration saying who the user is (the user id alone, so every ``app.user.*`` span attribute comes from the
refresh job's segments). Every 0.2 s it serves one request per listed user, each with a ``stop-timer`` span.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from opentelemetry import trace

from otel_segments.integrations.flask import init_app

app = Flask(__name__)
tracer = trace.get_tracer("tests.segments.live_app")


def request_user() -> dict[str, Any] | None:
    user_id = request.headers.get("X-User-Id")
    return {"user_id": user_id} if user_id else None


init_app(app, user_loader=request_user)


@app.get("/timer")
def timer() -> Any:
    with tracer.start_as_current_span("stop-timer"):
        return jsonify(ok=True)


def main() -> int:
    client = app.test_client()
    here = Path.cwd()
    deadline = time.monotonic() + 600
    while not (here / "stop").exists() and time.monotonic() < deadline:
        users = (here / "users.txt").read_text().split() if (here / "users.txt").exists() else []
        for user in users:
            client.get("/timer", headers={"X-User-Id": user})
        time.sleep(0.2)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
