"""OTLP sink: each user's segment as one log record, ``event_name="app.user.segment"``, with the user as its Resource.

The Resource of each record is the service's resource plus ``user.id`` and
``app.user.<P>`` for every ``$set``/``$set_once`` property, so a collector can
route, filter and index users as entities (the OTLP encoder groups records by
Resource: one ``ResourceLogs`` per user is valid OTLP).

Records are handed straight to the OTLP log exporter's ``export()``, one call per
batch, instead of a ``LoggerProvider``: its batch processor exports in the
background and never tells the caller whether the collector took the data, and
``deliver`` must know. ``export()`` blocks (retrying transient errors within the
exporter's own timeout) and returns ``SUCCESS`` or ``FAILURE``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import date
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .. import config
from ..compat import LogRecordExporter, LogRecordExportResult, log_record_for_export
from ..config import Settings
from ..context import USER_ID, USER_PREFIX, attribute_value, is_pii_key, pii_allowed, pseudonymize
from ..segments import UserSegment
from ..signal_support import SignalSupport
from . import DeliveryError, SinkUnsupportedError

_logger = logging.getLogger(__name__)

EVENT_NAME = "app.user.segment"
DEFAULT_BATCH_SIZE = 512  # the SDK's BatchLogRecordProcessor default export batch
_SCOPE = InstrumentationScope("otel_segments")
_EXPORTERS = {
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    "http/protobuf": ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
}


def log_exporter(settings: Settings, environ: Mapping[str, str] | None = None, **kwargs: Any) -> LogRecordExporter:
    """The standard OTLP log exporter for ``settings``: protocol and endpoint from the environment, our bearer token.

    Extra ``kwargs`` (``timeout``, ``compression``...) go to the exporter.
    """
    module, name = _EXPORTERS[config.protocol("logs", environ)]
    exporter_class = getattr(importlib.import_module(module), name)
    kwargs.setdefault("headers", config.otlp_headers("logs", settings.token, environ))
    endpoint = config.otlp_endpoint("logs", settings, environ)
    if endpoint is not None:
        kwargs.setdefault("endpoint", endpoint)
    return exporter_class(**kwargs)


class OtlpSegmentSink:
    """Delivers :class:`UserSegment` batches as OTLP log records and knows whether the collector took them.

    ``exporter`` is a ``LogRecordExporter`` (build the standard one, with the token,
    with :func:`log_exporter`); ``base_resource`` is the service's Resource
    (``service.name``, ``deployment.environment.name``...). ``user.id`` goes out
    through :func:`otel_segments.context.pseudonymize`, so a configured hash key
    applies here as on spans. With ``support`` watching the exporter, a backend that
    takes no logs raises :class:`~otel_segments.sinks.SinkUnsupportedError`.
    """

    def __init__(
        self,
        exporter: LogRecordExporter,
        base_resource: Resource | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        support: SignalSupport | None = None,
    ) -> None:
        if not hasattr(exporter, "export"):
            raise TypeError(
                "OtlpSegmentSink needs a LogRecordExporter: a LoggerProvider exports in the background "
                "and cannot report whether a record arrived"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._exporter = exporter
        self._base = base_resource if base_resource is not None else Resource.get_empty()
        self.batch_size = batch_size
        self._support = support
        self._lock = threading.Lock()
        self._shut = False

    def __repr__(self) -> str:
        return f"OtlpSegmentSink(exporter={type(self._exporter).__name__}, batch_size={self.batch_size})"

    def deliver(self, batch: Sequence[UserSegment]) -> None:
        """Export every user's record; return only when the exporter reported ``SUCCESS`` for all of them."""
        with self._lock:
            if self._shut:
                raise DeliveryError("the OTLP segment sink is shut down; nothing was sent")
            try:
                records = [self.record(segment) for segment in batch]
            except Exception as error:  # a bad value fails the delivery, not the job
                raise DeliveryError(f"could not build the user records ({type(error).__name__})") from error
            for start in range(0, len(records), self.batch_size):
                chunk = records[start : start + self.batch_size]
                try:
                    with self._support.watching() if self._support is not None else nullcontext():
                        result = self._exporter.export(chunk)
                except Exception as error:  # noqa: BLE001 - an exporter bug is a failed delivery, not a crash
                    raise DeliveryError(
                        f"the OTLP log exporter failed on a batch of {len(chunk)} user records "
                        f"({type(error).__name__}); {start} of {len(records)} were exported before it"
                    ) from None
                if result is not LogRecordExportResult.SUCCESS:
                    if self._support is not None and self._support.refused:
                        raise SinkUnsupportedError(self._support.message())
                    raise DeliveryError(
                        f"the OTLP log exporter could not deliver a batch of {len(chunk)} user records "
                        f"(collector unreachable or refused them; the exporter logged why); "
                        f"{start} of {len(records)} were exported before it"
                    )

    def record(self, segment: UserSegment) -> Any:
        """One user's log record: event ``app.user.segment``, the user's properties on its Resource, in no trace.

        Its type is the one this SDK release's exporters take (see :mod:`otel_segments.compat`).
        """
        resource = self._base.merge(Resource(user_resource_attributes(segment)))
        return log_record_for_export(event_name=EVENT_NAME, resource=resource, instrumentation_scope=_SCOPE)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Nothing is pending here (``deliver`` is synchronous); shut the exporter down."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
        try:
            self._exporter.shutdown()
        except Exception:
            _logger.warning("otel_segments: the OTLP log exporter did not shut down cleanly", exc_info=True)


def user_resource_attributes(segment: UserSegment) -> dict[str, Any]:
    """``user.id`` plus ``app.user.<P>`` for each property; ``$set`` wins over ``$set_once``; invalid values left out."""
    attributes: dict[str, Any] = {USER_ID: pseudonymize(str(segment.distinct_id))}
    for values in (segment.set_once, segment.set):
        for key, value in values.items():
            if is_pii_key(key) and not pii_allowed():
                continue
            clean = attribute_value(key, value.isoformat() if isinstance(value, date) else value)
            if clean is not None:
                attributes[USER_PREFIX + key] = clean
    return attributes
