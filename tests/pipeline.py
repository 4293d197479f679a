"""An in-process SDK pipeline for the tests: our span processor, an optional segment cache, an in-memory exporter."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_segments import SuperPropertiesSpanProcessor
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.properties import ProcessProperties


@dataclass
class Pipeline:
    provider: TracerProvider
    exporter: InMemorySpanExporter
    segments: SegmentCache | None = None

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


def make_pipeline(process: ProcessProperties, *, trust_baggage: bool = False, cache_size: int | None = None) -> Pipeline:
    """With ``cache_size``, the processor reads segments from a :class:`SegmentCache` of that size."""
    exporter = InMemorySpanExporter()
    segments = SegmentCache(cache_size) if cache_size is not None else None
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(process, segments, trust_baggage=trust_baggage))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Pipeline(provider, exporter, segments)
