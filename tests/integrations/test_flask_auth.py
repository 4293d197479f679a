"""Flask-JWT-Extended and Flask-HTTPAuth in process: the user each check found, read after it ran, never
a second check; a bare identity that may name a person never leaves the process; the app's own user wins."""

from __future__ import annotations

from collections.abc import Iterator

import flask
import pytest
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth, MultiAuth
from flask_jwt_extended import JWTManager, create_access_token, jwt_required
from flask_login import LoginManager, UserMixin, login_user
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from otel_segments import clear_user, current_user, set_user
from otel_segments.integrations import flask as flask_integration
from otel_segments.integrations import flask_auth
from otel_segments.spans.privacy import pseudonymize, set_privacy_policy

from .conftest import Pipeline, user_part


class Member(UserMixin):
    def __init__(self, id: int, role: str) -> None:
        self.id, self.role, self.username, self.email = id, role, f"member{id}", f"member{id}@example.com"


MEMBERS = {1: Member(1, "admin"), 2: Member(2, "user")}


@pytest.fixture
def hooked() -> Iterator[None]:
    """Both zero-code hooks and the Flask-Login one, as their instrumentors install them."""
    flask_integration.instrument()
    flask_auth.instrument_jwt()
    flask_auth.instrument_httpauth()
    flask_auth._warned.clear()
    yield
    flask_auth.uninstrument_httpauth()
    flask_auth.uninstrument_jwt()
    flask_integration.uninstrument()


@pytest.fixture
def app(pipeline: Pipeline, hooked: None) -> Iterator[flask.Flask]:
    app = flask.Flask(__name__)
    app.config.update(JWT_SECRET_KEY="test-only-secret-of-at-least-32-bytes", SECRET_KEY="test")
    FlaskInstrumentor().instrument_app(app, tracer_provider=pipeline.provider)
    app.extensions["lookups"] = []
    jwt = JWTManager(app)
    basic, token, returns_true = HTTPBasicAuth(), HTTPTokenAuth(), HTTPBasicAuth()

    @jwt.user_lookup_loader
    def load(_header: dict, claims: dict) -> Member | None:
        app.extensions["lookups"].append(claims["sub"])
        return MEMBERS.get(int(claims["sub"])) if claims["sub"].isdigit() else None

    basic.verify_password(lambda username, password: MEMBERS[2] if password == "pw" else None)
    token.verify_token(lambda value: {"id": 7, "role": "service", "name": "Robot"} if value == "t-7" else None)
    returns_true.verify_password(lambda username, password: password == "pw")  # the username is the user
    both = MultiAuth(basic, token)

    def work() -> str:
        with pipeline.tracer.start_as_current_span("work"):
            user = current_user()
            return user.user_id if user else "-"

    app.add_url_rule("/jwt", "jwt", jwt_required()(work))
    app.add_url_rule("/jwt-optional", "jwt_optional", jwt_required(optional=True)(work))
    app.add_url_rule("/basic", "basic", basic.login_required(work))
    app.add_url_rule("/either", "either", both.login_required(work))
    app.add_url_rule("/username", "username", returns_true.login_required(work))
    yield app
    FlaskInstrumentor().uninstrument_app(app)


def _bearer(app: flask.Flask, identity: str) -> dict[str, str]:
    with app.app_context():
        return {"Authorization": f"Bearer {create_access_token(identity=identity)}"}


def _server(pipeline: Pipeline):
    [span] = [s for s in pipeline.spans() if s.kind.name == "SERVER"]
    return span


def test_jwt_user_from_the_apps_own_lookup_on_server_and_child_spans(app: flask.Flask, pipeline: Pipeline) -> None:
    assert app.test_client().get("/jwt", headers=_bearer(app, "1")).text == "1"
    expected = {"user.id": "1", "user.roles": ("admin",), "app.user.role": "admin", "app.user.auth_method": "jwt"}
    assert user_part(_server(pipeline)) == user_part(pipeline.named("work")[0]) == expected
    assert app.extensions["lookups"] == ["1"]  # the app's lookup ran once: its own, for jwt_required
    pipeline.exporter.clear()
    assert app.test_client().get("/jwt-optional").text == "-"  # no token: anonymous
    assert app.test_client().get("/jwt").status_code == 401
    assert not any(user_part(s) for s in pipeline.spans())


def test_a_bare_identity_is_sent_only_when_it_cannot_name_a_person(
    app: flask.Flask, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    app.extensions["lookups"].clear()
    app.extensions["flask-jwt-extended"]._user_lookup_callback = None  # no user_lookup_loader: only the identity
    client = app.test_client()
    assert client.get("/jwt", headers=_bearer(app, "42")).text == "42"
    uuid = "6f1c2a9e-1b7d-4c5e-9a0b-3d2e1f4a5b6c"
    assert client.get("/jwt", headers=_bearer(app, uuid)).text == uuid
    for _ in range(2):
        assert client.get("/jwt", headers=_bearer(app, "ann@example.com")).text == "-"
        assert client.get("/username", auth=("ann", "pw")).text == "-"  # HTTPAuth keeps the username: not sent
    assert len([r for r in caplog.records if "may name a person" in r.getMessage()]) == 2  # once per method
    assert not any("example.com" in str(v) or v == "ann" for s in pipeline.spans() for v in (s.attributes or {}).values())
    set_privacy_policy(hash_key=b"k" * 32)
    try:
        pipeline.exporter.clear()
        assert client.get("/jwt", headers=_bearer(app, "ann@example.com")).text == "ann@example.com"  # in process
        assert user_part(_server(pipeline))["user.id"] == pseudonymize("ann@example.com") != "ann@example.com"
    finally:
        set_privacy_policy()


def test_httpauth_user_from_each_auth_class(app: flask.Flask, pipeline: Pipeline) -> None:
    client = app.test_client()
    assert client.get("/basic", auth=("anyone", "pw")).text == "2"
    assert user_part(_server(pipeline)) == {
        "user.id": "2",
        "user.roles": ("user",),
        "app.user.role": "user",
        "app.user.auth_method": "basic",
    }
    pipeline.exporter.clear()
    assert client.get("/either", headers={"Authorization": "Bearer t-7"}).text == "7"  # MultiAuth picked token
    assert user_part(pipeline.named("work")[0]) == {
        "user.id": "7",
        "user.roles": ("service",),
        "app.user.role": "service",
        "app.user.auth_method": "token",
    }
    assert "Robot" not in str(_server(pipeline).attributes)
    pipeline.exporter.clear()
    assert client.get("/basic", auth=("anyone", "wrong")).status_code == 401
    assert not any(user_part(s) for s in pipeline.spans())


def test_a_user_the_app_set_itself_is_kept(app: flask.Flask, pipeline: Pipeline) -> None:
    app.before_request(lambda: setattr(flask.g, "token", set_user("api-1", role="service")))
    app.teardown_request(lambda exc: clear_user(flask.g.pop("token")))
    assert app.test_client().get("/jwt", headers=_bearer(app, "1")).text == "api-1"


def test_in_a_flask_login_app_the_checked_user_wins_as_a_login_would(app: flask.Flask, pipeline: Pipeline) -> None:
    LoginManager(app).user_loader(lambda uid: MEMBERS.get(int(uid)))
    app.add_url_rule("/session-login", "session_login", lambda: login_user(MEMBERS[2]) and "ok", methods=["POST"])
    client = app.test_client()
    client.post("/session-login")  # the session says 2; the token says 1
    pipeline.exporter.clear()
    assert client.get("/jwt", headers=_bearer(app, "1")).text == "1"
    assert user_part(_server(pipeline))["user.id"] == "1"
