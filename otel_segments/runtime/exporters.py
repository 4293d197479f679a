"""OTLP exporters with our bearer token, and the repair of variables the SDK would abort on.

Which exporter class serves a signal depends on its protocol; both ``configure()``
(through the SDK's configurator) and the refresh job's own exports build them here.
Only the configured protocol's exporter is imported: OTLP/HTTP is a dependency, OTLP/gRPC
the ``grpc`` extra (grpcio is a large native wheel most apps never load), so a protocol
whose exporter is missing turns that signal's OTLP exports off with one line naming the extra.
"""

from __future__ import annotations

import importlib
import logging
import os
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import quote

from ..settings import config
from ..settings.config import Settings

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
PROTOCOL_EXTRAS = {"grpc": "otel-segments[grpc]"}  # what installs a protocol's exporter, when it is not a dependency
EXPORTER_VARIABLES = {"traces": "OTEL_TRACES_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER", "logs": "OTEL_LOGS_EXPORTER"}
EXPORTER_NAMES_OPTION = {"traces": "trace_exporter_names", "metrics": "metric_exporter_names", "logs": "log_exporter_names"}


_missing_reported: set[str] = set()


def exporter_class(signal: str) -> type | None:
    """The OTLP exporter class for ``signal``'s protocol, or None when its package is not installed (said once)."""
    chosen = config.protocol(signal)
    module, name = EXPORTERS[(signal, chosen)]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as error:
        if chosen not in _missing_reported:
            _missing_reported.add(chosen)
            per_signal = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
            variable = per_signal if os.environ.get(per_signal, "").strip() else config.OTEL_EXPORTER_OTLP_PROTOCOL
            extra = PROTOCOL_EXTRAS.get(chosen)
            _logger.warning(
                "otel_segments: %s=%s asks for OTLP/%s, whose exporter is not installed (%s): %s; until then "
                "nothing is exported over OTLP/%s",
                variable,
                chosen,
                chosen,
                error,
                f"pip install '{extra}'" if extra else "reinstall otel-segments",
                chosen,
            )
        return None


def otlp_exporter(signal: str, settings: Settings, **kwargs: Any) -> Any:
    """The standard OTLP exporter for ``signal`` with our token; ``kwargs`` go to its constructor.

    Ask :func:`exporter_off` first: when the protocol's exporter is not installed this raises ImportError.
    """
    exporter = exporter_class(signal)
    if exporter is None:
        raise ImportError(f"the OTLP/{config.protocol(signal)} exporter for {signal} is not installed")
    return exporter(**_exporter_kwargs(signal, settings), **kwargs)


def exporter_off(signal: str) -> bool:
    """No OTLP export of ``signal``, ours included: ``OTEL_<SIGNAL>_EXPORTER=none``, or its protocol is not installed."""
    return os.environ.get(EXPORTER_VARIABLES[signal], "").strip().lower() == "none" or exporter_class(signal) is None


def exporter_args(settings: Settings) -> dict[type, dict[str, Any]]:
    args: dict[type, dict[str, Any]] = {}
    for signal in config.SIGNALS:
        exporter = exporter_class(signal)
        if exporter is not None:
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
        # "otlp" is the SDK's alias for the protocol's exporter, but it reads gRPC when no protocol variable is
        # set (our default is HTTP): name the exporter itself, or none when its protocol is not installed.
        otlp = [] if exporter_class(signal) is None else [OTLP_EXPORTER_NAMES[config.protocol(signal)]]
        names = [n.strip() for n in raw.split(",") if n.strip()]
        resolved = [m for n in names for m in (otlp if n == "otlp" else [n])]
        good = [n for n in resolved if n in known]
        if good != resolved:
            good = good or otlp
            _logger.warning(
                "%s=%r names an exporter that is not installed (known: %s); using %r",
                variable,
                raw[:100],
                ", ".join(sorted(known)),
                ",".join(good) or "none",
            )
        if good != names:
            os.environ[variable] = ",".join(good) or "none"


def otlp_headers(signal: str = "traces") -> dict[str, str]:
    """Headers for an OTLP exporter the app builds itself: its ``OTEL_EXPORTER_OTLP_*HEADERS`` plus our bearer token.

    ``OTLPSpanExporter(headers=otel_segments.otlp_headers())``: a collector with bearer-token
    auth rejects exports without it. ``signal`` is ``traces``, ``metrics`` or ``logs``.
    """
    return config.otlp_headers(signal, Settings.from_env().token)


def report_token_missing(instrumented: bool) -> None:
    """OpenTelemetry was set up before us: say how the app's own exports get the token, where they may lack it."""
    if "authorization" in config.otlp_headers("traces", None):
        return
    if instrumented:
        # Another configurator built the exporters from the environment, which has no authorization header.
        _logger.warning(
            "otel_segments: another configurator set up OpenTelemetry, so the app's OTLP exports do not carry the "
            "bearer token from %s (a collector with bearer-token auth rejects them): set "
            "OTEL_PYTHON_DISTRO=otel_segments and OTEL_PYTHON_CONFIGURATOR=otel_segments, or "
            "OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%%20<token>",
            config.OTEL_EXPORTER_OTLP_TOKEN,
        )
    else:
        # In code the app may have passed headers to its exporters, which we cannot see: no warning.
        _logger.info(
            "otel_segments: joined the app's TracerProvider; the app's OTLP exporters carry the bearer token only if "
            "built with headers=otel_segments.otlp_headers() or OTEL_EXPORTER_OTLP_HEADERS sets authorization"
        )
