"""Issue 20, "adding the package moves no pin of the app": a venv as an app has it, then ``pip install`` of this package.

The app pins OpenTelemetry at one end of our supported range (1.27.0 / 0.48b0, or the
newest releases CI tests): the SDK, the OTLP/HTTP exporter and the Flask
instrumentation, nothing else of OpenTelemetry (no meta exporter, no gRPC, no distro),
and SQLAlchemy 2.0.x. Installing otel_segments there, after the app's pins (two steps)
or in the same ``pip install -r requirements.txt <package>`` command, must only add
packages, leave ``pip check`` clean and import nothing the configured protocol does not
use; then ``opentelemetry-instrument``, which at 0.48b0 loads every entry point through
``pkg_resources`` (and so checks our declared requirements), must start the app: inert
with the gate closed, and with it open, the app's Flask server spans with the user's
super properties and the per-user segment records reach a real OTLP receiver. gRPC asked
for but not installed costs one line naming the extra, and the app keeps serving.

The package is installed as a user would get it, from a wheel built once from a copy of
this checkout (the checkout itself is never written to). Downloads come from pip's cache
after the first run; from nothing (CI) the test needs PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from otel_segments.segments.demo import create_demo_database
from tests.conftest import ROOT, clean_env
from tests.receivers import Receiver

ENDS = {
    "oldest": {
        "opentelemetry-api": "1.27.0",
        "opentelemetry-sdk": "1.27.0",
        "opentelemetry-exporter-otlp-proto-http": "1.27.0",
        "opentelemetry-instrumentation": "0.48b0",
        "opentelemetry-instrumentation-flask": "0.48b0",
        "flask": "3.0.3",
        "sqlalchemy": "2.0.30",
    },
    "newest": {
        "opentelemetry-api": "1.45.1",
        "opentelemetry-sdk": "1.45.1",
        "opentelemetry-exporter-otlp-proto-http": "1.45.1",
        "opentelemetry-instrumentation": "0.66b1",
        "opentelemetry-instrumentation-flask": "0.66b1",
        "flask": "3.1.3",
        "sqlalchemy": "2.0.59",
    },
}
# As such an app must: opentelemetry-instrument 0.48b0 imports pkg_resources, which setuptools 82 removed.
ALSO_REQUIRED = {"oldest": "setuptools<82\n", "newest": ""}
APP = ROOT / "tests" / "apps" / "segments_app.py"
TOKEN = "tok-app-venv-4f1e"
USERS = 20
PIP_TIMEOUT_S = 600
# What an app process must not import unless it asks for it: the CLI's rich, gRPC for an OTLP/HTTP app, and
# with neither a database URL nor a PostHog key, SQLAlchemy and the posthog SDK (the app's own imports aside).
UNASKED = ("rich", "grpc", "opentelemetry.exporter.otlp.proto.grpc", "sqlalchemy", "posthog")
IMPORTS_SCRIPT = (
    "import json, sys; from otel_segments.configuration import configured; assert configured().enabled; "
    f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({UNASKED!r}))))"
)


def _pip(python: Path, *args: str) -> str:
    """This venv's pip acting on ``python``'s environment (``pip --python``): the app venvs need no pip of their own."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout as a wheel, built once, from a copy holding what a source distribution holds."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(ROOT / "otel_segments", source / "otel_segments", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _pip(Path(sys.executable), "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(source))
    (built,) = (root / "dist").glob("otel_segments-*.whl")
    return built


@dataclass
class AppVenv:
    bin: Path
    pins: dict[str, str]
    before: set[str]  # pip freeze with the app's pins alone (two steps), else empty
    after: set[str]  # pip freeze once otel_segments is installed

    @property
    def python(self) -> Path:
        return self.bin / "python"


def _build(end: str, steps: str, wheel: Path, root: Path) -> AppVenv:
    # Without pip, and installs without byte-compiling: what dominates this module's time is installing.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    venv = AppVenv(root / "venv" / "bin", ENDS[end], set(), set())
    requirements = root / "requirements.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in ENDS[end].items()) + ALSO_REQUIRED[end])
    if steps == "two-step":
        _pip(venv.python, "install", "-q", "--no-compile", "-r", str(requirements))
        venv.before = set(_pip(venv.python, "freeze", "--all").splitlines())
        _pip(venv.python, "install", "-q", "--no-compile", str(wheel))
    else:
        _pip(venv.python, "install", "-q", "--no-compile", "-r", str(requirements), str(wheel))
    venv.after = set(_pip(venv.python, "freeze", "--all").splitlines())
    return venv


@pytest.fixture(scope="module")
def app_venvs(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], AppVenv]:
    """The app's venv at one end (``oldest``/``newest``): its pins, then otel_segments (``two-step``), or both in
    one ``pip install`` command (``one-command``); each built once, when a test first asks for it."""
    built: dict[tuple[str, str], AppVenv] = {}

    def get(end: str, steps: str) -> AppVenv:
        if (end, steps) not in built:
            built[(end, steps)] = _build(end, steps, wheel, tmp_path_factory.mktemp(f"app-venv-{end}-{steps}"))
        return built[(end, steps)]

    return get


@pytest.fixture(params=list(ENDS))
def app_venv(request: pytest.FixtureRequest, app_venvs: Callable[[str, str], AppVenv]) -> AppVenv:
    """The two-step venv at each end: where the app's runs are checked one by one."""
    return app_venvs(request.param, "two-step")


INSTALLS = [pytest.param(end, steps, id=f"{end}-{steps}") for end in ENDS for steps in ("two-step", "one-command")]


def _versions(freeze: set[str]) -> dict[str, str]:
    pairs = (line.split("==") for line in freeze if "==" in line)
    return {name.lower().replace("_", "-"): version for name, version in pairs}


@pytest.mark.parametrize(("end", "steps"), INSTALLS)
def test_install_adds_packages_only_and_pip_check_passes(app_venvs: Callable[[str, str], AppVenv], end: str, steps: str) -> None:
    app_venv = app_venvs(end, steps)
    after = _versions(app_venv.after)
    assert {name: after.get(name) for name in app_venv.pins} == app_venv.pins  # every app pin holds
    assert app_venv.before <= app_venv.after, sorted(app_venv.before - app_venv.after)  # two steps: nothing moved
    assert any(line.startswith("otel-segments @ file:") for line in app_venv.after)
    # no meta package, no gRPC: an OTLP/HTTP app gets neither from us
    assert not {"opentelemetry-exporter-otlp", "opentelemetry-exporter-otlp-proto-grpc", "grpcio"} & after.keys(), after
    assert "No broken requirements found" in _pip(app_venv.python, "check")


def _run_app(bin_dir: Path, folder: Path, env: dict[str, str], seconds: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(APP, folder / "segments_app.py")
    env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "python"), "segments_app.py", seconds],
        cwd=folder,  # a folder of the app's own: opentelemetry-instrument puts the cwd first on PYTHONPATH
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gate_closed_app_starts_inert_and_sends_nothing(app_venv: AppVenv, http_receiver: Receiver, tmp_path: Path) -> None:
    bin_dir = app_venv.bin
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    result = _run_app(bin_dir, tmp_path, env, "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("served "), result.stderr
    assert int(result.stdout.split()[1]) >= 3, result.stdout  # it served requests all along
    assert "Traceback" not in result.stderr, result.stderr
    assert http_receiver.exports == []  # the process has exited: anything it sent has arrived


@pytest.mark.parametrize(("end", "steps"), INSTALLS)
def test_gate_open_spans_and_segments_reach_the_receiver(
    app_venvs: Callable[[str, str], AppVenv], end: str, steps: str, http_receiver: Receiver, tmp_path: Path
) -> None:
    bin_dir = app_venvs(end, steps).bin
    database = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(database)
    create_demo_database(engine, users_count=USERS, seed=5)
    engine.dispose()
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,  # no protocol: the default, OTLP/HTTP, with what the app has installed
        OTEL_SERVICE_NAME="timetracker",
        APP_ENV="staging",
        OTEL_SEGMENTS_DATABASE_URL=database,
        OTEL_SEGMENTS_REFRESH_INTERVAL="300",
    )
    app_folder = tmp_path / "app"
    app_folder.mkdir()
    result = _run_app(bin_dir, app_folder, env, "30")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert TOKEN not in result.stdout + result.stderr

    # spans: the user's properties, the process's, and the segment the refresh job computed
    spans = http_receiver.wait_for(lambda r: [s for s in r.spans() if s.attributes.get("user.id") == "3"])
    assert {s.name for s in spans} >= {"stop-timer", "GET /timer"}  # ours and the app's Flask instrumentation's
    last = [s for s in spans if s.name == "stop-timer"][-1]
    assert last.attributes["app.user.role"] == "user" and last.attributes["app.user.auth_method"] == "password"
    assert last.attributes["deployment.environment.name"] == "staging"
    assert last.attributes.get("app.user.engagement_level"), last.attributes
    assert last.resource["service.name"] == "timetracker"

    # segment records: one per user, the user on its Resource
    records = http_receiver.wait_for(lambda r: [x for x in r.logs() if x.event_name == "app.user.segment"])
    assert {r.resource["user.id"] for r in records} == {str(i) for i in range(1, USERS + 1)}
    assert all(r.resource["service.name"] == "timetracker" for r in records)
    for signal in ("traces", "logs"):
        assert {e.headers.get("authorization") for e in http_receiver.of(signal)} == {f"Bearer {TOKEN}"}, signal


