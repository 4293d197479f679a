"""The role a Django user's groups name, without a query per request.

The rule (``OTEL_SEGMENTS_DJANGO_ROLES``: the first group by id, a list of
``group=role``, or ``none``) is :func:`~otel_segments.settings.django_variables.group_role`,
the one the ``django`` schema mapping computes in SQL, so spans, PostHog and the
OTLP records agree. Where the groups come from, cheapest first: the user object
(kept there once read), groups the app prefetched, the session (the Django
integration writes the role there at login), this process's cache of
:data:`ROLE_CACHE_SIZE` users; else one query, never on an event loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import OrderedDict
from typing import Any

from ..settings.django_variables import GroupRoles, django_group_roles, group_role

#: Users whose role this process read from the database, at most (least recently used go first).
ROLE_CACHE_SIZE = 10_000
ROLE = "_otel_segments_role"  # on a user object and in the session: the role the user's groups name ("" for none)
_roles_read: OrderedDict[Any, str] = OrderedDict()
_roles_lock = threading.Lock()


@functools.cache
def group_roles() -> GroupRoles | None:
    return django_group_roles()


def group_role_of(user: Any, request: Any = None, *, query: bool = True) -> str | None:
    """The role ``user``'s groups name ("" for none), kept on the user object; None when unknown without a query.

    In order: kept on this user object, groups the app prefetched, the session (written at login), this
    process's cache; then, with ``query``, one query for the user's groups. None also when roles are off.
    """
    roles = group_roles()
    if roles is None:
        return None
    role = getattr(user, ROLE, None)
    if role is None:
        role = _known_role(user, request, roles)
    if role is None and query and not _in_event_loop():  # e.g. an async DRF view: Django refuses queries there
        role = read_role(user, roles)
    if role is not None:
        setattr(user, ROLE, role)
    return role


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _known_role(user: Any, request: Any, roles: GroupRoles) -> str | None:
    prefetched = getattr(user, "_prefetched_objects_cache", {}).get("groups")
    if prefetched is not None:
        return group_role([(g.pk, g.name) for g in prefetched], roles) or ""
    session = getattr(request, "session", None)
    kept = session.get(ROLE) if session is not None and getattr(session, "_session_cache", None) is not None else None
    if isinstance(kept, str):
        return kept
    with _roles_lock:
        role = _roles_read.get(user.pk)
        if role is not None:
            _roles_read.move_to_end(user.pk)
        return role


def read_role(user: Any, roles: GroupRoles) -> str:
    """One query for the user's groups; the role they name, kept for the process ("" for none)."""
    role = group_role(user.groups.values_list("pk", "name"), roles) or ""
    with _roles_lock:
        _roles_read[user.pk] = role
        if len(_roles_read) > ROLE_CACHE_SIZE:
            _roles_read.popitem(last=False)
    return role
