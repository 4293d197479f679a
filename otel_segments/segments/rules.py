"""Segment rules: pure functions of counts and dates, each threshold named once.

Every property name, formula and threshold is the reference's (TimeTracker's
``posthog_segmentation.py``), with its defects fixed:

- assigned tasks are the tasks assigned to the user whose status is neither done
  nor cancelled (the reference's query could never run, so it always sent 0);
- the timer/manual split uses the mapping's sets of source values;
- the auth method is the mapping's auth column (TimeTracker: ``auth_provider``);
- times are timezone-aware UTC ISO 8601 strings;
- no value is ever None: an unknown property is left out (``username`` is never sent).

Bad rows are read as follows, never as an exception: a date in the future (a clock
ahead of ours, a "never" sentinel such as 9999-12-31) makes an age of 0 days; a
duration total that is negative or not a finite number is unknown (left out); a change
beyond the year 9999 is never due.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from . import UserSegment

DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)  # the resolution of Python and PostgreSQL timestamps

# Windows over the activity timestamp; an entry at exactly ``now - window`` is inside.
WINDOW_24H = timedelta(hours=24)
WINDOW_7D = timedelta(days=7)
WINDOW_30D = timedelta(days=30)
WINDOWS = (WINDOW_24H, WINDOW_7D, WINDOW_30D)

# engagement_level: entries in the last 7 days, at least this many.
VERY_HIGH_ENGAGEMENT_MIN = 20
HIGH_ENGAGEMENT_MIN = 10
MEDIUM_ENGAGEMENT_MIN = 3
LOW_ENGAGEMENT_MIN = 1
#: (at least, level) from the highest; below the last: ``INACTIVE``. ``sql_rules.py`` builds its CASE from this.
ENGAGEMENT_LEVELS = (
    (VERY_HIGH_ENGAGEMENT_MIN, "very_high"),
    (HIGH_ENGAGEMENT_MIN, "high"),
    (MEDIUM_ENGAGEMENT_MIN, "medium"),
    (LOW_ENGAGEMENT_MIN, "low"),
)
INACTIVE = "inactive"

# activity_trend: 7-day entries against the 30-day count divided by these.
INCREASING_DIVISOR = 4  # 7d > 30d / 4: increasing
DECREASING_DIVISOR = 5  # 7d < 30d / 5: decreasing

# preferred_tracking_method: timer share of timer + manual entries, in percent, strictly above.
TIMER_PERCENT_ABOVE = 70
MIXED_PERCENT_ABOVE = 30
#: (strictly above, in tenths of a percent, method) from the highest; otherwise ``MANUAL``.
TRACKING_METHODS = ((TIMER_PERCENT_ABOVE * 10, "timer"), (MIXED_PERCENT_ABOVE * 10, "mixed"))
MANUAL = "manual"

# account_age_category: days, strictly below.
NEW_ACCOUNT_DAYS = 7
RECENT_ACCOUNT_DAYS = 30
ESTABLISHED_ACCOUNT_DAYS = 180
ACCOUNT_AGE_EDGES = (NEW_ACCOUNT_DAYS, RECENT_ACCOUNT_DAYS, ESTABLISHED_ACCOUNT_DAYS)
#: (strictly below, category) from the lowest; otherwise ``LONG_TERM``.
ACCOUNT_AGE_CATEGORIES = ((NEW_ACCOUNT_DAYS, "new"), (RECENT_ACCOUNT_DAYS, "recent"), (ESTABLISHED_ACCOUNT_DAYS, "established"))
LONG_TERM = "long_term"

POWER_USER_MIN_7D = HIGH_ENGAGEMENT_MIN


def engagement_level(entries_7d: int) -> str:
    return next((level for least, level in ENGAGEMENT_LEVELS if entries_7d >= least), INACTIVE)


def activity_trend(entries_7d: int, entries_30d: int) -> str:
    """Compare the last week with a quarter (or a fifth) of the last 30 days; exact rational comparison."""
    if entries_7d * INCREASING_DIVISOR > entries_30d:
        return "increasing"
    if entries_7d * DECREASING_DIVISOR < entries_30d:
        return "decreasing"
    return "stable"


def is_active_user(entries_7d: int) -> bool:
    return entries_7d > 0


def is_power_user(entries_7d: int) -> bool:
    return entries_7d >= POWER_USER_MIN_7D


def is_at_risk(entries_7d: int, entries_all_time: int) -> bool:
    """Tracked before, nothing in the last week."""
    return entries_7d == 0 and entries_all_time > 0


def timer_usage_tenths(timer_entries: int, manual_entries: int) -> int:
    """The timer share in tenths of a percent, rounded half up from the exact ratio (integers only).

    The reference rounds a float with ``round(x, 1)``, whose ties depend on the binary value
    (``round(0.15, 1) == 0.1``, ``round(0.25, 1) == 0.2``, both halves): no database rounds like that, so the
    exact ratio is the definition both evaluations share.
    """
    total = timer_entries + manual_entries
    return (2000 * timer_entries + total) // (2 * total) if total else 0


def timer_usage_percent(timer_entries: int, manual_entries: int) -> float:
    return timer_usage_tenths(timer_entries, manual_entries) / 10


def preferred_tracking_method(timer_percent: float) -> str:
    """From the rounded percentage, as the reference does."""
    tenths = round(timer_percent * 10)
    return next((method for above, method in TRACKING_METHODS if tenths > above), MANUAL)


def account_age_category(age_days: int) -> str:
    return next((category for below, category in ACCOUNT_AGE_CATEGORIES if age_days < below), LONG_TERM)


def is_new_user(age_days: int) -> bool:
    return age_days < NEW_ACCOUNT_DAYS


def is_established_user(age_days: int) -> bool:
    return age_days >= RECENT_ACCOUNT_DAYS


#: total_hours_tracked in tenths of an hour: ``floor((seconds + HALF_TENTH) / TENTH_OF_AN_HOUR)`` (half up).
TENTH_OF_AN_HOUR = 360
HALF_TENTH = TENTH_OF_AN_HOUR // 2


def hours_tenths(total_seconds: float) -> int:
    """Half up, in the same floating-point steps the SQL takes (one addition, one division), so both agree."""
    return math.floor((float(total_seconds) + HALF_TENTH) / TENTH_OF_AN_HOUR)


def total_hours(total_seconds: float) -> float:
    return hours_tenths(total_seconds) / 10


def whole_days(since: datetime, now: datetime) -> int:
    """Whole days elapsed, floored like ``timedelta.days``."""
    return (now - since) // DAY


def age_days(since: datetime, now: datetime) -> int:
    """Whole days since ``since``; 0 when it is in the future (another clock ahead of ours, a sentinel date)."""
    return max(whole_days(since, now), 0)


def utc(value: datetime) -> datetime:
    """Naive datetimes are UTC (as the app stores them); aware ones are converted."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso(value: datetime) -> str:
    return utc(value).isoformat()


