"""The plugin's own I/O (its SQL, its PostHog posts, its OTLP exports) never becomes the app's telemetry.

An app under ``opentelemetry-instrument`` has instrumentations for its database
driver, SQLAlchemy and its HTTP clients; they trace whatever runs in the process,
the refresh job's work included: a dozen root ``connect``/query spans per cycle,
plus one per post, in the backend where users look for their app's traces.

:func:`untraced` is the context for that work. It does two things, because
instrumentations differ in what they honour:

1. ``suppress_instrumentation()``, the public way to say "do not trace this".
   Every instrumentation of the 0.66b releases checks it (sqlalchemy, psycopg,
   psycopg2, sqlite3, requests, urllib3, httpx: tests/job/test_untraced.py), and
   the HTTP ones (requests, urllib3, httpx) already did in 0.48b0;
2. a current span that is valid but *not sampled*. The SQLAlchemy and DB-API
   instrumentations of 0.48b0 (so psycopg, psycopg2 and sqlite3 too) never check
   suppression: SQLAlchemy's ``connect`` span and every cursor span are started
   regardless. Started under a non-sampled parent, a parent-based sampler (the
   SDK's default, and every ``parentbased_*`` choice of ``OTEL_TRACES_SAMPLER``)
   drops them before any processor or exporter sees them. An app that samples
   with ``always_on`` or a bare ``traceidratio`` ignores parents, and with such an
   old instrumentation would still see our queries: upgrading the instrumentation
   is the cure there.

No span of ours is started either way, so nothing of the app's trace context
(baggage, a request's span) reaches our peers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

_IDS = RandomIdGenerator()


@contextmanager
def untraced() -> Iterator[None]:
    """Instrumentation suppressed and an unsampled parent current, in a context of its own (the caller's is set aside)."""
    parent = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=_IDS.generate_trace_id(),
            span_id=_IDS.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
        )
    )
    token = context.attach(trace.set_span_in_context(parent, context.Context()))
    try:
        with suppress_instrumentation():
            yield
    finally:
        context.detach(token)
