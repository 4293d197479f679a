"""Zero code for who the user is: real Flask-Login and Django-auth apps under ``opentelemetry-instrument``.

The apps (``tests/apps/login_flask``, ``tests/apps/login_django``) contain no
otel_segments code and no OpenTelemetry set-up; each runs in a subprocess from a
temporary folder, as a user runs it, on its framework's threaded server, and
exports to a real OTLP receiver. Each client sends its own User-Agent, which the
server span records, so every trace is known to belong to one client: two users
whose requests are in flight at once (the apps hold ``/work?pair=1`` until the
other user's arrives) must never see each other's properties on any span.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import VENV_BIN, _free_port, clean_env
from tests.receivers import ReceivedSpan, Receiver
from tests.serving import serving as shared_serving

APPS = Path(__file__).resolve().parent.parent / "apps"
USER_KEYS = ("user.id", "user.roles", "app.user.role", "app.user.is_admin", "app.user.auth_method")
EMAILS_AND_NAMES = ("example.com", "member-")  # in the apps' users' emails and usernames
USERNAMES = {"ann", "bo"}
IGNORED_ROUTES = {"health", "stats"}  # the test's own polling, anonymous


def _flask_user(user_id: str, role: str, is_admin: bool, auth_method: str) -> dict[str, Any]:
    return {
        "user.id": user_id,
        "user.roles": (role,),
        "app.user.role": role,
        "app.user.is_admin": is_admin,
        "app.user.auth_method": auth_method,
    }


FLASK_USERS = {"1": _flask_user("1", "admin", True, "oidc"), "2": _flask_user("2", "user", False, "local")}
FLASK_RUN = ["flask", "--app", "loginapp", "run", "--port", "{port}"]
PAIRS = 3


def _env(receiver: Receiver | None, **extra: str) -> dict[str, str]:
    """The gate open (endpoint and token) when a receiver is given; only the traces signal, flushed fast."""
    env = clean_env(OTEL_SERVICE_NAME="zero-code", OTEL_BSP_SCHEDULE_DELAY="100", **extra)
    if receiver is not None:
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_TOKEN="zero-code-token",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
    env.pop("PYTHONPATH", None)
    return env


def _gate_closed(**extra: str) -> dict[str, str]:
    """An endpoint but no token: the gate is closed. No exporter either, whichever configurator the launcher picks."""
    quiet = {f"OTEL_{signal}_EXPORTER": "none" for signal in ("TRACES", "METRICS", "LOGS")}
    return _env(None, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", **quiet, **extra)


@contextmanager
def serving(folder: Path, command: list[str], env: dict[str, str]) -> Iterator[str]:
    """``opentelemetry-instrument <command>`` in ``folder`` until the block ends; the server's base URL."""
    port = _free_port()
    argv = [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / command[0])] + [a.format(port=port) for a in command[1:]]
    base = f"http://127.0.0.1:{port}"
    with shared_serving(
        argv,
        cwd=folder,
        env=env,
        log=folder / "server.log",
        health_url=base + "/health",
        what=" ".join(command),
        start_timeout_s=120,  # Django with DRF and every instrumentation took over 30 s to start on a loaded machine
    ) as served:
        yield base
    assert "Traceback" not in served.output and "otel_segments:" not in served.output, served.output[-3000:]


def _client(base: str, name: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=15, headers={"User-Agent": name})


def _user_part(span: ReceivedSpan) -> dict[str, Any]:
    return {k: v for k, v in span.attributes.items() if k in USER_KEYS}


def _agent(span: ReceivedSpan) -> str | None:
    return span.attributes.get("user_agent.original", span.attributes.get("http.user_agent"))


def _route(span: ReceivedSpan) -> str | None:
    """The route of a server span (the contrib instrumentations record ``http.route``), else None."""
    route = span.attributes.get("http.route")
    return route.strip("/") if isinstance(route, str) else None


def _traces(receiver: Receiver, servers: int) -> list[list[ReceivedSpan]]:
    """Spans grouped by trace, once ``servers`` server spans of the scenario's routes have arrived."""

    def arrived(r: Receiver) -> list[ReceivedSpan] | None:
        spans = r.spans()
        return spans if sum(_route(x) not in (None, *IGNORED_ROUTES) for x in spans) >= servers else None

    spans = receiver.wait_for(arrived)
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    return [t for t in by_trace.values() if any(_route(s) for s in t)]


