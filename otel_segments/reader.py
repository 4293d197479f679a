"""The MetricReader cycle that drives the refresh job, and the ``app.segments.users`` gauge it exports.

The SDK's ``PeriodicExportingMetricReader`` collects every
``OTEL_SEGMENTS_REFRESH_INTERVAL`` ms; collecting runs the gauge's callback,
which kicks the :class:`~otel_segments.job.RefreshJob` (it returns at once; the
refresh runs in the job's thread) and reports the counts of the last finished
refresh. So the SDK's timer, fork handling and shutdown schedule the refresh: no
scheduler of ours, and a slow refresh never holds the collection lock.

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

from collections.abc import Iterable
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, ObservableGauge, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from .job import GAUGE, RefreshJob


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


def segments_meter_provider(job: RefreshJob, exporter: MetricExporter, resource: Resource | None = None) -> MeterProvider:
    """A MeterProvider holding only the gauge, collected and exported every ``job.interval``."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=job.interval.total_seconds() * 1000)
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
