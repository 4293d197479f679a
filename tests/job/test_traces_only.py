"""A backend that takes OTLP traces only (Jaeger, Tempo, Phoenix): it answers 404/405 or UNIMPLEMENTED for logs and
metrics. The segment-record sink and the gauge must say so once, naming the variables that fix it, and stop
trying, while spans and PostHog updates go on; per-signal endpoints and ``OTEL_LOGS_EXPORTER=none`` are honoured.

Each case is an app under ``opentelemetry-instrument`` for about 3 s (ten refresh cycles) against real receivers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from otel_segments.segments.demo import create_demo_database
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver, serve
from tests.sinks.conftest import Capture

USERS = 12
APP = """
import time
from opentelemetry import trace
import otel_segments

tracer = trace.get_tracer("app")
deadline = time.monotonic() + 3.0
while time.monotonic() < deadline:
    with otel_segments.user_context("3"):
        tracer.start_span("work").end()
    time.sleep(0.05)
print("done", flush=True)
"""


@pytest.fixture
def traces_only_http(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    yield from serve("http", signals=("traces",), refuse_status=getattr(request, "param", 404))


@pytest.fixture
def traces_only_grpc() -> Iterator[Receiver]:
    yield from serve("grpc", signals=("traces",))


def _run(tmp_path: Path, receiver: Receiver, capture: Capture, protocol: str, **extra: str) -> subprocess.CompletedProcess[str]:
    database = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(database)
    create_demo_database(engine, users_count=USERS, seed=5)
    engine.dispose()
    (tmp_path / "app.py").write_text(APP)
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN="tok-traces-only",
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SEGMENTS_DATABASE_URL=database,
        OTEL_SEGMENTS_REFRESH_INTERVAL="300",
        POSTHOG_API_KEY="phc_traces_only",
        POSTHOG_HOST=capture.host,
        **extra,
    )
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), "app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr
    assert "Traceback" not in result.stderr and "tok-traces-only" not in result.stderr, result.stderr
    return result


def _ours(result: subprocess.CompletedProcess[str], text: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("otel_segments") and text in line]


def _says_once_and_stops(result: subprocess.CompletedProcess[str], answer: str) -> None:
    for signal, what in (("logs", "segment records"), ("metrics", "gauge")):
        lines = _ours(result, f"takes no {signal}")
        assert len(lines) == 1, result.stderr
        line = lines[0]
        assert answer in line and what in line, line
        assert f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT" in line and f"OTEL_{signal.upper()}_EXPORTER=none" in line
    assert not _ours(result, "failed"), result.stderr  # neither the cycle nor a delivery counts as failed


@pytest.mark.parametrize("traces_only_http", [404, 405], indirect=True)
def test_http_traces_only_backend_stops_logs_and_metrics_after_one_line(tmp_path, traces_only_http, capture) -> None:
    result = _run(tmp_path, traces_only_http, capture, "http/protobuf")
    status = next(iter({404, 405} & {int(line.split("HTTP ")[1][:3]) for line in _ours(result, "answered HTTP")}))
    _says_once_and_stops(result, f"HTTP {status}")
    # one attempt each over ten cycles, then nothing
    assert traces_only_http.refused == {"logs": 1, "metrics": 1}
    assert {s.attributes.get("user.id") for s in traces_only_http.spans() if s.name == "work"} == {"3"}
    assert len(capture.by_user()) == USERS  # PostHog updates are not held back by the OTLP sink


def test_grpc_traces_only_backend_stops_logs_and_metrics_after_one_line(tmp_path, traces_only_grpc, capture) -> None:
    result = _run(tmp_path, traces_only_grpc, capture, "grpc")
    _says_once_and_stops(result, "gRPC UNIMPLEMENTED")
    sdk_errors = [line for line in result.stderr.splitlines() if "UNIMPLEMENTED" in line and not line.startswith("otel_segments")]
    assert len(sdk_errors) <= 2, result.stderr  # the SDK's own error, once per signal, then no more attempts
    assert any(s.name == "work" for s in traces_only_grpc.spans())
    assert len(capture.by_user()) == USERS


def test_per_signal_endpoints_are_honoured(tmp_path, traces_only_http, http_receiver, capture) -> None:
    result = _run(
        tmp_path,
        traces_only_http,
        capture,
        "http/protobuf",
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=f"{http_receiver.endpoint}/v1/logs",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"{http_receiver.endpoint}/v1/metrics",
    )
    assert not _ours(result, "takes no"), result.stderr
    assert traces_only_http.refused == {}
    records = [r for r in http_receiver.logs() if r.event_name == "app.user.segment"]
    assert len({r.resource["user.id"] for r in records}) == USERS
    assert any(p.metric == "app.segments.users" for p in http_receiver.points())
    assert {e.headers.get("authorization") for e in http_receiver.exports} == {"Bearer tok-traces-only"}


def test_logs_exporter_none_turns_the_segment_records_off(tmp_path, traces_only_http, capture) -> None:
    result = _run(tmp_path, traces_only_http, capture, "http/protobuf", OTEL_LOGS_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    assert not _ours(result, "takes no") and not _ours(result, "failed"), result.stderr
    assert traces_only_http.refused == {}
    assert len(capture.by_user()) == USERS