def run_scenario(base: str, logins: Mapping[str, dict[str, str]]) -> None:
    """Two users log in, work at the same time, an anonymous client works, then the first user logs out."""
    a, b = logins
    with _client(base, a) as first, _client(base, b) as second, _client(base, "anonymous") as anonymous:
        assert first.post("/login", data=logins[a]).status_code == 200
        assert second.post("/login", data=logins[b]).status_code == 200
        with ThreadPoolExecutor(2) as pool:
            for _ in range(PAIRS):
                pair = [pool.submit(c.get, "/work", params={"pair": 1}) for c in (first, second)]
                assert [f.result().status_code for f in pair] == [200, 200]
        assert anonymous.get("/work").status_code == 200
        assert first.post("/logout").status_code == 200


def assert_scenario(receiver: Receiver, expected: Mapping[str, dict[str, Any]]) -> None:
    """``expected``: each client's (User-Agent's) user properties. Server spans: 2 logins, 2 x PAIRS, anonymous, logout."""
    seen: dict[tuple[str, str], int] = {}
    for trace in _traces(receiver, 2 + 2 * PAIRS + 2):
        [server] = [s for s in trace if _route(s)]
        agent, route = _agent(server), _route(server)
        user = expected.get(agent or "", {})
        names = {s.name: _user_part(s) for s in trace}
        for span in trace:
            values = [str(v) for v in span.attributes.values()]
            assert not any(p in v for p in EMAILS_AND_NAMES for v in values), (span.name, span.attributes)
            assert not USERNAMES & set(values), (span.name, span.attributes)
            # no span of this trace carries anyone but its own client's user, or anything but all of it
            assert _user_part(span) in ({}, user), (agent, route, span.name, span.attributes)
        if route == "login":  # the login ran inside the app's own span: the server span has the user all the same
            assert names["app.login"] == names["after-login"] == _user_part(server) == user, names
        elif route == "logout":  # logged in when the request began, out after logout_user()
            assert names["before-logout"] == names["app.logout"] == _user_part(server) == user, names
            assert names["after-logout"] == {}, names
        elif route == "work":
            assert names["work"] == names["after-work"] == _user_part(server) == user, (agent, names)
        if route not in IGNORED_ROUTES:
            seen[agent or "", route] = seen.get((agent or "", route), 0) + 1
    a, b = expected
    assert seen == {
        (a, "login"): 1,
        (b, "login"): 1,
        (a, "work"): PAIRS,
        (b, "work"): PAIRS,
        ("anonymous", "work"): 1,
        (a, "logout"): 1,
    }


def _stats(base: str) -> dict[str, Any]:
    return httpx.get(base + "/stats", timeout=10).json()


# --- Flask + Flask-Login, built by an app factory ---------------------------------------------------------------


