"""The standard OTLP exporter variables we parse ourselves: endpoint, headers, protocol.

The SDK parses them too; we read the few whose mistakes it would turn into an exception or a silent
failure, repair what can be repaired (with one warning) and add our bearer token to the headers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import unquote, urlsplit

from .values import Secret, host_of, is_loopback, read, safe_url

_logger = logging.getLogger("otel_segments.settings.config")

OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TOKEN = "OTEL_EXPORTER_OTLP_TOKEN"
OTEL_EXPORTER_OTLP_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"

SIGNALS = ("traces", "metrics", "logs")
PROTOCOLS = ("grpc", "http/protobuf")
# The specification's default. The Python SDK's "otlp" reads gRPC when no protocol is set, so we always name
# the exporter itself (runtime.exporters); gRPC is the "grpc" extra, loaded only when a variable asks for it.
DEFAULT_PROTOCOL = "http/protobuf"
TOKEN_REFUSED = "characters a bearer token cannot have (spaces, control or non-ASCII characters)"


def url_problem(url: str) -> str | None:
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


def with_scheme(name: str, raw: str, *, consequence: str, bearer_token: bool) -> str | None:
    """``raw`` as a usable http(s) URL, adding ``http://`` when the scheme is missing; None when unusable.

    One warning at most: an unusable value (ending in ``consequence``), or a missing scheme and, for a URL
    that carries the ``bearer_token``, plain http to a host other than this one, reported together. URLs
    are shown by :func:`safe_url`: never a user or password, however malformed.
    """
    added = "://" not in raw
    url = "http://" + raw if added else raw
    problem = url_problem(url)
    if problem is not None:
        _logger.warning("%s=%r %s; %s", name, safe_url(raw), problem, consequence)
        return None
    host = host_of(url)
    exposed = bearer_token and urlsplit(url).scheme == "http" and not is_loopback(host)
    risk = f"{host[:200]} over plain http: the bearer token travels unencrypted; use https"
    if added:
        _logger.warning(
            "%s=%r has no scheme; using %r%s", name, safe_url(raw), safe_url(url), f", which points at {risk}" if exposed else ""
        )
    elif exposed:
        _logger.warning("%s points at %s", name, risk)
    return url


def endpoint(env: Mapping[str, object]) -> str | None:
    raw = read(env, OTEL_EXPORTER_OTLP_ENDPOINT)
    if not raw:
        return None
    return with_scheme(OTEL_EXPORTER_OTLP_ENDPOINT, raw, consequence="the plugin stays off", bearer_token=True)


def endpoint_refused(env: Mapping[str, object]) -> str | None:
    """Why a set ``OTEL_EXPORTER_OTLP_ENDPOINT`` was refused (for the plugin's "off" line), or None. Never warns."""
    raw = read(env, OTEL_EXPORTER_OTLP_ENDPOINT)
    if not raw:
        return None
    return url_problem(raw if "://" in raw else "http://" + raw)


def protocol(signal: str, environ: Mapping[str, str] | None = None) -> str:
    """The OTLP protocol for ``signal``, falling back (with a warning) when the value is unknown."""
    env = os.environ if environ is None else environ
    name, raw = _protocol_variable(signal, env)
    if raw and raw not in PROTOCOLS:
        _logger.warning("%s=%r is not one of %s; using %s", name, raw[:64], ", ".join(PROTOCOLS), DEFAULT_PROTOCOL)
    return raw if raw in PROTOCOLS else DEFAULT_PROTOCOL


def _protocol_variable(signal: str, env: Mapping[str, object]) -> tuple[str, str]:
    """The variable that sets ``signal``'s protocol and its value (empty when neither is set)."""
    per_signal = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    raw = read(env, per_signal)
    return (per_signal, raw) if raw else (OTEL_EXPORTER_OTLP_PROTOCOL, read(env, OTEL_EXPORTER_OTLP_PROTOCOL))


def warn_plain_text_endpoints(env: Mapping[str, object]) -> None:
    """One warning for each per-signal endpoint over which an exporter would send the bearer token unencrypted.

    The general ``OTEL_EXPORTER_OTLP_ENDPOINT`` is checked where it is read (:func:`endpoint`). As the SDK's
    exporters decide: OTLP/HTTP sends in plain text to an ``http://`` URL; OTLP/gRPC to any URL but
    ``https://`` when ``OTEL_EXPORTER_OTLP_<SIGNAL>_INSECURE`` (else ``OTEL_EXPORTER_OTLP_INSECURE``) is
    ``true``, and to ``http://`` when neither is set. A loopback address is not a risk.
    """
    for signal in SIGNALS:
        name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
        raw = read(env, name)
        if not raw:
            continue
        scheme = raw.partition("://")[0].lower() if "://" in raw else ""
        insecure_by = None
        chosen = _protocol_variable(signal, env)[1]
        if (chosen if chosen in PROTOCOLS else DEFAULT_PROTOCOL) == "grpc":
            for variable in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"):
                value = env.get(variable)
                if isinstance(value, str):
                    insecure_by = variable if value.lower() == "true" else None
                    break
            plain = scheme != "https" and (insecure_by is not None or scheme == "http")
        else:
            plain = scheme == "http"
        host = host_of(raw)
        if plain and host and not is_loopback(host):
            how = f"without TLS ({insecure_by}=true)" if insecure_by else "over plain http"
            _logger.warning("%s points at %s %s: the bearer token travels unencrypted; use https", name, host[:200], how)


def parse_headers(name: str, raw: str) -> dict[str, str]:
    """Parse an ``OTEL_EXPORTER_OTLP_*HEADERS`` value, skipping malformed items with one warning for all of them.

    An item is malformed without ``=``, with a key that is empty or not printable ASCII without spaces,
    or with a value that is not printable ASCII (after percent-decoding): gRPC or the HTTP client would refuse
    such a header on every export, and quote it (value included) in its error.
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
        if not sep or not key or not (key.isascii() and key.isprintable()) or " " in key or not _header_value(value):
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


def _header_value(value: str) -> bool:
    """Printable ASCII: gRPC metadata takes nothing else, and an HTTP client may refuse or mangle the rest."""
    return value.isascii() and value.isprintable()


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


class HasEndpoint(Protocol):
    """What :func:`otlp_endpoint` reads of :class:`~.config.Settings` (a protocol: ``config`` imports this module)."""

    @property
    def endpoint(self) -> str | None: ...


def otlp_endpoint(signal: str, settings: HasEndpoint, environ: Mapping[str, str] | None = None) -> str | None:
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
        _logger.warning("%s has %s; ignoring it", OTEL_EXPORTER_OTLP_TOKEN, TOKEN_REFUSED)
        return None
    return Secret(value)
