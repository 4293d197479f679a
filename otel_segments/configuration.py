"""``configure()``: the one function behind both the code path and ``opentelemetry-instrument``.

With no SDK providers yet, it builds tracer, meter and logger providers with OTLP
exporters (bearer token attached), our span processor and our resource
attributes, through the SDK's own configurator. When the app or another
configurator built them first, it attaches what it can to those providers.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from . import compat, config
from .cache import SegmentCache, span_property_selection
from .config import Settings
from .context import set_privacy_policy
from .exporters import (
    EXPORTER_NAMES_OPTION,
    EXPORTER_VARIABLES,
    OTLP_EXPORTER_NAMES,
    exporter_args,
    report_token_missing,
    sanitize_environment,
)
from .job import RefreshJob
from .pipeline import start_segments
from .processor import SuperPropertiesSpanProcessor
from .properties import detect_process_properties

_logger = logging.getLogger(__name__)


@dataclass
class Configured:
    """What :func:`configure` set up; ``shutdown()`` flushes and stops what we own."""

    settings: Settings
    processor: SuperPropertiesSpanProcessor | None = None
    segments: SegmentCache | None = None
    owns_providers: bool = False
    job: RefreshJob | None = None
    meter_provider: MeterProvider | None = None  # the refresh job's own, see otel_segments.reader
    _shut: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.processor is not None

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        if self.job is not None:
            self.job.shutdown()  # first: the meter provider's last collection must not start a refresh
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        if self.job is not None:
            for engine in {id(e): e for e in (self.job.app_engine, self.job.state_engine)}.values():
                engine.dispose()
        if self.owns_providers:
            for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(), get_logger_provider()):
                if isinstance(provider, TracerProvider | MeterProvider | LoggerProvider):
                    provider.shutdown()


_lock = threading.Lock()
_configured: Configured | None = None


def configure(
    settings: Settings | None = None,
    *,
    allow_pii: bool = False,
    tracer_provider: TracerProvider | None = None,
    **sdk_options: Any,
) -> Configured:
    """Set up otel_segments from the environment; idempotent, never raises.

    When the app set up OpenTelemetry first (the global TracerProvider, or
    ``tracer_provider`` when the app keeps its own out of the global), our span
    processor joins that provider and the refresh job starts; the app's exporters
    stay the app's (build them with ``headers=otel_segments.otlp_headers()`` to send
    the bearer token). Otherwise providers are built with ``sdk_options`` passed to
    the SDK's configurator (``sampler``, ``id_generator``, ...).
    """
    return _configure(settings, allow_pii, tracer_provider, sdk_options, instrumented=False)


def configure_instrumented(**sdk_options: Any) -> Configured:
    """:func:`configure` from ``opentelemetry-instrument``'s hooks, where the advice for a missing token differs."""
    return _configure(None, False, None, sdk_options, instrumented=True)


def _configure(
    settings: Settings | None,
    allow_pii: bool,
    tracer_provider: TracerProvider | None,
    sdk_options: dict[str, Any],
    *,
    instrumented: bool,
) -> Configured:
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        settings = settings or Settings.from_env()
        reason = settings.disabled_reason
        if reason is not None:
            _logger.info("otel_segments is off: %s", reason)
            _configured = Configured(settings)
            return _configured
        try:
            _configured = _configure_enabled(settings, allow_pii, tracer_provider, sdk_options, instrumented)
        except Exception:
            _logger.exception("otel_segments could not set up OpenTelemetry; the app runs without it")
            _configured = Configured(settings)
        return _configured


def _configure_enabled(
    settings: Settings,
    allow_pii: bool,
    tracer_provider: TracerProvider | None,
    sdk_options: dict[str, Any],
    instrumented: bool,
) -> Configured:
    set_privacy_policy(
        hash_key=settings.user_id_hash_key.reveal().encode() if settings.user_id_hash_key else None,
        allow_pii=allow_pii,
    )
    process = detect_process_properties()
    segments = SegmentCache(settings.cache_size, span_property_selection(settings.span_properties))
    processor = SuperPropertiesSpanProcessor(process, segments, trust_baggage=settings.trust_baggage)
    handle = Configured(settings, processor=processor, segments=segments)
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(processor)
        report_token_missing(instrumented)
    else:
        sanitize_environment()
        # The app's own options are merged with ours, not passed twice (a duplicate keyword would abort set-up).
        options: dict[str, Any] = {
            "span_processors": [processor, *(sdk_options.pop("span_processors", None) or ())],
            "exporter_args_map": {**exporter_args(settings), **(sdk_options.pop("exporter_args_map", None) or {})},
            "resource_attributes": {**process.attributes, **(sdk_options.pop("resource_attributes", None) or {})},
        }
        for signal in config.SIGNALS:
            if EXPORTER_NAMES_OPTION[signal] not in sdk_options and not os.environ.get(EXPORTER_VARIABLES[signal], "").strip():
                # The SDK exports nothing when unset; it maps only names from the variable to a protocol,
                # so name the exporter for the protocol ourselves ("otlp" alone would always be gRPC).
                options[EXPORTER_NAMES_OPTION[signal]] = [OTLP_EXPORTER_NAMES[config.protocol(signal)]]
        compat.initialize_components(_SDKConfigurator(), **options, **sdk_options)
        handle.owns_providers = True
    if settings.database_url is not None:
        started = start_segments(settings, process, segments, provider)
        if started is not None:
            handle.job, handle.meter_provider = started
    return handle


class _SDKConfigurator(_OTelSDKConfigurator):
    """The SDK's configurator, the documented base for a distro's own."""


def configured() -> Configured | None:
    return _configured
