"""``set_user`` / ``user_context`` inside a request reach the request's server span (the local root), which started first.

A real SDK pipeline: the server span starts before anyone knows the user (an
auth dependency, an authentication class sets it later, often inside a child
span); the root must carry the user all the same, its children from then on
too, and nothing may reach a root of another trace or one that has ended.
"""

from __future__ import annotations

import threading

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_segments import SuperPropertiesSpanProcessor, clear_user, set_user, user_context
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.properties import ProcessProperties

USER_7 = {"user.id": "7", "user.roles": ("admin",), "app.user.role": "admin", "app.user.is_admin": True}


@pytest.fixture
def pipeline():
    exporter = InMemorySpanExporter()
    segments = SegmentCache(100)
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(ProcessProperties("test", "bare", "UTC"), segments))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter, segments
    provider.shutdown()


def user_part(exporter: InMemorySpanExporter, name: str) -> dict[str, object]:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith(("user.", "app.user.", "app.segment"))}


def test_set_user_in_a_child_span_reaches_the_server_span(pipeline):
    tracer, exporter, _ = pipeline
    with tracer.start_as_current_span("GET /work"):
        with tracer.start_as_current_span("authenticate"):
            token = set_user(7, role="admin", is_admin=True)
        with tracer.start_as_current_span("handler"):
            pass
    clear_user(token)
    assert user_part(exporter, "GET /work") == USER_7
    assert user_part(exporter, "handler") == USER_7
    assert user_part(exporter, "authenticate") == {}  # started before the user was known; not the root


def test_a_remote_parent_makes_the_server_span_the_local_root(pipeline):
    tracer, exporter, _ = pipeline
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    attached = context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    try:
        with tracer.start_as_current_span("server"), tracer.start_as_current_span("child"):
            with user_context(7, role="admin", is_admin=True):
                pass
    finally:
        context.detach(attached)
    assert user_part(exporter, "server") == USER_7
    assert exporter.get_finished_spans()[-1].context.trace_id == 0x1234


def test_the_root_gets_the_segment_from_the_cache(pipeline):
    tracer, exporter, segments = pipeline
    segments.put("7", {"engagement_level": "power"})
    with tracer.start_as_current_span("server"):
        token = set_user(7)
    clear_user(token)
    assert user_part(exporter, "server") == {"user.id": "7", "app.user.engagement_level": "power"}


def test_an_ended_root_or_another_trace_gets_nothing(pipeline):
    tracer, exporter, _ = pipeline
    with tracer.start_as_current_span("earlier request"):
        pass
    token = set_user(7)  # outside any request: the noted root has ended
    clear_user(token)
    with tracer.start_as_current_span("first root"):
        # a span of a new trace inside it, started by hand: the local root now, and the other trace's one is spared
        with tracer.start_as_current_span("second root", context=context.Context()):
            pass
        with tracer.start_as_current_span("child of first"):
            token = set_user(7, role="admin", is_admin=True)
        clear_user(token)
    assert user_part(exporter, "earlier request") == {}
    assert user_part(exporter, "second root") == {}
    assert user_part(exporter, "first root") == {}  # not the noted root any more: no span of the trace was touched


def test_interleaved_requests_in_threads_each_reach_their_own_root(pipeline):
    tracer, exporter, _ = pipeline
    both_started = threading.Barrier(2, timeout=10)

    def request(user_id: int) -> None:
        with tracer.start_as_current_span(f"server {user_id}"):
            both_started.wait()
            with tracer.start_as_current_span(f"auth {user_id}"):
                token = set_user(user_id)
            both_started.wait()
            clear_user(token)

    threads = [threading.Thread(target=request, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert user_part(exporter, "server 1") == {"user.id": "1"}
    assert user_part(exporter, "server 2") == {"user.id": "2"}


def test_a_root_that_cannot_take_attributes_never_raises_into_the_app(pipeline, caplog):
    tracer = pipeline[0]

    class Broken(dict):
        def __iter__(self):
            raise RuntimeError("boom")

        keys = items = __iter__

    with tracer.start_as_current_span("server"):
        from otel_segments.spans import context as user_context_module

        root = trace.get_current_span()
        user_context_module.enter_local_root(root, lambda span, user: span.set_attributes(Broken()))
        token = set_user(7)
        assert token is not None
    clear_user(token)
    assert "could not write the user onto the request's server span" in caplog.text
