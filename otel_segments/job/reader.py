"""The MetricReader cycle that drives the refresh job, and the ``app.segments.users`` gauge it exports.

:class:`SegmentsMetricReader` collects every ``OTEL_SEGMENTS_REFRESH_INTERVAL``
ms; collecting runs the gauge's callback, which kicks the
:class:`~otel_segments.job.refresh_job.RefreshJob` (it returns at once; the refresh runs in
the job's thread) and reports the counts of the last finished refresh. So the
MetricReader contract (collect, export, force_flush, shutdown with the
MeterProvider) schedules the refresh, and a slow refresh never holds the
collection lock.

Why a reader of ours and not the SDK's ``PeriodicExportingMetricReader``: its
timer is a ``threading.Thread``, made again after ``fork()``. gunicorn's eventlet
worker (25.x) monkey-patches in the master and then forks: the thread made again
in the worker is a green thread of a hub the worker replaces at once, so it never
runs, and neither would the refresh. Ours times on an OS thread
(:mod:`otel_segments.runtime.native`) whatever was patched, and exports with
instrumentation suppressed (:mod:`otel_segments.runtime.untraced`).

Why the kick is in the callback and not in the reader's ``_receive_metrics``: the
SDK calls that only when there are data points, and before the first refresh
there are none.

:func:`segments_meter_provider` gives the gauge a MeterProvider of its own, with
the app's Resource. Why not the app's provider: a reader collects *every*
instrument of its provider, so ours there would run the app's observable
callbacks and export the app's metrics a second time, at the refresh interval.
An app that wants the gauge in its own pipeline calls :func:`register_gauge`
with a meter of its own provider; its reader's cycle then drives the refresh.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, ObservableGauge, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricReader, MetricsData
from opentelemetry.sdk.resources import Resource

from ..runtime import native, watchdog
from ..runtime.untraced import untraced
from .cohort_sizes import GAUGE
from .refresh_job import RefreshJob

_logger = logging.getLogger(__name__)
#: As the SDK's periodic reader (``OTEL_METRIC_EXPORT_TIMEOUT``'s default): a collection and its export.
COLLECT_TIMEOUT_MS = 30_000
#: At shutdown, the most the gauge's last collection and export may take (and never past the job's own deadline):
#: a few dozen data points reach a healthy collector in milliseconds; a down or refusing one gets no more.
LAST_EXPORT_S = 1.0
#: The share of the interval by which each wait of the timer varies at random.
JITTER = 0.1


def register_gauge(meter: Meter, job: RefreshJob) -> ObservableGauge:
    """``app.segments.users`` on ``meter``: each collection kicks ``job`` and reports its last cohort sizes."""

    def collect(options: CallbackOptions) -> Iterable[Observation]:
        job.kick()
        return list(job.observe(options))

    return meter.create_observable_gauge(
        GAUGE,
        callbacks=[collect],
        unit="{user}",
        description="Users per segment value after the last refresh (reported by the process holding the refresh lease)",
    )


class SegmentsMetricReader(MetricReader):
    """Collects every ``interval_s`` seconds on an OS thread of its own, and exports to ``exporter``, untraced."""

    def __init__(
        self, exporter: MetricExporter, interval_s: float, exit_deadline: Callable[[], float | None] = lambda: None
    ) -> None:
        super().__init__()
        self._exporter = exporter
        self.interval_s = interval_s
        self._exit_deadline = exit_deadline
        self._export_lock = native.Lock()
        self._shut = False
        self._exporter_shut = False
        self._exporter_lock = native.Lock()
        self._start()
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)

            def restart() -> None:
                if (alive := ref()) is not None and not alive._shut:
                    alive._start()

            os.register_at_fork(after_in_child=restart)  # the parent's thread does not exist in the child

    def _start(self) -> None:
        self._stop = native.Event()
        self._thread = native.Thread(self._tick)
        self._thread.start()

    def _tick(self) -> None:
        # A fleet started together (a deploy) must not query the database in lockstep: the first wait falls
        # anywhere in the interval after the first one, each later one varies by +-10%, so the processes'
        # cycles, and their connections, stay spread over the interval.
        wait = self.interval_s * random.uniform(1, 2)
        while not self._stop.wait(wait):
            wait = self.interval_s * random.uniform(1 - JITTER, 1 + JITTER)
            try:
                self.collect(timeout_millis=COLLECT_TIMEOUT_MS)
            except Exception:  # a failed collection must not end the timer (the SDK's reader says the same)
                _logger.debug("otel_segments: collecting the segments gauge failed", exc_info=True)

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        with self._export_lock, untraced():
            try:
                self._exporter.export(metrics_data, timeout_millis=timeout_millis)
            except Exception:  # an exporter bug is a failed export, not a crash
                _logger.warning("otel_segments: exporting the segments gauge failed", exc_info=True)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        super().force_flush(timeout_millis=timeout_millis)
        return self._exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Stop the timer, collect once more (the last cohort sizes), shut the exporter down: by the job's deadline.

        The job's stop at exit is bounded (README: 5 s), and this export is part of it: it gets
        :data:`LAST_EXPORT_S`, within what the job's stop left of the bound. The SDK's OTLP exporter
        retries a down or refusing collector for its own whole timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by
        default) and ignores the ``timeout_millis`` it is given: this export added 7-12 s to the app's exit. So it
        runs on a thread of its own, and at the deadline the exporter is shut down, which ends its retries (1.28+;
        on older releases the thread is left behind, and an OS thread does not hold the process's exit). It is
        shut down at once when the collector fails that export (or the periodic one in flight): it would only retry.
        """
        if self._shut:
            return
        self._shut = True
        self._stop.set()
        deadline = min(self._exit_deadline() or math.inf, time.monotonic() + min(LAST_EXPORT_S, timeout_millis / 1000))
        if not self._thread.is_current():
            self._wait(self._thread, deadline)  # a periodic export in flight ends with the rest
        if self._failing():
            self._shut_exporter()  # the collector is failing the export in flight: it would fail this one too
            return
        last = native.Thread(self._last_collection)
        try:
            last.start()
        except RuntimeError:  # Python 3.12 at exit starts no thread: collect here, the watchdog ends it at the deadline
            timer = watchdog.call_later(deadline - time.monotonic(), self._shut_exporter)
            try:
                self._last_collection()
            finally:
                timer.cancel()
        else:
            self._wait(last, deadline)
        self._shut_exporter(max(0.0, deadline - time.monotonic()))

    def _wait(self, thread: native.Thread, deadline: float) -> None:
        """Join ``thread`` until ``deadline``, or until its export was answered with a failure (it would only retry)."""
        while not thread.join(min(0.05, max(0.0, deadline - time.monotonic()))) and time.monotonic() < deadline:
            if self._failing():
                return

    def _failing(self) -> bool:
        """The export in flight was answered with a failure (``signal_support.GaugeExporter``; another exporter: no)."""
        return bool(getattr(self._exporter, "failing", False))

    def _shut_exporter(self, seconds: float = 0.0) -> None:
        """Shut the exporter down once (a second call would log the SDK's "already shutdown" warning)."""
        with self._exporter_lock:
            if self._exporter_shut:
                return
            self._exporter_shut = True
        with untraced():
            self._exporter.shutdown(timeout_millis=seconds * 1000)

    def _last_collection(self) -> None:
        try:
            self.collect(timeout_millis=COLLECT_TIMEOUT_MS)
        except Exception:
            _logger.debug("otel_segments: the last collection of the segments gauge failed", exc_info=True)


def segments_meter_provider(job: RefreshJob, exporter: MetricExporter, resource: Resource | None = None) -> MeterProvider:
    """A MeterProvider holding only the gauge, collected and exported every ``job.interval``."""
    reader = SegmentsMetricReader(exporter, job.interval.total_seconds(), lambda: job.stop_deadline)
    provider = MeterProvider(metric_readers=[reader], resource=resource or Resource.create())
    register_gauge(provider.get_meter("otel_segments"), job)
    return provider


class MetricsOff(MetricExporter):
    """For ``OTEL_METRICS_EXPORTER=none``: the reader still times the refresh, the gauge goes nowhere."""

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None
