"""Flask in process: Flask-Login's user, a custom loader, a loader that raises, the server span caught up,
and the zero-code hook that the ``otel_segments_flask`` instrumentor installs."""

from __future__ import annotations

import threading

import flask
import pytest
from flask_login import LoginManager, UserMixin, login_user, logout_user
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from otel_segments import clear_user, current_user, set_user
from otel_segments.integrations import flask as integration
from otel_segments.integrations.flask import init_app
from otel_segments.integrations.instrumentors import FlaskLoginInstrumentor

from .conftest import Pipeline, user_part

try:
    import gevent
except ImportError:  # the greenlet case runs where the test venv has gevent (tests/servers needs it)
    gevent = None


class Member(UserMixin):
    def __init__(self, id: int, role: str, auth_provider: str, admin: bool) -> None:
        self.id = id
        self.role = role
        self.auth_provider = auth_provider
        self.username = f"member{id}"
        self.email = f"member{id}@example.com"
        self._admin = admin

    def is_admin(self) -> bool:  # a method, as some apps write it
        return self._admin


MEMBERS = {"7": Member(7, "admin", "ldap", True), "8": Member(8, "user", "local", False)}


LOADS: list[str] = []


def load_member(uid: str) -> Member | None:
    LOADS.append(uid)
    return MEMBERS.get(uid)


def build(pipeline: Pipeline, *, init: bool = True, login_manager: bool = True, **kwargs: object) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config["SECRET_KEY"] = "test"
    FlaskInstrumentor().instrument_app(app, tracer_provider=pipeline.provider)
    if login_manager:
        LoginManager(app).user_loader(load_member)
    if init:
        init_app(app, **kwargs)  # type: ignore[arg-type]
    tracer = pipeline.provider.get_tracer("test")

    @app.post("/login/<uid>")
    def login(uid: str) -> str:
        with tracer.start_as_current_span("before-login"):
            pass
        with tracer.start_as_current_span("login"):  # the app's own span: the server span must get the user too
            login_user(MEMBERS[uid])
        with tracer.start_as_current_span("after-login"):
            pass
        return "ok"

    @app.post("/logout")
    def logout() -> str:
        with tracer.start_as_current_span("logout"):
            logout_user()
        with tracer.start_as_current_span("after-logout"):
            pass
        return "ok"

    @app.get("/nested")
    def nested() -> str:
        with app.test_request_context("/elsewhere"):  # e.g. building an e-mail's URL: shares g, tears down first
            flask.url_for("work")
        with app.app_context():  # a nested app context of the same app
            pass
        with tracer.start_as_current_span("after-nested"):
            user = current_user()
            return user.user_id if user else "-"

    @app.get("/copied/<how>")
    def copied(how: str) -> str:
        """A copied request context run in a thread, a greenlet or the request itself (a helper called inline)."""

        @flask.copy_current_request_context
        def background() -> None:
            assert flask.request.path.startswith("/copied/")  # the copy is the request's context
            with tracer.start_as_current_span("in-copy"):
                user = current_user()
                seen.append(user.user_id if user else "-")

        seen: list[str] = []
        if how == "thread":
            thread = threading.Thread(target=background)
            thread.start()
            thread.join(30)
        elif how == "greenlet":
            gevent.spawn(background).join(30)
        else:
            background()
        with tracer.start_as_current_span("after-copy"):
            user = current_user()
            return f"{','.join(seen)}|{user.user_id if user else '-'}"

    @app.get("/work")
    def work() -> str:
        with tracer.start_as_current_span("work"):
            user = current_user()
            return user.user_id if user else "-"

    return app


@pytest.fixture
def app(pipeline: Pipeline):
    app = build(pipeline)
    yield app
    FlaskInstrumentor().uninstrument_app(app)


def server(pipeline: Pipeline, route: str):
    [span] = [s for s in pipeline.spans() if (s.attributes or {}).get("http.route") == route]
    return span


