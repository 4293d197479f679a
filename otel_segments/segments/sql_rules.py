"""The segment rules as SQL expressions (SQLAlchemy Core), built from the thresholds ``rules.py`` names once.

The aggregation query evaluates them next to the aggregates they read, so the rules cost the database one
expression per row instead of Python one call per user; ``rules.derive`` stays the reference they are proven
against (tests/segments/test_sql_rules.py, on SQLite and PostgreSQL). Integers stay integers (the timer share
and the hours are rounded half up in tenths with integer or one-division float arithmetic, as the reference
does), so both evaluations agree to the last digit.

Whole days since a date are exact on PostgreSQL (the instant difference, naive columns taken in their declared
zone). On SQLite they are the calendar-day difference less one when the time of day is later than now's, for
text in the form SQLAlchemy writes (``YYYY-MM-DD HH:MM:SS[.ffffff]``) in a UTC column; any other value (another
zone, another text form) is NULL here and left to the reference, which reads it as Python does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone, tzinfo
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, and_, case, cast, extract, func, literal, null, type_coerce
from sqlalchemy.types import DateTime

from . import rules
from .rules import (
    ACCOUNT_AGE_CATEGORIES,
    DECREASING_DIVISOR,
    ENGAGEMENT_LEVELS,
    HALF_TENTH,
    INACTIVE,
    INCREASING_DIVISOR,
    LONG_TERM,
    MANUAL,
    NEW_ACCOUNT_DAYS,
    POWER_USER_MIN_7D,
    RECENT_ACCOUNT_DAYS,
    TENTH_OF_AN_HOUR,
    TRACKING_METHODS,
    UserActivity,
)

#: The properties the activity aggregates give, in the order :func:`activity_properties` selects them.
ACTIVITY = (
    "engagement_level",
    "activity_trend",
    "is_active_user",
    "is_power_user",
    "is_at_risk",
    "timer_usage_percent",
    "preferred_tracking_method",
    "uses_timer",
    "uses_manual_entry",
    "total_hours_tracked",
)
FLAGS = frozenset(
    {"is_active_user", "is_power_user", "is_at_risk", "uses_timer", "uses_manual_entry", "is_new_user", "is_established_user"}
)
_LARGEST_FLOAT = 1.7976931348623157e308  # a sum above it (or NaN) is not a finite number: left out, as the reference does


def _int(value: Any) -> Any:
    return type_coerce(value, Integer)


def _whole(value: Any) -> Any:
    """An integer for division: PostgreSQL's sum of a bigint sum is numeric, whose division is not integral."""
    return cast(value, BigInteger)


def engagement_level(e7: Any) -> Any:
    return case(*[(e7 >= least, literal(level)) for least, level in ENGAGEMENT_LEVELS], else_=literal(INACTIVE))


def activity_trend(e7: Any, e30: Any) -> Any:
    return case(
        (e7 * INCREASING_DIVISOR > e30, literal("increasing")),
        (e7 * DECREASING_DIVISOR < e30, literal("decreasing")),
        else_=literal("stable"),
    )


