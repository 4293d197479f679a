"""The segments pipeline behind ``configure()``: database -> refresh job -> sinks, driven by its MetricReader."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from .runtime.exporters import exporter_off, otlp_exporter
from .settings import config
from .settings.config import Settings
from .sinks.signal_support import GaugeExporter, SignalSupport
from .spans.cache import SegmentCache
from .spans.properties import ProcessProperties

if TYPE_CHECKING:  # the job (and SQLAlchemy under it) is imported only when a database is configured
    from .job.refresh_job import RefreshJob, Sink

_logger = logging.getLogger(__name__)


def start_segments(
    settings: Settings, process: ProcessProperties, cache: SegmentCache | None, provider: trace.TracerProvider | None = None
) -> tuple[RefreshJob, MeterProvider] | None:
    """Build the refresh job, its sinks and its MetricReader; nothing connects until the first cycle."""
    from .job.reader import segments_meter_provider
    from .job.refresh_job import RefreshJob
    from .runtime.database import DatabaseURLError, engine_for
    from .segments.schema import SchemaError, load_schema

    try:
        schema = load_schema(settings.schema)
    except SchemaError as error:
        _logger.error("otel_segments: %s=%r: %s; segments are off", config.OTEL_SEGMENTS_SCHEMA, settings.schema, error)
        return None
    engines = []
    urls = ((config.OTEL_SEGMENTS_DATABASE_URL, settings.database_url), (config.OTEL_SEGMENTS_STATE_URL, settings.state_url))
    for name, secret in urls:
        if secret is None:
            continue
        try:
            engines.append(engine_for(secret.reveal()))
        except DatabaseURLError as error:
            _logger.error("otel_segments: %s %s; segments are off", name, error)
            return None
    provider = provider if provider is not None else trace.get_tracer_provider()
    resource = provider.resource if isinstance(provider, TracerProvider) else Resource.create(dict(process.attributes))
    job = RefreshJob(
        engines[0],
        schema,
        state_engine=engines[-1],
        sinks=sink_factories(settings, resource, process),
        cache=cache,
        interval=timedelta(milliseconds=settings.refresh_interval_ms),
        max_age=timedelta(milliseconds=settings.max_segment_age_ms),
        change_capture=settings.change_capture,
    )
    meter_provider = segments_meter_provider(job, _gauge_exporter(settings), resource)
    # Registered after the provider's own exit hook, so it runs first: the provider's last collection
    # then finds the job stopped instead of starting a refresh while the interpreter exits.
    atexit.register(job.shutdown, timeout_s=5.0)
    return job, meter_provider


def sink_factories(settings: Settings, resource: Resource, process: ProcessProperties) -> dict[str, Callable[[], Sink]]:
    """The sinks the settings ask for, as factories (the job builds them in the process that delivers):
    OTLP when the gate is open, PostHog with ``POSTHOG_API_KEY``."""
    from .sinks.otlp import OtlpSegmentSink, log_exporter
    from .sinks.posthog import PostHogSink

    factories: dict[str, Callable[[], Sink]] = {}
    key = settings.posthog_api_key
    if key is not None:
        factories["posthog"] = lambda: PostHogSink(key, settings.posthog_host, super_properties=dict(process.attributes))
    if settings.enabled and not exporter_off("logs"):

        def otlp() -> Sink:
            support = SignalSupport("logs")
            return OtlpSegmentSink(log_exporter(settings, **support.exporter_kwargs()), resource, support=support)

        factories["otlp"] = otlp
    return factories


def _gauge_exporter(settings: Settings) -> MetricExporter:
    """``OTEL_METRICS_EXPORTER=none``: the reader still times the refresh, the gauge goes nowhere."""
    from .job.reader import MetricsOff

    if exporter_off("metrics"):
        return MetricsOff()
    support = SignalSupport("metrics")
    return GaugeExporter(otlp_exporter("metrics", settings, **support.exporter_kwargs()), support)
