"""configure() with a database that is wrong or away: one clear line naming the problem, the app runs on,
no secret in the output. Each case runs in its own interpreter, as configure() is once per process."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver

APP = """
import time, otel_segments
from opentelemetry import trace
handle = otel_segments.configure()
with otel_segments.user_context("1"):
    trace.get_tracer("t").start_span("work").end()
time.sleep(1.2)
print("alive", handle.job is not None)
"""


def _run(receiver: Receiver, *, missing: tuple[str, ...] = (), **extra: str) -> subprocess.CompletedProcess[str]:
    """``missing``: modules this interpreter cannot import, as if not installed (``sys.modules[name] = None``)."""
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN="tok-err-1",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SEGMENTS_REFRESH_INTERVAL="300",
        **extra,
    )
    block = "".join(f"import sys; sys.modules[{name!r}] = None\n" for name in missing)
    result = subprocess.run([str(VENV_BIN / "python"), "-c", block + APP], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "tok-err-1" not in result.stdout + result.stderr
    return result


def _ours(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if "otel_segments" in line or "OTEL_SEGMENTS" in line]


@pytest.mark.parametrize("url", ["not a url", "nosuchdriver://u:pw-x9@h/db"])
def test_unusable_database_url_is_one_error_without_the_url(http_receiver, url: str) -> None:
    result = _run(http_receiver, OTEL_SEGMENTS_DATABASE_URL=url)
    assert result.stdout.strip() == "alive False"
    lines = _ours(result)
    assert len(lines) == 1 and "OTEL_SEGMENTS_DATABASE_URL " in lines[0] and lines[0].endswith("segments are off"), result.stderr
    assert "is not a database URL" in lines[0] or "SQLAlchemy does not know ('nosuchdriver'" in lines[0], lines[0]
    assert "pw-x9" not in result.stderr
    http_receiver.wait_for(lambda r: r.spans())  # spans still go out


def test_unknown_schema_is_one_error(http_receiver, tmp_path) -> None:
    result = _run(http_receiver, OTEL_SEGMENTS_DATABASE_URL=f"sqlite:///{tmp_path}/x.db", OTEL_SEGMENTS_SCHEMA="nosuch")
    lines = _ours(result)
    assert len(lines) == 1 and "OTEL_SEGMENTS_SCHEMA='nosuch'" in lines[0], result.stderr


def test_missing_table_is_named_once_per_cycle(http_receiver, tmp_path) -> None:
    result = _run(http_receiver, OTEL_SEGMENTS_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db")
    assert result.stdout.strip() == "alive True"
    lines = _ours(result)
    assert lines and all("segment refresh failed" in line and "'users'" in line for line in lines), result.stderr
    assert len(lines) <= 5  # one per cycle: 1.2 s at 300 ms


def test_unreachable_postgres_says_why_without_the_password(http_receiver) -> None:
    result = _run(http_receiver, OTEL_SEGMENTS_DATABASE_URL="postgresql+psycopg://app:pw-s3cr3t@127.0.0.1:9/app")
    lines = _ours(result)
    assert lines and all("segment refresh failed" in line and "OperationalError" in line for line in lines), result.stderr
    assert "pw-s3cr3t" not in result.stderr


@pytest.mark.parametrize(
    ("url", "missing", "expected"),
    [
        (
            "postgresql+psycopg://app:pw-x9@db/app",
            ("psycopg",),
            ["needs the psycopg driver", "pip install 'otel-segments[postgresql]'"],
        ),
        ("postgresql+psycopg2://app:pw-x9@db/app", ("psycopg2",), ["needs the psycopg2 driver", "pip install psycopg2-binary"]),
        # Plain postgresql:// is psycopg2 on SQLAlchemy 2.0 and psycopg on 2.1: the message names whichever it is.
        ("postgresql://app:pw-x9@db/app", ("psycopg", "psycopg2"), ["SQLAlchemy's default for postgresql://", "pip install"]),
        ("mysql+pymysql://app:pw-x9@db/app", ("pymysql",), ["needs the pymysql driver", "pip install PyMySQL"]),
        ("postgresql+asyncpg://app:pw-x9@db/app", (), ["asyncio driver asyncpg", "postgresql+psycopg://"]),
        ("sqlite+aiosqlite:///pw-x9.db", (), ["asyncio driver aiosqlite", "use sqlite:///"]),
    ],
)
def test_missing_driver_names_it_and_how_to_install_it(
    http_receiver, url: str, missing: tuple[str, ...], expected: list[str]
) -> None:
    result = _run(http_receiver, missing=missing, OTEL_SEGMENTS_DATABASE_URL=url)
    assert result.stdout.strip() == "alive False"
    lines = _ours(result)
    assert len(lines) == 1 and lines[0].split("otel_segments: ", 1)[1].startswith("OTEL_SEGMENTS_DATABASE_URL "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert "pw-x9" not in result.stderr


def test_missing_driver_suggests_the_postgresql_driver_that_is_installed(http_receiver) -> None:
    result = _run(http_receiver, missing=("psycopg2",), OTEL_SEGMENTS_DATABASE_URL="postgresql+psycopg2://app@db/app")
    (line,) = _ours(result)
    assert "postgresql+psycopg://" in line, line  # psycopg 3 (the [postgresql] extra) is installed: the app could use it
