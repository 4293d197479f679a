"""Issue 20, item 2: the process exits cleanly on every supported Python, under every server model.

Field report: on Python 3.12 every exit printed ``RuntimeError: can't create new
thread at interpreter shutdown`` from the job's stop (an atexit callback), the
final delivery failed and the lease kept naming the dead process. Python 3.12
refuses to start any thread once the interpreter exits, so the stop must start
none (:mod:`otel_segments.runtime.watchdog`); scripts/test runs this module on
each interpreter it finds.

Each model serves ``tests/apps/server_app.py`` under ``opentelemetry-instrument``
(a plain script calls ``configure()`` and returns instead), all at once, each
with its own small SQLite database; once its job delivered every user to
PostHog and OTLP and it answers requests, the process is stopped as its operator would: the script
returns (atexit), gunicorn gets SIGTERM, uvicorn SIGINT (Ctrl-C). Asserted for
each: it exits with status 0, prints no traceback, the lease row is released
(expired, so the next process takes over at once), nothing is left pending for
either sink, and every user reached PostHog. How long each exit took is
reported, not asserted.

gunicorn's eventlet worker is here too (issue 20, item 5); the Flask-SocketIO app under the eventlet and
gevent workers, with the gate open and closed side by side, is ``test_green_servers.py``.
"""

from __future__ import annotations

import http.client
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine, select
from sqlalchemy.exc import OperationalError

from otel_segments.job.lease import lease_table
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.state import RefreshState
from tests.conftest import VENV_BIN, _free_port, clean_env, report
from tests.receivers import HttpReceiver, Receiver
from tests.sinks.conftest import Capture

APP = Path(__file__).resolve().parent.parent / "apps" / "server_app.py"
USERS = 60
SETTLE_S = 120.0  # from the start of all of them: under load (scripts/test runs three Pythons at once) start-up is slow
TOKEN = "tok-exit-4c2"
GREEN = ("eventlet", "gevent")
NONE_PENDING = {"posthog": 0, "otlp": 0}
#: A cycle the eventlet master runs while eventlet patches it (before it forks) fails once; retried, nothing lost.
EVENTLET_PATCH_RACE = "RuntimeError: cannot notify on un-acquired lock"
EXIT_S = 45.0  # gunicorn's graceful timeout (30 s) and more: slower than this is a hang

SCRIPT = """
import os, time
import otel_segments

handle = otel_segments.configure()
while not os.path.exists("stop"):
    time.sleep(0.05)
"""
GUNICORN = [str(VENV_BIN / "gunicorn"), "--workers=1", "--no-control-socket", "--bind=127.0.0.1:{port}"]
MODELS: dict[str, tuple[list[str], signal.Signals | None]] = {
    "script": ([str(VENV_BIN / "python"), "script.py"], None),
    "sync": ([*GUNICORN, "--worker-class=sync", "server_app:app"], signal.SIGTERM),
    "gthread": ([*GUNICORN, "--worker-class=gthread", "--threads=4", "server_app:app"], signal.SIGTERM),
    "eventlet": ([*GUNICORN, "--worker-class=eventlet", "server_app:app"], signal.SIGTERM),
    "gevent": ([*GUNICORN, "--worker-class=gevent", "server_app:app"], signal.SIGTERM),
    "uvicorn": (
        [str(VENV_BIN / "uvicorn"), "--host=127.0.0.1", "--port={port}", "--no-access-log", "server_app:asgi_app"],
        signal.SIGINT,
    ),
}


@dataclass
class Process:
    model: str
    folder: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    settled: bool = False
    exit_s: float | None = None

    @property
    def api_key(self) -> str:
        return f"phc_exit_{self.model}"

    @property
    def database(self) -> str:
        return f"sqlite:///{self.folder / 'app.db'}"

    def start(self, posthog: Capture, receiver: Receiver) -> None:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
            OTEL_SERVICE_NAME=f"exit-{self.model}",
            OTEL_SEGMENTS_DATABASE_URL=self.database,
            OTEL_SEGMENTS_REFRESH_INTERVAL="500",
            POSTHOG_API_KEY=self.api_key,
            POSTHOG_HOST=posthog.host,
            PYTHONWARNINGS="ignore::DeprecationWarning",  # gunicorn's eventlet worker says it is deprecated
        )
        env.pop("PYTHONPATH", None)
        command, _ = MODELS[self.model]
        command = [a.format(port=self.port) for a in command]
        if self.model != "script":
            command = [str(VENV_BIN / "opentelemetry-instrument"), *command]
        with (self.folder / "out.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self) -> None:
        assert self.process is not None
        started = time.monotonic()
        _, how = MODELS[self.model]
        if how is None:
            (self.folder / "stop").touch()
        else:
            os.killpg(self.process.pid, how)
        try:
            self.process.wait(timeout=EXIT_S)
            self.exit_s = time.monotonic() - started
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def serving(self) -> bool:
        """The server answers (a plain script always "serves"): only then has it set up its signal handlers."""
        if self.model == "script":
            return True
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/work/1")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def log(self) -> str:
        return (self.folder / "out.log").read_text(errors="replace")


def _tracebacks(log: str) -> list[str]:
    """Each traceback in ``log``, up to its exception line."""
    blocks = []
    for part in log.split("Traceback (most recent call last):")[1:]:
        lines = part.splitlines()[1:]
        end = next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines) - 1)
        blocks.append("\n".join(lines[: end + 1]))
    return blocks


