"""Every difference between the OpenTelemetry releases we support, in one place.

The package declares ``opentelemetry-sdk>=1.27.0,<2`` (contrib ``>=0.48b0,<1``), and
apps bring whichever release they pinned. Where an SDK API differs inside that
range, the difference is detected here, once, at import, *by feature* (does this
name exist, does this function take this keyword), never by comparing version
strings; each check names the release that changed it. The rest of the package
calls what is here and never the moved names.

Differences, oldest first:

- **1.30.0**: ``_initialize_components`` sets up a ``LoggerProvider`` whatever the
  environment says (its ``setup_logging_handler`` option only adds the bridge from
  Python ``logging``). Before, it set up logs only with
  ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true``, which also sends every
  Python log record: :func:`initialize_components` then builds the logger provider
  itself, without the bridge, as later releases do.
- **1.35.0**: ``_initialize_components`` takes ``exporter_args_map`` (our bearer
  token and repaired endpoints). Before, the exporters it builds take no argument
  and read only ``OTEL_EXPORTER_OTLP_<SIGNAL>_*`` variables: the same values are put
  in those variables while the exporters are built, then the environment is restored.
- **1.35.0**: log records have an ``event_name`` (API, SDK, OTLP encoder and proto)
  and a ``context`` in place of ``trace_id``/``span_id``/``trace_flags``. Before, the
  event name goes out as the ``event.name`` attribute, as that era's Events API did,
  and as the body (the OTLP encoders before 1.30.0 cannot encode a record without one).
- **1.39.0**: the log export interface was renamed: ``LogExporter``,
  ``LogExportResult`` and ``LogData`` (an SDK ``LogRecord`` carrying its resource)
  became ``LogRecordExporter``, ``LogRecordExportResult`` and ``ReadableLogRecord``.
- **1.40.0**: ``_initialize_components`` takes ``span_processors``. Before, ours is
  added to the tracer provider right after the SDK built it.

Not a difference: ``opentelemetry.instrumentation.utils.suppress_instrumentation()``
exists in every supported contrib release (0.48b0 included); import it from there.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import quote

from opentelemetry import trace
from opentelemetry._logs import LogRecord as _ApiLogRecord
from opentelemetry._logs import SeverityNumber, get_logger_provider, set_logger_provider
from opentelemetry.context import Context
from opentelemetry.sdk import _logs as _sdk_logs
from opentelemetry.sdk._configuration import _BaseConfigurator, _initialize_components
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs import export as _sdk_logs_export
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

_logger = logging.getLogger(__name__)

# 1.39.0 renamed the log export interface (LogExporter -> LogRecordExporter, LogExportResult -> LogRecordExportResult,
# LogData -> ReadableLogRecord).
LogRecordExporter: type = getattr(_sdk_logs_export, "LogRecordExporter", None) or _sdk_logs_export.LogExporter
LogRecordExportResult: Any = getattr(_sdk_logs_export, "LogRecordExportResult", None) or _sdk_logs_export.LogExportResult
_READABLE_LOG_RECORD: Any = getattr(_sdk_logs, "ReadableLogRecord", None)

# 1.35.0 added event_name (and context) to log records.
LOG_RECORDS_HAVE_EVENT_NAME = "event_name" in inspect.signature(_ApiLogRecord.__init__).parameters
#: Where the event name goes on releases before 1.35.0 (that era's Events API set this attribute).
EVENT_NAME_ATTRIBUTE = "event.name"

_INITIALIZE_PARAMETERS = inspect.signature(_initialize_components).parameters
# 1.40.0 added span_processors; 1.35.0 added exporter_args_map; 1.30.0 added setup_logging_handler, when the
# logger provider stopped depending on the logging bridge.
SDK_TAKES_SPAN_PROCESSORS = "span_processors" in _INITIALIZE_PARAMETERS
SDK_TAKES_EXPORTER_ARGS = "exporter_args_map" in _INITIALIZE_PARAMETERS
SDK_ALWAYS_SETS_UP_LOGS = "setup_logging_handler" in _INITIALIZE_PARAMETERS

#: Exporter arguments that releases before 1.35.0 can only take from a variable, ``OTEL_EXPORTER_OTLP_<SIGNAL>_<NAME>``.
_ARGUMENT_VARIABLES = {"endpoint": "ENDPOINT", "headers": "HEADERS", "timeout": "TIMEOUT", "compression": "COMPRESSION"}
_LOGS_EXPORTER = "OTEL_LOGS_EXPORTER"

# A context whose span is the invalid one: a record made in it belongs to no trace. (An empty Context() would not
# do: the API's LogRecord takes an empty context for "none given" and reads the current one instead.)
_NO_TRACE = trace.set_span_in_context(trace.INVALID_SPAN, Context())


def log_record_for_export(
    *,
    event_name: str,
    resource: Resource,
    instrumentation_scope: InstrumentationScope,
    severity_number: SeverityNumber = SeverityNumber.INFO,
    timestamp_ns: int | None = None,
) -> Any:
    """A log record, belonging to no trace, in the form this release's ``LogRecordExporter.export()`` takes."""
    now = time.time_ns() if timestamp_ns is None else timestamp_ns
    common: dict[str, Any] = {
        "timestamp": now,
        "observed_timestamp": now,
        "severity_number": severity_number,
        "severity_text": severity_number.name,
    }
    if _READABLE_LOG_RECORD is not None:  # 1.39.0 and later
        record = _ApiLogRecord(**common, context=_NO_TRACE, event_name=event_name)
        return _READABLE_LOG_RECORD(log_record=record, resource=resource, instrumentation_scope=instrumentation_scope)
    if LOG_RECORDS_HAVE_EVENT_NAME:  # 1.35.0 to 1.38.x: an SDK LogRecord carries its resource, LogData its scope
        sdk_record = _sdk_logs.LogRecord(**common, context=_NO_TRACE, resource=resource, event_name=event_name)
    else:  # before 1.35.0; the OTLP encoders before 1.30.0 also fail on a record without a body: the name is its body
        sdk_record = _sdk_logs.LogRecord(
            **common,
            trace_id=0,
            span_id=0,
            trace_flags=trace.TraceFlags(trace.TraceFlags.DEFAULT),
            resource=resource,
            body=event_name,
            attributes={EVENT_NAME_ATTRIBUTE: event_name},
        )
    return _sdk_logs.LogData(sdk_record, instrumentation_scope)


