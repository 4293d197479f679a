"""The standard OTLP exporter variables we parse ourselves: endpoint, headers, protocol.

The SDK parses them too; we read the few whose mistakes it would turn into an exception or a silent
failure, repair what can be repaired (with one warning) and add our bearer token to the headers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .values import Secret, read

if TYPE_CHECKING:
    from .config import Settings

_logger = logging.getLogger("otel_segments.config")

OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TOKEN = "OTEL_EXPORTER_OTLP_TOKEN"
OTEL_EXPORTER_OTLP_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"

SIGNALS = ("traces", "metrics", "logs")
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PROTOCOL = "grpc"  # what the Python SDK and opentelemetry-distro use when none is set
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def url(env: Mapping[str, object], name: str, default: str) -> str:
    raw = read(env, name)
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


def endpoint(env: Mapping[str, object]) -> str | None:
    raw = read(env, OTEL_EXPORTER_OTLP_ENDPOINT)
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


def token(env: Mapping[str, object]) -> Secret | None:
    """The bearer token. It goes into an HTTP header and gRPC metadata, so only printable ASCII without spaces.

    Anything else would fail every export, and the HTTP client's error would quote the whole header, token
    included, into the exporter's log. The warning never shows the value.
    """
    value = read(env, OTEL_EXPORTER_OTLP_TOKEN)
    if not value:
        return None
    if not (value.isascii() and value.isprintable()) or " " in value:
        _logger.warning(
            "%s has characters a bearer token cannot have (spaces, control or non-ASCII characters); ignoring it",
            OTEL_EXPORTER_OTLP_TOKEN,
        )
        return None
    return Secret(value)
