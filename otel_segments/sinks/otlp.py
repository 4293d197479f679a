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

The SDK's verdict is not the last word: its HTTP exporters count any status below
400 as success, so a 3xx (an http-to-https ingress) would be "exported" while no
record arrived anywhere. The exporter posts through our session
(:class:`~otel_segments.sinks.transport.PeerSession`: never redirected, a total
deadline per request), which records each answer, and a batch counts only on a
2xx (HTTP) or ``OK`` (gRPC). A 413 or ``RESOURCE_EXHAUSTED`` splits the batch, down
to one user, who is then refused for good (see :mod:`otel_segments.sinks`).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from ..runtime.compat import LogRecordExporter, LogRecordExportResult, log_record_for_export
from ..runtime.exporters import EXPORTERS
from ..segments import UserSegment
from ..settings import config
from ..settings.config import Settings
from ..spans.context import USER_ID, USER_PREFIX, attribute_value
from ..spans.privacy import is_pii_key, pii_allowed, pseudonymize
from . import DeliveryError, Refusal, SinkUnsupportedError
from .signal_support import GrpcTooLargeError, SignalSupport
from .transport import Answer, PeerSession

_logger = logging.getLogger(__name__)

EVENT_NAME = "app.user.segment"
DEFAULT_BATCH_SIZE = 512  # the SDK's BatchLogRecordProcessor default export batch
#: A single record this small refused as "too large" was not refused for its size (a collector throttling with
#: RESOURCE_EXHAUSTED, say): the delivery fails and is retried, nobody is set aside. Real limits are megabytes.
MIN_TOO_LARGE_BYTES = 64 * 1024
_SCOPE = InstrumentationScope("otel_segments")


