"""otel_segments: OpenTelemetry that knows who a request was for.

Importing this package starts nothing: no thread, socket or query until
:func:`configure` runs with the gate open (``OTEL_EXPORTER_OTLP_ENDPOINT`` and
``OTEL_EXPORTER_OTLP_TOKEN`` set, ``OTEL_SDK_DISABLED`` not true). It loads nothing
either until a name is used (PEP 562): the ``otel-segments`` command line, which
needs neither the SDK nor PostHog to compute segments, starts in a fraction of
the time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .configuration import Configured, configure
    from .runtime.exporters import otlp_headers
    from .settings.config import Settings
    from .spans.context import clear_user, current_user, set_user, user_context
    from .spans.processor import SuperPropertiesSpanProcessor

_EXPORTS = {
    "Configured": "configuration",
    "Settings": "settings.config",
    "SuperPropertiesSpanProcessor": "spans.processor",
    "clear_user": "spans.context",
    "configure": "configuration",
    "current_user": "spans.context",
    "otlp_headers": "runtime.exporters",
    "set_user": "spans.context",
    "user_context": "spans.context",
}
__all__ = [
    "Configured",
    "Settings",
    "SuperPropertiesSpanProcessor",
    "clear_user",
    "configure",
    "current_user",
    "otlp_headers",
    "set_user",
    "user_context",
]
__version__ = "0.1.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic), CHANGELOG.md says what changed


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
