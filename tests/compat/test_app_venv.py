"""Issue 11, "installs beside an app's own pins": a venv as an app has it, then ``pip install`` of this package.

The app pins the oldest OpenTelemetry we support (1.27.0 / 0.48b0, Flask
instrumentation included) and SQLAlchemy 2.0.x. Installing otel_segments there must
change none of those pins and leave ``pip check`` clean; then
``opentelemetry-instrument`` 0.48b0, which loads every entry point through
``pkg_resources`` (and so checks our declared requirements), must start the app:
inert with the gate closed, and with it open, spans with the user's super
properties and the per-user segment records reach a real OTLP receiver.

The package is installed as a user would get it, non-editable, from a copy of this
checkout (the checkout itself is never written to). Downloads come from pip's
cache after the first run; from nothing (CI) the test needs PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from otel_segments.segments.demo import create_demo_database
from tests.conftest import ROOT, clean_env
from tests.receivers import Receiver

APP_PINS = {
    "opentelemetry-api": "1.27.0",
    "opentelemetry-sdk": "1.27.0",
    "opentelemetry-exporter-otlp": "1.27.0",
    "opentelemetry-instrumentation": "0.48b0",
    "opentelemetry-instrumentation-flask": "0.48b0",
    "flask": "3.0.3",
    "sqlalchemy": "2.0.30",
}
APP = ROOT / "tests" / "apps" / "segments_app.py"
TOKEN = "tok-app-venv-4f1e"
USERS = 20
PIP_TIMEOUT_S = 600


def _pip(python: Path, *args: str) -> str:
    result = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _versions(python: Path) -> dict[str, str]:
    """What is installed, as {normalised name: version} (``pip freeze`` names a local install by its path)."""
    listed = json.loads(_pip(python, "list", "--format=json"))
    return {item["name"].lower().replace("_", "-"): item["version"] for item in listed}


def _source_copy(folder: Path) -> Path:
    """What a source distribution of this checkout holds, in a folder of its own (pip builds there, not here)."""
    shutil.copytree(ROOT / "otel_segments", folder / "otel_segments", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def app_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], dict[str, str]]]:
    """The app's venv with its pins, then otel_segments installed: (bin folder, versions before, versions after)."""
    root = tmp_path_factory.mktemp("app-venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    _pip(python, "install", "-q", "--upgrade", "pip")
    requirements = root / "requirements.txt"
    # As such an app must: opentelemetry-instrument 0.48b0 imports pkg_resources, which setuptools 82 removed.
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in APP_PINS.items()) + "setuptools<82\n")
    _pip(python, "install", "-q", "-r", str(requirements))
    before = _versions(python)
    _pip(python, "install", "-q", str(_source_copy(root / "src")))
    after = _versions(python)
    yield venv / "bin", before, after


def test_install_keeps_every_app_pin_and_pip_check_passes(app_venv) -> None:
    bin_dir, before, after = app_venv
    assert {name: before.get(name) for name in APP_PINS} == APP_PINS  # the app's venv is what it pinned
    assert {name: after.get(name) for name in APP_PINS} == APP_PINS
    assert after.get("otel-segments") == "0.1.0"
    changed = {name: (before[name], after[name]) for name in before if after.get(name) != before[name]}
    assert not {n for n in changed if n.startswith("opentelemetry-")}, changed  # nor any of the family they pull in
    assert "No broken requirements found" in _pip(bin_dir / "python", "check")


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


def test_gate_closed_app_starts_inert_and_sends_nothing(app_venv, http_receiver: Receiver, tmp_path: Path) -> None:
    bin_dir, _, _ = app_venv
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    result = _run_app(bin_dir, tmp_path, env, "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("served "), result.stderr
    assert int(result.stdout.split()[1]) >= 3, result.stdout  # it served requests all along
    assert "Traceback" not in result.stderr, result.stderr
    assert http_receiver.exports == []  # the process has exited: anything it sent has arrived


def test_gate_open_spans_and_segments_reach_the_receiver(app_venv, http_receiver: Receiver, tmp_path: Path) -> None:
    bin_dir, _, _ = app_venv
    database = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(database)
    create_demo_database(engine, users_count=USERS, seed=5)
    engine.dispose()
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
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
