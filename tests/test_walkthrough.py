"""README as a new user reads it (issue 22, item 5): a fresh venv, this package installed from a checkout the way
README's Install says, the app's server instrumentation installed by name, README's variables exported, and a
Django app (``tests/apps/login_django``) and a FastAPI app (``tests/apps/auth_asgi``) run under
``opentelemetry-instrument`` from their own folders. Spans with the user must reach a real OTLP receiver.

The venv takes a minute or more to build (a dozen packages, from pip's cache when warm), so the test runs
when ``OTEL_SEGMENTS_TEST_WALKTHROUGH=1``; without it, it is skipped with that reason. Every command it runs is
quoted from README.md, and a fast test (always run) checks README still says each one, word for word.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import _free_port, clean_env
from tests.receivers import Receiver
from tests.serving import serving

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "apps"
README = (ROOT / "README.md").read_text()
FLAG = "OTEL_SEGMENTS_TEST_WALKTHROUGH"
needs_flag = pytest.mark.skipif(os.environ.get(FLAG) != "1", reason=f"the fresh venv takes a minute or more: {FLAG}=1 runs it")

#: What README tells a new user to run, quoted from it (each is checked to be there, word for word).
INSTALL = "pip install './otel_segments[postgresql]'"
SERVER_INSTRUMENTATION = ("opentelemetry-instrumentation-django", "-fastapi")
SETTINGS_EXPORT = "export DJANGO_SETTINGS_MODULE=mysite.settings"
RUNSERVER = "opentelemetry-instrument python manage.py runserver"
ONE_LINE = "Depends(traced_user(get_current_user))"
EXPORTS = (
    "export OTEL_SERVICE_NAME=",
    "export OTEL_EXPORTER_OTLP_ENDPOINT=",
    "export OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
    "export OTEL_EXPORTER_OTLP_TOKEN=",
)
#: What the apps themselves need besides (their own dependencies, not this package's).
APP_PACKAGES = ("django", "djangorestframework", "djangorestframework-simplejwt", "fastapi", "uvicorn", "pyjwt")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, cwd=cwd, env=env or clean_env())
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_readme_still_says_what_the_walkthrough_runs() -> None:
    for text in (INSTALL, *SERVER_INSTRUMENTATION, SETTINGS_EXPORT, RUNSERVER, ONE_LINE, *EXPORTS):
        assert text in README, text


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv that has never seen this checkout, with the package installed from a copy of it, as README says."""
    where = tmp_path_factory.mktemp("walkthrough")
    checkout = where / "otel_segments"
    files = _run("git", "ls-files", "-co", "--exclude-standard", cwd=ROOT).splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    _run(sys.executable, "-m", "venv", where / "venv", cwd=where)
    bin_dir = where / "venv" / "bin"
    constraints = ("-c", str(ROOT / "constraints" / "newest.txt"))  # the releases this suite runs on; pip's cache has them
    pip = (bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *constraints)
    _run(*pip, INSTALL.split(" ", 2)[2].strip("'"), cwd=where)
    instrumentations = ["opentelemetry-instrumentation-django", "opentelemetry-instrumentation-fastapi"]
    _run(*pip, *instrumentations, *APP_PACKAGES, cwd=where)
    installed = _run(bin_dir / "python", "-c", "import otel_segments; print(otel_segments.__file__)", cwd=where)
    assert str(where / "venv") in installed and str(ROOT) not in installed
    return bin_dir


def _readme_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    """README's exports, pointed at the test's receiver; nothing else of ours (PYTHONPATH dropped too)."""
    env = clean_env(
        OTEL_SERVICE_NAME="walkthrough",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TOKEN="walkthrough-token",
        OTEL_BSP_SCHEDULE_DELAY="100",
        **extra,
    )
    env.pop("PYTHONPATH", None)
    return env


@contextmanager
def _serve(bin_dir: Path, folder: Path, command: list[str], env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    argv = [str(bin_dir / "opentelemetry-instrument"), str(bin_dir / command[0]), *(a.format(port=port) for a in command[1:])]
    base = f"http://127.0.0.1:{port}"
    with serving(
        argv,
        cwd=folder,
        env=env,
        log=folder / "server.log",
        health_url=base + "/health",
        what=" ".join(command),
        start_timeout_s=120,
    ) as served:
        yield base
    assert "Traceback" not in served.output, served.output[-3000:]


def _server_spans(receiver: Receiver, route: str, count: int) -> list[Any]:
    def arrived(r: Receiver) -> list[Any] | None:
        spans = [s for s in r.spans() if str(s.attributes.get("http.route", "")).strip("/") == route]
        return spans if len(spans) >= count else None

    return receiver.wait_for(arrived)


@needs_flag
def test_django_app_as_readme_says(venv: Path, http_receiver: Receiver, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    shutil.copytree(APPS / "login_django", folder, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    db = {"LOGIN_DJANGO_DB": str(folder / "db.sqlite3")}
    ann, _ = _run(venv / "python", "seed.py", cwd=folder, env=clean_env(**db)).split()
    settings = SETTINGS_EXPORT.partition("=")[2].replace("mysite", "djsite")  # README's line, for this site's name
    env = _readme_env(http_receiver, DJANGO_SETTINGS_MODULE=settings, **db)
    runserver = [*RUNSERVER.split()[1:], "--noreload", "127.0.0.1:{port}"]  # no autoreloader: the test stops it
    with _serve(venv, folder, runserver, env) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.post("/login", data={"username": "ann"}).status_code == 200
        assert client.get("/work").status_code == 200
    [server] = _server_spans(http_receiver, "work", 1)
    assert server.attributes["user.id"] == ann
    assert server.attributes["app.user.is_admin"] is True
    assert server.attributes["app.user.role"] == "editors"
    children = [s for s in http_receiver.spans() if s.trace_id == server.trace_id and s is not server]
    assert children and all(s.attributes.get("user.id") == ann for s in children if s.name in ("work", "after-work"))


@needs_flag
def test_fastapi_app_as_readme_says(venv: Path, http_receiver: Receiver, tmp_path: Path) -> None:
    folder = tmp_path / "api"
    shutil.copytree(APPS / "auth_asgi", folder, ignore=shutil.ignore_patterns("__pycache__"))
    assert ONE_LINE.replace("))", ", auth_method=") in (folder / "fastapi_app.py").read_text()  # README's one line
    claims = {"sub": "1", "role": "admin", "is_admin": True, "email": "ann@example.com"}
    token = jwt.encode(claims, "auth-asgi-test-secret-of-at-least-32-bytes", algorithm="HS256")
    uvicorn = ["uvicorn", "--port", "{port}", "--no-access-log", "fastapi_app:app"]
    with _serve(venv, folder, uvicorn, _readme_env(http_receiver)) as base:
        assert httpx.get(base + "/work", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    [server] = _server_spans(http_receiver, "work", 1)
    assert {k: server.attributes.get(k) for k in ("user.id", "app.user.role", "app.user.is_admin")} == {
        "user.id": "1",
        "app.user.role": "admin",
        "app.user.is_admin": True,
    }
    assert not any("example.com" in str(v) for s in http_receiver.spans() for v in s.attributes.values())
