"""Who the current request is for, held in a ``contextvars.ContextVar``.

Each thread and each asyncio task sees its own value, so one user's properties
never reach another user's span. The span attributes are computed once, when the
user is set, so the span processor only reads a finished dict.

Threads started from a ``ThreadPoolExecutor`` do not inherit the caller's
context: submit ``contextvars.copy_context().run`` (or set the user inside the
worker) to carry the user across.

A user set in the middle of a request (an auth dependency, an authentication
class) is also written onto the request's server span, which started before
anyone knew the user: the span processor notes each local root span (one whose
parent is remote or absent) in a context variable as it starts, and
:func:`set_user` / :class:`user_context` catch that one span up. The cost is per
user set, not per span; the root keeps the last user set inside it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from opentelemetry import trace

from .generator_steps import each_async_step_with, each_step_with
from .privacy import is_pii_key, pii_allowed, pseudonymize

_logger = logging.getLogger(__name__)

USER_ID = "user.id"
USER_ROLES = "user.roles"
USER_PREFIX = "app.user."

#: Extra user properties sent on a span, at most. With the segment's (``cache.MAX_SEGMENT_PROPERTIES``) and the
#: process's, this stays well under the SDK's default limit of 128 attributes a span, so the app's own fit too.
MAX_USER_PROPERTIES = 32

_F = TypeVar("_F", bound=Callable[..., Any])
_warned_keys: set[str] = set()


def _warn_once(key: str, message: str, *args: object, exc_info: bool = False) -> None:
    if key not in _warned_keys and len(_warned_keys) < 1000:
        _warned_keys.add(key)
        _logger.warning(message, *args, exc_info=exc_info)


def _text(value: str | bytes) -> str:
    """Valid UTF-8 text: a lone surrogate or stray byte would make the whole OTLP batch unencodable."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def attribute_value(key: str, value: object) -> Any:
    """``value`` as a valid span attribute value, or None when it cannot be one (then it is left out)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)  # OTLP ints are int64
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, str | bytes):
        return _text(value)
    if isinstance(value, list | tuple):
        items = [attribute_value(key, v) for v in value]
        items = [v for v in items if v is not None]
        if not items:
            return None
        if len({type(v) for v in items}) == 1 and not isinstance(items[0], tuple):  # arrays of primitives only
            return tuple(items)
    _warn_once(key, "otel_segments: user property %r has an unsupported type %s; it is left out", key, type(value).__name__)
    return None


class UserProperties:
    """One user's span attributes, validated once."""

    __slots__ = ("attributes", "user_id")

    def __init__(
        self,
        user_id: object,
        *,
        role: object = None,
        is_admin: object = None,
        auth_method: object = None,
        **extra: object,
    ) -> None:
        self.user_id = _text(user_id if isinstance(user_id, str | bytes) else str(user_id))
        # Extras first and the id last: a span that runs out of attribute room loses its oldest attributes first.
        attributes: dict[str, Any] = {}
        sent = 0
        for key, value in extra.items():
            if is_pii_key(key) and not pii_allowed():
                _warn_once(key, "otel_segments: user property %r names a person; it is not sent (allow_pii=False)", key)
                continue
            clean = attribute_value(key, value)
            if clean is None:
                continue
            if sent == MAX_USER_PROPERTIES:
                _warn_once(
                    "<too many>",
                    "otel_segments: more than %d user properties; the rest are not sent (a span has room for 128)",
                    MAX_USER_PROPERTIES,
                )
                break
            attributes[USER_PREFIX + _text(key)] = clean
            sent += 1
        role_value = attribute_value("role", role)
        if isinstance(role_value, str):
            attributes[USER_ROLES] = (role_value,)
            attributes[USER_PREFIX + "role"] = role_value
        if isinstance(is_admin, bool):
            attributes[USER_PREFIX + "is_admin"] = is_admin
        elif is_admin is not None:
            _warn_once("is_admin", "otel_segments: is_admin must be a bool, got %s; it is left out", type(is_admin).__name__)
        auth_value = attribute_value("auth_method", auth_method)
        if auth_value is not None:
            attributes[USER_PREFIX + "auth_method"] = auth_value
        attributes[USER_ID] = pseudonymize(self.user_id)
        self.attributes: Mapping[str, Any] = attributes

    def __repr__(self) -> str:
        return f"UserProperties(user_id={self.user_id!r})"


_current_user: ContextVar[UserProperties | None] = ContextVar("otel_segments_user", default=None)


def current_user() -> UserProperties | None:
    return _current_user.get()


#: Writes a user's attributes (and cached segment) onto a span: the span processor's, which knows the segments.
Stamp = Callable[[trace.Span, UserProperties], None]
_local_root: ContextVar[tuple[trace.Span, Stamp] | None] = ContextVar("otel_segments_local_root", default=None)


