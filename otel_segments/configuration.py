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
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from .pipeline import start_segments
from .runtime import compat
from .runtime.exporters import (
    EXPORTER_NAMES_OPTION,
    EXPORTER_VARIABLES,
    OTLP_EXPORTER_NAMES,
    exporter_args,
    exporter_off,
    report_token_missing,
    sanitize_environment,
)
from .segments.span_properties import span_property_selection
from .settings import config
from .settings.config import Settings
from .spans.cache import SegmentCache
from .spans.privacy import set_privacy_policy
from .spans.processor import SuperPropertiesSpanProcessor
from .spans.properties import detect_process_properties

if TYPE_CHECKING:  # the job (and SQLAlchemy under it) is imported only when a database is configured
    from .job.refresh_job import RefreshJob

_logger = logging.getLogger(__name__)


@dataclass
class Configured:
    """What :func:`configure` set up; ``shutdown()`` flushes and stops what we own."""

    settings: Settings
    processor: SuperPropertiesSpanProcessor | None = None
    segments: SegmentCache | None = None
    owns_providers: bool = False
    job: RefreshJob | None = None
    meter_provider: MeterProvider | None = None  # the refresh job's own, see otel_segments.job.reader
    _shut: bool = field(default=False, repr=False)
    _request: _Request | None = field(default=None, repr=False)

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


@dataclass
class _Request:
    """What the first :func:`configure` call asked for, to tell what a later call would change."""

    settings: Settings
    environment: dict[str, str] | None  # the settings' variables when read from the environment, else None
    allow_pii: bool
    tracer_provider: TracerProvider | None
    sdk_options: dict[str, Any]
    reported: set[tuple[str, ...]] = field(default_factory=set)

    def ignored(
        self, settings: Settings | None, allow_pii: bool, tracer_provider: TracerProvider | None, sdk_options: dict[str, Any]
    ) -> list[str]:
        """What a later call asks for differently, by name only (a setting's value may be a secret)."""
        if settings is None and self.environment is not None and _environment() != self.environment:
            settings = Settings.from_env()
        names = [] if settings is None else _differences(settings, self.settings)
        if allow_pii != self.allow_pii:
            names.append("allow_pii")
        if tracer_provider is not None and tracer_provider is not self.tracer_provider:
            names.append("tracer_provider")
        names += sorted(k for k, v in sdk_options.items() if k not in self.sdk_options or self.sdk_options[k] is not v)
        return names


def _differences(settings: Settings, before: Settings) -> list[str]:
    return [f.name for f in fields(Settings) if getattr(settings, f.name) != getattr(before, f.name)]


def _environment() -> dict[str, str]:
    return {name: os.environ.get(name, "") for name in config.SETTINGS_VARIABLES}


_lock = threading.Lock()
_configured: Configured | None = None


def configure(
    settings: Settings | None = None,
    *,
    allow_pii: bool = False,
    tracer_provider: TracerProvider | None = None,
    **sdk_options: Any,
) -> Configured:
    """Set up otel_segments from the environment; never raises.

    A second call returns the same handle; when it asks for something else (other settings, ``allow_pii``,
    a provider, SDK options) it warns once, naming what it ignored. After ``handle.shutdown()`` a call sets
    up anew: a new span processor and refresh job (when the first call built the global providers, they stay
    shut down, as OpenTelemetry lets none replace them: that call warns that the app's spans are not exported).

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
        if _configured is not None and not _configured._shut:
            _report_ignored(_configured, settings, allow_pii, tracer_provider, sdk_options)
            return _configured
        revived = _configured is not None and _configured.owns_providers
        request = _Request(
            settings or Settings.from_env(),
            None if settings is not None else _environment(),
            allow_pii,
            tracer_provider,
            dict(sdk_options),
        )
        settings = request.settings
        reason = settings.disabled_reason
        if reason is not None:
            # At WARNING when the operator meant it on: under opentelemetry-instrument logging is not configured
            # yet, and only WARNING and above reach stderr then. A plain unset environment stays quiet.
            _logger.log(logging.WARNING if settings.meant_on else logging.INFO, "otel_segments is off: %s", reason)
            _configured = Configured(settings, _request=request)
            return _configured
        try:
            _configured = _configure_enabled(settings, allow_pii, tracer_provider, sdk_options, instrumented, revived)
        except Exception:
            _logger.exception("otel_segments could not set up OpenTelemetry; the app runs without it")
            _configured = Configured(settings)
        _configured._request = request
        return _configured


def _report_ignored(
    handle: Configured,
    settings: Settings | None,
    allow_pii: bool,
    tracer_provider: TracerProvider | None,
    sdk_options: dict[str, Any],
) -> None:
    """A later call changes nothing: say once what it asked for in vain (raw ids keep going out, say)."""
    request = handle._request
    if request is None:
        return
    ignored = tuple(request.ignored(settings, allow_pii, tracer_provider, sdk_options))
    if ignored and ignored not in request.reported:
        request.reported.add(ignored)
        _logger.warning(
            "otel_segments: configure() was already called; this call's %s %s ignored (call handle.shutdown() "
            "first to set up anew)",
            ", ".join(ignored),
            "is" if len(ignored) == 1 else "are",
        )


def _configure_enabled(
    settings: Settings,
    allow_pii: bool,
    tracer_provider: TracerProvider | None,
    sdk_options: dict[str, Any],
    instrumented: bool,
    revived: bool = False,
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
        if revived and tracer_provider is None:
            _logger.warning(
                "otel_segments: set up anew after shutdown(), but the providers the first configure() built were shut "
                "down with it and OpenTelemetry lets no other take the global one's place: the app's spans are not "
                "exported until the process restarts (the refresh job and its exports run again)"
            )
        else:
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
                # so name the exporter for the protocol ourselves ("otlp" alone would always be gRPC),
                # none when that protocol's exporter is not installed (exporter_off said so, once).
                off = exporter_off(signal)
                options[EXPORTER_NAMES_OPTION[signal]] = [] if off else [OTLP_EXPORTER_NAMES[config.protocol(signal)]]
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
