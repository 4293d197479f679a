"""Zero code for Django REST Framework: token, JWT and session requests carry their user, under ``opentelemetry-instrument``.

The site (``tests/apps/login_django``) has no otel_segments code; its DRF API
authenticates with DRF's session and token classes and Simple JWT, inside the
view, after Django's middleware. The clients get their token and JWT from the
site's own endpoints, then work at the same time (``/api/work?pair=1`` holds
each request until the other user's arrives): the server span and its children
carry each client's user, with the authenticator as ``auth_method``, and the
token is checked once per request (the site counts), by DRF alone.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.integrations.test_zero_code import (
    DJANGO_RUNSERVER,
    EMAILS_AND_NAMES,
    USERNAMES,
    _client,
    _django_env,
    _route,
    _stats,
    _traces,
    _user_part,
    django_site,  # noqa: F401 - the fixture (its migrated site and two users), shared with the session tests
    serving,
)
from tests.receivers import Receiver

PAIRS = 3
SETTINGS = {"DJANGO_SETTINGS_MODULE": "djsite.settings"}


def _token(base: str, username: str) -> str:
    reply = httpx.post(base + "/api/token", data={"username": username, "password": "x"}, timeout=15)
    assert reply.status_code == 200, reply.text
    return "Token " + reply.json()["token"]


def _jwt(base: str, username: str) -> str:
    reply = httpx.post(base + "/api/jwt", data={"username": username, "password": "x"}, timeout=15)
    assert reply.status_code == 200, reply.text
    return "Bearer " + reply.json()["access"]


def _api_scenario(base: str) -> None:
    """ann by token and bo by JWT at the same time, bo by session cookie, then an anonymous client."""
    with (
        _client(base, "client-token") as by_token,
        _client(base, "client-jwt") as by_jwt,
        _client(base, "client-session") as by_session,
        _client(base, "anonymous") as anonymous,
    ):
        by_token.headers["Authorization"] = _token(base, "ann")
        by_jwt.headers["Authorization"] = _jwt(base, "bo")
        with ThreadPoolExecutor(2) as pool:
            for _ in range(PAIRS):
                pair = [pool.submit(c.get, "/api/work", params={"pair": 1}) for c in (by_token, by_jwt)]
                assert [f.result().status_code for f in pair] == [200, 200]
        assert by_session.post("/login", data={"username": "bo"}).status_code == 200
        assert by_session.get("/api/work").status_code == 200
        assert anonymous.get("/api/work").status_code == 200


def _api_traces(receiver: Receiver) -> dict[str, list[dict[str, dict[str, Any]]]]:
    """Each client's ``/api/work`` traces, as {span name: user part}; no span of any trace names a person."""
    by_agent: dict[str, list[dict[str, dict[str, Any]]]] = {}
    for trace in _traces(receiver, 2 * PAIRS + 2 + 3):  # the API pairs, session and anonymous; token, JWT, login
        for span in trace:
            values = [str(v) for v in span.attributes.values()]
            assert not any(p in v for p in EMAILS_AND_NAMES for v in values), (span.name, span.attributes)
            assert not USERNAMES & set(values), (span.name, span.attributes)
        [server] = [s for s in trace if _route(s)]
        if _route(server) == "api/work":
            agent = server.attributes.get("user_agent.original", server.attributes.get("http.user_agent"))
            names = {s.name: _user_part(s) for s in trace}
            by_agent.setdefault(str(agent), []).append({"server": _user_part(server), **names})
    return by_agent


def test_drf_token_jwt_and_session_requests_carry_their_user_with_no_code(
    http_receiver: Receiver,
    django_site: tuple[Path, dict[str, str]],  # noqa: F811 - the fixture imported above
) -> None:
    folder, ids = django_site
    with serving(folder, DJANGO_RUNSERVER, _django_env(folder, http_receiver, **SETTINGS)) as base:
        _api_scenario(base)
        assert _stats(base)["token_checks"] == PAIRS  # once per token request: nobody authenticated a second time
    ann = {"user.id": ids["ann"], "app.user.is_admin": True, "user.roles": ("editors",), "app.user.role": "editors"}
    bo = {"user.id": ids["bo"], "app.user.is_admin": False}
    expected = {
        "client-token": {**ann, "app.user.auth_method": "token"},
        "client-jwt": {**bo, "app.user.auth_method": "jwt"},
        "client-session": {**bo, "app.user.auth_method": "session"},
        "anonymous": {},
    }
    seen = _api_traces(http_receiver)
    assert {agent: len(traces) for agent, traces in seen.items()} == {
        "client-token": PAIRS,
        "client-jwt": PAIRS,
        "client-session": 1,
        "anonymous": 1,
    }
    for agent, traces in seen.items():
        for names in traces:
            user = expected[agent]
            assert names["server"] == names["api.work"] == names["after-api-work"] == user, (agent, names)


def test_drf_hook_off_by_name_leaves_token_requests_anonymous(
    http_receiver: Receiver,
    django_site: tuple[Path, dict[str, str]],  # noqa: F811 - the fixture imported above
) -> None:
    folder, ids = django_site
    env = _django_env(folder, http_receiver, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_segments_drf", **SETTINGS)
    with serving(folder, DJANGO_RUNSERVER, env) as base:
        with _client(base, "client-token") as by_token, _client(base, "client-session") as by_session:
            by_token.headers["Authorization"] = _token(base, "ann")
            assert by_token.get("/api/work").status_code == 200
            assert by_session.post("/login", data={"username": "bo"}).status_code == 200
            assert by_session.get("/api/work").status_code == 200
    seen = {}
    for trace in _traces(http_receiver, 4):  # the token, the token's API request, the login, the session's API request
        [server] = [s for s in trace if _route(s)]
        if _route(server) == "api/work":
            agent = server.attributes.get("user_agent.original", server.attributes.get("http.user_agent"))
            seen[agent] = [_user_part(server), _user_part(next(s for s in trace if s.name == "after-api-work"))]
    assert seen["client-token"] == [{}, {}], seen
    # the session user is Django's own: the Django integration still gives it, with the backend, not DRF's authenticator
    bo = {"user.id": ids["bo"], "app.user.is_admin": False, "app.user.auth_method": "password"}
    assert seen["client-session"] == [bo, bo], seen
