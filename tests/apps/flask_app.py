"""A small Flask app with no OpenTelemetry code of its own, for ``opentelemetry-instrument`` tests.

It says who the user is and nothing more: a WSGI middleware wraps each request in
``otel_segments.user_context`` (as an auth proxy header would), so the Flask
server span starts with the user known; one handler also uses ``set_user``. Each
handler opens a manual span. It serves two requests to itself through the Flask
test client, adds one metric point and emits one log record through the API (so
every signal is exported), prints ``served <n>`` and exits; the SDK flushes at exit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, jsonify
from opentelemetry import metrics, trace
from opentelemetry._logs import LogRecord, get_logger

import otel_segments

USERS = {
    "u-1": {"role": "admin", "is_admin": True, "auth_method": "oidc", "plan": "team", "team_id": 7},
    "u-2": {"role": "member", "is_admin": False, "auth_method": "password", "plan": "free", "team_id": 9},
}

app = Flask(__name__)
tracer = trace.get_tracer("tests.apps.flask_app")
requests_counter = metrics.get_meter("tests.apps.flask_app").create_counter("app.requests")


def user_middleware(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Set the user before the instrumented ``wsgi_app`` starts the server span."""

    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        user_id = environ.get("HTTP_X_USER_ID")
        with otel_segments.user_context(user_id, **USERS.get(user_id or "", {})):
            return list(wsgi_app(environ, start_response))

    return middleware


app.wsgi_app = user_middleware(app.wsgi_app)  # type: ignore[method-assign]


@app.get("/report")
def report() -> Any:
    with tracer.start_as_current_span("build-report"):
        requests_counter.add(1, {"route": "/report"})
        return jsonify(ok=True)


@app.get("/settings/<user_id>")
def settings(user_id: str) -> Any:
    token = otel_segments.set_user(user_id, **USERS[user_id])
    try:
        with tracer.start_as_current_span("load-settings"):
            requests_counter.add(1, {"route": "/settings"})
            return jsonify(ok=True)
    finally:
        otel_segments.clear_user(token)


def main() -> int:
    client = app.test_client()
    served = 0
    for path, user in (("/report", "u-1"), ("/settings/u-2", "u-2")):
        response = client.get(path, headers={"X-User-Id": user})
        served += response.status_code == 200
    get_logger("tests.apps.flask_app").emit(LogRecord(body="served", attributes={"served": served}))
    print(f"served {served}", flush=True)
    return 0 if served == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
