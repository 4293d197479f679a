"""Carry the user's id and role to downstream services in W3C baggage, and read them back only when trusted.

Danger, twice over:

* Baggage leaves the process. With the default propagators (``tracecontext,baggage``)
  every instrumented outgoing HTTP call puts these entries into a ``baggage``
  header, including calls to third parties. Set ``OTEL_SEGMENTS_USER_ID_HASH_KEY``
  so the id travels as a keyed hash (then under ``app.user.pseudo_id``), and only
  inject around calls to your own services.
* Baggage arriving in a request is whatever the caller wrote. A client sending
  ``baggage: app.user.role=admin`` must not make its spans look like an admin's,
  so the span processor ignores incoming baggage unless
  ``OTEL_SEGMENTS_TRUST_BAGGAGE=true``. Turn that on only for services that no
  client can reach directly, and make the edge drop client ``baggage`` headers:
  the instrumentations forward incoming baggage on outgoing calls untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import baggage
from opentelemetry.context import Context, attach, detach, get_current

from .context import USER_ID, USER_PREFIX, USER_ROLES, UserProperties, current_user
from .privacy import user_id_hash_key

BAGGAGE_USER_ID = "app.user.id"
BAGGAGE_USER_PSEUDO_ID = "app.user.pseudo_id"
BAGGAGE_USER_ROLE = "app.user.role"
KEYS = (BAGGAGE_USER_ID, BAGGAGE_USER_PSEUDO_ID, BAGGAGE_USER_ROLE)

_MAX_ID = 256
_MAX_ROLE = 64


def inject_user_baggage(context: Context | None = None) -> Context:
    """``context`` (default: the current one) with the current user's id and role as baggage.

    Any ``app.user.*`` entries already there are removed first, so an anonymous
    request never forwards what a client sent. Attach the result around outgoing
    calls, or use :func:`user_baggage`.
    """
    ctx = context if context is not None else get_current()
    for key in KEYS:
        ctx = baggage.remove_baggage(key, ctx)
    user = current_user()
    if user is None:
        return ctx
    outgoing_id = user.attributes[USER_ID]
    key = BAGGAGE_USER_ID if outgoing_id == user.user_id else BAGGAGE_USER_PSEUDO_ID
    ctx = baggage.set_baggage(key, outgoing_id, ctx)
    role = user.attributes.get(USER_PREFIX + "role")
    if isinstance(role, str):
        ctx = baggage.set_baggage(BAGGAGE_USER_ROLE, role, ctx)
    return ctx


@contextmanager
def user_baggage() -> Iterator[Context]:
    """Outgoing calls inside carry the current user's id and role to downstream services."""
    token = attach(inject_user_baggage())
    try:
        yield get_current()
    finally:
        detach(token)


def user_from_baggage(context: Context | None = None) -> tuple[str | None, Mapping[str, Any]] | None:
    """The user that trusted incoming baggage names: (id to look segments up by, span attributes), or None.

    Only for the span processor when baggage is trusted. Values that do not look
    like an id or a role (too long, control characters) are ignored.
    """
    entries = baggage.get_all(context)
    if not entries:
        return None
    role = _clean(entries.get(BAGGAGE_USER_ROLE), _MAX_ROLE)
    user_id = _clean(entries.get(BAGGAGE_USER_ID), _MAX_ID)
    if user_id is not None:
        return _from_id(user_id, role, user_id_hash_key())
    pseudo_id = _clean(entries.get(BAGGAGE_USER_PSEUDO_ID), _MAX_ID)
    if pseudo_id is not None:
        return _from_pseudo_id(pseudo_id, role)
    return None


def _clean(value: object, limit: int) -> str | None:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        return None
    return value


@functools.lru_cache(maxsize=1024)
def _from_id(user_id: str, role: str | None, hash_key: bytes | None) -> tuple[str, Mapping[str, Any]]:
    # Through UserProperties, so this service's own hashing policy (part of the cache key) applies to the id.
    return user_id, UserProperties(user_id, role=role).attributes


@functools.lru_cache(maxsize=1024)
def _from_pseudo_id(pseudo_id: str, role: str | None) -> tuple[None, Mapping[str, Any]]:
    # Already hashed upstream: kept as is, so every service of a fleet sharing one key reports the same user.id.
    attributes: dict[str, Any] = {USER_ID: pseudo_id}
    if role is not None:
        attributes[USER_ROLES] = (role,)
        attributes[USER_PREFIX + "role"] = role
    return None, attributes
