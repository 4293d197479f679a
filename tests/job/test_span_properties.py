"""What a span carries of a user's segment (OTEL_SEGMENTS_SPAN_PROPERTIES), and that PostHog and OTLP keep everything."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_segments
from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.cohorts import COHORTS
from otel_segments.segments.rules import UserActivity, person_properties
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.span_properties import DEFAULT_SPAN_PROPERTIES, known_segment_properties, span_property_selection
from otel_segments.settings.config import Settings
from otel_segments.sinks.otlp import OtlpSegmentSink
from otel_segments.sinks.posthog import PostHogSink
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.processor import SuperPropertiesSpanProcessor
from tests.job.conftest import USERS
from tests.receivers import Receiver
from tests.segments.data import NOW
from tests.sinks.conftest import Capture

T1 = NOW + timedelta(seconds=1)
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT")


def _full_segment() -> dict[str, object]:
    row = UserActivity(
        "9",
        created_at=NOW - timedelta(days=40),
        last_login=NOW - timedelta(hours=2),
        role="user",
        is_admin=False,
        auth_method="local",
        entries_24h=3,
        entries_7d=12,
        entries_30d=30,
        entries_all_time=90,
        timer_entries=60,
        manual_entries=30,
        total_seconds=36_000.0,
        active_projects=2,
        total_projects=4,
        assigned_tasks=5,
        completed_tasks=3,
    )
    segment = person_properties(row, now=NOW)
    return {**segment.set_once, **segment.set}


def test_default_is_categories_and_cohort_flags_never_counts_or_times() -> None:
    properties = _full_segment()
    assert set(DEFAULT_SPAN_PROPERTIES) <= known_segment_properties() == set(properties)
    assert {c.property for c in COHORTS} <= set(DEFAULT_SPAN_PROPERTIES)  # every cohort's filter finds its spans
    for name in DEFAULT_SPAN_PROPERTIES:
        value = properties[name]
        assert isinstance(value, (bool, str)), (name, value)
        assert not (isinstance(value, str) and ISO_TIME.match(value)), (name, value)
    left_out = set(properties) - set(DEFAULT_SPAN_PROPERTIES)
    assert {"entries_last_24h", "total_hours_tracked", "last_login", "last_segment_update", "account_age_days"} <= left_out
    assert all(not isinstance(properties[name], bool) for name in left_out if name not in ("signup_method",))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", set(DEFAULT_SPAN_PROPERTIES)),
        ("default", set(DEFAULT_SPAN_PROPERTIES)),
        (" DEFAULT ", set(DEFAULT_SPAN_PROPERTIES)),
        ("all", None),
        ("All", None),
        ("none", set()),
        ("engagement_level, is_power_user", {"engagement_level", "is_power_user"}),
        ("app.user.engagement_level,,", {"engagement_level"}),
        ("default,total_hours_tracked", {*DEFAULT_SPAN_PROPERTIES, "total_hours_tracked"}),
    ],
)
def test_selection(spec: str, expected: set[str] | None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        selection = span_property_selection(spec)
    assert (None if selection is None else set(selection)) == expected
    assert caplog.records == []


def test_unknown_names_warn_once_in_one_line_naming_the_variable(caplog: pytest.LogCaptureFixture) -> None:
    spec = "engagement_level,no_such_property,entries_last_9_days"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert span_property_selection(spec) == {"engagement_level"}
        SegmentCache(10, span_property_selection(spec)).put("1", {"engagement_level": "low"})
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith("OTEL_SEGMENTS_SPAN_PROPERTIES: 'no_such_property', 'entries_last_9_days' are not")


def test_the_cache_filters_when_filled_and_the_span_reads_the_result() -> None:
    properties = _full_segment()
    exporter = InMemorySpanExporter()
    cache = SegmentCache(10, span_property_selection("default"))
    cache.put("9", properties)
    stored = cache.get("9")
    assert stored is not None
    assert set(stored) == {"app.user." + name for name in DEFAULT_SPAN_PROPERTIES}
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(segments=cache))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with otel_segments.user_context("9", role="user"):
        provider.get_tracer("t").start_span("s").end()
    [span] = exporter.get_finished_spans()
    segment_keys = {k for k in span.attributes if k.startswith("app.user.")}
    assert segment_keys == set(stored)

    none = SegmentCache(10, span_property_selection("none"))
    none.put("9", properties)
    assert none.get("9") == {}
    everything = SegmentCache(10, span_property_selection("all"))
    everything.put("9", properties)
    assert len(everything.get("9") or {}) == len(properties)


def test_configure_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env({}).span_properties == "default"
    assert Settings.from_env({"OTEL_SEGMENTS_SPAN_PROPERTIES": " all "}).span_properties == "all"


def test_posthog_and_otlp_records_keep_every_property_spans_get_the_default(
    app_engine, capture: Capture, http_receiver: Receiver
) -> None:
    cache = SegmentCache(100, span_property_selection("default"))
    exporter = OTLPLogExporter(endpoint=f"{http_receiver.endpoint}/v1/logs", headers={"authorization": "Bearer t0k"})
    sinks = {
        "posthog": lambda: PostHogSink("phc_test_key", capture.host),
        "otlp": lambda: OtlpSegmentSink(exporter, Resource({"service.name": "timetracker"})),
    }
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(segments=cache))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    job = RefreshJob(app_engine, TIMETRACKER, sinks=sinks, interval=timedelta(seconds=1), cache=cache)
    with otel_segments.user_context("3"):
        provider.get_tracer("t").start_span("before").end()
    job.run_cycle(now=T1)
    with otel_segments.user_context("3"):
        provider.get_tracer("t").start_span("after").end()
    job.shutdown()

    expected = next(s for s in compute_segments(app_engine, TIMETRACKER, now=T1, user_ids=["3"]))
    assert len(capture.events()) == USERS
    posthog = capture.by_user()["3"]["properties"]["$set"]
    assert set(posthog) == set(expected.set)  # counts and timestamps included
    records = [r for r in http_receiver.logs() if r.resource.get("user.id") == "3"]
    assert records, http_receiver.logs()
    assert {"app.user.entries_last_7_days", "app.user.last_segment_update"} <= set(records[-1].resource)

    after = next(dict(s.attributes) for s in spans.get_finished_spans() if s.name == "after")
    on_span = {k.removeprefix("app.user.") for k in after if k.startswith("app.user.")}
    assert on_span == {name for name in DEFAULT_SPAN_PROPERTIES if name in {**expected.set_once, **expected.set}}
    assert after["app.user.engagement_level"] == expected.set["engagement_level"]


def test_the_merged_attributes_follow_the_user_and_each_refresh() -> None:
    """The processor merges once per (user, segment) pair; a new segment or another user is never served stale."""
    cache = SegmentCache(10, span_property_selection("default"))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(segments=cache))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    cache.put("a", {"engagement_level": "low"})
    cache.put("b", {"engagement_level": "high"})
    with otel_segments.user_context("a"):
        tracer.start_span("a1").end()
        tracer.start_span("a2").end()
        cache.put("a", {"engagement_level": "very_high"})  # the refresh job, between two spans of one request
        tracer.start_span("a3").end()
    with otel_segments.user_context("b"):
        tracer.start_span("b1").end()
    with otel_segments.user_context("a", role="admin"):
        tracer.start_span("a4").end()
    got = {s.name: (s.attributes["user.id"], s.attributes["app.user.engagement_level"]) for s in exporter.get_finished_spans()}
    assert got == {
        "a1": ("a", "low"),
        "a2": ("a", "low"),
        "a3": ("a", "very_high"),
        "b1": ("b", "high"),
        "a4": ("a", "very_high"),
    }
    assert [s.attributes.get("app.user.role") for s in exporter.get_finished_spans()][-1] == "admin"
