"""``compat.log_record_for_export`` on whichever SDK release is installed (both suites run it)."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_segments.runtime import compat

SCOPE = InstrumentationScope("tests.compat")


def test_a_record_made_inside_a_span_belongs_to_no_trace() -> None:
    """The refresh job runs under a span context of its own (and an app's may be current): no user's record joins it."""
    tracer = TracerProvider().get_tracer("tests.compat")
    with tracer.start_as_current_span("job") as span:
        assert span.get_span_context().is_valid
        record = compat.log_record_for_export(
            event_name="app.user.segment", resource=Resource({"user.id": "7"}), instrumentation_scope=SCOPE
        )
    assert record.log_record.trace_id == 0 and record.log_record.span_id == 0


def test_the_event_name_is_where_this_release_carries_it() -> None:
    record = compat.log_record_for_export(
        event_name="app.user.segment", resource=Resource({"user.id": "7"}), instrumentation_scope=SCOPE
    )
    if compat.LOG_RECORDS_HAVE_EVENT_NAME:
        assert record.log_record.event_name == "app.user.segment"
        assert not record.log_record.attributes
    else:
        assert dict(record.log_record.attributes) == {compat.EVENT_NAME_ATTRIBUTE: "app.user.segment"}
    assert record.instrumentation_scope == SCOPE
    resource = record.resource if hasattr(record, "resource") else record.log_record.resource
    assert resource.attributes["user.id"] == "7"
