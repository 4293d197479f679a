"""Reading one environment variable: its raw text, and typed values with a documented default.

A malformed value never raises: it becomes the default, with one warning naming the variable.
Secrets are wrapped so that they never show in a repr, a log line or a traceback, and a URL is shown
only through :func:`safe_url`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

_logger = logging.getLogger("otel_segments.settings.config")


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


def read(env: Mapping[str, object], name: str) -> str:
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


def secret(env: Mapping[str, object], name: str) -> Secret | None:
    value = read(env, name)
    return Secret(value) if value else None


_MAX_INT = 2**31 - 1  # ~24 days in ms: larger timer values overflow the thread primitives
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


def positive_int(env: Mapping[str, object], name: str, default: int) -> int:
    raw = read(env, name)
    if not raw:
        return default
    if _INTEGER.fullmatch(raw) is None or not 0 < int(raw) <= _MAX_INT:
        _logger.warning("%s=%r is not an integer from 1 to %d; using the default %d", name, raw[:64], _MAX_INT, default)
        return default
    return int(raw)


def boolean(env: Mapping[str, object], name: str, default: bool) -> bool:
    """The OpenTelemetry specification's rule for every boolean variable, ours and ``OTEL_SDK_DISABLED`` alike: ``true``
    or ``false`` in any case. ``1``, ``yes`` or ``on`` are refused with a warning, not read as true: a reader of the
    SDK's own variables would read them as false, and one rule for all is the one a user can remember.
    """
    raw = read(env, name).lower()
    if not raw:
        return default
    if raw in ("true", "false"):
        return raw == "true"
    _logger.warning("%s=%r is not true or false; using the default %s", name, raw[:64], str(default).lower())
    return default


def choice(env: Mapping[str, object], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (in any case); anything else is the default, with one warning naming the choices."""
    raw = read(env, name).lower()
    if not raw:
        return default
    if raw in choices:
        return raw
    _logger.warning("%s=%r is not one of %s; using the default %s", name, raw[:64], ", ".join(choices), default)
    return default


#: Characters of a URL shown in a log line, at most.
SHOWN_URL_LENGTH = 200


def safe_url(url: str) -> str:
    """``url`` as it may appear in a log line: no user, password, query or fragment, however malformed.

    A well-formed URL keeps its scheme, host, port and path. Anything else (a port out of range, a
    password with an unencoded ``@``, ``/`` or ``?``, no scheme) is read as text: everything up to the
    last ``@`` is taken for credentials and dropped, and so is everything from the first ``?`` or ``#``
    after it. Cut to :data:`SHOWN_URL_LENGTH` characters; quote it with ``%r`` (it may hold control characters).
    """
    scheme, sep, rest = url.partition("://")
    try:
        parts = urlsplit(url)
        port = parts.port
        well_formed = bool(sep) and "@" not in parts.path + parts.query + parts.fragment
    except ValueError:
        well_formed = False
    if well_formed:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        shown = urlunsplit((parts.scheme, host if port is None else f"{host}:{port}", parts.path, "", ""))
    else:
        rest = (rest if sep else url).rpartition("@")[2]
        rest = rest.partition("?")[0].partition("#")[0]
        shown = f"{scheme}://{rest}" if sep else rest
    return shown[:SHOWN_URL_LENGTH]


def host_of(url: str) -> str:
    """The host ``url`` names (lower case, no brackets), with or without a scheme; empty when it names none."""
    try:
        return urlsplit(url if "://" in url else "//" + url).hostname or ""
    except ValueError:
        return ""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine, decided by its address (``127.0.0.0/8``, ``::1``) or the name ``localhost``.

    Never by a prefix of the name: ``127.attacker.example`` is a host name anyone can register.
    """
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
