"""ASGI (Starlette, FastAPI, any ASGI app): a middleware that sets the user context from a resolver.

    app = UserContextMiddleware(app, resolver=lambda scope: {"user_id": scope["user"].id} if ... else None)

The resolver gets the ASGI ``scope`` and returns ``set_user`` keyword arguments
(``{"user_id": ..., "role": ...}``) or None; it may be a coroutine function.
Put this middleware *inside* the one that authenticates (Starlette's
``AuthenticationMiddleware`` fills ``scope["user"]``) and inside OpenTelemetry's
ASGI middleware, so the server span is current and gets the user too.

With FastAPI, authentication often lives in a dependency instead: call
``set_user`` there when the dependency is ``async def`` (it runs in the request's
task). A plain ``def`` dependency runs in a worker thread whose context changes
do not come back to the request.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..spans.context import clear_user
from . import UserInfo, activate, report_once

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class UserContextMiddleware:
    """Runs ``app`` with the user that ``resolver(scope)`` names, for HTTP and WebSocket connections."""

    def __init__(self, app: ASGIApp, resolver: Callable[[Scope], UserInfo | Awaitable[UserInfo | None] | None]) -> None:
        self.app = app
        self.resolver = resolver

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = None
        try:
            info = self.resolver(scope)
            if inspect.isawaitable(info):
                info = await info
            token = activate(info)
        except Exception:  # noqa: BLE001 - the host app's request must not fail because of us
            report_once("asgi.resolver", "the ASGI user resolver failed")
        try:
            await self.app(scope, receive, send)
        finally:
            if token is not None:
                clear_user(token)
