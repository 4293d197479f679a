"""otel_segments: OpenTelemetry that knows who a request was for.

Importing this package starts nothing: no thread, socket or query until
:func:`configure` runs with the gate open (``OTEL_EXPORTER_OTLP_ENDPOINT`` and
``OTEL_EXPORTER_OTLP_TOKEN`` set, ``OTEL_SDK_DISABLED`` not true).
"""

from .config import Settings
from .configuration import Configured, configure
from .context import clear_user, current_user, set_user, user_context
from .exporters import otlp_headers
from .processor import SuperPropertiesSpanProcessor

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
__version__ = "0.1.0"