def test_flask_login_user_on_server_and_child_spans(app: flask.Flask, pipeline: Pipeline) -> None:
    alice, bob = app.test_client(), app.test_client()
    alice.post("/login/7")
    bob.post("/login/8")
    pipeline.exporter.clear()
    assert alice.get("/work").text == "7"
    [span] = pipeline.named("work")
    expected = {
        "user.id": "7",
        "user.roles": ("admin",),
        "app.user.role": "admin",
        "app.user.is_admin": True,
        "app.user.auth_method": "ldap",
    }
    assert user_part(span) == expected
    assert user_part(server(pipeline, "/work")) == expected
    pipeline.exporter.clear()
    assert bob.get("/work").text == "8"
    assert user_part(server(pipeline, "/work"))["user.id"] == "8"
    assert user_part(pipeline.named("work")[0])["app.user.is_admin"] is False
    for span in pipeline.spans():
        assert not any("member" in str(v) for v in (span.attributes or {}).values())


def test_login_during_the_request_switches_the_user_and_teardown_clears_it(app: flask.Flask, pipeline: Pipeline) -> None:
    app.test_client().post("/login/8")
    assert user_part(pipeline.named("before-login")[0]) == {}
    assert user_part(pipeline.named("login")[0])["user.id"] == "8"
    assert user_part(pipeline.named("after-login")[0])["user.id"] == "8"
    assert user_part(server(pipeline, "/login/<uid>"))["user.id"] == "8"


def test_logout_clears_the_user_for_the_rest_of_the_request(app: flask.Flask, pipeline: Pipeline) -> None:
    client = app.test_client()
    client.post("/login/7")
    pipeline.exporter.clear()
    client.post("/logout")
    assert user_part(server(pipeline, "/logout"))["user.id"] == "7"  # who made the request
    assert user_part(pipeline.named("logout")[0])["user.id"] == "7"
    assert user_part(pipeline.named("after-logout")[0]) == {}
    pipeline.exporter.clear()
    assert client.get("/work").text == "-"


def test_anonymous_request_has_no_user(app: flask.Flask, pipeline: Pipeline) -> None:
    assert app.test_client().get("/work").text == "-"
    assert user_part(server(pipeline, "/work")) == {}


