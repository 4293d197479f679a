"""``configure()``: the one function behind both the code path and ``opentelemetry-instrument``.

With no SDK providers yet, it builds tracer, meter and logger providers with OTLP
exporters (bearer token attached), our span processor and our resource
attributes, through the SDK's own configurator. When the app or another
configurator built them first, it attaches what it can to those providers.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import quote

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from . import config
from .cache import SegmentCache
from .config import Settings
from .context import set_privacy_policy
from .job import RefreshJob, Sink
from .processor import SuperPropertiesSpanProcessor
from .properties import ProcessProperties, detect_process_properties

_logger = logging.getLogger(__name__)

_EXPORTERS = {
    # (signal, protocol): (module, class)
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("logs", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    ("logs", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
}
_OTLP_EXPORTER_NAMES = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_EXPORTER_VARIABLES = {"traces": "OTEL_TRACES_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER", "logs": "OTEL_LOGS_EXPORTER"}
_EXPORTER_NAMES_OPTION = {"traces": "trace_exporter_names", "metrics": "metric_exporter_names", "logs": "log_exporter_names"}


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


def configure(settings: Settings | None = None, *, allow_pii: bool = False, **sdk_options: Any) -> Configured:
    """Set up otel_segments from the environment; idempotent, never raises.

    ``sdk_options`` go to the SDK's configurator (``sampler``, ``id_generator``, ...).
    """
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
            _configured = _configure_enabled(settings, allow_pii, sdk_options)
        except Exception:
            _logger.exception("otel_segments could not set up OpenTelemetry; the app runs without it")
            _configured = Configured(settings)
        return _configured


def _configure_enabled(settings: Settings, allow_pii: bool, sdk_options: dict[str, Any]) -> Configured:
    set_privacy_policy(
        hash_key=settings.user_id_hash_key.reveal().encode() if settings.user_id_hash_key else None,
        allow_pii=allow_pii,
    )
    process = detect_process_properties()
    segments = SegmentCache(settings.cache_size)
    processor = SuperPropertiesSpanProcessor(process, segments, trust_baggage=settings.trust_baggage)
    handle = Configured(settings, processor=processor, segments=segments)
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(processor)
        _warn_if_token_missing(settings)
    else:
        _sanitize_environment()
        # The app's own options are merged with ours, not passed twice (a duplicate keyword would abort set-up).
        options: dict[str, Any] = {
            "span_processors": [processor, *(sdk_options.pop("span_processors", None) or ())],
            "exporter_args_map": {**_exporter_args(settings), **(sdk_options.pop("exporter_args_map", None) or {})},
            "resource_attributes": {**process.attributes, **(sdk_options.pop("resource_attributes", None) or {})},
        }
        for signal in config.SIGNALS:
            if _EXPORTER_NAMES_OPTION[signal] not in sdk_options and not os.environ.get(_EXPORTER_VARIABLES[signal], "").strip():
                # The SDK exports nothing when unset; it maps only names from the variable to a protocol,
                # so name the exporter for the protocol ourselves ("otlp" alone would always be gRPC).
                options[_EXPORTER_NAMES_OPTION[signal]] = [_OTLP_EXPORTER_NAMES[config.protocol(signal)]]
        _SDKConfigurator()._configure(**options, **sdk_options)
        handle.owns_providers = True
    if settings.database_url is not None:
        _start_segments(handle, process)
    return handle


def _start_segments(handle: Configured, process: ProcessProperties) -> None:
    """Build the refresh job, its sinks and its MetricReader; nothing connects until the first cycle."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from .reader import MetricsOff, segments_meter_provider
    from .segments.schema import SchemaError, load_schema

    settings = handle.settings
    try:
        schema = load_schema(settings.schema)
    except SchemaError as error:
        _logger.error("otel_segments: %s=%r: %s; segments are off", config.OTEL_SEGMENTS_SCHEMA, settings.schema, error)
        return
    engines = []
    urls = ((config.OTEL_SEGMENTS_DATABASE_URL, settings.database_url), (config.OTEL_SEGMENTS_STATE_URL, settings.state_url))
    for name, secret in urls:
        if secret is None:
            continue
        try:
            engines.append(_engine(secret.reveal()))
        except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as error:
            # The message may quote the URL, password included: name the variable and the error class only.
            _logger.error("otel_segments: %s is not a usable database URL (%s); segments are off", name, type(error).__name__)
            return
    provider = trace.get_tracer_provider()
    resource = provider.resource if isinstance(provider, TracerProvider) else Resource.create(dict(process.attributes))
    job = RefreshJob(
        engines[0],
        schema,
        state_engine=engines[-1],
        sinks=sink_factories(settings, resource, process),
        cache=handle.segments,
        interval=timedelta(milliseconds=settings.refresh_interval_ms),
        max_age=timedelta(milliseconds=settings.max_segment_age_ms),
    )
    handle.job = job
    metrics_off = os.environ.get(_EXPORTER_VARIABLES["metrics"], "").strip().lower() == "none"
    exporter = MetricsOff() if metrics_off else _otlp_exporter("metrics", settings)
    handle.meter_provider = segments_meter_provider(job, exporter, resource)
    # Registered after the provider's own exit hook, so it runs first: the provider's last collection
    # then finds the job stopped instead of starting a refresh while the interpreter exits.
    atexit.register(job.shutdown, timeout_s=5.0)


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine, make_url

    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2"):
        # libpq settings: a database that is away fails the cycle instead of hanging it, and a peer that
        # vanished mid-query (partition, dead host) is noticed in about a minute, not the kernel's two hours.
        connect_args.update(
            connect_timeout=10,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
            tcp_user_timeout=60_000,
        )
    # pre_ping: a database restarted between cycles costs one reconnect, not a failed cycle.
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def sink_factories(settings: Settings, resource: Resource, process: ProcessProperties) -> dict[str, Callable[[], Sink]]:
    """The sinks the settings ask for, as factories (the job builds them in the process that delivers):
    OTLP when the gate is open, PostHog with ``POSTHOG_API_KEY``."""
    from .sinks.otlp import OtlpSegmentSink, log_exporter
    from .sinks.posthog import PostHogSink

    factories: dict[str, Callable[[], Sink]] = {}
    key = settings.posthog_api_key
    if key is not None:
        factories["posthog"] = lambda: PostHogSink(key, settings.posthog_host, super_properties=dict(process.attributes))
    if settings.enabled:
        factories["otlp"] = lambda: OtlpSegmentSink(log_exporter(settings), resource)
    return factories


