"""Users too large for a peer, among thousands: set aside and named once; everyone else delivered on the first cycle.

In process, on the real path: the demo database on SQLite with 3,000 users, one
whose ``role`` is 950 KiB (over PostHog's 900 KiB event limit, under the
collector's) and one of 2 MiB (over both); a :class:`RefreshJob` delivering to the
local PostHog capture endpoint and to an OTLP/HTTP collector that answers 413 to a
body over 1 MiB (so its 512-record batches are split). The user id hash key is
set, so the warnings must name the hashed ids.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from sqlalchemy import create_engine, update

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.demo import create_demo_database, users
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.settings.config import Settings
from otel_segments.sinks.otlp import OtlpSegmentSink, log_exporter
from otel_segments.sinks.posthog import PostHogSink
from otel_segments.spans.privacy import set_privacy_policy
from tests.receivers import Receiver
from tests.segments.data import NOW
from tests.sinks.conftest import Capture

from .conftest import API_KEY, TOKEN

USERS = 3000
BIG = {"1000": 950 * 1024, "2500": 2 * 1024 * 1024}  # user id -> bytes of its role
KEY = b"quarantine-hash-key"


def hashed(user_id: str) -> str:
    return hmac.new(KEY, user_id.encode(), hashlib.sha256).hexdigest()


def test_oversized_users_are_set_aside_named_once_and_everyone_else_delivered_first_cycle(
    tmp_path: Path, capture: Capture, http_receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    create_demo_database(engine, users_count=USERS, seed=11, now=NOW)
    with engine.begin() as conn:
        for user_id, size in BIG.items():
            conn.execute(update(users).where(users.c.id == int(user_id)).values(role="r" * size))
    http_receiver.max_body = 1024 * 1024
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_HEADERS", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TOKEN", TOKEN)
    exporter = log_exporter(Settings.from_env(), timeout=10)
    job = RefreshJob(
        engine,
        TIMETRACKER,
        sinks={
            "posthog": lambda: PostHogSink(API_KEY, capture.host, super_properties={}),
            "otlp": lambda: OtlpSegmentSink(exporter, Resource({"service.name": "timetracker"})),
        },
    )
    set_privacy_policy(hash_key=KEY)
    try:
        with caplog.at_level(logging.INFO, logger="otel_segments"):
            first = job.run_cycle(now=NOW)  # one clock for both cycles: no window edge crossed in between
            posthog_after_first = Counter(e["distinct_id"] for e in capture.events())
            otlp_after_first = Counter(log.resource["user.id"] for log in http_receiver.logs())
            second = job.run_cycle(now=NOW)
    finally:
        job.shutdown(timeout_s=5)
        engine.dispose()
    everyone = {str(i) for i in range(1, USERS + 1)}

    assert first is not None and first.error is None and not first.failed, first
    assert first.delivered == {"posthog": USERS - 2, "otlp": USERS - 1}
    assert first.quarantined == {"posthog": 2, "otlp": 1}
    # PostHog: every other user exactly once, on the first cycle; the two big ones never sent
    assert posthog_after_first == Counter(everyone - set(BIG))
    # the collector: batches split on its 413 until they fit; each user once; only the 2 MiB one refused
    assert http_receiver.too_large > 0
    assert otlp_after_first == Counter(hashed(u) for u in everyone - {"2500"})

    # named once each, hashed, with the cause; the second cycle tries them again and names nobody again
    lines = [r.getMessage() for r in caplog.records if "refused user" in r.getMessage()]
    assert len(lines) == 3, lines
    assert sum(hashed("1000") in line and "posthog" in line and "900 KiB" in line for line in lines) == 1
    assert sum(hashed("2500") in line and "posthog" in line and "900 KiB" in line for line in lines) == 1
    assert sum(hashed("2500") in line and "otlp" in line and "413" in line for line in lines) == 1
    assert not any("1000" in line.replace(hashed("1000"), "") or "2500" in line.replace(hashed("2500"), "") for line in lines)
    assert all(r.exc_info is None for r in caplog.records if r.levelno >= logging.WARNING)
    assert second is not None and second.delivered == {"posthog": 0, "otlp": 0}
    assert second.quarantined == {"posthog": 2, "otlp": 1}
    assert Counter(e["distinct_id"] for e in capture.events()) == posthog_after_first  # nothing sent twice
    assert Counter(log.resource["user.id"] for log in http_receiver.logs()) == otlp_after_first
    state = RefreshState(create_engine(f"sqlite:///{tmp_path / 'app.db'}"))
    assert {s.distinct_id for s in state.pending("posthog", limit=10)} == set(BIG)  # never marked delivered
    assert {s.distinct_id for s in state.pending("otlp", limit=10)} == {"2500"}
