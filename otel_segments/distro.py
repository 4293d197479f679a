"""Entry points that ``opentelemetry-instrument`` loads: no code in the app.

Start-up order there is: one distro, one configurator, the instrumentors, then
every post-instrument hook. Only one distro and one configurator load, so an app
that also has ``opentelemetry-distro`` may get that one's configurator instead
of ours; the post-instrument hook then attaches our processor to the providers it
built (``configure()`` does the attaching) and warns if the token is missing.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _BaseConfigurator

from .configuration import configure_instrumented

NAME = "otel_segments"


class SegmentsDistro(BaseDistro):
    """Same defaults as ``opentelemetry-distro`` (OTLP for every signal), and picks our configurator."""

    def _configure(self, **kwargs: Any) -> None:
        os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", NAME)
        for variable in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"):
            os.environ.setdefault(variable, "otlp")


class SegmentsConfigurator(_BaseConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        configure_instrumented(**kwargs)


def post_instrument() -> None:
    """Runs after every configurator: a no-op if ours ran, else attach to what the other one built."""
    configure_instrumented()