def initialize_components(
    configurator: _BaseConfigurator,
    *,
    span_processors: Sequence[SpanProcessor],
    exporter_args_map: Mapping[type, Mapping[str, Any]],
    **options: Any,
) -> None:
    """Have the SDK's ``configurator`` build the providers with our processors and exporter arguments, on any release."""
    if SDK_TAKES_SPAN_PROCESSORS:
        options["span_processors"] = list(span_processors)
    if SDK_TAKES_EXPORTER_ARGS:
        options["exporter_args_map"] = dict(exporter_args_map)
    with contextlib.nullcontext() if SDK_TAKES_EXPORTER_ARGS else _exporter_variables(exporter_args_map):
        configurator._configure(**options)
    if not SDK_ALWAYS_SETS_UP_LOGS:
        _set_up_logger_provider(options.get("log_exporter_names") or (), exporter_args_map)
    if not SDK_TAKES_SPAN_PROCESSORS:
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            for processor in span_processors:
                provider.add_span_processor(processor)


def _signal(exporter: type) -> str | None:
    for base, signal in ((SpanExporter, "TRACES"), (MetricExporter, "METRICS"), (LogRecordExporter, "LOGS")):
        if isinstance(exporter, type) and issubclass(exporter, base):
            return signal
    return None


@contextlib.contextmanager
def _exporter_variables(exporter_args_map: Mapping[type, Mapping[str, Any]]) -> Iterator[None]:
    """``exporter_args_map`` as ``OTEL_EXPORTER_OTLP_<SIGNAL>_*`` variables while the block runs (releases before 1.35.0)."""
    saved: dict[str, str | None] = {}
    try:
        for exporter, arguments in exporter_args_map.items():
            signal = _signal(exporter)
            for name, value in arguments.items():
                suffix = _ARGUMENT_VARIABLES.get(name)
                if signal is None or suffix is None:
                    _logger.warning(
                        "otel_segments: this OpenTelemetry SDK cannot pass %r to %s (it takes exporter arguments "
                        "only from OTEL_EXPORTER_OTLP_* variables before 1.35.0); ignored",
                        name,
                        getattr(exporter, "__name__", exporter),
                    )
                    continue
                variable = f"OTEL_EXPORTER_OTLP_{signal}_{suffix}"
                saved.setdefault(variable, os.environ.get(variable))
                if isinstance(value, Mapping):
                    value = ",".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in value.items())
                os.environ[variable] = str(getattr(value, "value", value))  # Compression is an Enum
        yield
    finally:
        for variable, old in saved.items():
            if old is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = old


def _set_up_logger_provider(names: Sequence[str], exporter_args_map: Mapping[type, Mapping[str, Any]]) -> None:
    """What 1.30.0 and later do for logs: a LoggerProvider with the named exporters, on the traces' resource.

    Without the bridge from Python ``logging``: an app that wants its log lines exported
    says so with ``OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED=true``, and then the
    SDK of these releases has set the provider up already.
    """
    if isinstance(get_logger_provider(), LoggerProvider):
        return
    wanted = [*names, *(n.strip() for n in os.environ.get(_LOGS_EXPORTER, "").split(",") if n.strip())]
    if not wanted or any(n.lower() == "none" for n in wanted):
        return
    available = {ep.name: ep for ep in entry_points(group="opentelemetry_logs_exporter")}
    tracer_provider = trace.get_tracer_provider()
    resource = tracer_provider.resource if isinstance(tracer_provider, TracerProvider) else Resource.create()
    provider = LoggerProvider(resource=resource)
    for name in dict.fromkeys(wanted):
        if name not in available:
            _logger.warning("otel_segments: no log exporter named %r is installed; logs go nowhere through it", name)
            continue
        exporter = available[name].load()
        provider.add_log_record_processor(
            _sdk_logs_export.BatchLogRecordProcessor(exporter(**exporter_args_map.get(exporter, {})))
        )
    set_logger_provider(provider)