def timer_usage_tenths(timer: Any, manual: Any) -> Any:
    total = _whole(timer) + _whole(manual)
    return case((total > 0, (2000 * _whole(timer) + total) // (2 * total)), else_=0)


def preferred_tracking_method(tenths: Any) -> Any:
    return case(*[(tenths > above, literal(method)) for above, method in TRACKING_METHODS], else_=literal(MANUAL))


def hours_tenths(seconds: Any, dialect: str) -> Any:
    """Half up: one addition and one division in double precision, then the floor (a truncation: never negative)."""
    s = cast(seconds, Float)
    quotient = (s + float(HALF_TENTH)) / float(TENTH_OF_AN_HOUR)
    floor = cast(quotient, BigInteger) if dialect == "sqlite" else cast(func.floor(quotient), BigInteger)
    return case((and_(s >= 0, s <= _LARGEST_FLOAT), floor), else_=None)


def activity_properties(
    e7: Any, e30: Any, total: Any, timer: Any | None, manual: Any | None, seconds: Any | None, dialect: str
) -> list[Any]:
    """The :data:`ACTIVITY` properties of one row of aggregates; NULL where their input is not mapped."""
    e7, e30, total = _int(e7), _int(e30), _int(total)
    out: list[Any] = [engagement_level(e7), activity_trend(e7, e30), e7 > 0, e7 >= POWER_USER_MIN_7D, and_(e7 == 0, total > 0)]
    if timer is not None and manual is not None:
        tenths = timer_usage_tenths(timer, manual)
        out += [cast(tenths, Float) / 10.0, preferred_tracking_method(tenths), _int(timer) > 0, _int(manual) > 0]
    else:
        out += [null() for _ in range(4)]
    out.append(cast(hours_tenths(seconds, dialect), Float) / 10.0 if seconds is not None else null())
    return out


def whole_days(column: Any, zone: tzinfo | None, now: datetime, dialect: str, in_range: Callable[[Any], Any]) -> Any:
    """Whole days from ``column`` to ``now``, 0 when it is later; NULL where the reference reads it (see the docstring)."""
    now = now.astimezone(timezone.utc)
    if dialect == "postgresql":
        if zone is None:
            since = column
        else:
            name = "UTC" if zone is timezone.utc else getattr(zone, "key", None)
            if name is None:
                return null()
            since = func.timezone(name, column)
        seconds = extract("epoch", literal(now, DateTime(timezone=True)) - since)
        days = cast(func.floor(seconds / 86400), BigInteger)
        return case((in_range(column), func.greatest(days, 0)), else_=None)
    if dialect == "sqlite" and (zone is None or zone is timezone.utc or getattr(zone, "key", None) in ("UTC", "Etc/UTC")):
        # SQLite's date() is NULL for any text it cannot read whole (a bad time of day included); equal to the
        # text's first ten characters only in the canonical form, without an offset (19 or 26 characters)
        day = func.substr(column, 1, 10)
        canonical = and_(func.length(column).in_((19, 26)), func.date(column) == day)
        later_in_day = func.substr(column, 12) > now.strftime("%H:%M:%S.%f")  # 0 or 1
        days = cast(func.julianday(now.strftime("%Y-%m-%d")) - func.julianday(day), Integer) - later_in_day
        return case((canonical, func.max(days, 0)), else_=None)
    return null()


def age_properties(days: Any) -> list[Any]:
    """``account_age_days`` and what it decides, as ``rules.age_properties`` names them."""
    category = case(
        *[(days < below, literal(name)) for below, name in ACCOUNT_AGE_CATEGORIES],
        (days.is_not(None), literal(LONG_TERM)),
        else_=null(),
    )
    return [days, category, days < NEW_ACCOUNT_DAYS, days >= RECENT_ACCOUNT_DAYS]


AGE = ("account_age_days", "account_age_category", "is_new_user", "is_established_user")


def read_properties(row: UserActivity, activity: Sequence[Any], ages: dict[str, Any], now: datetime) -> dict[str, object]:
    """The rules' properties as the database computed them (0/1 read as booleans), left out where the rules leave
    them out; a day count the database left to the reference (another zone, another text form) is computed from
    the date as Python read it. ``activity``: the :data:`ACTIVITY` columns; ``ages``: :data:`AGE` and
    ``days_since_last_login``."""
    out: dict[str, object] = {
        name: bool(value) if name in FLAGS else value for name, value in zip(ACTIVITY, activity, strict=True) if value is not None
    }
    if row.created_at is not None:
        if ages["account_age_days"] is None:
            out.update(rules.age_properties(rules.age_days(row.created_at, now)))
        else:
            out.update({name: bool(ages[name]) if name in FLAGS else ages[name] for name in AGE})
    if row.last_login is not None:
        days = ages["days_since_last_login"]
        out["days_since_last_login"] = rules.age_days(row.last_login, now) if days is None else days
    return out
