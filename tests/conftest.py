"""Shared fixtures: real OTLP receivers, a real PostgreSQL server, clean environments."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import scheduling
from tests.receivers import Receiver, serve

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    scheduling.assign(items)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook; the suite also runs without xdist (.venv-oldest)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    return scheduling.make_scheduler(config, log)


@pytest.fixture
def http_receiver() -> Iterator[Receiver]:
    yield from serve("http")


@pytest.fixture
def grpc_receiver() -> Iterator[Receiver]:
    yield from serve("grpc")


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any OTEL_/POSTHOG_ variable, plus ``extra``: what a subprocess app sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "POSTHOG_"))}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NO_POSTGRES = "PostgreSQL is not installed (apt-get install postgresql; scripts/setup does it)"


def _pg_bindir() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if candidates:
        return os.path.dirname(candidates[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@contextlib.contextmanager
def postgres_server(max_connections: int = 200, **settings: str) -> Iterator[str]:
    """A throwaway PostgreSQL server (its own data directory, a free port) while the block runs; its admin URL.

    ``settings`` are server settings (``shared_buffers="1GB"``), as ``-c name=value``.

    Raises ``FileNotFoundError`` when PostgreSQL is not installed.
    """
    bindir = _pg_bindir()
    if bindir is None:
        raise FileNotFoundError(NO_POSTGRES)
    datadir = tempfile.mkdtemp(prefix="otel-segments-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(datadir, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*run_as, f"{bindir}/initdb", "-D", datadir, "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections={max_connections}"
    options += "".join(f" -c {name}={value}" for name, value in settings.items())
    subprocess.run(
        [*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-o", options, "-l", f"{datadir}/log", "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        import sqlalchemy

        while True:
            try:
                with sqlalchemy.create_engine(url).connect():
                    break
            except sqlalchemy.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session: ``OTEL_SEGMENTS_TEST_POSTGRES_URL``, or one started here.

    In CI (``CI`` set) a missing server fails the run instead of skipping: the
    PostgreSQL half of the suite must never silently disappear.
    """
    given = os.environ.get("OTEL_SEGMENTS_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    if _pg_bindir() is None:
        if os.environ.get("CI"):
            pytest.fail(NO_POSTGRES)
        pytest.skip(NO_POSTGRES)
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped afterwards."""
    import uuid

    import sqlalchemy

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def report(request: pytest.FixtureRequest, title: str, lines: list[str]) -> None:
    """Print what a test measured but does not assert (exit seconds, delivery times) in pytest's own output."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(title)
        for line in lines:
            reporter.write_line(f"  {line}")
