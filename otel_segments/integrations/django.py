"""Django: a middleware that sets the user context from ``request.user``.

Add ``"otel_segments.integrations.django.UserContextMiddleware"`` to
``MIDDLEWARE`` after ``django.contrib.auth.middleware.AuthenticationMiddleware``.
Anonymous requests get no user. It works in sync and async stacks (in async it
reads the user with ``request.auser()``, so it never touches the database from
the event loop). Subclass it and override :meth:`resolve` to read your own
fields; by default it sends the id, and ``role``, ``is_admin`` (else Django's
``is_superuser``) and ``auth_method`` / ``auth_provider`` when the user model has them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth.signals import user_logged_in

from ..context import UserProperties, clear_user
from . import UserInfo, activate, report_once, user_info

#: True inside the middleware: a login signal outside a request (``Client.login()``, a shell) must not set a user.
_in_request: ContextVar[bool] = ContextVar("otel_segments_django_request", default=False)


class UserContextMiddleware:
    """Sets the user context for the request and restores the previous one when the response is ready."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        user_logged_in.connect(_logged_in, dispatch_uid="otel_segments.user_logged_in", weak=False)

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        inside = _in_request.set(True)
        token = self._start(lambda: self.resolve(request))
        try:
            return self.get_response(request)
        finally:
            if token is not None:
                clear_user(token)
            _in_request.reset(inside)

    async def __acall__(self, request: Any) -> Any:
        try:
            user = await request.auser() if hasattr(request, "auser") else None
        except Exception:  # noqa: BLE001 - the host app's request must not fail because of us
            report_once("django.auser", "reading request.auser() failed")
            user = None
        inside = _in_request.set(True)
        token = self._start(lambda: self.resolve(request, user))
        try:
            return await self.get_response(request)
        finally:
            if token is not None:
                clear_user(token)
            _in_request.reset(inside)

    def resolve(self, request: Any, user: Any = None) -> UserInfo | None:
        """The user-context arguments for ``request`` (``user`` is the already loaded user in async stacks)."""
        return django_user_info(user if user is not None else getattr(request, "user", None))

    def _start(self, resolve: Callable[[], UserInfo | None]) -> Token[UserProperties | None] | None:
        try:
            info = resolve()
        except Exception:  # noqa: BLE001
            report_once("django.resolve", "resolving the Django user failed")
            info = None
        try:
            return activate(info)
        except Exception:  # noqa: BLE001
            report_once("django.activate", "the Django user resolver returned something that is not a user")
            return None


def django_user_info(user: Any) -> dict[str, Any] | None:
    """``user_info`` plus Django's own admin flag when the model has no ``is_admin``."""
    info = user_info(user)
    if info is not None and "is_admin" not in info:
        superuser = getattr(user, "is_superuser", None)
        if isinstance(superuser, bool):
            info["is_admin"] = superuser
    return info


def _logged_in(sender: Any, request: Any = None, user: Any = None, **_: Any) -> None:
    """A login inside the request: the rest of its spans are the new user's (the middleware restores afterwards)."""
    if not _in_request.get():
        return
    try:
        activate(django_user_info(user))
    except Exception:  # noqa: BLE001
        report_once("django.login_signal", "reading the user who just logged in failed")
