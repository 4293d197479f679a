"""FastAPI: the user the app's own dependency returns, on the request's spans, in one line.

    from otel_segments.integrations.fastapi import traced_user

    @app.get("/orders")
    async def orders(user: User = Depends(traced_user(get_current_user))): ...

:func:`traced_user` wraps the app's dependency (the one that checks the token
and loads the user) without calling it itself: FastAPI resolves it as before,
once per request, and the wrapper turns its result into the user context, which
reaches the request's server span too. By default it reads ``id`` (or ``pk``,
``get_id()``, ``user_id``, ``sub``), ``role``, ``is_admin`` and ``auth_method``;
the keyword arguments name other attributes, or compute a value from the user
(``auth_method`` takes the value itself)::

    Depends(traced_user(get_current_user, user_id="sub", role=lambda u: u.roles[0], auth_method="jwt"))

A dict (a decoded JWT's claims) is read by key instead of by attribute. The
wrapper is ``async def``, so it runs in the request's task whatever the wrapped
dependency is, and the endpoint (async, or sync in a worker thread copied from
the task) sees the user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fastapi import Depends

from ..spans.context import set_user
from . import report_once

T = TypeVar("T")
#: An attribute (or, for a dict, key) name, a function of the user, or a fixed value (``auth_method="jwt"``).
Field = str | Callable[[Any], Any] | None


def traced_user(
    dependency: Callable[..., T],
    *,
    user_id: Field = None,
    role: Field = None,
    is_admin: Field = None,
    auth_method: Field = None,
) -> Callable[..., Any]:
    """A dependency returning what ``dependency`` returns, after making it the request's user (None: anonymous)."""

    async def resolved(user: Any = Depends(dependency)) -> Any:  # noqa: B008 - FastAPI's way to declare a sub-dependency
        try:
            info = _info(user, user_id=user_id, role=role, is_admin=is_admin, auth_method=auth_method)
            if info is not None:
                set_user(info.pop("user_id"), **info)
        except Exception:  # noqa: BLE001 - the app's request must not fail because of us
            report_once("fastapi.user", "reading the user returned by the app's dependency failed")
        return user

    return resolved


#: Where each property is looked for when no field names it: attributes of an object, keys of a dict (JWT claims).
_DEFAULTS = {
    "user_id": ("id", "pk", "user_id", "sub"),
    "role": ("role",),
    "is_admin": ("is_admin",),
    "auth_method": ("auth_method", "auth_provider"),
}


def _info(user: Any, **fields: Field) -> dict[str, Any] | None:
    """``set_user`` arguments for ``user``, or None when it is nobody (None, ``is_authenticated`` False, no id)."""
    if user is None or getattr(user, "is_authenticated", True) is False:
        return None
    info: dict[str, Any] = {}
    for name, field in fields.items():
        if field is None:
            value = _default(user, name)
        elif callable(field):
            value = field(user)
        elif name == "auth_method":  # a fixed value: how this dependency authenticates
            value = field
        else:
            value = _get(user, field)
        if value is not None:
            info[name] = value
    return info if "user_id" in info else None


def _default(user: Any, name: str) -> Any:
    get_id = getattr(user, "get_id", None) if name == "user_id" else None
    if callable(get_id):
        return get_id()
    return next((v for k in _DEFAULTS[name] if (v := _get(user, k)) is not None), None)


def _get(user: Any, key: str) -> Any:
    return user.get(key) if isinstance(user, Mapping) else getattr(user, key, None)
