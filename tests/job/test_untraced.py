"""Issue 11, item 3: the refresh job's own SQL, PostHog posts and OTLP exports never become spans.

``tests/apps/busy_app.py`` runs under ``opentelemetry-instrument`` with the
sqlalchemy, psycopg, psycopg2, sqlite3, requests, urllib3 and httpx
instrumentations installed (the ``test`` extra), the refresh job beside it every
300 ms against the same database, PostHog at the local capture endpoint and a
real OTLP receiver. The app's own queries and requests are traced, each under its
``app-request`` root; every span the receiver gets must belong to one of those
traces, while PostHog and the receiver show the job did run its cycles, deliver
fresh activity, export its gauge and shut down at exit.

The first tests pin :func:`otel_segments.runtime.untraced.untraced` itself, for the
instrumentations that ignore suppression (SQLAlchemy and DB-API 0.48b0: checked by
hand with those releases, their spans were ``connect`` and one per query under
``suppress_instrumentation()`` alone, none under ``untraced()``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled, is_instrumentation_enabled
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine

from otel_segments.runtime.untraced import untraced
from otel_segments.segments.demo import create_demo_database
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

APP = Path(__file__).parent.parent / "apps" / "busy_app.py"
TOKEN = "tok-untraced-5e1a"
API_KEY = "phc_untraced_key"
USERS = 30
INSTRUMENTATIONS = {"sqlalchemy", "psycopg", "psycopg2", "sqlite3", "requests", "urllib3", "httpx"}


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    driver = request.param
    if driver == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("postgres_database").replace("postgresql+psycopg:", f"postgresql+{driver}:")
    engine = create_engine(url)
    create_demo_database(engine, users_count=USERS, seed=5)
    engine.dispose()
    yield url


def test_untraced_suppresses_instrumentation_and_drops_what_ignores_it() -> None:
    tracer = TracerProvider().get_tracer("an instrumentation that never checks suppression")
    with tracer.start_as_current_span("the app's request") as request:
        with untraced():
            assert not is_instrumentation_enabled() and not is_http_instrumentation_enabled()
            query = tracer.start_span("SELECT")
            assert not query.is_recording()  # the default parent-based sampler drops it: no processor sees it
            assert query.get_span_context().trace_id != request.get_span_context().trace_id  # the app's trace is set aside
            query.end()
        assert is_instrumentation_enabled() and trace.get_current_span() is request
        assert tracer.start_span("the app's query").is_recording()


def test_a_sampler_that_ignores_parents_still_records() -> None:
    """Documented limit: ``always_on`` with an instrumentation that ignores suppression (only SQLAlchemy/DB-API 0.48b0)."""
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("old")
    with untraced():
        assert tracer.start_span("SELECT").is_recording()


def test_the_instrumentations_are_installed() -> None:
    """Without them the test below proves nothing."""
    assert INSTRUMENTATIONS <= {e.name for e in entry_points(group="opentelemetry_instrumentor")}


@pytest.mark.parametrize(
    "database",
    ["sqlite", pytest.param("psycopg", marks=pytest.mark.postgres), pytest.param("psycopg2", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_the_jobs_own_io_adds_no_span(
    tmp_path: Path, database: str, http_receiver: Receiver, capture: Capture, httpserver: HTTPServer
) -> None:
    httpserver.expect_request("/app").respond_with_data("ok")
    shutil.copy(APP, tmp_path / "busy_app.py")
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="busy",
        OTEL_SEGMENTS_DATABASE_URL=database,
        OTEL_SEGMENTS_REFRESH_INTERVAL="300",
        POSTHOG_API_KEY=API_KEY,
        POSTHOG_HOST=capture.host,
        APP_DATABASE_URL=database,
        APP_HTTP_URL=httpserver.url_for("/app"),
    )
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), "busy_app.py", "3"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "otel_segments:" not in result.stderr, result.stderr

    # the job did its work: cycles that delivered every user, then the app's fresh activity, and the gauge
    per_user = Counter(e["distinct_id"] for e in capture.events())
    assert set(per_user) == {str(u) for u in range(1, USERS + 1)}
    assert sum(per_user.values()) > USERS, "no later cycle delivered the app's new activity"
    assert {r.resource["user.id"] for r in http_receiver.logs() if r.event_name == "app.user.segment"} == set(per_user)
    assert len(http_receiver.of("metrics")) >= 2

    # the app's own work is traced: queries (and their connect) and both HTTP clients, under its requests
    spans = http_receiver.spans()
    requests_ = {s.trace_id for s in spans if s.name == "app-request"}
    served = next(int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("served "))
    assert len(requests_) == served > 5
    inside = [s for s in spans if s.trace_id in requests_ and s.name != "app-request"]
    assert any(s.name == "connect" for s in inside), Counter(s.name for s in spans)
    assert any("FROM users" in str(s.attributes.get("db.statement", "")) for s in inside)
    assert sum(s.name == "GET" for s in inside) >= 2 * served  # requests and httpx (urllib3 under requests)

    # and nothing else: every span belongs to one of the app's requests
    stray_spans = [s for s in spans if s.trace_id not in requests_]
    assert not stray_spans, Counter((s.name, str(s.attributes.get("db.statement", ""))[:60]) for s in stray_spans)
