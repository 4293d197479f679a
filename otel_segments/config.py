"""Every otel_segments setting, read from the environment once and validated.

A malformed value never stops the host app: it is replaced by a documented
default and reported in one warning naming the variable. Standard ``OTEL_*``
variables keep their standard meaning; the SDK parses them. We only read the
ones that decide whether we run (the gate) and check the few whose mistakes the
SDK would turn into an exception or silent failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .otlp_variables import (
    DEFAULT_PROTOCOL,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TOKEN,
    PROTOCOLS,
    SIGNALS,
    endpoint,
    otlp_endpoint,
    otlp_headers,
    parse_headers,
    protocol,
    token,
    url,
)
from .values import Secret, boolean, positive_int, read, secret

_logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TOKEN",
    "PROTOCOLS",
    "SIGNALS",
    "Secret",
    "Settings",
    "otlp_endpoint",
    "otlp_headers",
    "parse_headers",
    "protocol",
]

OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"

OTEL_SEGMENTS_DATABASE_URL = "OTEL_SEGMENTS_DATABASE_URL"
OTEL_SEGMENTS_STATE_URL = "OTEL_SEGMENTS_STATE_URL"
OTEL_SEGMENTS_SCHEMA = "OTEL_SEGMENTS_SCHEMA"
OTEL_SEGMENTS_REFRESH_INTERVAL = "OTEL_SEGMENTS_REFRESH_INTERVAL"
OTEL_SEGMENTS_MAX_SEGMENT_AGE = "OTEL_SEGMENTS_MAX_SEGMENT_AGE"
OTEL_SEGMENTS_CACHE_SIZE = "OTEL_SEGMENTS_CACHE_SIZE"
OTEL_SEGMENTS_TRUST_BAGGAGE = "OTEL_SEGMENTS_TRUST_BAGGAGE"
OTEL_SEGMENTS_USER_ID_HASH_KEY = "OTEL_SEGMENTS_USER_ID_HASH_KEY"
OTEL_SEGMENTS_DATABASE_TIMEZONE = "OTEL_SEGMENTS_DATABASE_TIMEZONE"
OTEL_SEGMENTS_SPAN_PROPERTIES = "OTEL_SEGMENTS_SPAN_PROPERTIES"
POSTHOG_API_KEY = "POSTHOG_API_KEY"
POSTHOG_HOST = "POSTHOG_HOST"

DEFAULT_SCHEMA = "timetracker"
DEFAULT_REFRESH_INTERVAL_MS = 60_000
DEFAULT_MAX_SEGMENT_AGE_MS = 24 * 3600 * 1000
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_SPAN_PROPERTIES = "default"  # cache.span_property_selection() reads it: default, all, none or a list of names
DEFAULT_POSTHOG_HOST = "https://us.i.posthog.com"


@dataclass(frozen=True)
class Settings:
    """What the environment says, after validation. Build it with :meth:`from_env`."""

    endpoint: str | None = None
    token: Secret | None = field(default=None, repr=False)
    sdk_disabled: bool = False
    database_url: Secret | None = field(default=None, repr=False)
    state_url: Secret | None = field(default=None, repr=False)
    schema: str = DEFAULT_SCHEMA
    refresh_interval_ms: int = DEFAULT_REFRESH_INTERVAL_MS
    max_segment_age_ms: int = DEFAULT_MAX_SEGMENT_AGE_MS
    cache_size: int = DEFAULT_CACHE_SIZE
    span_properties: str = DEFAULT_SPAN_PROPERTIES
    trust_baggage: bool = False
    user_id_hash_key: Secret | None = field(default=None, repr=False)
    posthog_api_key: Secret | None = field(default=None, repr=False)
    posthog_host: str = DEFAULT_POSTHOG_HOST

    @property
    def disabled_reason(self) -> str | None:
        """Why the plugin stays inert, or None when it runs."""
        if self.sdk_disabled:
            return f"{OTEL_SDK_DISABLED} is true"
        missing = [
            name
            for name, value in ((OTEL_EXPORTER_OTLP_ENDPOINT, self.endpoint), (OTEL_EXPORTER_OTLP_TOKEN, self.token))
            if not value
        ]
        if missing:
            return " and ".join(missing) + (" is not set" if len(missing) == 1 else " are not set")
        return None

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    @classmethod
    def from_env(cls, environ: Mapping[str, object] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            endpoint=endpoint(env),
            token=token(env),
            sdk_disabled=_sdk_disabled(env),
            database_url=secret(env, OTEL_SEGMENTS_DATABASE_URL),
            state_url=secret(env, OTEL_SEGMENTS_STATE_URL),
            schema=read(env, OTEL_SEGMENTS_SCHEMA) or DEFAULT_SCHEMA,
            refresh_interval_ms=positive_int(env, OTEL_SEGMENTS_REFRESH_INTERVAL, DEFAULT_REFRESH_INTERVAL_MS),
            max_segment_age_ms=positive_int(env, OTEL_SEGMENTS_MAX_SEGMENT_AGE, DEFAULT_MAX_SEGMENT_AGE_MS),
            cache_size=positive_int(env, OTEL_SEGMENTS_CACHE_SIZE, DEFAULT_CACHE_SIZE),
            span_properties=read(env, OTEL_SEGMENTS_SPAN_PROPERTIES) or DEFAULT_SPAN_PROPERTIES,
            trust_baggage=boolean(env, OTEL_SEGMENTS_TRUST_BAGGAGE, False),
            user_id_hash_key=secret(env, OTEL_SEGMENTS_USER_ID_HASH_KEY),
            posthog_api_key=secret(env, POSTHOG_API_KEY),
            posthog_host=url(env, POSTHOG_HOST, DEFAULT_POSTHOG_HOST),
        )


def _sdk_disabled(env: Mapping[str, object]) -> bool:
    """As the OpenTelemetry specification says: only ``true`` (any case) is true; other values warn."""
    raw = read(env, OTEL_SDK_DISABLED).lower()
    if raw not in ("", "true", "false"):
        _logger.warning("%s=%r is not true or false; using false", OTEL_SDK_DISABLED, raw[:64])
    return raw == "true"


_warned_zones: set[str] = set()


def database_timezone(environ: Mapping[str, object] | None = None) -> tzinfo:
    """The app's zone for naive columns the schema mapping declares in it: an IANA name, default UTC.

    A name the zone database does not know is UTC, with one warning per process and value: reading
    local times as UTC shifts windows by the zone's offset, which is better than not running.
    """
    env = os.environ if environ is None else environ
    name = read(env, OTEL_SEGMENTS_DATABASE_TIMEZONE)
    if not name or name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        if name not in _warned_zones:
            _warned_zones.add(name)
            _logger.warning(
                "%s=%r is not an IANA time zone name (e.g. Europe/Berlin); using UTC", OTEL_SEGMENTS_DATABASE_TIMEZONE, name[:64]
            )
        return timezone.utc
