"""``configure()`` building its own providers through :mod:`otel_segments.runtime.compat`, on whichever SDK release is installed.

Run in both suites: the newest releases (.venv) and the oldest supported ones
(.venv-oldest), where the SDK takes neither our span processor nor our exporter
arguments and sets up no logger provider by itself.
"""

from __future__ import annotations

import json
import subprocess
import textwrap

from otel_segments.runtime import compat
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver

TOKEN = "tok-compat-77d0"
SCRIPT = textwrap.dedent(
    """
    import json, os
    import otel_segments
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider

    handle = otel_segments.configure(resource_attributes={"team": "billing"})
    with otel_segments.user_context("u-5", role="editor"):
        with trace.get_tracer("compat").start_as_current_span("compat-span"):
            metrics.get_meter("compat").create_counter("compat.calls").add(1)
    report = {
        "enabled": handle.enabled,
        "logger_provider": isinstance(get_logger_provider(), LoggerProvider),
        "variables": {k: v for k, v in os.environ.items() if k.startswith("OTEL_EXPORTER_OTLP_") and not k.endswith("TOKEN")},
    }
    handle.shutdown()
    print(json.dumps(report))
    """
)


def test_configure_builds_providers_with_our_processor_and_token(http_receiver: Receiver, tmp_path) -> None:
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="compat-app",
        OTEL_EXPORTER_OTLP_TRACES_HEADERS="x-team=blue",
    )
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["enabled"] is True
    assert report["logger_provider"] is True  # set up by the SDK (1.30.0+) or by compat (before)
    # the token reached the exporters without staying in the environment (releases before 1.35.0 read it from there)
    assert report["variables"] == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=blue",
    }

    spans = http_receiver.wait_for(lambda r: r.spans())
    assert [s.name for s in spans] == ["compat-span"]  # our processor once, whichever way the SDK took it
    assert spans[0].attributes["user.id"] == "u-5" and spans[0].attributes["app.user.role"] == "editor"
    assert spans[0].resource["service.name"] == "compat-app" and spans[0].resource["team"] == "billing"
    http_receiver.wait_for(lambda r: r.of("metrics"))
    for signal in ("traces", "metrics"):
        assert {e.headers.get("authorization") for e in http_receiver.of(signal)} == {f"Bearer {TOKEN}"}, signal
    assert {e.headers.get("x-team") for e in http_receiver.of("traces")} == {"blue"}  # the app's own headers kept


def test_feature_checks_agree_with_each_other() -> None:
    """The releases that changed these went in order (1.30.0, 1.35.0, 1.39.0, 1.40.0): a venv mixing them is broken."""
    assert compat.SDK_ALWAYS_SETS_UP_LOGS or not compat.SDK_TAKES_EXPORTER_ARGS
    assert compat.SDK_TAKES_EXPORTER_ARGS == compat.LOG_RECORDS_HAVE_EVENT_NAME
    assert compat.LOG_RECORDS_HAVE_EVENT_NAME or compat.LogRecordExporter.__name__ == "LogExporter"
    assert not compat.SDK_TAKES_SPAN_PROCESSORS or compat.LogRecordExporter.__name__ == "LogRecordExporter"
