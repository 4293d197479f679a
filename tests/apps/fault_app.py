"""A Flask app served over real HTTP, for the fault tests and benchmark: its only otel_segments code is init_app.

Run under ``opentelemetry-instrument`` with ``OTEL_SEGMENTS_DATABASE_URL`` set (the
refresh job then runs in this process, beside the requests). It listens on a free
loopback port, prints ``listening <port>``, and serves ``GET /work`` (the user from
``X-User-Id``, one manual span, a little CPU) on werkzeug's threaded server until
SIGTERM; then it stops serving and exits normally, so the plugin's ``atexit``
shutdown runs as in any app. Logging is configured as an app would: INFO and up,
one line per record, on stderr.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
import threading
from typing import Any

from flask import Flask, jsonify, request
from opentelemetry import trace
from werkzeug.serving import make_server

from otel_segments.integrations.flask import init_app

app = Flask(__name__)
tracer = trace.get_tracer("tests.apps.fault_app")


def request_user() -> dict[str, Any] | None:
    """The user from ``X-User-Id``, as an auth proxy would say it."""
    user_id = request.headers.get("X-User-Id")
    return {"user_id": user_id, "role": "user", "auth_method": "password"} if user_id else None


init_app(app, user_loader=request_user)


@app.get("/work")
def work() -> Any:
    with tracer.start_as_current_span("work"):
        digest = hashlib.sha256(request.headers.get("X-User-Id", "").encode() * 2000).hexdigest()
        return jsonify(ok=True, digest=digest[:8])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = make_server("127.0.0.1", 0, app, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