def test_grpc_asked_for_but_not_installed_says_the_extra_and_app_keeps_serving(
    app_venv: AppVenv, grpc_receiver: Receiver, tmp_path: Path
) -> None:
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=grpc_receiver.endpoint, OTEL_EXPORTER_OTLP_TOKEN=TOKEN, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
    )
    result = _run_app(app_venv.bin, tmp_path, env, "1")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[1]) >= 3, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "otel" in line.lower()]
    assert len(lines) == 1 and "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in lines[0], result.stderr
    assert "pip install 'otel-segments[grpc]'" in lines[0], result.stderr
    assert grpc_receiver.exports == []


def _imports(bin_dir: Path, env: dict[str, str], tmp_path: Path) -> list[str]:
    env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "python"), "-c", IMPORTS_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_app_process_imports_nothing_it_does_not_use(app_venv: AppVenv, http_receiver: Receiver, tmp_path: Path) -> None:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint, OTEL_EXPORTER_OTLP_TOKEN=TOKEN)
    assert _imports(app_venv.bin, env, tmp_path) == []  # rich, SQLAlchemy and posthog are installed here


@pytest.mark.parametrize(("protocol", "loaded"), [("http/protobuf", False), ("grpc", True)])
def test_grpc_is_imported_only_when_asked_for(protocol: str, loaded: bool, http_receiver: Receiver, tmp_path: Path) -> None:
    """In this venv, where the grpc extra is installed: the protocol decides whether gRPC is loaded."""
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint, OTEL_EXPORTER_OTLP_TOKEN=TOKEN, OTEL_EXPORTER_OTLP_PROTOCOL=protocol
    )
    if protocol == "http/protobuf":
        del env["OTEL_EXPORTER_OTLP_PROTOCOL"]  # the default
    env.update(OTEL_PYTHON_DISTRO="otel_segments", OTEL_PYTHON_CONFIGURATOR="otel_segments")  # opentelemetry-distro is here too
    imported = _imports(Path(sys.executable).parent, env, tmp_path)
    assert ("grpc" in imported) is loaded, imported  # (rich and SQLAlchemy: this venv's instrumentations import them)