@pytest.fixture
def flask_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    shutil.copytree(APPS / "login_flask", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.mark.parametrize("command", [FLASK_RUN, ["python", "app.py", "{port}"]], ids=["flask-run", "python-app-py"])
def test_flask_login_app_gets_the_user_with_no_code(http_receiver: Receiver, flask_folder: Path, command: list[str]) -> None:
    with serving(flask_folder, command, _env(http_receiver)) as base:
        run_scenario(base, {"client-1": {"id": "1"}, "client-2": {"id": "2"}})
    assert_scenario(http_receiver, {"client-1": FLASK_USERS["1"], "client-2": FLASK_USERS["2"]})


def _login_and_work(base: str, data: dict[str, str]) -> int:
    """Log in, work once, ask for the stats (neither reads the user itself); how often the app loaded a user."""
    with _client(base, "client-1") as client:
        assert client.post("/login", data=data).status_code == 200
        assert client.get("/work").status_code == 200
        return client.get("/stats").json()["loads"]


def test_disabled_by_name_leaves_flask_to_the_contrib_instrumentation(http_receiver: Receiver, flask_folder: Path) -> None:
    env = _env(http_receiver, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_segments_flask")
    with serving(flask_folder, FLASK_RUN, env) as base:
        assert _login_and_work(base, {"id": "1"}) == 0  # nobody read current_user: no user loader ran
    spans = [s for t in _traces(http_receiver, 2) for s in t]
    assert {"POST /login", "GET /work", "work"} <= {s.name for s in spans}  # the server spans are still there
    assert [s.name for s in spans if _user_part(s)] == []


def test_gate_closed_flask_app_gets_no_user_hooks(flask_folder: Path) -> None:
    with serving(flask_folder, FLASK_RUN, _gate_closed()) as base:
        assert _login_and_work(base, {"id": "1"}) == 0


# --- Django with django.contrib.auth (session login) ------------------------------------------------------------


@pytest.fixture(scope="module")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The site in a folder with its database migrated and two users; the users' ids by username."""
    folder = tmp_path_factory.mktemp("django") / "site"
    shutil.copytree(APPS / "login_django", folder, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    env = {**_env(None), "LOGIN_DJANGO_DB": str(folder / "db.sqlite3")}
    out = subprocess.run([str(VENV_BIN / "python"), "seed.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ann, bo = out.stdout.split()
    return folder, {"ann": ann, "bo": bo}


DJANGO_RUNSERVER = ["python", "manage.py", "runserver", "--noreload", "127.0.0.1:{port}"]


def _django_env(folder: Path, receiver: Receiver | None, **extra: str) -> dict[str, str]:
    return _env(receiver, LOGIN_DJANGO_DB=str(folder / "db.sqlite3"), **extra)


def test_django_auth_app_gets_the_user_with_no_code(http_receiver: Receiver, django_site: tuple[Path, dict[str, str]]) -> None:
    # DJANGO_SETTINGS_MODULE exported, as the contrib Django instrumentation needs for its server span
    if importlib.util.find_spec("opentelemetry.instrumentation.django") is None:
        pytest.fail("opentelemetry-instrumentation-django is not installed: the server span comes from it (test extra)")
    folder, ids = django_site
    with serving(folder, DJANGO_RUNSERVER, _django_env(folder, http_receiver, DJANGO_SETTINGS_MODULE="djsite.settings")) as base:
        run_scenario(base, {"client-ann": {"username": "ann"}, "client-bo": {"username": "bo"}})
        middleware = _stats(base)["middleware"]
    assert middleware[-2:] == [
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "otel_segments.integrations.django.AutoUserContextMiddleware",
    ]
    assert_scenario(
        http_receiver,
        {
            "client-ann": {
                "user.id": ids["ann"],
                "user.roles": ("editors",),  # his first group
                "app.user.role": "editors",
                "app.user.is_admin": True,
                "app.user.auth_method": "password",
            },
            "client-bo": {"user.id": ids["bo"], "app.user.is_admin": False, "app.user.auth_method": "password"},
        },
    )


def test_django_settings_module_not_needed_at_start_up(http_receiver: Receiver, django_site: tuple[Path, dict[str, str]]) -> None:
    """``manage.py`` sets ``DJANGO_SETTINGS_MODULE`` after the instrumentors ran: the middleware is added all the same.

    The contrib Django instrumentation is off here: without the variable it calls ``settings.configure()``
    with empty settings, and the app then refuses to start (ALLOWED_HOSTS).
    """
    folder, ids = django_site
    env = _django_env(folder, http_receiver, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="django")
    with serving(folder, DJANGO_RUNSERVER, env) as base:
        assert _login_and_work(base, {"username": "bo"}) == 2  # our middleware read request.user on /work and /stats
        assert "otel_segments.integrations.django.AutoUserContextMiddleware" in _stats(base)["middleware"]
    spans = http_receiver.wait_for(lambda r: (s := r.spans()) and {"work", "after-work"} <= {x.name for x in s} and s)
    for span in spans:
        if span.name in ("after-login", "work", "after-work"):
            bo = {"user.id": ids["bo"], "app.user.is_admin": False, "app.user.auth_method": "password"}
            assert _user_part(span) == bo, span.name


def test_gate_closed_django_app_gets_no_middleware(django_site: tuple[Path, dict[str, str]]) -> None:
    folder, _ = django_site
    env = _gate_closed(LOGIN_DJANGO_DB=str(folder / "db.sqlite3"), DJANGO_SETTINGS_MODULE="djsite.settings")
    with serving(folder, DJANGO_RUNSERVER, env) as base:
        assert _login_and_work(base, {"username": "ann"}) == 0
        assert not any("otel_segments" in m for m in _stats(base)["middleware"])
