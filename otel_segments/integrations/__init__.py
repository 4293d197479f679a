"""Framework integrations: set the user context for each request, from the framework's own idea of the user.

Each submodule imports its framework only when it is imported itself, so
``import otel_segments`` never pulls in Flask or Django. They share the helpers
here: turning a user object or a resolver's dict into the user context, and
writing the user's attributes onto the request's server span, which the
framework's instrumentation started before anyone knew who the user was.

A request scope (:func:`start_request` ... :func:`end_request`) remembers that
server span: it is the current span when the request's user is first read. A
login or logout later in the request (:func:`switch_user`) may run inside a
span of the app's own, and still reaches the server span through it. Nothing
of this is on the span processor's path: the per-span cost stays as it was.

May import: spans/, settings/, runtime/ and the root's ``configuration`` (the configured cache); never SQL or a sink.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from ..spans.context import UserProperties, clear_user, current_user, set_user

_logger = logging.getLogger(__name__)
_reported: set[str] = set()

#: What a resolver or user loader returns: ``set_user`` keyword arguments with ``user_id``, or None for anonymous.
UserInfo = Mapping[str, Any]
Resolver = Callable[..., Any]

#: Attributes of a user object that may carry the auth method, in order of preference.
_AUTH_ATTRIBUTES = ("auth_method", "auth_provider")


def report_once(where: str, message: str) -> None:
    """Log ``message`` with the current exception the first time ``where`` fails; stay silent after."""
    if where not in _reported:
        _reported.add(where)
        _logger.warning("otel_segments: %s; the request goes on without user properties (logged once)", message, exc_info=True)


def _plain(value: Any) -> Any:
    """A property value, called first when the object exposes it as a method (``user.is_admin()``)."""
    return value() if callable(value) else value


def user_info(user: Any, *, authenticated: bool = False) -> dict[str, Any] | None:
    """The user-context arguments for a framework user object (Flask-Login, Django), or None when anonymous.

    Reads the id and, when present, ``role``, ``is_admin`` and ``auth_method`` /
    ``auth_provider``. Nothing else: a user object's name, username and email stay in the process.
    ``authenticated``: the caller's auth library vouched for it (a plain model object has no ``is_authenticated``).
    """
    if user is None or not (authenticated or _plain(getattr(user, "is_authenticated", False))):
        return None
    get_id = getattr(user, "get_id", None)
    user_id = get_id() if callable(get_id) else getattr(user, "pk", None)
    if user_id is None:
        user_id = getattr(user, "id", None)
    if user_id is None:
        return None
    info: dict[str, Any] = {"user_id": user_id}
    role = _plain(getattr(user, "role", None))
    if isinstance(role, str):
        info["role"] = role
    is_admin = _plain(getattr(user, "is_admin", None))
    if isinstance(is_admin, bool):
        info["is_admin"] = is_admin
    for name in _AUTH_ATTRIBUTES:
        method = _plain(getattr(user, name, None))
        if isinstance(method, str) and method:
            info["auth_method"] = method
            break
    return info


def activate(info: UserInfo | None) -> Token[UserProperties | None]:
    """Make ``info`` the current user (None: anonymous) and write its attributes onto the current span.

    Returns the token to hand to ``clear_user`` at the end of the request, so the
    value before the request comes back (a pooled thread must not keep a user).
    """
    if info is None:
        return set_user(None)
    if not isinstance(info, Mapping) or "user_id" not in info:
        raise TypeError(f"a user resolver must return a mapping with 'user_id' or None, not {type(info).__name__}")
    kwargs = dict(info)
    token = set_user(kwargs.pop("user_id"), **kwargs)
    annotate_current_span()
    return token


def annotate_current_span() -> None:
    """Write the current user's attributes (and cached segment) onto the current span, when it records.

    The server span of a request starts before authentication runs, so the span
    processor saw no user then; this catches that span up.
    """
    _annotate(trace.get_current_span())


def _annotate(span: Span) -> None:
    user = current_user()
    if user is None or not span.is_recording():  # an ended span does not record: nothing is written late
        return
    segment = _segment(user.user_id)
    span.set_attributes({**segment, **user.attributes} if segment else user.attributes)


class RequestScope:
    """One request's user context: the span that was current when it began (the server span) and how to undo it."""

    __slots__ = ("_scope_token", "_user_token", "follow_login", "span")

    def __init__(self, span: Span, follow_login: bool) -> None:
        self.span = span
        self.follow_login = follow_login
        self._user_token: Token[UserProperties | None] | None = None
        self._scope_token: Token[RequestScope | None] | None = None


_scope: ContextVar[RequestScope | None] = ContextVar("otel_segments_request", default=None)


def start_request(info: UserInfo | None, *, follow_login: bool) -> RequestScope:
    """Begin a request for ``info``'s user (None: anonymous); call it where the server span is the current span.

    ``follow_login``: a login or logout later in the request (:func:`switch_user`,
    from the framework's signals) changes the user; an app's own loader that
    decides who the user is says False. Raises ``TypeError`` when ``info`` is not
    a user, before anything is set. Hand the result to :func:`end_request`.
    """
    scope = RequestScope(trace.get_current_span(), follow_login)
    scope._user_token = activate(info)
    scope._scope_token = _scope.set(scope)
    return scope


def end_request(scope: RequestScope) -> None:
    """Restore the user and scope from before :func:`start_request` (a pooled thread must not keep a user)."""
    if scope._scope_token is not None:
        try:
            _scope.reset(scope._scope_token)
        except ValueError:  # ended in another context than it began: clear what this one sees
            _scope.set(None)
        scope._scope_token = None
    if scope._user_token is not None:
        clear_user(scope._user_token)
        scope._user_token = None


def switch_user(info: UserInfo | None) -> None:
    """A login (``info``) or logout (None) inside a request that follows logins; elsewhere it does nothing.

    The rest of the request's spans belong to the new user, or to nobody. On a
    login the current span (perhaps the app's own ``login`` span) and the
    request's server span get the user's attributes; a logout cannot take
    attributes back from spans already written, it only stops further ones.
    """
    scope = _scope.get()
    if scope is None or not scope.follow_login:
        return
    activate(info)  # the token is not kept: end_request restores the value from before the request
    if info is not None and scope.span is not trace.get_current_span():
        _annotate(scope.span)


def _segment(user_id: str) -> Mapping[str, Any] | None:
    from ..configuration import configured

    handle = configured()
    if handle is None or handle.segments is None:
        return None
    return handle.segments.get(user_id)
