"""Who the user is in ASGI apps under ``opentelemetry-instrument`` and uvicorn: Starlette's ``AuthenticationMiddleware``
with no code, and a FastAPI JWT dependency with one line (``traced_user``).

Both apps (``tests/apps/auth_asgi``) validate JWTs themselves with PyJWT and
count it; their users carry an e-mail that must never reach a span. Two users'
requests are in flight at once (``/work?pair=1`` holds the first until the
second arrives): the server span and the app's spans carry each one's user, the
token is validated once per request, and anonymous requests carry nobody.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.integrations.test_zero_code import APPS, _client, _env, _route, _traces, _user_part, serving
from tests.receivers import Receiver

SECRET = "auth-asgi-test-secret-of-at-least-32-bytes"
PAIRS = 3
ANN = {"sub": "1", "role": "admin", "is_admin": True, "email": "ann@example.com"}
BO = {"sub": "2", "role": "member", "is_admin": False, "email": "bo@example.com"}


def _expected(claims: dict[str, Any], auth_method: str) -> dict[str, Any]:
    return {
        "user.id": claims["sub"],
        "user.roles": (claims["role"],),
        "app.user.role": claims["role"],
        "app.user.is_admin": claims["is_admin"],
        "app.user.auth_method": auth_method,
    }


@pytest.fixture
def asgi_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    shutil.copytree(APPS / "auth_asgi", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def _scenario(base: str) -> None:
    with _client(base, "client-ann") as ann, _client(base, "client-bo") as bo, _client(base, "anonymous") as anonymous:
        ann.headers["Authorization"] = "Bearer " + jwt.encode(ANN, SECRET, algorithm="HS256")
        bo.headers["Authorization"] = "Bearer " + jwt.encode(BO, SECRET, algorithm="HS256")
        with ThreadPoolExecutor(2) as pool:
            for _ in range(PAIRS):
                pair = [pool.submit(c.get, "/work", params={"pair": 1}) for c in (ann, bo)]
                assert [f.result().status_code for f in pair] == [200, 200]
        assert anonymous.get("/work").status_code == 200
        assert httpx.get(base + "/stats", timeout=10).json()["validations"] == 2 * PAIRS  # once per request, the app's


def _assert_users(receiver: Receiver, expected: dict[str, dict[str, Any]]) -> None:
    counted: dict[str, int] = {}
    for trace in _traces(receiver, 2 * PAIRS + 1):
        for span in trace:
            assert not any("example.com" in str(v) for v in span.attributes.values()), (span.name, span.attributes)
        [server] = [s for s in trace if _route(s)]
        if _route(server) != "work":
            continue
        agent = str(server.attributes.get("user_agent.original", server.attributes.get("http.user_agent")))
        user = expected[agent]
        names = {s.name: _user_part(s) for s in trace}
        assert _user_part(server) == names["work"] == names["after-work"] == user, (agent, names)
        counted[agent] = counted.get(agent, 0) + 1
    assert counted == {"client-ann": PAIRS, "client-bo": PAIRS, "anonymous": 1}


UVICORN = ["uvicorn", "--port", "{port}", "--no-access-log"]


def test_starlette_authentication_middleware_gives_the_user_with_no_code(http_receiver: Receiver, asgi_folder: Path) -> None:
    with serving(asgi_folder, [*UVICORN, "starlette_app:app"], _env(http_receiver)) as base:
        _scenario(base)
    _assert_users(http_receiver, {"client-ann": _expected(ANN, "jwt"), "client-bo": _expected(BO, "jwt"), "anonymous": {}})


def test_fastapi_dependency_gives_the_user_in_one_line(http_receiver: Receiver, asgi_folder: Path) -> None:
    with serving(asgi_folder, [*UVICORN, "fastapi_app:app"], _env(http_receiver)) as base:
        _scenario(base)
    _assert_users(http_receiver, {"client-ann": _expected(ANN, "jwt"), "client-bo": _expected(BO, "jwt"), "anonymous": {}})
