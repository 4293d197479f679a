"""README's first command runs the real job: with a PostHog key and an OTLP endpoint it delivers every user."""

from __future__ import annotations

import subprocess
from collections import Counter

from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture


def test_demo_delivers_to_posthog_and_otlp(capture: Capture, http_receiver: Receiver, tmp_path) -> None:
    env = clean_env(
        POSTHOG_API_KEY="phc_demo_key",
        POSTHOG_HOST=capture.host,
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TOKEN="tok-demo",
    )
    result = subprocess.run(
        [str(VENV_BIN / "otel-segments"), "demo", "--users", "60", "--database", str(tmp_path / "demo.sqlite")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang, not slowness: the demo takes seconds, far longer beside a full test run
    )
    assert result.returncode == 0, result.stderr
    assert "60 to posthog, 60 to otlp" in result.stdout, result.stdout
    assert Counter(e["distinct_id"] for e in capture.events()) == {str(i): 1 for i in range(1, 61)}
    records = [r for r in http_receiver.logs() if r.event_name == "app.user.segment"]
    assert len(records) == 60
    assert {e.headers["authorization"] for e in http_receiver.of("logs")} == {"Bearer tok-demo"}
