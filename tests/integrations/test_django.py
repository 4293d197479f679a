"""Django behind OpenTelemetry's WSGI and ASGI middleware: ``request.user`` on the server span and its children."""

from __future__ import annotations

import asyncio

import django
import httpx
import pytest
from django.conf import settings
from django.http import HttpResponse
from django.urls import path
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as AsgiTelemetry
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as WsgiTelemetry
from werkzeug.test import Client

from otel_segments import clear_user, current_user, set_user
from otel_segments.integrations.django import AutoUserContextMiddleware, UserContextMiddleware, add_middleware

from .conftest import Pipeline, user_part

_state: dict[str, trace.Tracer] = {}


def login_view(request, username: str) -> HttpResponse:
    from django.contrib.auth import login
    from django.contrib.auth.models import User

    with _state["tracer"].start_as_current_span("before-login"):
        pass
    with _state["tracer"].start_as_current_span("login"):  # the app's own span: the server span must get the user too
        login(request, User.objects.get(username=username))
    with _state["tracer"].start_as_current_span("after-login"):
        pass
    return HttpResponse("ok")


def logout_view(request) -> HttpResponse:
    from django.contrib.auth import logout

    with _state["tracer"].start_as_current_span("logout"):
        logout(request)
    with _state["tracer"].start_as_current_span("after-logout"):
        pass
    return HttpResponse("ok")


def work_view(request) -> HttpResponse:
    with _state["tracer"].start_as_current_span("work"):
        user = current_user()
        return HttpResponse(user.user_id if user else "-")


def _traced_user(name: str) -> str:
    with _state["tracer"].start_as_current_span(name):
        user = current_user()
        return user.user_id if user else "-"


async def _async_traced_user(name: str) -> str:
    return _traced_user(name)


async def to_thread_view(request) -> HttpResponse:
    """An async view that runs sync code in a worker thread, as the ORM needs (``sync_to_async``)."""
    from asgiref.sync import sync_to_async

    shared = await sync_to_async(_traced_user)("in-thread")
    own = await sync_to_async(_traced_user, thread_sensitive=False)("in-own-thread")
    return HttpResponse(f"{shared},{own}|{_traced_user('after-hop')}")


def to_loop_view(request) -> HttpResponse:
    """A sync view that runs a coroutine on an event loop of asgiref's (``async_to_sync``)."""
    from asgiref.sync import async_to_sync

    inner = async_to_sync(_async_traced_user)("in-loop")
    return HttpResponse(f"{inner}|{_traced_user('after-hop')}")


urlpatterns = [
    path("login/<str:username>", login_view),
    path("logout", logout_view),
    path("work", work_view),
    path("to-thread", to_thread_view),
    path("to-loop", to_loop_view),
]


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if not settings.configured:
        settings.configure(
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"],
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
                "otel_segments.integrations.django.UserContextMiddleware",
            ],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path_factory.mktemp("dj") / "db")}},
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            USE_TZ=True,
        )
    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    ann = User.objects.create_user("ann", "ann@example.com", "x", is_superuser=True)
    bo = User.objects.create_user("bo", "bo@example.com", "x")
    return {"ann": ann.pk, "bo": bo.pk}


@pytest.fixture
def wsgi(users: dict[str, int], pipeline: Pipeline) -> Client:
    from django.core.wsgi import get_wsgi_application

    _state["tracer"] = pipeline.provider.get_tracer("test")
    return Client(WsgiTelemetry(get_wsgi_application(), tracer_provider=pipeline.provider))


def server_span(pipeline: Pipeline):
    [span] = [s for s in pipeline.spans() if s.kind.name == "SERVER"]
    return span