@dataclass(frozen=True)
class UserActivity:
    """One user's aggregated row, as the batched queries produce it.

    None means "not known for this app" (its table or column is not mapped):
    the properties that depend on it are left out.
    """

    user_id: str
    created_at: datetime | None = None
    last_login: datetime | None = None
    role: str | None = None
    is_admin: bool | None = None
    auth_method: str | None = None
    entries_24h: int = 0
    entries_7d: int = 0
    entries_30d: int = 0
    entries_all_time: int = 0
    timer_entries: int | None = None
    manual_entries: int | None = None
    total_seconds: float | None = None
    active_projects: int | None = None
    total_projects: int | None = None
    assigned_tasks: int | None = None
    completed_tasks: int | None = None


def derive(row: UserActivity, *, now: datetime) -> dict[str, object]:
    """The properties the rules compute from a user's aggregates, those that are known: the reference.

    Production reads them from the aggregation query (``sql_rules.py`` builds the same rules as SQL from the
    thresholds above); a property-based test proves both agree on SQLite and PostgreSQL.
    """
    now = utc(now)
    e7, e30, total = row.entries_7d, row.entries_30d, row.entries_all_time
    out: dict[str, object] = dict(
        engagement_level=engagement_level(e7),
        activity_trend=activity_trend(e7, e30),
        is_active_user=is_active_user(e7),
        is_power_user=is_power_user(e7),
        is_at_risk=is_at_risk(e7, total),
    )
    if row.timer_entries is not None and row.manual_entries is not None:
        percent = timer_usage_percent(row.timer_entries, row.manual_entries)
        out.update(
            timer_usage_percent=percent,
            preferred_tracking_method=preferred_tracking_method(percent),
            uses_timer=row.timer_entries > 0,
            uses_manual_entry=row.manual_entries > 0,
        )
    if row.total_seconds is not None and math.isfinite(row.total_seconds) and row.total_seconds >= 0:
        out["total_hours_tracked"] = total_hours(row.total_seconds)
    if row.created_at is not None:
        out.update(age_properties(age_days(utc(row.created_at), now)))
    if row.last_login is not None:
        out["days_since_last_login"] = age_days(utc(row.last_login), now)
    return out


