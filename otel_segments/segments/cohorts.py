"""The reference's cohort definitions, and their exports: PostHog cohort filters, TraceQL, Jaeger tags, Phoenix filters, JSON.

A cohort is one person property equal to one value. The same property lands on
spans as ``app.user.<property>`` (see :mod:`otel_segments.spans.cache`; every cohort's
property is in the default span set), so every cohort is also a trace search.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..spans.context import USER_PREFIX


@dataclass(frozen=True)
class Cohort:
    name: str
    property: str
    value: str | bool
    description: str

    def matches(self, properties: Mapping[str, Any]) -> bool:
        return properties.get(self.property) == self.value and type(properties.get(self.property)) is type(self.value)

    def posthog(self) -> dict[str, Any]:
        """A body for PostHog's ``POST /api/projects/<id>/cohorts/`` (a person-property cohort)."""
        value = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return {
            "name": self.name,
            "description": self.description,
            "filters": {
                "properties": {
                    "type": "OR",
                    "values": [
                        {
                            "type": "AND",
                            "values": [{"key": self.property, "type": "person", "operator": "exact", "value": [value]}],
                        }
                    ],
                }
            },
        }

    def traceql(self) -> str:
        value = str(self.value).lower() if isinstance(self.value, bool) else json.dumps(self.value)
        return f"{{ span.{USER_PREFIX}{self.property} = {value} }}"

    def jaeger(self) -> str:
        """Jaeger's search by tags (``key=value``; the UI's *Tags* box, the API's ``tags`` JSON)."""
        value = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{USER_PREFIX}{self.property}={value}"

    def phoenix(self) -> str:
        """Arize Phoenix's span filter condition (a Python expression; the UI's filter box, ``?spanFilterCondition=``)."""
        return f"{USER_PREFIX}{self.property} == {self.value!r}"


def _c(name: str, prop: str, value: str | bool, description: str) -> Cohort:
    return Cohort(name=name, property=prop, value=value, description=description)


COHORTS: tuple[Cohort, ...] = (
    _c("very_high_engagement", "engagement_level", "very_high", "20 or more entries in the last 7 days"),
    _c("high_engagement", "engagement_level", "high", "10 to 19 entries in the last 7 days"),
    _c("medium_engagement", "engagement_level", "medium", "3 to 9 entries in the last 7 days"),
    _c("low_engagement", "engagement_level", "low", "1 or 2 entries in the last 7 days"),
    _c("inactive", "engagement_level", "inactive", "no entry in the last 7 days"),
    _c("power_users", "is_power_user", True, "10 or more entries in the last 7 days"),
    _c("active_users", "is_active_user", True, "at least one entry in the last 7 days"),
    _c("at_risk_users", "is_at_risk", True, "tracked before, nothing in the last 7 days"),
    _c("timer_users", "preferred_tracking_method", "timer", "more than 70% of entries by timer"),
    _c("manual_entry_users", "preferred_tracking_method", "manual", "30% or less of entries by timer"),
    _c("mixed_method_users", "preferred_tracking_method", "mixed", "more than 30% and up to 70% of entries by timer"),
    _c("new_users", "account_age_category", "new", "account younger than 7 days"),
    _c("recent_users", "account_age_category", "recent", "account 7 to 29 days old"),
    _c("established_users", "account_age_category", "established", "account 30 to 179 days old"),
    _c("long_term_users", "account_age_category", "long_term", "account 180 days old or more"),
    _c("admins", "is_admin", True, "administrators (role or admin role)"),
    _c("regular_users", "is_admin", False, "everyone who is not an administrator"),
    _c("growing_users", "activity_trend", "increasing", "last 7 days above a quarter of the last 30"),
    _c("declining_users", "activity_trend", "decreasing", "last 7 days below a fifth of the last 30"),
    _c("stable_users", "activity_trend", "stable", "last 7 days between a fifth and a quarter of the last 30"),
)
BY_NAME: dict[str, Cohort] = {c.name: c for c in COHORTS}


def cohorts_for(properties: Mapping[str, Any]) -> list[Cohort]:
    return [c for c in COHORTS if c.matches(properties)]


def cohort_description(properties: Mapping[str, Any]) -> str:
    """One human line for a user's primary cohort, e.g. ``Admin user with high engagement``."""
    engagement = properties.get("engagement_level", "unknown")
    if properties.get("is_admin") is True:
        return f"Admin user with {engagement} engagement"
    age = str(properties.get("account_age_category", "unknown")).replace("_", " ")
    return f"{age[:1].upper()}{age[1:]} user with {engagement} engagement"


FORMATS = ("posthog", "traceql", "jaeger", "phoenix", "json")


def export(fmt: str) -> str:
    """All cohorts as ``posthog`` (a JSON list of cohort bodies), ``json``, or one line per cohort: name, tab, and
    its ``traceql`` query, ``jaeger`` tag search or ``phoenix`` filter condition."""
    if fmt == "posthog":
        return json.dumps([c.posthog() for c in COHORTS], indent=2)
    if fmt in ("traceql", "jaeger", "phoenix"):
        return "\n".join(f"{c.name}\t{getattr(c, fmt)()}" for c in COHORTS)
    if fmt == "json":
        return json.dumps(
            [{"name": c.name, "property": c.property, "value": c.value, "description": c.description} for c in COHORTS],
            indent=2,
        )
    raise ValueError(f"unknown cohort format {fmt!r}: use {', '.join(FORMATS)}")