def test_sync_stack_user_on_server_and_child_spans(wsgi: Client, users: dict[str, int], pipeline: Pipeline) -> None:
    ann, bo, anonymous = wsgi, Client(wsgi.application), Client(wsgi.application)
    assert ann.get("/login/ann", buffered=True).status_code == 200
    assert user_part(pipeline.named("before-login")[0]) == {}
    assert user_part(pipeline.named("login")[0])["user.id"] == str(users["ann"])
    assert user_part(pipeline.named("after-login")[0])["user.id"] == str(users["ann"])
    assert user_part(server_span(pipeline))["user.id"] == str(users["ann"])
    bo.get("/login/bo", buffered=True)
    for client, name in ((ann, "ann"), (bo, "bo"), (anonymous, None)):
        pipeline.exporter.clear()
        assert client.get("/work", buffered=True).get_data(as_text=True) == (str(users[name]) if name else "-")
        expected = {}
        if name:  # password: the session's backend is Django's ModelBackend
            expected = {"user.id": str(users[name]), "app.user.is_admin": name == "ann", "app.user.auth_method": "password"}
        assert user_part(server_span(pipeline)) == expected
        assert user_part(pipeline.named("work")[0]) == expected
    assert not any("example.com" in str(v) or v in ("ann", "bo") for s in pipeline.spans() for v in (s.attributes or {}).values())


def test_login_signal_outside_a_request_sets_no_user(users: dict[str, int]) -> None:
    from django.contrib.auth import login
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.http import HttpRequest

    request = HttpRequest()
    request.session = SessionStore()
    login(request, User.objects.get(username="bo"))  # a shell or Client.login(): not inside the middleware
    assert current_user() is None


def test_async_stack_reads_the_user_without_blocking_the_loop(users: dict[str, int], pipeline: Pipeline) -> None:
    from django.core.asgi import get_asgi_application

    _state["tracer"] = pipeline.provider.get_tracer("test")
    app = AsgiTelemetry(get_asgi_application(), tracer_provider=pipeline.provider)

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as ann,
            httpx.AsyncClient(transport=transport, base_url="http://test") as bo,
        ):
            await ann.get("/login/ann")
            await bo.get("/login/bo")
            pipeline.exporter.clear()
            responses = await asyncio.gather(*(c.get("/work") for c in (ann, bo) * 3))
        return [r.text for r in responses]

    assert asyncio.run(scenario()) == [str(users["ann"]), str(users["bo"])] * 3
    servers = [s for s in pipeline.spans() if s.kind.name == "SERVER"]
    works = pipeline.named("work")
    assert len(servers) == len(works) == 6
    for work in works:
        [server] = [s for s in servers if s.context.span_id == work.parent.span_id]
        assert user_part(server) == user_part(work)
        assert user_part(work)["app.user.is_admin"] is (user_part(work)["user.id"] == str(users["ann"]))


def test_async_to_sync_keeps_the_user_and_ends_nothing_of_the_request(
    wsgi: Client, users: dict[str, int], pipeline: Pipeline
) -> None:
    wsgi.get("/login/bo", buffered=True)
    pipeline.exporter.clear()
    bo = str(users["bo"])
    assert wsgi.get("/to-loop", buffered=True).get_data(as_text=True) == f"{bo}|{bo}"
    for name in ("in-loop", "after-hop"):
        assert user_part(pipeline.named(name)[0])["user.id"] == bo
    assert user_part(server_span(pipeline))["user.id"] == bo
    pipeline.exporter.clear()
    assert Client(wsgi.application).get("/to-loop", buffered=True).get_data(as_text=True) == "-|-"


def test_sync_to_async_keeps_each_users_own_and_ends_nothing_of_the_request(users: dict[str, int], pipeline: Pipeline) -> None:
    from django.core.asgi import get_asgi_application

    _state["tracer"] = pipeline.provider.get_tracer("test")
    app = AsgiTelemetry(get_asgi_application(), tracer_provider=pipeline.provider)

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://test") as ann,
            httpx.AsyncClient(transport=transport, base_url="http://test") as bo,
            httpx.AsyncClient(transport=transport, base_url="http://test") as nobody,
        ):
            await ann.get("/login/ann")
            await bo.get("/login/bo")
            pipeline.exporter.clear()
            responses = await asyncio.gather(*(c.get("/to-thread") for c in (ann, bo, nobody) * 3))
        return [r.text for r in responses]

    ann, bo = str(users["ann"]), str(users["bo"])
    assert asyncio.run(scenario()) == [f"{ann},{ann}|{ann}", f"{bo},{bo}|{bo}", "-,-|-"] * 3
    servers = {s.context.span_id: s for s in pipeline.spans() if s.kind.name == "SERVER"}
    assert len(servers) == 9
    for name in ("in-thread", "in-own-thread", "after-hop"):
        spans = pipeline.named(name)
        assert len(spans) == 9
        for span in spans:  # each span is its own request's: the user of the server span it belongs to
            assert user_part(span) == user_part(servers[span.parent.span_id])
    assert sorted(user_part(s).get("user.id", "-") for s in servers.values()) == sorted([ann, bo, "-"] * 3)