def test_custom_loader_and_a_raising_loader(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    app = build(pipeline, user_loader=lambda: {"user_id": flask.request.headers["X-User"], "role": "viewer", "plan": "pro"})
    try:
        client = app.test_client()
        assert client.get("/work", headers={"X-User": "u-1"}).text == "u-1"
        assert user_part(server(pipeline, "/work"))["app.user.role"] == "viewer"
        assert server(pipeline, "/work").attributes["app.user.plan"] == "pro"
        for _ in range(3):  # the loader raises KeyError: the request still succeeds, logged once
            assert client.get("/work").status_code == 200
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    assert len([r for r in caplog.records if "user loader raised" in r.getMessage()]) == 1


def test_loader_returning_garbage_does_not_break_the_request(pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    app = build(pipeline, user_loader=lambda: ["not", "a", "mapping"])
    try:
        assert app.test_client().get("/work").text == "-"
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    assert any("not a user" in r.getMessage() for r in caplog.records)


def test_a_nested_request_context_keeps_the_outer_requests_user(app: flask.Flask, pipeline: Pipeline) -> None:
    client = app.test_client()
    client.post("/login/7")
    pipeline.exporter.clear()
    assert client.get("/nested").text == "7"
    assert user_part(pipeline.named("after-nested")[0])["user.id"] == "7"
    assert current_user() is None  # the outer request's own teardown still ends its user
    assert client.get("/work").text == "7"


COPIES = ["thread", pytest.param("greenlet", marks=pytest.mark.skipif(gevent is None, reason="gevent")), "inline"]


def _copied_request_keeps_the_user(app: flask.Flask, pipeline: Pipeline, how: str) -> None:
    client = app.test_client()
    client.post("/login/7")
    pipeline.exporter.clear()
    assert client.get(f"/copied/{how}").text == "7|7"  # the copy's user, then the request's, still there
    [in_copy] = pipeline.named("in-copy")
    assert user_part(in_copy)["user.id"] == "7"
    assert user_part(pipeline.named("after-copy")[0])["user.id"] == "7"
    assert user_part(server(pipeline, "/copied/<how>"))["user.id"] == "7"
    assert current_user() is None  # the request's own teardown still ends its user
    client.post("/logout")
    assert client.get(f"/copied/{how}").text == "-|-"  # anonymous: the copy carries nobody


@pytest.mark.parametrize("how", COPIES)
def test_a_copied_request_context_carries_the_user_and_ends_nothing_of_the_request(
    app: flask.Flask, pipeline: Pipeline, how: str
) -> None:
    _copied_request_keeps_the_user(app, pipeline, how)


@pytest.fixture
def instrumented():
    """The zero-code hook on every Flask app, as the instrumentor installs it when the gate is open."""
    original = flask.app.Flask.preprocess_request
    integration.instrument()
    yield
    integration.uninstrument()
    assert flask.app.Flask.preprocess_request is original


def test_instrumented_app_without_init_app_gets_flask_login_user(instrumented: None, pipeline: Pipeline) -> None:
    app = build(pipeline, init=False)
    try:
        client = app.test_client()
        client.post("/login/7")
        assert user_part(server(pipeline, "/login/<uid>"))["user.id"] == "7"
        assert user_part(pipeline.named("login")[0])["user.id"] == "7"
        pipeline.exporter.clear()
        assert client.get("/work").text == "7"
        assert user_part(server(pipeline, "/work"))["app.user.auth_method"] == "ldap"
        pipeline.exporter.clear()
        client.post("/logout")
        assert user_part(pipeline.named("after-logout")[0]) == {}
    finally:
        FlaskInstrumentor().uninstrument_app(app)


def test_instrumented_nested_request_context_keeps_the_outer_requests_user(instrumented: None, pipeline: Pipeline) -> None:
    app = build(pipeline, init=False)
    try:
        client = app.test_client()
        client.post("/login/8")
        assert client.get("/nested").text == "8"
        assert user_part(pipeline.named("after-nested")[0])["user.id"] == "8"
        assert current_user() is None
    finally:
        FlaskInstrumentor().uninstrument_app(app)


@pytest.mark.parametrize("how", COPIES)
def test_instrumented_copied_request_context_carries_the_user(instrumented: None, pipeline: Pipeline, how: str) -> None:
    app = build(pipeline, init=False)
    try:
        _copied_request_keeps_the_user(app, pipeline, how)
    finally:
        FlaskInstrumentor().uninstrument_app(app)


def test_instrumented_hook_leaves_a_user_the_app_set_itself(instrumented: None, pipeline: Pipeline) -> None:
    app = build(pipeline, init=False)
    app.before_request(lambda: setattr(flask.g, "token", set_user(flask.request.headers["X-Api-Key"], role="service")))
    app.teardown_request(lambda exc: clear_user(flask.g.pop("token")))
    try:
        assert app.test_client().get("/work", headers={"X-Api-Key": "api-1"}).text == "api-1"  # anonymous to Flask-Login
        assert user_part(pipeline.named("work")[0])["app.user.role"] == "service"
    finally:
        FlaskInstrumentor().uninstrument_app(app)


def test_instrumented_and_init_app_load_the_user_once(instrumented: None, pipeline: Pipeline) -> None:
    app = build(pipeline)
    try:
        client = app.test_client()
        client.post("/login/8")
        LOADS.clear()
        assert client.get("/work").text == "8"
        assert LOADS == ["8"]  # init_app's hook only: the instrumented one leaves an init_app app alone
    finally:
        FlaskInstrumentor().uninstrument_app(app)


def test_instrumented_app_without_login_manager_is_left_alone(
    instrumented: None, pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(pipeline, init=False, login_manager=False)
    try:
        assert app.test_client().get("/work").text == "-"
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    assert not caplog.records  # no "current_user failed" warning for an app that has no Flask-Login


def test_instrumentor_with_a_missing_dependency_hooks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    original = flask.app.Flask.preprocess_request
    monkeypatch.setattr(FlaskLoginInstrumentor, "_dependencies", ("flask-login >= 999",))
    instrumentor = FlaskLoginInstrumentor()
    instrumentor.instrument(skip_dep_check=True)  # as opentelemetry-instrument calls it
    try:
        assert flask.app.Flask.preprocess_request is original
    finally:
        instrumentor.uninstrument()


def test_instrumentor_never_raises_into_start_up(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import otel_segments.configuration

    class Open:
        enabled = True

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(otel_segments.configuration, "configure_instrumented", lambda: Open())
    monkeypatch.setattr(integration, "instrument", broken)
    instrumentor = FlaskLoginInstrumentor()
    instrumentor.instrument(skip_dep_check=True)
    instrumentor.uninstrument()
    assert [r.getMessage() for r in caplog.records] == [
        "otel_segments: otel_segments_flask could not hook in; the app runs without it"
    ]
