"""The MetricReader whose collection cycle drives the refresh job and exports the cohort-size gauge.

It is the SDK's ``PeriodicExportingMetricReader`` with one addition: each
collection first kicks the :class:`~otel_segments.job.RefreshJob` (which returns
at once; the refresh runs in the job's thread), then exports as usual. So the
SDK's own timer, fork handling and shutdown schedule the refresh: no scheduler
of ours. The gauge's callback reads the counts of the last finished refresh, so
a slow refresh never delays a collection.

:func:`segments_meter_provider` puts it on a MeterProvider of its own, with the
app's Resource. Why not the app's provider: a reader collects *every* instrument
of its provider, so ours there would run the app's observable callbacks and
export the app's metrics a second time, at the refresh interval. An app that
wants one pipeline can still pass a ``SegmentsMetricReader`` to its own
``MeterProvider(metric_readers=[...])``.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from .job import GAUGE, RefreshJob


class SegmentsMetricReader(PeriodicExportingMetricReader):
    """Every ``interval_millis`` (``OTEL_SEGMENTS_REFRESH_INTERVAL``): kick the refresh job, export the metrics."""

    def __init__(
        self,
        exporter: MetricExporter,
        job: RefreshJob,
        *,
        interval_millis: float | None = None,
        timeout_millis: float | None = None,
    ) -> None:
        self._job = job  # set before the SDK starts the ticker thread
        interval = interval_millis if interval_millis is not None else job.interval.total_seconds() * 1000
        super().__init__(exporter, export_interval_millis=interval, export_timeout_millis=timeout_millis)

    @property
    def job(self) -> RefreshJob:
        return self._job

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        self._job.kick()
        super()._receive_metrics(metrics_data, timeout_millis=timeout_millis, **kwargs)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        # The job first (its final delivery gets half the time), so the SDK's last collection cannot start a refresh.
        self._job.shutdown(timeout_s=timeout_millis / 2000)
        super().shutdown(timeout_millis=timeout_millis / 2, **kwargs)


def segments_meter_provider(reader: SegmentsMetricReader, resource: Resource | None = None) -> MeterProvider:
    """A MeterProvider holding only the ``app.segments.users`` gauge, exported by ``reader``; shut down at exit."""
    provider = MeterProvider(metric_readers=[reader], resource=resource or Resource.create())
    provider.get_meter("otel_segments").create_observable_gauge(
        GAUGE,
        callbacks=[reader.job.observe],
        unit="{user}",
        description="Users per segment value after the last refresh (reported by the process holding the refresh lease)",
    )
    return provider
