"""OTLP exporters with our bearer token, and the repair of variables the SDK would abort on.

Which exporter class serves a signal depends on its protocol; both ``configure()``
(through the SDK's configurator) and the refresh job's own exports build them here.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import quote

from . import config
from .config import Settings

_logger = logging.getLogger(__name__)

EXPORTERS = {
    # (signal, protocol): (module, class)
    ("traces", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("traces", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("metrics", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("metrics", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("logs", "grpc"): ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    ("logs", "http/protobuf"): ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
}
OTLP_EXPORTER_NAMES = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
EXPORTER_VARIABLES = {"traces": "OTEL_TRACES_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER", "logs": "OTEL_LOGS_EXPORTER"}
EXPORTER_NAMES_OPTION = {"traces": "trace_exporter_names", "metrics": "metric_exporter_names", "logs": "log_exporter_names"}


def otlp_exporter(signal: str, settings: Settings, **kwargs: Any) -> Any:
    """The standard OTLP exporter for ``signal`` with our token; ``kwargs`` go to its constructor."""
    module, name = EXPORTERS[(signal, config.protocol(signal))]
    return getattr(importlib.import_module(module), name)(**_exporter_kwargs(signal, settings), **kwargs)


def exporter_off(signal: str) -> bool:
    """``OTEL_<SIGNAL>_EXPORTER=none``: the user wants none of this signal, ours included."""
    return os.environ.get(EXPORTER_VARIABLES[signal], "").strip().lower() == "none"


def exporter_args(settings: Settings) -> dict[type, dict[str, Any]]:
    args: dict[type, dict[str, Any]] = {}
    for signal in config.SIGNALS:
        module, name = EXPORTERS[(signal, config.protocol(signal))]
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


def sanitize_environment() -> None:
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
        variable = EXPORTER_VARIABLES[signal]
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


def warn_if_token_missing(settings: Settings) -> None:
    headers = config.otlp_headers("traces", None)
    if "authorization" not in headers:
        _logger.warning(
            "otel_segments: OpenTelemetry was set up before otel_segments, so OTLP exports do not carry the "
            "bearer token from %s. Under opentelemetry-instrument set OTEL_PYTHON_DISTRO=otel_segments and "
            "OTEL_PYTHON_CONFIGURATOR=otel_segments; in code call otel_segments.configure() first.",
            config.OTEL_EXPORTER_OTLP_TOKEN,
        )