def _otlp_exporter(signal: str, settings: Settings) -> Any:
    module, name = _EXPORTERS[(signal, config.protocol(signal))]
    return getattr(importlib.import_module(module), name)(**_exporter_kwargs(signal, settings))


class _SDKConfigurator(_OTelSDKConfigurator):
    """The SDK's configurator, the documented base for a distro's own."""


def _exporter_args(settings: Settings) -> dict[type, dict[str, Any]]:
    args: dict[type, dict[str, Any]] = {}
    for signal in config.SIGNALS:
        module, name = _EXPORTERS[(signal, config.protocol(signal))]
        try:
            exporter = getattr(importlib.import_module(module), name)
        except ImportError:
            _logger.warning("otel_segments: %s is not installed; %s exports use the SDK defaults", module, signal)
            continue
        args[exporter] = _exporter_kwargs(signal, settings)
    return args


def _exporter_kwargs(signal: str, settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"headers": config.otlp_headers(signal, settings.token)}
    endpoint = config.otlp_endpoint(signal, settings)
    if endpoint is not None:
        kwargs["endpoint"] = endpoint
    return kwargs


def _sanitize_environment() -> None:
    """Repair the values the SDK would turn into an exception that stops the app's start-up.

    Header variables are parsed once here (one warning per variable with malformed items) and
    written back clean, so neither our per-signal look-ups nor the SDK's exporters
    warn about the same item again.
    """
    for name in (config.OTEL_EXPORTER_OTLP_HEADERS, *(f"OTEL_EXPORTER_OTLP_{s.upper()}_HEADERS" for s in config.SIGNALS)):
        raw = os.environ.get(name, "")
        if raw.strip():
            headers = config.parse_headers(name, raw)
            os.environ[name] = ",".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in headers.items())
    for signal in config.SIGNALS:
        for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", config.OTEL_EXPORTER_OTLP_PROTOCOL):
            raw = os.environ.get(name, "").strip()
            if raw and raw not in config.PROTOCOLS:
                config.protocol(signal)  # warns
                os.environ[name] = config.DEFAULT_PROTOCOL
        variable = _EXPORTER_VARIABLES[signal]
        raw = os.environ.get(variable, "").strip()
        if not raw or raw.lower() == "none":
            continue
        known = {ep.name for ep in entry_points(group=f"opentelemetry_{signal}_exporter")}
        names = [n.strip() for n in raw.split(",") if n.strip()]
        good = [n for n in names if n in known]
        if good != names:
            fixed = ",".join(good) or "otlp"
            _logger.warning(
                "%s=%r names an exporter that is not installed (known: %s); using %r",
                variable,
                raw[:100],
                ", ".join(sorted(known)),
                fixed,
            )
            os.environ[variable] = fixed


def _warn_if_token_missing(settings: Settings) -> None:
    headers = config.otlp_headers("traces", None)
    if "authorization" not in headers:
        _logger.warning(
            "otel_segments: OpenTelemetry was set up before otel_segments, so OTLP exports do not carry the "
            "bearer token from %s. Under opentelemetry-instrument set OTEL_PYTHON_DISTRO=otel_segments and "
            "OTEL_PYTHON_CONFIGURATOR=otel_segments; in code call otel_segments.configure() first.",
            config.OTEL_EXPORTER_OTLP_TOKEN,
        )


def configured() -> Configured | None:
    return _configured
