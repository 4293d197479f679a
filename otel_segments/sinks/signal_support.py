"""Noticing a backend that takes no data of a signal, so we stop sending it instead of failing forever.

Most trace stores (Jaeger, Tempo, Phoenix) take OTLP traces but answer HTTP
404/405 or gRPC ``UNIMPLEMENTED`` for logs and metrics. The SDK's exporters then
return ``FAILURE`` on every export, with an error log each time, and do not say
why to their caller. We learn the answer through public hooks only:

- OTLP/HTTP: the exporter takes a ``requests.Session``; ours
  (:class:`~otel_segments.sinks.transport.PeerSession`) records each answer, its
  status and a redirect's ``Location`` (both the 1.27 and the 1.45 exporters send
  through it), never follows a redirect and bounds each request in total;
- OTLP/gRPC: the exporter reports the status only in its log records, whose
  arguments carry the ``grpc.StatusCode``; a logging filter on that logger reads
  it for the threads that are exporting for us, and lets the record through.

The first refusal is reported once, naming the variables that fix it; the sink
or the gauge then stays off until the process restarts. Updates stay pending in
the delivery state, so nothing is marked delivered that never arrived.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from ..settings import config
from ..settings.values import safe_url

if TYPE_CHECKING:
    from .transport import Answer

_logger = logging.getLogger(__name__)

#: HTTP answers that mean "no such OTLP path here": the backend does not take this signal.
REFUSING_STATUS = frozenset({404, 405})
_GRPC_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
_WHAT = {"logs": "Per-user segment records are", "metrics": "The app.segments.users gauge is"}


class SignalSupport:
    """Whether the backend refused ``signal`` outright, learnt from one exporter's answers."""

    def __init__(self, signal: str) -> None:
        self.signal = signal
        self.refused: str | None = None  # the answer, e.g. "HTTP 404" or "gRPC UNIMPLEMENTED"
        self._url: str | None = None
        self._in_flight: Answer | None = None  # what the export in flight was answered so far

    @property
    def failing(self) -> bool:
        """An export is in flight and its last attempt failed: the exporter is only backing off and retrying.

        Read from another thread at exit, where such an export gets no grace: the peer was just seen failing, and
        what it carries stays pending (nothing is marked delivered that was not accepted).
        """
        answer = self._in_flight
        return answer is not None and answer.failed

    def exporter_kwargs(self) -> dict[str, Any]:
        """Constructor options for this signal's OTLP exporter: for OTLP/HTTP, our session (see the module's docstring)."""
        if config.protocol(self.signal) != "http/protobuf":
            return {}
        from .transport import PeerSession

        return {"session": PeerSession()}

    @contextmanager
    def watching(self, *, stop_retrying_too_large: bool = False) -> Iterator[Answer]:
        """Around an export: what the peer answered (HTTP through our session, gRPC through the exporter's logs).

        An HTTP 404/405 or a gRPC ``UNIMPLEMENTED`` counts as a refusal of the signal. With
        ``stop_retrying_too_large``, a gRPC ``RESOURCE_EXHAUSTED`` ends the export at once
        (:class:`GrpcTooLargeError` out of ``export()``) instead of the SDK retrying, for up
        to a minute on 1.27, a request the collector will never take.
        """
        from .transport import watch_answers

        ident = threading.get_ident()
        with watch_answers() as answer:
            _GrpcStatusFilter.install().watch(ident, answer, stop_retrying_too_large)
            self._in_flight = answer
            try:
                yield answer
            finally:
                self._in_flight = None
                _GrpcStatusFilter.install().unwatch(ident)
                if answer.status in REFUSING_STATUS:
                    self.refused = f"HTTP {answer.status}"
                    self._url = answer.url
                elif answer.grpc == "UNIMPLEMENTED":
                    self.refused = "gRPC UNIMPLEMENTED"

    def message(self) -> str:
        """The one line a user needs: what answered, what is off now, which variables fix it."""
        upper = self.signal.upper()
        return (
            f"the OTLP {self.signal} endpoint {self._endpoint()} answered {self.refused}: that backend takes no "
            f"{self.signal}. {_WHAT[self.signal]} off until the process restarts "
            f"(nothing is marked delivered); point OTEL_EXPORTER_OTLP_{upper}_ENDPOINT at a collector that takes "
            f"{self.signal}, or set OTEL_{upper}_EXPORTER=none"
        )

    def _endpoint(self) -> str:
        url = self._url or os.environ.get(f"OTEL_EXPORTER_OTLP_{self.signal.upper()}_ENDPOINT", "").strip()
        url = url or os.environ.get(config.OTEL_EXPORTER_OTLP_ENDPOINT, "").strip()
        return safe_url(url) if url else "(SDK default)"


class GrpcTooLargeError(Exception):
    """Raised out of a gRPC exporter's ``export()`` when the collector answered ``RESOURCE_EXHAUSTED``."""


class _GrpcStatusFilter(logging.Filter):
    """Reads the ``grpc.StatusCode`` of the gRPC exporter's records for the threads we watch."""

    _installed: _GrpcStatusFilter | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__()
        self._watched: dict[int, tuple[Answer, bool]] = {}

    @classmethod
    def install(cls) -> _GrpcStatusFilter:
        with cls._lock:
            if cls._installed is None:
                cls._installed = cls()
                # First in line: SDK 1.45 puts a DuplicateFilter on this logger, which drops an error whose
                # template it just saw (the logs exporter's) before a filter added after it would see it.
                logging.getLogger(_GRPC_EXPORTER_LOGGER).filters.insert(0, cls._installed)
            return cls._installed

    def watch(self, ident: int, answer: Answer, stop_too_large: bool) -> None:
        self._watched[ident] = (answer, stop_too_large)

    def unwatch(self, ident: int) -> None:
        self._watched.pop(ident, None)

    def filter(self, record: logging.LogRecord) -> bool:
        watched = self._watched.get(threading.get_ident())
        if watched is None or not isinstance(record.args, tuple):
            return True
        answer, stop_too_large = watched
        for arg in record.args:
            if type(arg).__name__ == "StatusCode" and isinstance(getattr(arg, "name", None), str):
                answer.grpc = arg.name
                if arg.name == "RESOURCE_EXHAUSTED" and stop_too_large:
                    # The one way to stop the SDK's retries through a public hook: this record is logged
                    # by the exporting thread itself, just before it would back off and send again.
                    raise GrpcTooLargeError("the collector answered RESOURCE_EXHAUSTED")
        return True


class GaugeExporter(MetricExporter):
    """The gauge's OTLP metric exporter, switched off for good once the backend refuses metrics."""

    def __init__(self, exporter: MetricExporter, support: SignalSupport) -> None:
        super().__init__()
        self._exporter = exporter
        self._support = support
        self._off = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        if self._off:
            return MetricExportResult.FAILURE
        with self._support.watching():
            result = self._exporter.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        if result is not MetricExportResult.SUCCESS and self._support.refused:
            self._off = True
            _logger.warning("otel_segments: %s", self._support.message())
        return result

    @property
    def failing(self) -> bool:
        """The export in flight was answered with a failure and is being retried (see :attr:`SignalSupport.failing`)."""
        return self._support.failing

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._off or self._exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs)