def test_logout_clears_the_user_for_the_rest_of_the_request(wsgi: Client, users: dict[str, int], pipeline: Pipeline) -> None:
    wsgi.get("/login/bo", buffered=True)
    pipeline.exporter.clear()
    assert wsgi.get("/logout", buffered=True).status_code == 200
    bo = {"user.id": str(users["bo"]), "app.user.is_admin": False, "app.user.auth_method": "password"}
    assert user_part(server_span(pipeline)) == bo  # who made the request
    assert user_part(pipeline.named("logout")[0]) == bo
    assert user_part(pipeline.named("after-logout")[0]) == {}


AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
OURS = "otel_segments.integrations.django.AutoUserContextMiddleware"
MANUAL = "otel_segments.integrations.django.UserContextMiddleware"


class OwnMiddleware(UserContextMiddleware):
    """An app's subclass, placed by hand."""


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            [SESSIONS, AUTH, "django.middleware.common.CommonMiddleware"],
            [SESSIONS, AUTH, OURS, "django.middleware.common.CommonMiddleware"],
        ),
        (
            [SESSIONS, AUTH, "django.contrib.auth.middleware.RemoteUserMiddleware"],
            [SESSIONS, AUTH, "django.contrib.auth.middleware.RemoteUserMiddleware", OURS],
        ),
        ((SESSIONS, AUTH), [SESSIONS, AUTH, OURS]),  # a tuple, as settings may have it
        ([SESSIONS, "no.such.Middleware", AUTH], [SESSIONS, "no.such.Middleware", AUTH, OURS]),
        ([SESSIONS, AUTH, OURS], [SESSIONS, AUTH, OURS]),
        ([SESSIONS, AUTH, MANUAL], [SESSIONS, AUTH, MANUAL]),
        ([SESSIONS, AUTH, f"{__name__}.OwnMiddleware"], [SESSIONS, AUTH, f"{__name__}.OwnMiddleware"]),
        ([SESSIONS], [SESSIONS]),  # no request.user to read
    ],
    ids=[
        "after-auth",
        "after-remote-user",
        "tuple",
        "broken-entry",
        "already-there",
        "placed-by-hand",
        "subclass-there",
        "no-auth",
    ],
)
def test_auto_instrumentation_adds_the_middleware_once_after_authentication(users: dict[str, int], before, after) -> None:
    from django.test import override_settings

    with override_settings(MIDDLEWARE=before):
        add_middleware()
        add_middleware()
        assert list(settings.MIDDLEWARE) == after


def test_added_middleware_leaves_a_user_the_app_set_itself(users: dict[str, int]) -> None:
    from django.contrib.auth.models import AnonymousUser
    from django.http import HttpRequest

    seen = []
    request = HttpRequest()
    request.user = AnonymousUser()
    token = set_user("api-key-7", role="service")  # e.g. the app's own middleware for API keys, earlier in the chain
    try:
        AutoUserContextMiddleware(lambda r: seen.append(current_user()))(request)
        UserContextMiddleware(lambda r: seen.append(current_user()))(request)  # placed by hand: it decides
    finally:
        clear_user(token)
    assert [u.user_id if u else None for u in seen] == ["api-key-7", None]