def age_properties(age: int) -> dict[str, object]:
    return dict(
        account_age_days=age,
        account_age_category=account_age_category(age),
        is_new_user=is_new_user(age),
        is_established_user=is_established_user(age),
    )


def person_properties(row: UserActivity, *, now: datetime, derived: dict[str, object] | None = None) -> UserSegment:
    """The full ``$set`` / ``$set_once`` of one user, with every reference property that is known.

    ``derived``: what :func:`derive` returns, as the database computed it; evaluated here when not given.
    """
    now = utc(now)
    props: dict[str, object] = {}
    if row.role is not None:
        props["role"] = row.role
    if row.is_admin is not None:
        props["is_admin"] = row.is_admin
    if row.auth_method is not None:
        props["auth_method"] = row.auth_method
    props.update(
        entries_last_24h=row.entries_24h,
        entries_last_7_days=row.entries_7d,
        entries_last_30_days=row.entries_30d,
        entries_all_time=row.entries_all_time,
    )
    if row.total_projects is not None:
        props["active_projects_count"] = row.active_projects or 0
        props["total_projects_count"] = row.total_projects
    if row.assigned_tasks is not None:
        props["assigned_tasks_count"] = row.assigned_tasks
        props["completed_tasks_count"] = row.completed_tasks or 0
    if row.timer_entries is not None and row.manual_entries is not None:
        props.update(timer_entries_count=row.timer_entries, manual_entries_count=row.manual_entries)
    props.update(derive(row, now=now) if derived is None else derived)
    if row.last_login is not None:
        props["last_login"] = iso(row.last_login)
    props["last_segment_update"] = now.isoformat()

    once: dict[str, object] = {}
    if row.created_at is not None:
        once["first_login"] = iso(row.created_at)
    if row.auth_method is not None:
        once["signup_method"] = row.auth_method
    return UserSegment(distinct_id=row.user_id, set=props, set_once=once)


def next_change(row: UserActivity, oldest_in_window: dict[timedelta, datetime | None], *, now: datetime) -> datetime | None:
    """The earliest moment after ``now`` when a property of ``row`` changes with no new data.

    That is when an entry leaves a 24 h / 7 d / 30 d window, or a day counter
    (account age, days since login) ticks. ``oldest_in_window`` maps each window
    to the oldest activity timestamp still inside it. The refresh stores this
    as the user's due time, so a clock-driven change is never missed.
    """
    now = utc(now)
    candidates: list[datetime | None] = []
    for window, oldest in oldest_in_window.items():
        if oldest is not None:
            candidates.append(_after(utc(oldest), window + TICK))  # the first instant it is outside
    for since in (row.created_at, row.last_login):
        if since is not None:
            start = utc(since)
            candidates.append(_after(start, (age_days(start, now) + 1) * DAY))
    later = [c for c in candidates if c is not None and c > now]
    return min(later) if later else None


def _after(start: datetime, delta: timedelta) -> datetime | None:
    """``start + delta``, or None past the last representable date: such a moment never comes."""
    try:
        return start + delta
    except OverflowError:
        return None
