"""Issue 4's "done when": an app under ``opentelemetry-instrument`` with the gate open, a database URL and a
PostHog key sends cohort gauges, per-user segment log records and PostHog updates, and its spans carry the
user's segment. No code in the app but saying who the user is; real OTLP receiver, real PostHog endpoint."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.schema import TIMETRACKER
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

APP = Path(__file__).parent.parent / "apps" / "segments_app.py"
TOKEN = "tok-segments-91c2"
API_KEY = "phc_e2e_secret_key"
USERS = 30


def _run_app(
    tmp_path: Path, receiver: Receiver, capture: Capture, protocol: str, *, seed: int, **extra: str
) -> tuple[Engine, subprocess.CompletedProcess[str]]:
    """A demo database, then tests/apps/segments_app.py under opentelemetry-instrument with every peer configured."""
    database = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(database)
    create_demo_database(engine, users_count=USERS, seed=seed)
    shutil.copy(APP, tmp_path / "segments_app.py")
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME="timetracker",
        OTEL_SEGMENTS_DATABASE_URL=database,
        OTEL_SEGMENTS_REFRESH_INTERVAL="300",
        POSTHOG_API_KEY=API_KEY,
        POSTHOG_HOST=capture.host,
        **extra,
    )
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), "segments_app.py", "30"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return engine, result


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_instrumented_app_sends_segments_everywhere(request, tmp_path, kind: str, capture: Capture) -> None:
    receiver: Receiver = request.getfixturevalue(f"{kind}_receiver")
    engine, result = _run_app(tmp_path, receiver, capture, "http/protobuf" if kind == "http" else "grpc", seed=11)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr and API_KEY not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr

    # PostHog: every user, once, with the properties the engine computes
    expected = {s.distinct_id: s for s in compute_segments(engine, TIMETRACKER, now=datetime.now(timezone.utc))}
    events = capture.events()
    assert sorted(e["distinct_id"] for e in events) == sorted(expected)
    for event_ in events:
        assert event_["properties"]["$set"]["engagement_level"] == expected[event_["distinct_id"]].set["engagement_level"]
        assert event_["properties"]["deployment.environment.name"] == "production"  # process super property

    # spans: the user's segment, from the cache the refresh filled
    spans = [s for s in receiver.spans() if s.name == "stop-timer" and s.attributes.get("user.id") == "3"]
    assert spans and spans[-1].attributes["app.user.engagement_level"] == expected["3"].set["engagement_level"]
    assert spans[-1].attributes["app.user.role"] == "user"

    # OTLP: one segment record per user, the user on its Resource; the gauge; the bearer token on all of it
    records = [r for r in receiver.logs() if r.event_name == "app.user.segment"]
    assert {r.resource["user.id"] for r in records} == set(expected)
    assert all(r.resource["service.name"] == "timetracker" for r in records)
    points = [p for p in receiver.points() if p.metric == "app.segments.users"]
    assert points and points[-1].resource["service.name"] == "timetracker"
    last = {(p.attributes["app.segment.name"], p.attributes["app.segment.value"]): p.value for p in points}
    assert sum(v for (name, _), v in last.items() if name == "engagement_level") == USERS
    for signal in ("traces", "metrics", "logs"):
        assert {e.headers.get("authorization") for e in receiver.of(signal)} == {f"Bearer {TOKEN}"}, signal
    engine.dispose()


def test_metrics_exporter_none_keeps_refreshing_without_exporting_metrics(http_receiver, tmp_path, capture: Capture) -> None:
    """OTEL_METRICS_EXPORTER=none turns metrics off, the gauge included; segments still refresh and go out."""
    engine, result = _run_app(tmp_path, http_receiver, capture, "http/protobuf", seed=12, OTEL_METRICS_EXPORTER="none")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert len({e["distinct_id"] for e in capture.events()}) == USERS
    assert [r for r in http_receiver.logs() if r.event_name == "app.user.segment"]
    assert http_receiver.spans() and http_receiver.of("metrics") == []
    engine.dispose()
