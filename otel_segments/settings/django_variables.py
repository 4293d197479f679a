"""The variables of Django apps: which user flag makes an admin, which groups name a role, where the activity is.

``OTEL_SEGMENTS_DJANGO_ADMIN`` and ``OTEL_SEGMENTS_DJANGO_ROLES`` are read by the
spans (the Django integration) and by the built-in ``django`` schema mapping
alike, so a user's ``is_admin`` and role are the same on their spans as in
PostHog and the OTLP records.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

_logger = logging.getLogger(__name__)

OTEL_SEGMENTS_DJANGO_ADMIN = "OTEL_SEGMENTS_DJANGO_ADMIN"
OTEL_SEGMENTS_ACTIVITY_TABLE = "OTEL_SEGMENTS_ACTIVITY_TABLE"
OTEL_SEGMENTS_DJANGO_ROLES = "OTEL_SEGMENTS_DJANGO_ROLES"
#: A custom user model's table (``AUTH_USER_MODEL``), for the ``django`` schema mapping: ``<table>[:<groups>:<column>]``.
OTEL_SEGMENTS_DJANGO_USER_TABLE = "OTEL_SEGMENTS_DJANGO_USER_TABLE"
#: Which groups name a user's role: () the first group (lowest id) by its name; else (group, role) pairs, first held wins.
GroupRoles = tuple[tuple[str, str], ...]
#: The flags of Django's user model that may make an admin; the first is the default.
ADMIN_FLAGS = ("is_superuser", "is_staff")
_warned: set[str] = set()


def django_admin_flag(env: Mapping[str, str] | None = None) -> str:
    """``is_superuser`` (the default) or ``is_staff``; anything else is reported once and means the default."""
    value = (os.environ if env is None else env).get(OTEL_SEGMENTS_DJANGO_ADMIN, "").strip()
    if not value or value in ADMIN_FLAGS:
        return value or ADMIN_FLAGS[0]
    if value not in _warned:
        _warned.add(value)
        _logger.warning(
            "otel_segments: %s=%r is not one of %s; using %s",
            OTEL_SEGMENTS_DJANGO_ADMIN,
            value,
            ", ".join(ADMIN_FLAGS),
            ADMIN_FLAGS[0],
        )
    return ADMIN_FLAGS[0]


def django_group_roles(env: Mapping[str, str] | None = None) -> GroupRoles | None:
    """``OTEL_SEGMENTS_DJANGO_ROLES``: unset, the first group's name (the lowest group id: no collation to disagree
    on); ``Editors=editor,Managers=manager``, the role of the first listed group the user is in; ``none``, no role.
    An entry without ``=`` is reported once and left out."""
    value = (os.environ if env is None else env).get(OTEL_SEGMENTS_DJANGO_ROLES, "").strip()
    if not value:
        return ()
    if value.lower() == "none":
        return None
    pairs = []
    for entry in value.split(","):
        group, sep, role = (part.strip() for part in entry.partition("="))
        if sep and group and role:
            pairs.append((group, role))
        elif entry.strip() and entry not in _warned:
            _warned.add(entry)
            _logger.warning("otel_segments: %s entry %r is not <group>=<role>; it is left out", OTEL_SEGMENTS_DJANGO_ROLES, entry)
    return tuple(pairs)


def group_role(groups: Iterable[tuple[int, str]], roles: GroupRoles) -> str | None:
    """The role ``groups`` (id, name) give, by ``roles`` (:func:`django_group_roles`); the SQL of the ``django``
    schema mapping computes the same in the database."""
    held = list(groups)
    if not roles:
        return min(held)[1] if held else None
    names = {name for _, name in held}
    return next((role for group, role in roles if group in names), None)
