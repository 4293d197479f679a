"""Apps that set up OpenTelemetry in code (README, "Set up in code"): the app builds its own TracerProvider and
exporter, then calls ``configure()`` — on the global provider, or on a provider it keeps out of the global with
``tracer_provider=``. Our processor joins that provider, the refresh job runs, the app's exporter stays the app's
and carries the bearer token through ``otel_segments.otlp_headers()``; nothing advises a set-up that would break it.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from otel_segments.segments.demo import create_demo_database
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

TOKEN = "tok-in-code-5d1"
USERS = 10
APP = textwrap.dedent(
    """
    import json, sys, time
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import otel_segments

    # The app's own set-up, as it was before otel_segments: its Resource, its exporter (plus our headers).
    provider = TracerProvider(resource=Resource.create({"service.name": "own-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(headers=otel_segments.otlp_headers())))
    if sys.argv[1] == "global":
        trace.set_tracer_provider(provider)
        handle = otel_segments.configure()
        tracer = trace.get_tracer("app")
    else:
        handle = otel_segments.configure(tracer_provider=provider)
        tracer = provider.get_tracer("app")

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not handle.segments.get("3"):
        with otel_segments.user_context("3", role="user"):
            tracer.start_span("work").end()
        time.sleep(0.1)
    with otel_segments.user_context("3", role="user"):
        tracer.start_span("after-refresh").end()
    handle.shutdown()
    provider.shutdown()
    print(json.dumps({"global_is_ours": trace.get_tracer_provider() is provider, "job": handle.job is not None}))
    """
)


@pytest.mark.parametrize("where", ["global", "own"])
def test_configure_joins_the_apps_own_provider(tmp_path: Path, http_receiver: Receiver, capture: Capture, where: str) -> None:
    database = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(database)
    create_demo_database(engine, users_count=USERS, seed=21)
    engine.dispose()
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SEGMENTS_DATABASE_URL=database,
        OTEL_SEGMENTS_REFRESH_INTERVAL="300",
        POSTHOG_API_KEY="phc_in_code",
        POSTHOG_HOST=capture.host,
    )
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", APP, where], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"global_is_ours": where == "global", "job": True}
    assert TOKEN not in result.stdout + result.stderr and "Traceback" not in result.stderr
    # no warning at all, and nothing that tells the app to call configure() before its own set-up
    assert not [line for line in result.stderr.splitlines() if line.startswith("otel_segments")], result.stderr

    spans = {s.name: s for s in http_receiver.wait_for(lambda r: len({s.name for s in r.spans()}) >= 2 and r.spans())}
    after = spans["after-refresh"]
    assert after.resource["service.name"] == "own-app"  # the app's provider and Resource exported it
    assert after.attributes["user.id"] == "3" and after.attributes["app.user.role"] == "user"
    assert "app.user.engagement_level" in after.attributes  # the segment, from the job's cache
    assert {e.headers.get("authorization") for e in http_receiver.of("traces")} == {f"Bearer {TOKEN}"}

    # the job's own exports: every user's segment record and the gauge, with the token; PostHog got everyone
    records = [r for r in http_receiver.logs() if r.event_name == "app.user.segment"]
    assert len({r.resource["user.id"] for r in records}) == USERS
    assert all(r.resource["service.name"] == "own-app" for r in records)  # the app's Resource, not a default
    assert any(p.metric == "app.segments.users" for p in http_receiver.points())
    for signal in ("metrics", "logs"):
        assert {e.headers.get("authorization") for e in http_receiver.of(signal)} == {f"Bearer {TOKEN}"}, signal
    assert len(capture.by_user()) == USERS


def test_otlp_headers_carries_the_token_unless_the_user_set_authorization(monkeypatch: pytest.MonkeyPatch) -> None:
    import otel_segments

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TOKEN", TOKEN)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=billing")
    assert otel_segments.otlp_headers() == {"x-team": "billing", "authorization": f"Bearer {TOKEN}"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "authorization=Basic%20abc")
    assert otel_segments.otlp_headers("logs") == {"authorization": "Basic abc"}
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TOKEN")
    assert otel_segments.otlp_headers() == {"x-team": "billing"}
