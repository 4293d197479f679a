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
import re
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
    def from_env(cls, environ: Mapping[str, object] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            endpoint=_endpoint(env),
            token=_token(env),
            sdk_disabled=_sdk_disabled(env),
            database_url=_secret(env, OTEL_SEGMENTS_DATABASE_URL),
            state_url=_secret(env, OTEL_SEGMENTS_STATE_URL),
            schema=_raw(env, OTEL_SEGMENTS_SCHEMA) or DEFAULT_SCHEMA,
            refresh_interval_ms=_positive_int(env, OTEL_SEGMENTS_REFRESH_INTERVAL, DEFAULT_REFRESH_INTERVAL_MS),
            max_segment_age_ms=_positive_int(env, OTEL_SEGMENTS_MAX_SEGMENT_AGE, DEFAULT_MAX_SEGMENT_AGE_MS),
            cache_size=_positive_int(env, OTEL_SEGMENTS_CACHE_SIZE, DEFAULT_CACHE_SIZE),
            trust_baggage=_bool(env, OTEL_SEGMENTS_TRUST_BAGGAGE, False),
            user_id_hash_key=_secret(env, OTEL_SEGMENTS_USER_ID_HASH_KEY),
            posthog_api_key=_secret(env, POSTHOG_API_KEY),
            posthog_host=_url(env, POSTHOG_HOST, DEFAULT_POSTHOG_HOST),
        )


def _raw(env: Mapping[str, object], name: str) -> str:
    """The variable's value, stripped. Code (not a shell) may pass other types: bytes are decoded, the rest is text."""
    value = env.get(name)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")  # as os.environ decodes the process environment
    elif not isinstance(value, str):
        try:
            value = str(value)
        except Exception:  # noqa: BLE001 - a broken __str__ is a missing value, not a crash
            return ""
    return value.strip()


def _secret(env: Mapping[str, object], name: str) -> Secret | None:
    value = _raw(env, name)
    return Secret(value) if value else None


def _token(env: Mapping[str, object]) -> Secret | None:
    """The bearer token. It goes into an HTTP header and gRPC metadata, so only printable ASCII without spaces.

    Anything else would fail every export, and the HTTP client's error would quote the whole header, token
    included, into the exporter's log. The warning never shows the value.
    """
    value = _raw(env, OTEL_EXPORTER_OTLP_TOKEN)
    if not value:
        return None
    if not (value.isascii() and value.isprintable()) or " " in value:
        _logger.warning(
            "%s has characters a bearer token cannot have (spaces, control or non-ASCII characters); ignoring it",
            OTEL_EXPORTER_OTLP_TOKEN,
        )
        return None
    return Secret(value)


def _sdk_disabled(env: Mapping[str, object]) -> bool:
    """As the OpenTelemetry specification says: only ``true`` (any case) is true; other values warn."""
    raw = _raw(env, OTEL_SDK_DISABLED).lower()
    if raw not in ("", "true", "false"):
        _logger.warning("%s=%r is not true or false; using false", OTEL_SDK_DISABLED, raw[:64])
    return raw == "true"


_MAX_INT = 2**31 - 1  # ~24 days in ms: larger timer values overflow the thread primitives
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


def _positive_int(env: Mapping[str, object], name: str, default: int) -> int:
    raw = _raw(env, name)
    if not raw:
        return default
    if _INTEGER.fullmatch(raw) is None or not 0 < int(raw) <= _MAX_INT:
        _logger.warning("%s=%r is not an integer from 1 to %d; using the default %d", name, raw[:64], _MAX_INT, default)
        return default
    return int(raw)


def _bool(env: Mapping[str, object], name: str, default: bool) -> bool:
    raw = _raw(env, name).lower()
    if not raw:
        return default
    if raw in ("true", "1", "yes", "on"):
        return True
    if raw in ("false", "0", "no", "off"):
        return False
    _logger.warning("%s=%r is not true or false; using the default %s", name, raw[:64], str(default).lower())
    return default


def _url(env: Mapping[str, object], name: str, default: str) -> str:
    raw = _raw(env, name)
    if not raw:
        return default
    return _with_scheme(name, raw) or default


def _url_problem(url: str) -> str | None:
    """Why the exporters or requests could not use ``url``, or None."""
    if not url.isprintable() or any(c.isspace() for c in url):
        return "has spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https"):
        return "has an unsupported scheme (use http or https)"
    if not parts.hostname:
        return "has no host"
    return None


def _with_scheme(name: str, raw: str, *, bearer_token: bool = False) -> str | None:
    """``raw`` as a usable http(s) URL, adding ``http://`` when the scheme is missing; None when unusable.

    One warning at most: a missing scheme and, for a URL that carries the ``bearer_token``, plain http
    to a host other than this one are reported together. Values are shortened in the message.
    """
    added = "://" not in raw
    url = "http://" + raw if added else raw
    problem = _url_problem(url)
    if problem is not None:
        _logger.warning("%s=%r %s; ignoring it", name, raw[:200], problem)
        return None
    host = urlsplit(url).hostname or ""
    exposed = bearer_token and url.startswith("http://") and host not in _LOOPBACK_HOSTS and not host.startswith("127.")
    risk = f"{host[:200]} over plain http: the bearer token travels unencrypted; use https"
    if added:
        _logger.warning(
            "%s=%r has no scheme; using %r%s", name, raw[:200], url[:207], f", which points at {risk}" if exposed else ""
        )
    elif exposed:
        _logger.warning("%s points at %s", name, risk)
    return url


def _endpoint(env: Mapping[str, object]) -> str | None:
    raw = _raw(env, OTEL_EXPORTER_OTLP_ENDPOINT)
    if not raw:
        return None
    return _with_scheme(OTEL_EXPORTER_OTLP_ENDPOINT, raw, bearer_token=True)


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
    """Parse an ``OTEL_EXPORTER_OTLP_*HEADERS`` value, skipping malformed items with one warning for all of them.

    An item is malformed without ``=``, with a key that is empty or not printable ASCII without spaces,
    or with control characters in its value: the HTTP client would refuse such a header on every export,
    and quote it (value included) in its error.
    """
    headers: dict[str, str] = {}
    malformed = 0
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = unquote(key).strip().lower()
        value = unquote(value).strip()
        if not sep or not key or not (key.isascii() and key.isprintable()) or " " in key or not value.isprintable():
            malformed += 1
            continue
        headers[key] = value
    if malformed:
        _logger.warning(
            "%s has %d malformed item%s (expected key=value without control characters); skipping %s",
            name,
            malformed,
            "" if malformed == 1 else "s",
            "it" if malformed == 1 else "them",
        )
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
