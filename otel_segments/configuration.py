"""``configure()``: the one function behind both the code path and ``opentelemetry-instrument``.

With no SDK providers yet, it builds tracer, meter and logger providers with OTLP
exporters (bearer token attached), our span processor and our resource
attributes, through the SDK's own configurator. When the app or another
configurator built them first, it attaches what it can to those providers.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import quote

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from opentelemetry.sdk._configuration import _OTelSDKConfigurator
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from . import config
from .cache import SegmentCache
from .config import Settings
from .context import set_privacy_policy
from .processor import SuperPropertiesSpanProcessor
from .properties import detect_process_properties

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
    job: Any = None
    _shut: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.processor is not None

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        if self.job is not None:
            self.job.shutdown()
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
    processor = SuperPropertiesSpanProcessor(process, segments)
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
    return handle


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
        kwargs: dict[str, Any] = {"headers": config.otlp_headers(signal, settings.token)}
        endpoint = config.otlp_endpoint(signal, settings)
        if endpoint is not None:
            kwargs["endpoint"] = endpoint
        args[exporter] = kwargs
    return args


def _sanitize_environment() -> None:
    """Repair the values the SDK would turn into an exception that stops the app's start-up.

    Header variables are parsed once here (one warning per malformed item) and
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
