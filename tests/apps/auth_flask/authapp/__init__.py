"""A Flask API authenticated by Flask-JWT-Extended and Flask-HTTPAuth, as a new user has it: no OpenTelemetry
set-up, no otel_segments code.

``flask --app authapp run`` finds :func:`create_app`. ``POST /jwt/login`` issues a token whose identity is the
member's id; ``GET /jwt/work`` needs it (``@jwt_required()``, the member loaded by ``user_lookup_loader``).
``GET /basic/work`` needs HTTP basic auth (``verify_password`` returns the member). Lookups are counted
(``GET /stats``): each check must run once per request. Members have names and e-mails that must never reach a span.
"""

from __future__ import annotations

import threading

from flask import Flask, jsonify, request
from flask_httpauth import HTTPBasicAuth
from flask_jwt_extended import JWTManager, create_access_token, jwt_required
from opentelemetry import trace


class Member:
    def __init__(self, id: int, role: str, is_admin: bool) -> None:
        self.id = id
        self.role = role
        self.is_admin = is_admin
        self.username = f"member-{id}"
        self.email = f"member-{id}@example.com"


MEMBERS = {1: Member(1, "admin", True), 2: Member(2, "user", False)}
PASSWORDS = {"member-1": "pw-1", "member-2": "pw-2"}
_lookups = {"jwt": 0, "basic": 0}
_lock = threading.Lock()


def _count(kind: str) -> None:
    with _lock:
        _lookups[kind] += 1


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["JWT_SECRET_KEY"] = "test-only-secret-of-at-least-32-bytes"
    jwt = JWTManager(app)
    basic = HTTPBasicAuth()
    tracer = trace.get_tracer("authapp")

    @jwt.user_lookup_loader
    def load(_header: dict, claims: dict) -> Member | None:
        _count("jwt")
        return MEMBERS.get(int(claims["sub"]))

    @basic.verify_password
    def verify(username: str, password: str) -> Member | None:
        _count("basic")
        if PASSWORDS.get(username) != password:
            return None
        return MEMBERS[int(username.rpartition("-")[2])]

    @app.get("/health")
    def health() -> str:
        return "ok"

    @app.post("/jwt/login")
    def jwt_login():
        return jsonify(token=create_access_token(identity=request.form["id"]))

    def work() -> str:
        with tracer.start_as_current_span("work"):
            pass
        with tracer.start_as_current_span("after-work"):
            return "ok"

    app.add_url_rule("/jwt/work", "jwt_work", jwt_required()(work))
    app.add_url_rule("/basic/work", "basic_work", basic.login_required(work))

    @app.get("/stats")
    def stats():
        return jsonify(_lookups)

    return app
