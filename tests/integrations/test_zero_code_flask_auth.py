"""Zero code for Flask-JWT-Extended and Flask-HTTPAuth: a real API (``tests/apps/auth_flask``) under
``opentelemetry-instrument flask run``, exporting to a real OTLP receiver.

Each client sends its own User-Agent, which the server span records, so every trace is known to belong to
one client; two clients' requests run at once. The app counts its user look-ups: each check runs once per request.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.receivers import Receiver

from .test_zero_code import APPS, EMAILS_AND_NAMES, IGNORED_ROUTES, _agent, _client, _env, _route, _traces, _user_part, serving

FLASK_RUN = ["flask", "--app", "authapp", "run", "--port", "{port}"]
ROUNDS = 3
JWT_USER = {"user.id": "1", "user.roles": ("admin",), "app.user.role": "admin", "app.user.is_admin": True}
BASIC_USER = {"user.id": "2", "user.roles": ("user",), "app.user.role": "user", "app.user.is_admin": False}


@pytest.fixture
def auth_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    shutil.copytree(APPS / "auth_flask", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def _scenario(base: str) -> dict[str, int]:
    """client-jwt and client-basic work at once, ROUNDS times; an anonymous and a wrong-password request fail."""
    with _client(base, "client-jwt") as jwt, _client(base, "client-basic") as basic, _client(base, "anonymous") as nobody:
        token = jwt.post("/jwt/login", data={"id": "1"}).json()["token"]
        jwt.headers["Authorization"] = f"Bearer {token}"
        basic.auth = httpx.BasicAuth("member-2", "pw-2")
        with ThreadPoolExecutor(2) as pool:
            for _ in range(ROUNDS):
                pair = [pool.submit(jwt.get, "/jwt/work"), pool.submit(basic.get, "/basic/work")]
                assert [f.result().status_code for f in pair] == [200, 200]
        assert nobody.get("/jwt/work").status_code == 401
        assert nobody.get("/basic/work", auth=("member-1", "wrong")).status_code == 401
        return nobody.get("/stats").json()


def test_jwt_and_basic_auth_users_reach_every_span_with_no_code(http_receiver: Receiver, auth_folder: Path) -> None:
    with serving(auth_folder, FLASK_RUN, _env(http_receiver)) as base:
        lookups = _scenario(base)
    assert lookups == {"jwt": ROUNDS, "basic": ROUNDS + 1}  # each check once per request: none run a second time
    expected = {
        ("client-jwt", "jwt/work"): {**JWT_USER, "app.user.auth_method": "jwt"},
        ("client-basic", "basic/work"): {**BASIC_USER, "app.user.auth_method": "basic"},
    }
    seen: dict[tuple[str, str], int] = {}
    names: set[str] = set()
    for trace in _traces(http_receiver, 2 * ROUNDS + 3):
        [server] = [s for s in trace if _route(s)]
        key = (_agent(server) or "", _route(server) or "")
        user = expected.get(key, {})
        for span in trace:  # the server span and the app's own spans: the client's user, all of it, or nobody's
            assert not any(p in str(v) for p in EMAILS_AND_NAMES for v in span.attributes.values()), span.attributes
            assert _user_part(span) == user, (key, span.name)
            names.add(span.name)
        if key[1] not in IGNORED_ROUTES:
            seen[key] = seen.get(key, 0) + 1
    assert seen == {
        ("client-jwt", "jwt/login"): 1,
        ("client-jwt", "jwt/work"): ROUNDS,
        ("client-basic", "basic/work"): ROUNDS,
        ("anonymous", "jwt/work"): 1,
        ("anonymous", "basic/work"): 1,
    }
    assert {"work", "after-work"} <= names


def test_disabled_by_name_sets_no_user(http_receiver: Receiver, auth_folder: Path) -> None:
    env = _env(http_receiver, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_segments_flask_jwt,otel_segments_flask_httpauth")
    with serving(auth_folder, FLASK_RUN, env) as base:
        assert _scenario(base) == {"jwt": ROUNDS, "basic": ROUNDS + 1}
    spans = [s for t in _traces(http_receiver, 2 * ROUNDS + 3) for s in t]
    assert {"work", "after-work"} <= {s.name for s in spans}  # the server spans and the app's are still there
    assert [s.name for s in spans if _user_part(s)] == []
