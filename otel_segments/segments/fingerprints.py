"""Each user's rule inputs that no change column shows, hashed: what an edit that moves no ``updated_at`` changes.

The users row, admin roles, task counts, entry count and a key sum of the entries. :func:`fingerprint` is the one
definition: :class:`~.batch.Aggregator` stores it for every user it builds, and the sweep (``changes.py``) computes
it for a slice of users with lighter queries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any


def fingerprint(user_row: Sequence[Any], entries: Sequence[Any], tasks: Sequence[Any] | None) -> str:
    """A short hash of one user's rule inputs that no change column reveals, as the queries return them.

    ``repr`` of the driver's values (str, int, Decimal, datetime) is stable across processes, unlike ``hash()``.
    """
    open_, done = (int(tasks[0] or 0), int(tasks[1] or 0)) if tasks is not None else (0, 0)
    payload = (tuple(user_row), int(entries[0] or 0), _number(entries[1]), open_, done)
    return hashlib.blake2b(repr(payload).encode(), digest_size=16).hexdigest()


def _number(value: Any) -> int | str | None:
    """A sum as PostgreSQL (Decimal) or SQLite (int) returns it, as one value."""
    if value is None:
        return None
    try:
        return int(value) if int(value) == value else str(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)
