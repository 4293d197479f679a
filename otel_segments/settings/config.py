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
    TOKEN_REFUSED,
    endpoint,
    endpoint_refused,
    otlp_endpoint,
    otlp_headers,
    parse_headers,
    protocol,
    token,
    warn_plain_text_endpoints,
    with_scheme,
)
from .values import Secret, boolean, choice, positive_int, read, secret

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
OTEL_SEGMENTS_CHANGE_CAPTURE = "OTEL_SEGMENTS_CHANGE_CAPTURE"
POSTHOG_API_KEY = "POSTHOG_API_KEY"
POSTHOG_HOST = "POSTHOG_HOST"

DEFAULT_SCHEMA = "timetracker"
DEFAULT_REFRESH_INTERVAL_MS = 60_000
DEFAULT_MAX_SEGMENT_AGE_MS = 24 * 3600 * 1000
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_SPAN_PROPERTIES = "default"  # cache.span_property_selection() reads it: default, all, none or a list of names
DEFAULT_POSTHOG_HOST = "https://us.i.posthog.com"
#: How the refresh finds changed users: ``windows`` (no set-up, see segments/changes.py) or ``triggers`` (exact mode:
#: the app database's triggers record them, see segments/captured.py; create them with ``otel-segments triggers``).
CHANGE_CAPTURES = ("windows", "triggers")
DEFAULT_CHANGE_CAPTURE = "windows"


#: Every variable :meth:`Settings.from_env` reads: the same values give the same settings.
SETTINGS_VARIABLES = (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TOKEN,
    OTEL_SDK_DISABLED,
    OTEL_SEGMENTS_DATABASE_URL,
    OTEL_SEGMENTS_STATE_URL,
    OTEL_SEGMENTS_SCHEMA,
    OTEL_SEGMENTS_REFRESH_INTERVAL,
    OTEL_SEGMENTS_MAX_SEGMENT_AGE,
    OTEL_SEGMENTS_CACHE_SIZE,
    OTEL_SEGMENTS_TRUST_BAGGAGE,
    OTEL_SEGMENTS_USER_ID_HASH_KEY,
    OTEL_SEGMENTS_CHANGE_CAPTURE,
    POSTHOG_API_KEY,
    POSTHOG_HOST,
)


@dataclass(frozen=True)
class Settings:
    """What the environment says, after validation. Build it with :meth:`from_env`.

    ``posthog_host`` is None, and ``posthog_api_key`` with it, when ``POSTHOG_HOST`` was set but unusable:
    the PostHog sink is then off rather than sending person data to a host the operator did not choose.
    ``refused`` names the gate variables that were set but refused, with the reason.
    """

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
    change_capture: str = DEFAULT_CHANGE_CAPTURE
    user_id_hash_key: Secret | None = field(default=None, repr=False)
    posthog_api_key: Secret | None = field(default=None, repr=False)
    posthog_host: str | None = DEFAULT_POSTHOG_HOST
    refused: tuple[tuple[str, str], ...] = ()

    @property
    def disabled_reason(self) -> str | None:
        """Why the plugin stays inert, or None when it runs."""
        if self.sdk_disabled:
            return f"{OTEL_SDK_DISABLED} is true"
        gate = ((OTEL_EXPORTER_OTLP_ENDPOINT, self.endpoint), (OTEL_EXPORTER_OTLP_TOKEN, self.token))
        missing = [name for name, value in gate if not value]
        if not missing:
            return None
        if not self.refused:
            return " and ".join(missing) + (" is not set" if len(missing) == 1 else " are not set")
        why = dict(self.refused)
        return "; ".join(f"{name} {why[name]}" if name in why else f"{name} is not set" for name in missing)

    @property
    def meant_on(self) -> bool:
        """Whether the operator clearly meant the plugin on: a gate variable is set (refused or not), the SDK not disabled."""
        return not self.sdk_disabled and bool(self.endpoint or self.token or self.refused)

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    @classmethod
    def from_env(cls, environ: Mapping[str, object] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        refused = []
        why = endpoint_refused(env)
        if why is not None:
            refused.append((OTEL_EXPORTER_OTLP_ENDPOINT, f"was refused: it {why}"))
        settings_token = token(env)
        if settings_token is None and read(env, OTEL_EXPORTER_OTLP_TOKEN):
            refused.append((OTEL_EXPORTER_OTLP_TOKEN, f"was refused: it has {TOKEN_REFUSED}"))
        warn_plain_text_endpoints(env)
        posthog_api_key, posthog_host = _posthog(env)
        return cls(
            endpoint=endpoint(env),
            token=settings_token,
            sdk_disabled=boolean(env, OTEL_SDK_DISABLED, False),
            database_url=database_url(env, OTEL_SEGMENTS_DATABASE_URL),
            state_url=database_url(env, OTEL_SEGMENTS_STATE_URL),
            schema=read(env, OTEL_SEGMENTS_SCHEMA) or DEFAULT_SCHEMA,
            refresh_interval_ms=positive_int(env, OTEL_SEGMENTS_REFRESH_INTERVAL, DEFAULT_REFRESH_INTERVAL_MS),
            max_segment_age_ms=positive_int(env, OTEL_SEGMENTS_MAX_SEGMENT_AGE, DEFAULT_MAX_SEGMENT_AGE_MS),
            cache_size=positive_int(env, OTEL_SEGMENTS_CACHE_SIZE, DEFAULT_CACHE_SIZE),
            span_properties=read(env, OTEL_SEGMENTS_SPAN_PROPERTIES) or DEFAULT_SPAN_PROPERTIES,
            trust_baggage=boolean(env, OTEL_SEGMENTS_TRUST_BAGGAGE, False),
            change_capture=choice(env, OTEL_SEGMENTS_CHANGE_CAPTURE, CHANGE_CAPTURES, DEFAULT_CHANGE_CAPTURE),
            user_id_hash_key=secret(env, OTEL_SEGMENTS_USER_ID_HASH_KEY),
            posthog_api_key=posthog_api_key,
            posthog_host=posthog_host,
            refused=tuple(refused),
        )


def _posthog(env: Mapping[str, object]) -> tuple[Secret | None, str | None]:
    """The PostHog API key and host; neither when ``POSTHOG_HOST`` is set but unusable (never the default host then)."""
    raw = read(env, POSTHOG_HOST)
    if not raw:
        return secret(env, POSTHOG_API_KEY), DEFAULT_POSTHOG_HOST
    host = with_scheme(
        POSTHOG_HOST, raw, consequence="the PostHog sink is off (person data goes only to a host you chose)", bearer_token=False
    )
    if host is None:
        return None, None
    return secret(env, POSTHOG_API_KEY), host


def database_url(env: Mapping[str, object], name: str) -> Secret | None:
    """A database URL; one whose password has an unencoded ``@`` is read up to the last ``@``, with a warning.

    SQLAlchemy ends the password at its first ``@`` and takes the rest of it for the host, which every driver
    error then quotes. The user meant the last ``@`` (as ``urllib`` reads it): the URL is re-rendered so.
    """
    value = read(env, name)
    if not value:
        return None
    if value.count("@") < 2:
        return Secret(value)
    from sqlalchemy import make_url

    try:
        parsed = make_url(value)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported, without itself, where the engine is made
        return Secret(value)
    host = parsed.host or ""
    if "@" not in host:
        return Secret(value)
    extra, _, real_host = host.rpartition("@")
    password = (parsed.password or "") + "@" + extra
    _logger.warning("%s has an unencoded @ in its password; reading the last @ as its end (write it as %%40)", name)
    return Secret(parsed.set(password=password, host=real_host).render_as_string(hide_password=False))


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
