"""Every rule at, and on both sides of, each of its thresholds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from otel_segments.segments import rules
from otel_segments.segments.cohorts import BY_NAME, COHORTS, cohort_description, cohorts_for, export
from otel_segments.segments.rules import UserActivity, person_properties

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("entries_7d", "level"),
    [
        (0, "inactive"),
        (1, "low"),
        (2, "low"),
        (3, "medium"),
        (9, "medium"),
        (10, "high"),
        (19, "high"),
        (20, "very_high"),
        (21, "very_high"),
    ],
)
def test_engagement_level(entries_7d: int, level: str) -> None:
    assert rules.engagement_level(entries_7d) == level


@pytest.mark.parametrize(
    ("e7", "e30", "trend"),
    [
        (5, 19, "increasing"),  # 5 > 19/4
        (5, 20, "stable"),  # 5 == 20/4: not above
        (5, 21, "stable"),
        (5, 25, "stable"),  # 5 == 25/5: not below
        (5, 26, "decreasing"),
        (0, 0, "stable"),
        (0, 1, "decreasing"),
        (1, 0, "increasing"),
    ],
)
def test_activity_trend(e7: int, e30: int, trend: str) -> None:
    assert rules.activity_trend(e7, e30) == trend


@pytest.mark.parametrize(
    ("percent", "method"),
    [(0.0, "manual"), (30.0, "manual"), (30.1, "mixed"), (70.0, "mixed"), (70.1, "timer"), (100.0, "timer")],
)
def test_preferred_tracking_method(percent: float, method: str) -> None:
    assert rules.preferred_tracking_method(percent) == method


def test_timer_percent_rounds_before_the_threshold() -> None:
    # 7 of 10 = 70.0 -> mixed; 701 of 1000 = 70.1 -> timer; 7001 of 10000 = 70.01 rounds to 70.0 -> mixed (as the reference)
    assert rules.timer_usage_percent(7, 3) == 70.0
    assert rules.preferred_tracking_method(rules.timer_usage_percent(701, 299)) == "timer"
    assert rules.preferred_tracking_method(rules.timer_usage_percent(7001, 2999)) == "mixed"
    assert rules.timer_usage_percent(0, 0) == 0.0


def test_ties_round_half_up_from_the_exact_value() -> None:
    # 3 of 2000 = 0.15 exactly: 0.2 (round(0.15, 1) would give 0.1, from 0.15's binary value); 1 of 2000 = 0.05: 0.1
    assert rules.timer_usage_percent(3, 1997) == 0.2
    assert rules.timer_usage_percent(1, 1999) == 0.1
    assert rules.timer_usage_percent(1, 2000) == 0.0  # 0.04997...: down
    assert rules.timer_usage_percent(1401, 599) == 70.1  # 70.05 exactly: up, and so "timer"
    assert rules.preferred_tracking_method(rules.timer_usage_percent(1401, 599)) == "timer"
    # 180 s = 0.05 h exactly: 0.1; 540 s = 0.15 h: 0.2; 179 s: 0.0; fractional seconds just below a tie: down
    assert [rules.total_hours(s) for s in (180, 540, 179, 539.999, 0, 5400)] == [0.1, 0.2, 0.0, 0.1, 0.0, 1.5]


@pytest.mark.parametrize(
    ("days", "category", "new", "established"),
    [
        (0, "new", True, False),
        (6, "new", True, False),
        (7, "recent", False, False),
        (29, "recent", False, False),
        (30, "established", False, True),
        (179, "established", False, True),
        (180, "long_term", False, True),
        (181, "long_term", False, True),
    ],
)
def test_account_age(days: int, category: str, new: bool, established: bool) -> None:
    assert rules.account_age_category(days) == category
    assert rules.is_new_user(days) is new
    assert rules.is_established_user(days) is established


@pytest.mark.parametrize(
    ("e7", "total", "active", "power", "at_risk"),
    [
        (0, 0, False, False, False),
        (0, 1, False, False, True),
        (1, 1, True, False, False),
        (9, 9, True, False, False),
        (10, 10, True, True, False),
    ],
)
def test_activity_flags(e7: int, total: int, active: bool, power: bool, at_risk: bool) -> None:
    assert rules.is_active_user(e7) is active
    assert rules.is_power_user(e7) is power
    assert rules.is_at_risk(e7, total) is at_risk


def test_whole_days_floor_like_timedelta() -> None:
    assert rules.whole_days(NOW - timedelta(days=7), NOW) == 7
    assert rules.whole_days(NOW - timedelta(days=7) + timedelta(microseconds=1), NOW) == 6
    assert rules.whole_days(NOW + timedelta(hours=1), NOW) == -1


def test_person_properties_full_row() -> None:
    row = UserActivity(
        user_id="42",
        created_at=datetime(2025, 6, 8, 12, 0),  # naive: UTC, exactly 7 days
        last_login=datetime(2025, 6, 15, 14, 0, tzinfo=timezone(timedelta(hours=2))),  # 12:00 UTC
        role="user",
        is_admin=False,
        auth_method="oidc",
        entries_24h=1,
        entries_7d=10,
        entries_30d=30,
        entries_all_time=50,
        timer_entries=8,
        manual_entries=2,
        total_seconds=5400,
        active_projects=1,
        total_projects=2,
        assigned_tasks=3,
        completed_tasks=4,
    )
    s = person_properties(row, now=NOW)
    assert s.distinct_id == "42"
    assert s.set == {
        "role": "user",
        "is_admin": False,
        "auth_method": "oidc",
        "entries_last_24h": 1,
        "entries_last_7_days": 10,
        "entries_last_30_days": 30,
        "entries_all_time": 50,
        "engagement_level": "high",
        "activity_trend": "increasing",
        "is_active_user": True,
        "is_power_user": True,
        "is_at_risk": False,
        "active_projects_count": 1,
        "total_projects_count": 2,
        "assigned_tasks_count": 3,
        "completed_tasks_count": 4,
        "timer_entries_count": 8,
        "manual_entries_count": 2,
        "timer_usage_percent": 80.0,
        "preferred_tracking_method": "timer",
        "uses_timer": True,
        "uses_manual_entry": True,
        "total_hours_tracked": 1.5,
        "account_age_days": 7,
        "account_age_category": "recent",
        "is_new_user": False,
        "is_established_user": False,
        "last_login": "2025-06-15T12:00:00+00:00",
        "days_since_last_login": 0,
        "last_segment_update": "2025-06-15T12:00:00+00:00",
    }
    assert s.set_once == {"first_login": "2025-06-08T12:00:00+00:00", "signup_method": "oidc"}


def test_unknown_values_are_left_out_never_none() -> None:
    s = person_properties(UserActivity(user_id="1"), now=NOW)
    assert None not in s.set.values()
    for key in (
        "role",
        "is_admin",
        "auth_method",
        "last_login",
        "days_since_last_login",
        "account_age_days",
        "username",
        "timer_usage_percent",
        "total_projects_count",
        "assigned_tasks_count",
        "total_hours_tracked",
    ):
        assert key not in s.set
    assert s.set_once == {}
    assert s.set["engagement_level"] == "inactive"


def test_digest_ignores_only_the_update_time() -> None:
    a = person_properties(UserActivity(user_id="1", entries_7d=1), now=NOW)
    b = person_properties(UserActivity(user_id="1", entries_7d=1), now=NOW + timedelta(seconds=5))
    c = person_properties(UserActivity(user_id="1", entries_7d=2), now=NOW)
    assert a.digest() == b.digest() != c.digest()


def test_next_change() -> None:
    row = UserActivity(user_id="1", created_at=NOW - timedelta(days=6, hours=23), last_login=None)
    window = {rules.WINDOW_24H: NOW - timedelta(hours=23), rules.WINDOW_7D: None, rules.WINDOW_30D: None}
    # The entry leaves the 24 h window one tick after NOW + 1 h; the account turns 7 days old at NOW + 1 h.
    assert rules.next_change(row, window, now=NOW) == NOW + timedelta(hours=1)
    row = UserActivity(user_id="1")
    window = {rules.WINDOW_24H: NOW - timedelta(hours=23)}
    assert rules.next_change(row, window, now=NOW) == NOW + timedelta(hours=1, microseconds=1)
    assert rules.next_change(UserActivity(user_id="1"), {}, now=NOW) is None


def test_cohorts() -> None:
    assert len(COHORTS) == 20 and len(BY_NAME) == 20
    props = {
        "engagement_level": "high",
        "is_power_user": True,
        "is_active_user": True,
        "is_at_risk": False,
        "is_admin": False,
        "account_age_category": "long_term",
        "activity_trend": "stable",
        "preferred_tracking_method": "mixed",
    }
    assert {c.name for c in cohorts_for(props)} == {
        "high_engagement",
        "power_users",
        "active_users",
        "long_term_users",
        "regular_users",
        "stable_users",
        "mixed_method_users",
    }
    assert not BY_NAME["admins"].matches({"is_admin": 1})  # a bool cohort matches bools only
    assert cohort_description(props) == "Long term user with high engagement"
    assert cohort_description({"is_admin": True, "engagement_level": "low"}) == "Admin user with low engagement"
    assert cohort_description({}) == "Unknown user with unknown engagement"
    assert BY_NAME["very_high_engagement"].traceql() == '{ span.app.user.engagement_level = "very_high" }'
    assert BY_NAME["admins"].traceql() == "{ span.app.user.is_admin = true }"
    body = BY_NAME["at_risk_users"].posthog()
    assert body["filters"]["properties"]["values"][0]["values"][0] == {
        "key": "is_at_risk",
        "type": "person",
        "operator": "exact",
        "value": ["true"],
    }
    assert export("traceql").count("\n") == 19
    with pytest.raises(ValueError):
        export("xml")
