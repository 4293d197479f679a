"""Django: a middleware that sets the user context from ``request.user``, added for you under auto-instrumentation.

Under ``opentelemetry-instrument`` the ``otel_segments_django`` instrumentor
calls :func:`instrument`: when Django builds a handler's middleware chain
(``BaseHandler.load_middleware``, after settings are loaded), it puts
:class:`UserContextMiddleware` right after the last authentication middleware
(``AuthenticationMiddleware``, ``RemoteUserMiddleware`` or a subclass) unless
``MIDDLEWARE`` already names it or a subclass. That one,
:class:`AutoUserContextMiddleware`, leaves a user the app set itself alone.
Settings are not read when the
instrumentor runs: ``manage.py`` sets ``DJANGO_SETTINGS_MODULE`` only later.

By hand: add ``"otel_segments.integrations.django.UserContextMiddleware"`` to
``MIDDLEWARE`` after ``django.contrib.auth.middleware.AuthenticationMiddleware``.
Anonymous requests get no user. It works in sync and async stacks (in async it
reads the user with ``request.auser()``, so it never touches the database from
the event loop). Subclass it and override :meth:`resolve` to read your own
fields; by default it sends the id, and ``role``, ``is_admin`` and ``auth_method`` /
``auth_provider`` when the user model has them. Else ``is_admin`` is Django's
``is_superuser`` (``OTEL_SEGMENTS_DJANGO_ADMIN=is_staff`` picks ``is_staff``, for
the spans and the ``django`` schema mapping alike) and ``auth_method`` names the
authentication backend the session was logged in with: ``password`` for
``ModelBackend`` and its subclasses, ``remote_user`` for ``RemoteUserBackend``,
else the class name less ``Backend``, lowercased (``LDAPBackend`` -> ``ldap``).
The role is named by the user's groups, as the ``django`` schema mapping names it
(``OTEL_SEGMENTS_DJANGO_ROLES``: the first group by id, a list of ``group=role``,
or ``none``), without a query per request: the groups are read once at login
and kept in the session; else from groups the app prefetched; else once per
user per process (a bounded cache, :mod:`.django_groups`), in async stacks
off the event loop. A change of groups reaches the spans at the next login, or
in a process that had not read that user yet.
A ``login()`` during the request switches the user at once, and the request's
server span gets the new user even when the login runs inside a span of the
app's own; a ``logout()`` clears it for the rest of the request.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib.auth.signals import user_logged_in, user_logged_out

from ..settings.django_variables import django_admin_flag
from ..spans.context import current_user
from . import RequestScope, UserInfo, end_request, report_once, start_request, switch_user, user_info
from .django_groups import ROLE, group_role_of, group_roles, read_role

MIDDLEWARE_PATH = "otel_segments.integrations.django.AutoUserContextMiddleware"
_insert_lock = threading.Lock()


class UserContextMiddleware:
    """Sets the user context for the request and restores the previous one when the response is ready."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)
        _connect_signals()

    def __call__(self, request: Any) -> Any:
        if self._async:
            return self.__acall__(request)
        if self._leave_to_app():
            return self.get_response(request)
        scope = self._start(lambda: self.resolve(request))
        try:
            return self.get_response(request)
        finally:
            if scope is not None:
                end_request(scope)

    async def __acall__(self, request: Any) -> Any:
        if self._leave_to_app():
            return await self.get_response(request)
        try:
            user = await request.auser() if hasattr(request, "auser") else None
            known = group_roles() is None or group_role_of(user, request, query=False) is not None
            if getattr(user, "is_authenticated", False) and not known:
                await sync_to_async(group_role_of)(user, request)  # a query, once per user per process: not on the loop
        except Exception:  # noqa: BLE001 - the host app's request must not fail because of us
            report_once("django.auser", "reading request.auser() failed")
            user = None
        scope = self._start(lambda: self.resolve(request, user))
        try:
            return await self.get_response(request)
        finally:
            if scope is not None:
                end_request(scope)

    def resolve(self, request: Any, user: Any = None) -> UserInfo | None:
        """The user-context arguments for ``request`` (``user`` is the already loaded user in async stacks)."""
        return django_user_info(user if user is not None else getattr(request, "user", None), request)

    def _leave_to_app(self) -> bool:
        return False

    def _start(self, resolve: Callable[[], UserInfo | None]) -> RequestScope | None:
        try:
            info = resolve()
        except Exception:  # noqa: BLE001
            report_once("django.resolve", "resolving the Django user failed")
            info = None
        try:
            return start_request(info, follow_login=True)
        except Exception:  # noqa: BLE001
            report_once("django.activate", "the Django user resolver returned something that is not a user")
            return None


class AutoUserContextMiddleware(UserContextMiddleware):
    """The one the instrumentor adds: it leaves a user that the app's own code set (``set_user``, a middleware) alone."""

    def _leave_to_app(self) -> bool:
        return current_user() is not None