def enter_local_root(span: trace.Span, stamp: Stamp) -> None:
    """Note ``span`` as the local root of the code that runs in this context (the span processor calls it)."""
    _local_root.set((span, stamp))


def _reach_local_root(user: UserProperties | None) -> None:
    """Write ``user`` onto the local root span while it records, when the current span belongs to its trace.

    The trace check keeps a root noted in a reused thread's context (a pool
    worker that started a trace of its own once) away from another request.
    """
    entry = _local_root.get()
    if user is None or entry is None:
        return
    root, stamp = entry
    try:
        if root.is_recording() and root.get_span_context().trace_id == trace.get_current_span().get_span_context().trace_id:
            stamp(root, user)
    except Exception:  # noqa: BLE001 - never into the app's request
        _warn_once("<root>", "otel_segments: could not write the user onto the request's server span", exc_info=True)


def _properties(user_id: object, kwargs: dict[str, object]) -> UserProperties | None:
    try:
        # isinstance, not ==: an id such as a numpy value compares into something whose truth value raises
        if user_id is None or (isinstance(user_id, str | bytes) and not user_id):
            return None
        return UserProperties(user_id, **kwargs)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - bad input from the host app must not break its request
        _warn_once("<user>", "otel_segments: could not read the user's properties; the span carries none", exc_info=True)
        return None


def set_user(
    user_id: object, *, role: object = None, is_admin: object = None, auth_method: object = None, **extra: object
) -> Token[UserProperties | None]:
    """Make ``user_id`` the current user until :func:`clear_user` (for frameworks with request hooks)."""
    props = _properties(user_id, {"role": role, "is_admin": is_admin, "auth_method": auth_method, **extra})
    token = _current_user.set(props)
    _reach_local_root(props)
    return token


def carry_user(properties: UserProperties | None) -> Token[UserProperties | None]:
    """Make an already built user current (a copied Flask context in a thread carries its request's); undo: :func:`clear_user`."""
    return _current_user.set(properties)


def clear_user(token: Token[UserProperties | None] | None = None) -> None:
    """Forget the current user; with the token from :func:`set_user`, restore the one before it."""
    if token is not None:
        try:
            _current_user.reset(token)
            return
        except ValueError:  # token from another context: fall back to clearing
            pass
    _current_user.set(None)


#: The scopes entered in this context, innermost last: (the ``user_context`` instance, its token). Per context,
#: not per instance, so one instance shared by concurrent tasks or threads restores each one's own previous user.
_scopes: ContextVar[tuple[tuple[object, Token[UserProperties | None]], ...]] = ContextVar("otel_segments_scopes", default=())


def _restore(token: Token[UserProperties | None]) -> None:
    """Put back the user from before ``token``; the value it recorded when the context it came from is not this one."""
    try:
        _current_user.reset(token)
    except ValueError:  # made in another context (entered in one task, left in another): never raise into the app
        _current_user.set(None if token.old_value is Token.MISSING else token.old_value)


class user_context:  # noqa: N801 - reads as a function at call sites, like contextlib's helpers
    """Mark the code inside as working for one user; a context manager and a decorator.

    >>> with user_context(42, role="admin", is_admin=True):
    ...     handle_request()

    One instance may be shared (a module-level ``ctx = user_context(...)`` entered by concurrent handlers): what
    it restores on exit is kept per context. It decorates functions, coroutines, generators and async generators;
    a generator's body runs whenever its consumer resumes it (a streaming response, after the handler returned),
    so the user is set around each step, not around the call that made the generator.
    """

    def __init__(
        self, user_id: object, *, role: object = None, is_admin: object = None, auth_method: object = None, **extra: object
    ) -> None:
        self.properties = _properties(user_id, {"role": role, "is_admin": is_admin, "auth_method": auth_method, **extra})

    def __enter__(self) -> UserProperties | None:
        _scopes.set((*_scopes.get(), (self, _current_user.set(self.properties))))
        _reach_local_root(self.properties)
        return self.properties

    def __exit__(self, *exc: object) -> None:
        scopes = _scopes.get()
        for index in range(len(scopes) - 1, -1, -1):
            if scopes[index][0] is self:
                _scopes.set(scopes[:index] + scopes[index + 1 :])
                _restore(scopes[index][1])
                return
        _current_user.set(None)  # left in a context it was not entered in: forget the user rather than raise

    def __call__(self, func: _F) -> _F:
        props = self.properties
        if inspect.isasyncgenfunction(func):
            return functools.wraps(func)(each_async_step_with(_current_user, props, func))  # type: ignore[return-value]
        if inspect.isgeneratorfunction(func):
            return functools.wraps(func)(each_step_with(_current_user, props, func))  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = _current_user.set(props)
                try:
                    return await func(*args, **kwargs)
                finally:
                    _current_user.reset(token)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _current_user.set(props)
            try:
                return func(*args, **kwargs)
            finally:
                _current_user.reset(token)

        return wrapper  # type: ignore[return-value]
