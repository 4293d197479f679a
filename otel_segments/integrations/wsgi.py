"""WSGI (any WSGI app): a middleware that sets the user context from a resolver.

    app.wsgi_app = UserContextMiddleware(app.wsgi_app, resolver=lambda environ: ...)

The resolver gets the WSGI ``environ`` and returns ``set_user`` keyword arguments
(``{"user_id": ..., "role": ...}``) or None. Wrap it *inside* OpenTelemetry's
WSGI middleware so the server span is current and gets the user too. The user
stays set while the response body is produced and is cleared when the server
closes the response, so streamed bodies are attributed too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import Token
from typing import Any

from ..spans.context import UserProperties, clear_user
from . import UserInfo, activate, report_once

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class UserContextMiddleware:
    """Runs ``app`` with the user that ``resolver(environ)`` names."""

    def __init__(self, app: WSGIApp, resolver: Callable[[Mapping[str, Any]], UserInfo | None]) -> None:
        self.app = app
        self.resolver = resolver

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        token = None
        try:
            token = activate(self.resolver(environ))
        except Exception:  # noqa: BLE001 - the host app's request must not fail because of us
            report_once("wsgi.resolver", "the WSGI user resolver failed")
        if token is None:
            return self.app(environ, start_response)
        try:
            body = self.app(environ, start_response)
        except BaseException:
            clear_user(token)
            raise
        return _Body(body, token)


class _Body:
    """The app's response body; closing it (PEP 3333: the server always does) restores the user before the request."""

    def __init__(self, body: Iterable[bytes], token: Token[UserProperties | None]) -> None:
        self._body = body
        self._token: Token[UserProperties | None] | None = token

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if self._token is not None:
                clear_user(self._token)
                self._token = None
