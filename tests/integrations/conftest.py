"""An in-process SDK pipeline (our processor + in-memory exporter) for the framework tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_segments import SuperPropertiesSpanProcessor, current_user
from otel_segments.integrations import _reported
from otel_segments.properties import ProcessProperties

PROCESS = ProcessProperties(environment="test", deployment_method="pytest", timezone="UTC")
USER_KEYS = ("user.id", "user.roles", "app.user.role", "app.user.is_admin", "app.user.auth_method")


@dataclass
class Pipeline:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


def user_part(span: ReadableSpan) -> dict[str, object]:
    return {k: v for k, v in (span.attributes or {}).items() if k in USER_KEYS}


def make_pipeline(trust_baggage: bool = False) -> Pipeline:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(PROCESS, trust_baggage=trust_baggage))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Pipeline(provider, exporter)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    p = make_pipeline()
    yield p
    p.provider.shutdown()


@pytest.fixture(autouse=True)
def _fresh_reports_and_no_leaked_user(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Each test sees the log-once reports anew, and no test may leave a user set in this thread."""
    _reported.clear()
    caplog.set_level(logging.WARNING, logger="otel_segments")
    yield
    assert current_user() is None, "a user leaked out of the request into the test thread"
