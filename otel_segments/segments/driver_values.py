"""What the drivers hand over, read as Python values without letting one bad row stop the others.

SQLite keeps any text in any column (not always UTF-8, not always a date); PostgreSQL holds dates Python
cannot (``infinity``, years beyond 1-9999). The queries read such values as something the driver can hand
over (bytes, NULL), and these functions finish the job; what could not be read as it is becomes a
:class:`Problem` naming the user (docs/segments.md, "Bad rows").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

_QUOTED = re.compile(r'"[^"]*"?|\'[^\']*\'?')  # a quoted value, or its start when the line cut it

#: What a poisoned row raises while it is read or computed: the batch is bisected to set its users aside.
ROW_ERRORS = (SQLAlchemyError, ValueError, OverflowError, TypeError, ArithmeticError)


@dataclass(frozen=True)
class Problem:
    """A user whose row could not be read as it is: ``skipped`` users were set aside (not computed this cycle);
    the others were computed with the value read as ``cause`` says (NULL, replacement characters)."""

    user_id: str
    where: str  # table.column, or the table when the column is unknown
    cause: str
    skipped: bool = False


class StageError(Exception):
    """Which table's query failed, for the warning that names it."""

    def __init__(self, table: str, error: BaseException) -> None:
        super().__init__(table)
        self.table = table
        self.error = error


def read_datetime(value: Any, zone: tzinfo | None = None) -> datetime | None:
    """Dates from any driver as aware datetimes: a naive value is in ``zone`` (UTC when None).

    SQLite may hand back text for untyped columns. A naive local time that a zone's clock change skips or
    repeats is read with ``fold=0``, as :mod:`zoneinfo` does.
    """
    if value is None:
        return None
    if type(value) is datetime and value.tzinfo is None and zone is None:
        return value.replace(tzinfo=timezone.utc)  # the common case, first: a naive UTC value from the driver
    value = decode(value)[0]
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    if value.tzinfo is not None:
        try:
            value.astimezone(timezone.utc)  # 9999-12-31T23:00-05:00 or 0001-01-01T00:00+01:00: no such UTC instant
        except (OverflowError, ValueError):
            return None
        return value
    try:
        return value.replace(tzinfo=zone or timezone.utc).astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return value.replace(tzinfo=timezone.utc)  # 9999-12-31 east of UTC: past the last date, keep it as it is


def decode(value: Any) -> tuple[Any, bool]:
    """Text as :meth:`.queries.SegmentQueries.readable_text` hands it over, as str; True when it was not valid UTF-8."""
    if not isinstance(value, bytes | bytearray | memoryview):
        return value, False
    raw = bytes(value)
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), True


def as_text(value: Any) -> str | None:
    """An id or key as the state stores it (JSON takes no ``uuid.UUID``, ``Decimal``, ...): its text."""
    return None if value is None else str(decode(value)[0])


def from_text(column: Any, value: str | None) -> Any:
    """What :func:`as_text` stored, as a parameter of ``column``'s type again (``uuid.UUID``, ``int``, ``Decimal``...);
    the text itself when the type has no Python type or does not take it (the database then compares text)."""
    if value is None:
        return None
    try:
        kind = column.type.python_type
    except NotImplementedError:
        return value
    if kind is str or not isinstance(value, str):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError, ArithmeticError):
        return value


def cause(error: BaseException) -> str:
    """The error's class and first line, from the driver's own error when SQLAlchemy wraps one (no SQL, no parameters),
    with what it quotes left out: PostgreSQL quotes the value it could not take (``invalid input syntax for type
    integer: "..."``), and a row's value may be anything a user typed."""
    inner = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = _QUOTED.sub("<value>", str(inner).strip().splitlines()[0])[:200] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
