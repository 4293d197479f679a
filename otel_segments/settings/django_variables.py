"""The two variables of Django apps: which user flag makes an admin, and which table holds the app's activity.

``OTEL_SEGMENTS_DJANGO_ADMIN`` is read by the spans (the Django integration) and
by the built-in ``django`` schema mapping alike, so a user's ``is_admin`` is the
same on their spans as in PostHog and the OTLP records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

_logger = logging.getLogger(__name__)

OTEL_SEGMENTS_DJANGO_ADMIN = "OTEL_SEGMENTS_DJANGO_ADMIN"
OTEL_SEGMENTS_ACTIVITY_TABLE = "OTEL_SEGMENTS_ACTIVITY_TABLE"
#: The flags of Django's user model that may make an admin; the first is the default.
ADMIN_FLAGS = ("is_superuser", "is_staff")
_warned: set[str] = set()


def django_admin_flag(env: Mapping[str, str] | None = None) -> str:
    """``is_superuser`` (the default) or ``is_staff``; anything else is reported once and means the default."""
    value = (os.environ if env is None else env).get(OTEL_SEGMENTS_DJANGO_ADMIN, "").strip()
    if not value or value in ADMIN_FLAGS:
        return value or ADMIN_FLAGS[0]
    if value not in _warned:
        _warned.add(value)
        _logger.warning(
            "otel_segments: %s=%r is not one of %s; using %s",
            OTEL_SEGMENTS_DJANGO_ADMIN,
            value,
            ", ".join(ADMIN_FLAGS),
            ADMIN_FLAGS[0],
        )
    return ADMIN_FLAGS[0]