def django_user_info(user: Any, request: Any = None) -> dict[str, Any] | None:
    """``user_info`` plus Django's own admin flag and the session's backend, when the model has neither."""
    info = user_info(user)
    if info is None:
        return info
    if "is_admin" not in info:
        admin = getattr(user, _admin_flag(), None)
        if isinstance(admin, bool):
            info["is_admin"] = admin
    if "auth_method" not in info:
        method = backend_method(_backend_path(user, request))
        if method is not None:
            info["auth_method"] = method
    if "role" not in info:
        role = group_role_of(user, request)
        if role:
            info["role"] = role
    return info


@functools.cache
def _admin_flag() -> str:
    return django_admin_flag()


def _backend_path(user: Any, request: Any) -> str | None:
    """The backend that logged the user in: ``authenticate()`` marks the user, ``login()`` the session."""
    path = getattr(user, "backend", None)
    if isinstance(path, str):
        return path
    session = getattr(request, "session", None)
    if session is None:
        return None
    from django.contrib.auth import BACKEND_SESSION_KEY

    path = session.get(BACKEND_SESSION_KEY)  # loaded already: reading request.user read the session
    return path if isinstance(path, str) else None


@functools.lru_cache(maxsize=64)
def backend_method(path: str | None) -> str | None:
    """``ModelBackend`` (or a subclass) -> ``password``, ``RemoteUserBackend`` -> ``remote_user``, ``LDAPBackend`` -> ``ldap``."""
    if not path:
        return None
    from django.contrib.auth.backends import ModelBackend, RemoteUserBackend
    from django.utils.module_loading import import_string

    try:
        backend = import_string(path)
    except ImportError:
        return None
    if isinstance(backend, type) and issubclass(backend, RemoteUserBackend):  # a ModelBackend too: asked first
        return "remote_user"
    if isinstance(backend, type) and issubclass(backend, ModelBackend):
        return "password"
    name = path.rpartition(".")[2]
    return (name.removesuffix("Backend") or name).lower()


def _connect_signals() -> None:
    """Login and logout receivers; a ``dispatch_uid`` keeps them connected once however many middleware instances."""
    user_logged_in.connect(_logged_in, dispatch_uid="otel_segments.user_logged_in", weak=False)
    user_logged_out.connect(_logged_out, dispatch_uid="otel_segments.user_logged_out", weak=False)


def _logged_in(sender: Any, request: Any = None, user: Any = None, **_: Any) -> None:
    """A login inside the request: the rest of its spans are the new user's. Outside one (a shell, Client.login()): nothing.

    Either way the user's role is read now, once, and kept in the session for the requests that follow.
    """
    try:
        roles = group_roles()
        if roles is not None and user is not None and getattr(request, "session", None) is not None:
            user.__dict__.pop(ROLE, None)  # a login reads the groups afresh
            request.session[ROLE] = read_role(user, roles)
        switch_user(django_user_info(user, request))
    except Exception:  # noqa: BLE001
        report_once("django.login_signal", "reading the user who just logged in failed")


def _logged_out(sender: Any, **_: Any) -> None:
    try:
        switch_user(None)
    except Exception:  # noqa: BLE001
        report_once("django.logout_signal", "clearing the user who just logged out failed")


def instrument() -> None:
    """Add :class:`UserContextMiddleware` to every handler Django builds (the instrumentor calls this)."""
    import wrapt

    wrapt.wrap_function_wrapper("django.core.handlers.base", "BaseHandler.load_middleware", _load_middleware)
    _connect_signals()


def uninstrument() -> None:
    from django.core.handlers.base import BaseHandler
    from opentelemetry.instrumentation.utils import unwrap

    unwrap(BaseHandler, "load_middleware")


def _load_middleware(wrapped: Callable[..., Any], handler: Any, args: Any, kwargs: Any) -> Any:
    try:
        add_middleware()
    except Exception:  # noqa: BLE001 - the app must start whatever its settings look like
        report_once("django.middleware", "adding UserContextMiddleware to MIDDLEWARE failed")
    return wrapped(*args, **kwargs)


def add_middleware() -> bool:
    """Put :class:`UserContextMiddleware` after the last authentication middleware in ``settings.MIDDLEWARE``.

    Returns whether it is there now. Nothing changes when ``MIDDLEWARE`` already
    names it or a subclass (the app placed it), or names no authentication
    middleware (no ``request.user`` to read).
    """
    from django.conf import settings
    from django.contrib.auth.middleware import AuthenticationMiddleware, RemoteUserMiddleware
    from django.utils.module_loading import import_string

    with _insert_lock:
        middleware = list(settings.MIDDLEWARE)
        after = None
        for index, path in enumerate(middleware):
            try:
                cls = import_string(path)
            except Exception:  # noqa: BLE001 - Django reports a broken entry itself, right after us
                continue
            if not isinstance(cls, type):
                continue
            if issubclass(cls, UserContextMiddleware):
                return True
            if issubclass(cls, (AuthenticationMiddleware, RemoteUserMiddleware)):
                after = index
        if after is None:
            return False
        middleware.insert(after + 1, MIDDLEWARE_PATH)
        settings.MIDDLEWARE = middleware
        return True