def _delivered(posthog: Capture, api_key: str) -> set[str]:
    with posthog.lock:
        batches = [r["body"] for r in posthog.requests if r["body"].get("api_key") == api_key and r["status"] == 200]
    return {e["distinct_id"] for b in batches for e in b["batch"]}


def _pending(database: str) -> dict[str, int] | None:
    engine = create_engine(database, connect_args={"timeout": 0.2})
    try:
        state = RefreshState(engine)
        return {sink: len(state.pending(sink)) for sink in ("posthog", "otlp")}
    except OperationalError:  # the job is writing this instant
        return None
    finally:
        engine.dispose()


def _lease_expires(database: str) -> datetime | None:
    engine = create_engine(database)
    try:
        with engine.connect() as conn:
            return conn.execute(select(lease_table.c.expires_at).where(lease_table.c.name == "refresh")).scalar()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def exited(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[dict[str, Process], Capture]]:
    """Every model started at once; each stopped once its job delivered every user (or SETTLE_S passed)."""
    template = tmp_path_factory.mktemp("exit-db") / "app.db"
    engine = create_engine(f"sqlite:///{template}")
    create_demo_database(engine, users_count=USERS, seed=29, now=datetime.now(timezone.utc))
    engine.dispose()
    server = HTTPServer(threaded=True)
    server.start()
    posthog = Capture(server)
    server.expect_request("/batch/", method="POST").respond_with_handler(posthog.handle)
    receiver = HttpReceiver()
    processes: dict[str, Process] = {}
    try:
        for model in MODELS:
            folder = tmp_path_factory.mktemp(f"exit-{model}")
            shutil.copy(template, folder / "app.db")
            shutil.copy(APP, folder / "server_app.py")
            (folder / "script.py").write_text(SCRIPT)
            processes[model] = Process(model, folder)
            processes[model].start(posthog, receiver)
        deadline = time.monotonic() + SETTLE_S
        waiting = dict(processes)
        while waiting and time.monotonic() < deadline:
            for model, process in list(waiting.items()):
                if process.process is not None and process.process.poll() is not None:  # died: nothing to wait for
                    del waiting[model]
                elif (
                    len(_delivered(posthog, process.api_key)) == USERS
                    and _pending(process.database) == NONE_PENDING
                    and process.serving()
                ):
                    process.settled = True
                    process.stop()
                    del waiting[model]
            time.sleep(0.2)
        for process in waiting.values():
            process.stop()
        _report(request, processes)
        yield processes, posthog
    finally:
        for process in processes.values():
            if process.process is not None and process.process.poll() is None:
                os.killpg(process.process.pid, signal.SIGKILL)
        receiver.close()
        server.clear()
        server.stop()


def _report(request: pytest.FixtureRequest, processes: dict[str, Process]) -> None:
    lines = []
    for model, process in processes.items():
        took = f"{process.exit_s:5.1f}s" if process.exit_s is not None else "hung"
        status = process.process.returncode if process.process else None
        foreign = len(_tracebacks(process.log()))
        lines.append(f"{model:<8} exit {took}, status {status}, {foreign} traceback(s) in its output")
    report(request, f"exit on Python {platform.python_version()} ({sys.executable}), not asserted:", lines)


@pytest.mark.parametrize("model", list(MODELS))
def test_exit_releases_the_lease_loses_nothing_and_prints_no_traceback(
    model: str, exited: tuple[dict[str, Process], Capture]
) -> None:
    processes, posthog = exited
    process = processes[model]
    log = process.log()
    assert process.settled, f"{model} did not deliver every user within {SETTLE_S}s: {log[-3000:]}"
    assert process.exit_s is not None, f"{model} did not exit within {EXIT_S}s: {log[-3000:]}"
    assert process.process is not None and process.process.returncode == 0, log[-3000:]
    assert TOKEN not in log and process.api_key not in log
    # nothing of ours goes wrong. Under gevent and eventlet the app's own stack prints tracebacks of its own, gate
    # closed too (gevent's threading and the SDK's exporter threads at exit; eventlet's patching of werkzeug's proxies
    # at start-up, the SDK's exporter threads at exit): only ours are counted there.
    blocks = _tracebacks(log)
    assert not [b for b in blocks if "otel_segments" in b], blocks
    assert "Cannot switch to a different thread" not in log, log[-3000:]  # a green lock shared with an OS thread
    if model not in GREEN:
        assert not blocks and "can't create new thread" not in log, log[-3000:]
    ours = [line for line in log.splitlines() if "otel_segments:" in line]
    if model == "eventlet":  # as in test_server_models: the master's cycle may race eventlet's patching once (retried)
        assert sum(line.endswith(EVENTLET_PATCH_RACE) for line in ours) <= 1, ours
        ours = [line for line in ours if not line.endswith(EVENTLET_PATCH_RACE)]
    assert not ours, ours
    expires = _lease_expires(process.database)
    assert expires is not None and expires < datetime.now(timezone.utc).replace(tzinfo=None), expires
    assert _pending(process.database) == NONE_PENDING
    assert _delivered(posthog, process.api_key) == {str(u) for u in range(1, USERS + 1)}
