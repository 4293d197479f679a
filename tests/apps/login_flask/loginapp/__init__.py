"""A Flask + Flask-Login app as a new user has it: an app factory, no OpenTelemetry set-up, no otel_segments code.

``flask --app loginapp run`` finds :func:`create_app`; ``python app.py <port>``
calls it. The user loader counts its calls (``GET /stats``): the only thing that
reads ``current_user`` on ``GET /work`` is otel_segments, so the count says
whether its hook ran. ``GET /work?pair=1`` waits inside its span until a second
such request arrives, so two users' requests are in flight at once on the
threaded server. Members have names and emails that must never reach a span.
"""

from __future__ import annotations

import threading

from flask import Flask, jsonify, request
from flask_login import LoginManager, UserMixin, login_user, logout_user
from opentelemetry import trace


class Member(UserMixin):
    def __init__(self, id: int, role: str, auth_provider: str, is_admin: bool) -> None:
        self.id = id
        self.role = role
        self.auth_provider = auth_provider
        self.is_admin = is_admin
        self.username = f"member-{id}"
        self.email = f"member-{id}@example.com"


MEMBERS = {"1": Member(1, "admin", "oidc", True), "2": Member(2, "user", "local", False)}
_loads = {"count": 0}
_lock = threading.Lock()
_pair = threading.Barrier(2, timeout=10)


def create_app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "test-only"
    login_manager = LoginManager(app)
    tracer = trace.get_tracer("loginapp")

    @login_manager.user_loader
    def load_user(user_id: str) -> Member | None:
        with _lock:
            _loads["count"] += 1
        return MEMBERS.get(user_id)

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/login")
    def login() -> str:
        with tracer.start_as_current_span("app.login"):
            login_user(MEMBERS[request.form["id"]])
        with tracer.start_as_current_span("after-login"):
            return "ok"

    @app.post("/logout")
    def logout() -> str:
        with tracer.start_as_current_span("before-logout"):
            pass
        with tracer.start_as_current_span("app.logout"):
            logout_user()
        with tracer.start_as_current_span("after-logout"):
            return "ok"

    @app.get("/work")
    def work() -> str:
        with tracer.start_as_current_span("work"):
            if request.args.get("pair"):
                _pair.wait()
        with tracer.start_as_current_span("after-work"):
            return "ok"

    @app.get("/stats")
    def stats():
        return jsonify(loads=_loads["count"])

    return app
