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
from urllib.parse import unquote, urlsplit

_logger = logging.getLogger(__name__)

OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TOKEN = "OTEL_EXPORTER_OTLP_TOKEN"
OTEL_EXPORTER_OTLP_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"

OTEL_SEGMENTS_DATABASE_URL = "OTEL_SEGMENTS_DATABASE_URL"
OTEL_SEGMENTS_STATE_URL = "OTEL_SEGMENTS_STATE_URL"
OTEL_SEGMENTS_SCHEMA = "OTEL_SEGMENTS_SCHEMA"
OTEL_SEGMENTS_REFRESH_INTERVAL = "OTEL_SEGMENTS_REFRESH_INTERVAL"
OTEL_SEGMENTS_MAX_SEGMENT_AGE = "OTEL_SEGMENTS_MAX_SEGMENT_AGE"
OTEL_SEGMENTS_CACHE_SIZE = "OTEL_SEGMENTS_CACHE_SIZE"
OTEL_SEGMENTS_TRUST_BAGGAGE = "OTEL_SEGMENTS_TRUST_BAGGAGE"
OTEL_SEGMENTS_USER_ID_HASH_KEY = "OTEL_SEGMENTS_USER_ID_HASH_KEY"
POSTHOG_API_KEY = "POSTHOG_API_KEY"
POSTHOG_HOST = "POSTHOG_HOST"

SIGNALS = ("traces", "metrics", "logs")
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "grpc"  # what the Python SDK and opentelemetry-distro use when none is set
DEFAULT_SCHEMA = "timetracker"
DEFAULT_REFRESH_INTERVAL_MS = 60_000
DEFAULT_MAX_SEGMENT_AGE_MS = 24 * 3600 * 1000
DEFAULT_CACHE_SIZE = 10_000
DEFAULT_POSTHOG_HOST = "https://us.i.posthog.com"
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


class Secret:
    """A string that never shows itself in a repr, str, log line or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        endpoint = _endpoint(env)
        token = env.get(OTEL_EXPORTER_OTLP_TOKEN, "").strip()
        return cls(
            endpoint=endpoint,
            token=Secret(token) if token else None,
            sdk_disabled=env.get(OTEL_SDK_DISABLED, "").strip().lower() == "true",
            database_url=_secret(env, OTEL_SEGMENTS_DATABASE_URL),
            state_url=_secret(env, OTEL_SEGMENTS_STATE_URL),
            schema=env.get(OTEL_SEGMENTS_SCHEMA, "").strip() or DEFAULT_SCHEMA,
            refresh_interval_ms=_positive_int(env, OTEL_SEGMENTS_REFRESH_INTERVAL, DEFAULT_REFRESH_INTERVAL_MS),
            max_segment_age_ms=_positive_int(env, OTEL_SEGMENTS_MAX_SEGMENT_AGE, DEFAULT_MAX_SEGMENT_AGE_MS),
            cache_size=_positive_int(env, OTEL_SEGMENTS_CACHE_SIZE, DEFAULT_CACHE_SIZE),
            trust_baggage=_bool(env, OTEL_SEGMENTS_TRUST_BAGGAGE, False),
            user_id_hash_key=_secret(env, OTEL_SEGMENTS_USER_ID_HASH_KEY),
            posthog_api_key=_secret(env, POSTHOG_API_KEY),
            posthog_host=_url(env, POSTHOG_HOST, DEFAULT_POSTHOG_HOST),
        )


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    return Secret(value) if value else None


_MAX_INT = 2**31 - 1  # ~24 days in ms: larger timer values overflow the thread primitives


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if len(raw) > 12 or not raw.isascii() or not raw.lstrip("-").isdigit():
        _logger.warning("%s=%r is not an integer from 1 to %d; using the default %d", name, raw[:64], _MAX_INT, default)
        return default
    value = int(raw)
    if not 0 < value <= _MAX_INT:
        _logger.warning("%s=%d is not an integer from 1 to %d; using the default %d", name, value, _MAX_INT, default)
        return default
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    _logger.warning("%s=%r is not true or false; using the default %s", name, raw[:64], str(default).lower())
    return default


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    fixed = _with_scheme(name, raw)
    return fixed or default


def _with_scheme(name: str, raw: str) -> str | None:
    """Return ``raw`` as an http(s) URL, adding ``http://`` (with a warning) when the scheme is missing."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        _logger.warning("%s=%r is not a URL; ignoring it", name, raw[:200])
        return None
    if parts.scheme in ("http", "https") and parts.netloc:
        return raw
    if "://" in raw:
        _logger.warning("%s=%r has an unsupported scheme (use http or https); ignoring it", name, raw[:200])
        return None
    fixed = "http://" + raw
    _logger.warning("%s=%r has no scheme; using %r", name, raw[:200], fixed)
    return fixed


def _endpoint(env: Mapping[str, str]) -> str | None:
    raw = env.get(OTEL_EXPORTER_OTLP_ENDPOINT, "").strip()
    if not raw:
        return None
    endpoint = _with_scheme(OTEL_EXPORTER_OTLP_ENDPOINT, raw)
    if endpoint is not None:
        host = urlsplit(endpoint).hostname or ""
        if endpoint.startswith("http://") and host not in _LOOPBACK_HOSTS and not host.startswith("127."):
            _logger.warning(
                "%s points at %s over plain http: the bearer token travels unencrypted; use https",
                OTEL_EXPORTER_OTLP_ENDPOINT,
                host,
            )
    return endpoint


def protocol(signal: str, environ: Mapping[str, str] | None = None) -> str:
    """The OTLP protocol for ``signal``, falling back (with a warning) when the value is unknown."""
    env = os.environ if environ is None else environ
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", OTEL_EXPORTER_OTLP_PROTOCOL):
        raw = env.get(name, "").strip()
        if raw:
            if raw in PROTOCOLS:
                return raw
            _logger.warning("%s=%r is not one of %s; using %s", name, raw[:64], ", ".join(PROTOCOLS), DEFAULT_PROTOCOL)
            return DEFAULT_PROTOCOL
    return DEFAULT_PROTOCOL


def parse_headers(name: str, raw: str) -> dict[str, str]:
    """Parse an ``OTEL_EXPORTER_OTLP_*HEADERS`` value, warning once for each malformed item."""
    headers: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = unquote(key).strip().lower()
        if not sep or not key or any(c.isspace() for c in key):
            _logger.warning("%s has a malformed item (expected key=value); skipping it", name)
            continue
        headers[key] = unquote(value).strip()
    return headers


def otlp_headers(signal: str, token: Secret | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers an OTLP exporter for ``signal`` should send: the user's, plus our bearer token.

    The per-signal variable wins over the general one, as in the SDK. A user who already
    sets ``authorization`` keeps it: we never override an explicit choice.
    """
    env = os.environ if environ is None else environ
    per_signal = f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS"
    name = per_signal if env.get(per_signal, "").strip() else OTEL_EXPORTER_OTLP_HEADERS
    headers = parse_headers(name, env.get(name, ""))
    if token is not None and "authorization" not in headers:
        headers["authorization"] = f"Bearer {token.reveal()}"
    return headers


def otlp_endpoint(signal: str, settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """An explicit endpoint for ``signal`` when we had to repair the general one, else None (SDK default)."""
    env = os.environ if environ is None else environ
    if env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip():
        return None
    raw = env.get(OTEL_EXPORTER_OTLP_ENDPOINT, "").strip()
    if not settings.endpoint or settings.endpoint == raw:
        return None
    if protocol(signal, env) == "grpc":
        return settings.endpoint
    return settings.endpoint.rstrip("/") + f"/v1/{signal}"
