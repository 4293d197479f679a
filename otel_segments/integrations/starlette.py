"""Starlette and FastAPI with ``AuthenticationMiddleware``: ``request.user`` on the request's spans, with no code.

Starlette's ``AuthenticationMiddleware`` asks the app's backend who the user is
and stores the answer in ``scope["user"]`` / ``scope["auth"]`` before it calls
the rest of the app. Under ``opentelemetry-instrument`` the
``otel_segments_starlette`` instrumentor wraps the middleware's constructor so
that the app it calls is wrapped once more: each HTTP or WebSocket connection
then runs with the user the backend already returned (the backend never runs a
second time), and the server span, current there, gets the user's attributes.

The user object is read as elsewhere (:func:`~otel_segments.integrations.user_info`):
its ``id`` / ``pk`` / ``get_id()``, and ``role``, ``is_admin``, ``auth_method``
when it has them. Starlette's own ``SimpleUser`` holds only a username, which
never leaves the process: such a user gets no user properties, said once in the
log. ``auth_method`` defaults to the backend's class name, less ``AuthBackend`` /
``Backend``, lowercased (``JWTAuthBackend`` -> ``jwt``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import end_request, report_once, start_request, user_info

_MODULE = "starlette.middleware.authentication"
_logger = logging.getLogger(__name__)
_no_id: set[str] = set()

Scope = MutableMapping[str, Any]


def backend_method(backend: object) -> str:
    """``JWTAuthBackend`` -> ``jwt``, ``SessionBackend`` -> ``session``."""
    name = type(backend).__name__
    for suffix in ("AuthenticationBackend", "AuthBackend", "Backend"):
        if name.endswith(suffix) and name != suffix:
            return name.removesuffix(suffix).lower()
    return name.lower()


class _WithUser:
    """The app behind ``AuthenticationMiddleware``, run with the user it found (``scope["user"]``)."""

    def __init__(self, app: Callable[..., Awaitable[None]], backend: object) -> None:
        self.app = app
        self.method = backend_method(backend)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        request = None
        if scope.get("type") in ("http", "websocket"):
            request = _start(scope.get("user"), self.method)
        try:
            await self.app(scope, receive, send)
        finally:
            if request is not None:
                end_request(request)


def _start(user: Any, method: str) -> Any:
    try:
        info = user_info(user)
        if info is None and _authenticated(user):
            name = type(user).__name__
            if name not in _no_id:
                _no_id.add(name)
                _logger.warning(
                    "otel_segments: the authenticated Starlette user %s has no id, pk or get_id(); its requests carry no user",
                    name,
                )
        if info is not None:
            info.setdefault("auth_method", method)
        return start_request(info, follow_login=False)
    except Exception:  # noqa: BLE001 - the app's request must not fail because of us
        report_once("starlette.user", "reading the Starlette request's user failed")
        return None


def _authenticated(user: Any) -> bool:
    return user is not None and getattr(user, "is_authenticated", False) is True


def _init(wrapped: Callable[..., Any], middleware: Any, args: Any, kwargs: Any) -> Any:
    result = wrapped(*args, **kwargs)
    try:
        if not isinstance(middleware.app, _WithUser):
            middleware.app = _WithUser(middleware.app, middleware.backend)
    except Exception:  # noqa: BLE001 - the app must start whatever its middleware looks like
        report_once("starlette.middleware", "wrapping Starlette's AuthenticationMiddleware failed")
    return result


def _hook(module: Any) -> None:
    import wrapt

    wrapt.wrap_function_wrapper(module, "AuthenticationMiddleware.__init__", _init)


def instrument() -> None:
    """Wrap ``AuthenticationMiddleware.__init__`` when Starlette's is imported (at once if it is already)."""
    import wrapt

    wrapt.register_post_import_hook(_hook, _MODULE)


def uninstrument() -> None:
    import sys

    from opentelemetry.instrumentation.utils import unwrap

    module = sys.modules.get(_MODULE)
    if module is not None:
        unwrap(module.AuthenticationMiddleware, "__init__")
