"""``configure()`` called again, and the plugin off although the operator meant it on (issue 15, items 2 and 3).

Each case runs in a process of its own, as an app would: configure() keeps process-wide state, and the
"off" line must be seen under ``opentelemetry-instrument``, where logging is not configured yet.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import textwrap

import pytest

from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver

TOKEN = "tok-again-4b2e"
HASH_KEY = "hash-key-again-77"

AGAIN = textwrap.dedent(
    """
    import logging, os, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    import otel_segments
    from otel_segments import Settings

    provider = TracerProvider()  # the app's own set-up, then ours joins it
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(headers=otel_segments.otlp_headers())))
    trace.set_tracer_provider(provider)
    first = otel_segments.configure()
    with otel_segments.user_context("raw-1"):
        trace.get_tracer("app").start_span("before").end()
    hashed = Settings.from_env({**os.environ, "OTEL_SEGMENTS_USER_ID_HASH_KEY": "@KEY@"})
    calls = [
        otel_segments.configure(hashed),   # warns: user_id_hash_key ignored
        otel_segments.configure(hashed),   # the same request again: no second warning
        otel_segments.configure(),         # nothing asked: quiet
        otel_segments.configure(allow_pii=True),
        otel_segments.configure(allow_pii=True),
    ]
    assert all(handle is first for handle in calls)
    with otel_segments.user_context("raw-2"):
        trace.get_tracer("app").start_span("ignored").end()
    first.shutdown()
    again = otel_segments.configure(hashed)
    assert again is not first and again.enabled and again.segments is not first.segments, again
    with otel_segments.user_context("raw-3"):
        trace.get_tracer("app").start_span("after-shutdown").end()
    again.shutdown()
    provider.shutdown()
    print("ok")
    """
).replace("@KEY@", HASH_KEY)


def test_configure_again_warns_once_per_ignored_request_and_sets_up_anew_after_shutdown(http_receiver: Receiver) -> None:
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{http_receiver.endpoint}/v1/traces",
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
    )
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(VENV_BIN / "python"), "-c", AGAIN], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert warnings == [
        "otel_segments.configuration WARNING otel_segments: configure() was already called; this call's user_id_hash_key "
        "is ignored (call handle.shutdown() first to set up anew)",
        "otel_segments.configuration WARNING otel_segments: configure() was already called; this call's allow_pii "
        "is ignored (call handle.shutdown() first to set up anew)",
    ], result.stderr[-3000:]
    assert HASH_KEY not in result.stderr and TOKEN not in result.stderr

    spans = {s.name: s.attributes for s in http_receiver.wait_for(lambda r: len(r.spans()) == 3 and r.spans())}
    assert spans["before"]["user.id"] == "raw-1"
    assert spans["ignored"]["user.id"] == "raw-2"  # what the warning said: the hash key was not applied
    hashed = hmac.new(HASH_KEY.encode(), b"raw-3", hashlib.sha256).hexdigest()
    assert spans["after-shutdown"]["user.id"] == hashed  # set up anew, with the settings of that call


def test_configure_after_shutdown_of_providers_it_built_says_spans_stay_off(http_receiver: Receiver) -> None:
    code = textwrap.dedent(
        """
        import otel_segments
        first = otel_segments.configure()
        first.shutdown()
        again = otel_segments.configure()
        assert again is not first and again.enabled
        again.shutdown()
        print("ok")
        """
    )
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(VENV_BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert result.stderr.count("the app's spans are not exported until the process restarts") == 1, result.stderr[-3000:]


def _instrumented(**variables: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none", **variables)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), "-c", "print('served')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example"},
            "otel_segments is off: OTEL_EXPORTER_OTLP_TOKEN is not set",
        ),
        ({"OTEL_EXPORTER_OTLP_TOKEN": TOKEN}, "otel_segments is off: OTEL_EXPORTER_OTLP_ENDPOINT is not set"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN + "\u00e9"},
            "otel_segments is off: OTEL_EXPORTER_OTLP_TOKEN was refused: it has characters a bearer token cannot have "
            "(spaces, control or non-ASCII characters)",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:pw-5@collector.example:99999", "OTEL_EXPORTER_OTLP_TOKEN": TOKEN},
            "otel_segments is off: OTEL_EXPORTER_OTLP_ENDPOINT was refused: it is not a URL",
        ),
    ],
)
def test_off_although_meant_on_is_said_at_warning_under_opentelemetry_instrument(variables: dict[str, str], line: str) -> None:
    result = _instrumented(**variables)
    assert result.returncode == 0 and result.stdout.strip() == "served", result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines.count(line) == 1, result.stderr[-3000:]
    assert "is not set" not in line or "refused" not in result.stderr
    assert TOKEN not in result.stderr and "pw-5" not in result.stderr


def test_a_plain_unset_environment_stays_quiet_under_opentelemetry_instrument() -> None:
    result = _instrumented()
    assert result.returncode == 0 and result.stdout.strip() == "served", result.stderr[-3000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith("otel_segments")]
    assert ours == [] and "is not set" not in result.stderr, result.stderr[-3000:]
