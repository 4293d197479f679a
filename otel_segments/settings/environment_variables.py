"""Our variables, for ``opentelemetry-instrument --segments_database_url=...`` style flags.

``opentelemetry-instrument`` imports this module (entry point
``opentelemetry_environment_variables``) before it picks a distro. When the gate
is open and the user chose no distro or configurator, we choose ours here: with
``opentelemetry-distro`` installed too, which one loads would otherwise depend on
install order, and only ours attaches the bearer token to the OTLP exporters.
"""

import os

from .config import (
    OTEL_SEGMENTS_CACHE_SIZE,
    OTEL_SEGMENTS_CHANGE_CAPTURE,
    OTEL_SEGMENTS_DATABASE_TIMEZONE,
    OTEL_SEGMENTS_DATABASE_URL,
    OTEL_SEGMENTS_MAX_SEGMENT_AGE,
    OTEL_SEGMENTS_REFRESH_INTERVAL,
    OTEL_SEGMENTS_SCHEMA,
    OTEL_SEGMENTS_SPAN_PROPERTIES,
    OTEL_SEGMENTS_STATE_URL,
    OTEL_SEGMENTS_TRUST_BAGGAGE,
    OTEL_SEGMENTS_USER_ID_HASH_KEY,
)

__all__ = [
    "OTEL_SEGMENTS_CACHE_SIZE",
    "OTEL_SEGMENTS_CHANGE_CAPTURE",
    "OTEL_SEGMENTS_DATABASE_TIMEZONE",
    "OTEL_SEGMENTS_DATABASE_URL",
    "OTEL_SEGMENTS_MAX_SEGMENT_AGE",
    "OTEL_SEGMENTS_REFRESH_INTERVAL",
    "OTEL_SEGMENTS_SCHEMA",
    "OTEL_SEGMENTS_SPAN_PROPERTIES",
    "OTEL_SEGMENTS_STATE_URL",
    "OTEL_SEGMENTS_TRUST_BAGGAGE",
    "OTEL_SEGMENTS_USER_ID_HASH_KEY",
]

_gate_open = (
    os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    and os.environ.get("OTEL_EXPORTER_OTLP_TOKEN", "").strip()
    and os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"
)
if _gate_open:
    os.environ.setdefault("OTEL_PYTHON_DISTRO", "otel_segments")
    os.environ.setdefault("OTEL_PYTHON_CONFIGURATOR", "otel_segments")