def test_admin_flag_and_auth_method_come_from_djangos_user_and_backend(
    users: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_SEGMENTS_DJANGO_ADMIN`` picks the flag (as the ``django`` schema mapping does); the backend names the method."""
    from django.contrib.auth.models import User

    from otel_segments.integrations import django as integration

    staff = User(pk=5, username="eve", is_staff=True, is_superuser=False)
    staff.backend = "django.contrib.auth.backends.RemoteUserBackend"  # what authenticate() marks
    monkeypatch.setenv("OTEL_SEGMENTS_DJANGO_ADMIN", "is_staff")
    integration._admin_flag.cache_clear()
    try:
        assert integration.django_user_info(staff) == {"user_id": 5, "is_admin": True, "auth_method": "remote_user"}
    finally:
        monkeypatch.delenv("OTEL_SEGMENTS_DJANGO_ADMIN")
        integration._admin_flag.cache_clear()
    assert integration.django_user_info(staff) == {"user_id": 5, "is_admin": False, "auth_method": "remote_user"}
    assert integration.backend_method("django.contrib.auth.backends.ModelBackend") == "password"
    assert integration.backend_method("tests.nowhere.LDAPBackend") is None  # not importable: no method, no error


def test_role_from_groups_without_a_query_per_request(wsgi: Client, users: dict[str, int], pipeline: Pipeline) -> None:
    """The first group (by id, not by name) is the role; read at login and kept in the session, else once per process."""
    from django.contrib.auth.models import Group, User
    from django.db import connection

    from otel_segments.integrations import django as integration
    from otel_segments.integrations import django_groups

    cy = User.objects.create_user("cy", "cy@example.com", "x")
    editors, admins = Group.objects.create(name="editors"), Group.objects.create(name="Admins")  # "Admins" sorts first
    cy.groups.add(admins, editors)
    group_queries: list[str] = []

    def count(execute, sql, params, many, context):
        if "auth_group" in sql:
            group_queries.append(sql)
        return execute(sql, params, many, context)

    client = Client(wsgi.application)
    try:
        with connection.execute_wrapper(count):
            assert client.get("/login/cy", buffered=True).status_code == 200
            assert len(group_queries) == 1  # at login, once
            pipeline.exporter.clear()
            for _ in range(3):
                assert client.get("/work", buffered=True).get_data(as_text=True) == str(cy.pk)
            assert len(group_queries) == 1  # the session has it: no query per request
            for span in (*pipeline.named("work"), *[s for s in pipeline.spans() if s.kind.name == "SERVER"]):
                assert user_part(span)["app.user.role"] == "editors" and user_part(span)["user.roles"] == ("editors",)
            session = client.get_cookie("sessionid")  # a session from before the upgrade: no role kept in it
            from django.contrib.sessions.backends.db import SessionStore

            store = SessionStore(session.value)
            store.pop(django_groups.ROLE)
            store.save()
            django_groups._roles_read.clear()
            pipeline.exporter.clear()
            for _ in range(3):
                client.get("/work", buffered=True)
            assert len(group_queries) == 2  # once per user per process, then the process's bounded cache
            assert {user_part(s)["app.user.role"] for s in pipeline.named("work")} == {"editors"}
        prefetched = User.objects.prefetch_related("groups").get(pk=cy.pk)
        group_queries.clear()
        with connection.execute_wrapper(count):
            assert integration.django_user_info(prefetched)["role"] == "editors"
        assert group_queries == []  # the app's prefetched groups
    finally:
        cy.delete()
        editors.delete()
        admins.delete()
        django_groups._roles_read.clear()


def test_role_in_the_async_stack_is_read_off_the_event_loop(
    users: dict[str, int], pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A session without the role (logged in before the upgrade): the one query runs in a worker thread, not the loop."""
    from django.contrib.auth.models import Group, User
    from django.core.asgi import get_asgi_application

    from otel_segments.integrations import django_groups

    dee = User.objects.create_user("dee", "dee@example.com", "x")
    writers = Group.objects.create(name="writers")
    dee.groups.add(writers)
    _state["tracer"] = pipeline.provider.get_tracer("test")
    app = AsgiTelemetry(get_asgi_application(), tracer_provider=pipeline.provider)

    async def scenario() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            await client.get("/login/dee")
            django_groups._roles_read.clear()
            from django.contrib.sessions.backends.db import SessionStore

            store = SessionStore(client.cookies["sessionid"])
            await store.apop(django_groups.ROLE)
            await store.asave()
            pipeline.exporter.clear()
            return (await client.get("/work")).text

    try:
        assert asyncio.run(scenario()) == str(dee.pk)
        assert user_part(pipeline.named("work")[0])["app.user.role"] == "writers"
        assert user_part(server_span(pipeline))["app.user.role"] == "writers"
        assert django_groups._roles_read == {dee.pk: "writers"}  # read once, by the query, and kept for the process
        assert not caplog.records
    finally:
        dee.delete()
        writers.delete()
        django_groups._roles_read.clear()
