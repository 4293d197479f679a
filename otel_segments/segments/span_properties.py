"""Which segment properties spans carry: the default set, and the names ``OTEL_SEGMENTS_SPAN_PROPERTIES`` may choose.

Here, not in ``spans/``: the names are those the rules compute, and the span hot path never imports the rules.
The selection is made once, when the cache is built; ``spans.cache`` keeps a finished set.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta, timezone

from ..settings.config import OTEL_SEGMENTS_SPAN_PROPERTIES
from ..spans.context import USER_PREFIX
from .rules import UserActivity, person_properties

_logger = logging.getLogger(__name__)

#: What a span carries of a user's segment by default: the properties worth filtering and grouping spans by.
#: Each takes a handful of values that stay put for days (a category or a cohort flag: every property a cohort
#: of ``segments.cohorts`` is defined on is here), so a backend can index them and a metric can take them as a
#: dimension. Counts, totals, percentages, ages in days and timestamps are left to PostHog and the OTLP segment
#: records: they change every day, nobody searches spans by them, and as metric dimensions they are unbounded.
DEFAULT_SPAN_PROPERTIES: tuple[str, ...] = (
    "role",
    "is_admin",
    "auth_method",
    "engagement_level",
    "activity_trend",
    "preferred_tracking_method",
    "account_age_category",
    "is_active_user",
    "is_power_user",
    "is_at_risk",
    "is_new_user",
    "is_established_user",
    "uses_timer",
    "uses_manual_entry",
)


@functools.cache
def known_segment_properties() -> frozenset[str]:
    """Every property the built-in rules can compute (``$set`` and ``$set_once``), read off a fully known user."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = UserActivity(
        "u",
        created_at=now - timedelta(days=1),
        last_login=now,
        role="user",
        is_admin=False,
        auth_method="local",
        timer_entries=1,
        manual_entries=1,
        total_seconds=1.0,
        active_projects=1,
        total_projects=1,
        assigned_tasks=1,
        completed_tasks=1,
    )
    segment = person_properties(row, now=now)
    return frozenset({*segment.set, *segment.set_once})


@functools.cache
def span_property_selection(spec: str) -> frozenset[str] | None:
    """The segment properties spans carry for an ``OTEL_SEGMENTS_SPAN_PROPERTIES`` value; None means all of them.

    ``default`` (or empty), ``all``, ``none``, or names separated by commas (``default`` among them adds the
    default set; an ``app.user.`` prefix is allowed). Names the rules never compute warn once, in one line.
    """
    words = [word.strip() for word in spec.split(",") if word.strip()]
    keywords = [word.lower() for word in words]
    if keywords in ([], ["default"]):
        return frozenset(DEFAULT_SPAN_PROPERTIES)
    if keywords == ["all"]:
        return None
    if keywords == ["none"]:
        return frozenset()
    chosen: set[str] = set()
    unknown: list[str] = []
    known = known_segment_properties()
    for word in words:
        name = word.removeprefix(USER_PREFIX)
        if name.lower() == "default":
            chosen.update(DEFAULT_SPAN_PROPERTIES)
        elif name in known:
            chosen.add(name)
        else:
            unknown.append(name)
    if unknown:
        _logger.warning(
            "%s: %s not a segment property (known: default, all, none, %s); ignored",
            OTEL_SEGMENTS_SPAN_PROPERTIES,
            ", ".join(repr(name[:64]) for name in unknown[:8]) + (" are" if len(unknown) > 1 else " is"),
            ", ".join(sorted(known)),
        )
    return frozenset(chosen)