def log_exporter(settings: Settings, environ: Mapping[str, str] | None = None, **kwargs: Any) -> LogRecordExporter:
    """The standard OTLP log exporter for ``settings``: protocol and endpoint from the environment, our bearer token.

    Extra ``kwargs`` (``timeout``, ``compression``...) go to the exporter. An OTLP/HTTP
    exporter posts through a :class:`~otel_segments.sinks.transport.PeerSession`
    unless ``session`` is given.
    """
    protocol = config.protocol("logs", environ)
    module, name = EXPORTERS[("logs", protocol)]
    if protocol == "http/protobuf":
        kwargs.setdefault("session", PeerSession())
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
    through :func:`otel_segments.spans.privacy.pseudonymize`, so a configured hash key
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
        self._support = support if support is not None else SignalSupport("logs")
        self._lock = threading.Lock()  # one delivery at a time; shutdown() never waits for it
        self._shut = False

    def __repr__(self) -> str:
        return f"OtlpSegmentSink(exporter={type(self._exporter).__name__}, batch_size={self.batch_size})"

    @property
    def failing(self) -> bool:
        """The export in flight was answered with a failure (no answer, 5xx, gRPC UNAVAILABLE...) and is being retried.

        Read at exit, from the stopping thread: such a delivery is ended at once instead of getting a grace.
        """
        return self._support.failing

    def deliver(self, batch: Sequence[UserSegment]) -> list[Refusal]:
        """Export every user's record; return the users refused for good once all others were accepted (2xx / OK)."""
        with self._lock:
            if self._shut:
                raise DeliveryError("the OTLP segment sink is shut down; nothing was sent")
            try:
                records = [self._entry(segment) for segment in batch]
            except Exception as error:  # a bad value fails the delivery, not the job
                raise DeliveryError(f"could not build the user records ({type(error).__name__})") from error
            accepted: list[str] = []
            refused: list[Refusal] = []
            pending = [records[i : i + self.batch_size] for i in range(0, len(records), self.batch_size)]
            pending.reverse()
            while pending:
                chunk = pending.pop()
                too_large = self._export(chunk, accepted, refused, len(records))
                if too_large is None:
                    accepted.extend(user for user, _, _ in chunk)
                elif len(chunk) > 1:  # each half on its own, in order
                    half = len(chunk) // 2
                    pending.extend((chunk[half:], chunk[:half]))
                else:
                    refused.append(Refusal(chunk[0][0], too_large))
            return refused

    def _entry(self, segment: UserSegment) -> tuple[str, Any, int]:
        """(user id, log record, about how many bytes its Resource takes: its keys and values as text)."""
        attributes = user_resource_attributes(segment)
        size = sum(len(str(key)) + len(str(value)) for key, value in attributes.items())
        resource = self._base.merge(Resource(attributes))
        return (
            segment.distinct_id,
            log_record_for_export(event_name=EVENT_NAME, resource=resource, instrumentation_scope=_SCOPE),
            size,
        )

    def _export(self, chunk: list[tuple[str, Any, int]], accepted: list[str], refused: list[Refusal], total: int) -> str | None:
        """None when the collector took ``chunk``; why, when it refused it as too large; raises otherwise."""
        done = f"{len(accepted)} of {total} were accepted before it"
        if self._shut:
            raise DeliveryError(f"the OTLP segment sink was shut down mid-delivery; {done}", accepted=accepted, refused=refused)
        result = None
        with self._support.watching(stop_retrying_too_large=True) as answer:
            try:
                result = self._exporter.export([record for _, record, _ in chunk])
            except GrpcTooLargeError:
                pass
            except Exception as error:  # noqa: BLE001 - an exporter bug is a failed delivery, not a crash
                raise DeliveryError(
                    f"the OTLP log exporter failed on a batch of {len(chunk)} user records ({type(error).__name__}); {done}",
                    accepted=accepted,
                    refused=refused,
                ) from None
        if answer.status == 413 or answer.grpc == "RESOURCE_EXHAUSTED":
            if len(chunk) > 1 or chunk[0][2] >= MIN_TOO_LARGE_BYTES:
                return f"the collector refused its record as too large ({_said(answer)}, about {chunk[0][2]} bytes)"
            raise DeliveryError(
                f"the collector refused a single small record with {_said(answer)}: not its size; retrying next cycle; {done}",
                accepted=accepted,
                refused=refused,
            )
        if answer.status is not None and 300 <= answer.status < 400:
            raise DeliveryError(
                f"the collector at {answer.url} answered HTTP {answer.status} redirecting to "
                f"{answer.location or '(no Location)'} for a batch of {len(chunk)} user records; redirects are never "
                f"followed: point OTEL_EXPORTER_OTLP_LOGS_ENDPOINT at the final URL; {done}",
                accepted=accepted,
                refused=refused,
            )
        if result is LogRecordExportResult.SUCCESS and (answer.status is None or 200 <= answer.status < 300):
            return None
        if self._support.refused:
            raise SinkUnsupportedError(self._support.message(), accepted=accepted, refused=refused)
        raise DeliveryError(
            f"the OTLP log exporter could not deliver a batch of {len(chunk)} user records "
            f"({_said(answer) if answer.status or answer.grpc else 'collector unreachable or refused them'}; "
            f"the exporter logged why); {done}",
            accepted=accepted,
            refused=refused,
        )

    def record(self, segment: UserSegment) -> Any:
        """One user's log record: event ``app.user.segment``, the user's properties on its Resource, in no trace.

        Its type is the one this SDK release's exporters take (see :mod:`otel_segments.runtime.compat`).
        """
        return self._entry(segment)[1]

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Shut the exporter down, ending a delivery in flight, within ``timeout_s``; never waits for that delivery.

        A delivery stuck on a collector that does not answer holds the sink's lock, so
        shutdown does not take it: it marks the sink shut (the delivery stops at its
        next batch, and nothing more is sent), then shuts the exporter down, which
        closes its session (our :class:`PeerSession` ends the request in flight).
        """
        if self._shut:
            return
        self._shut = True
        try:
            if _takes_timeout(self._exporter.shutdown):
                self._exporter.shutdown(timeout_millis=max(timeout_s, 0.0) * 1000)
            else:
                self._exporter.shutdown()
        except Exception:
            _logger.warning("otel_segments: the OTLP log exporter did not shut down cleanly", exc_info=True)


def _takes_timeout(method: Any) -> bool:
    """The gRPC exporters' ``shutdown(timeout_millis)`` waits that long for an export in flight (1.27); HTTP's takes none."""
    try:
        return "timeout_millis" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _said(answer: Answer) -> str:
    return f"HTTP {answer.status}" if answer.status is not None else f"gRPC {answer.grpc}"


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
