"""The latest segment of recently seen users, as ready-made span attributes.

Fed by the refresh job, read by the span processor on every span: a read is one
dict look-up, never I/O. Bounded, least recently used first out, per process.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .config import OTEL_SEGMENTS_SPAN_PROPERTIES
from .context import USER_PREFIX, attribute_value, is_pii_key, pii_allowed

_logger = logging.getLogger(__name__)

#: Segment properties sent on a span, at most (the built-in rules make about 30); see ``context.MAX_USER_PROPERTIES``.
MAX_SEGMENT_PROPERTIES = 64

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
    from .segments.rules import UserActivity, person_properties

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


def segment_attributes(properties: Mapping[str, object], only: Collection[str] | None = None) -> dict[str, Any]:
    """``app.user.<P>`` span attributes for segment properties; None, unsupported values and person keys left out.

    ``only``: the properties to keep (see :func:`span_property_selection`); None keeps them all.
    """
    attributes: dict[str, Any] = {}
    for key, value in properties.items():
        if only is not None and key not in only:
            continue
        if is_pii_key(key) and not pii_allowed():
            continue
        clean = attribute_value(key, value)
        if clean is None:
            continue
        if len(attributes) == MAX_SEGMENT_PROPERTIES:
            _warn_too_many()
            break
        attributes[USER_PREFIX + key] = clean
    return attributes


@functools.cache
def _warn_too_many() -> None:
    _logger.warning("otel_segments: a segment has more than %d properties; the rest are not put on spans", MAX_SEGMENT_PROPERTIES)


class SegmentCache:
    """Segment attributes by user id, least recently used out.

    A miss is remembered (bounded) so the job loads that user next cycle; a hit is
    remembered too, so the job's reload keeps the users spans actually ask for and
    evicts the idle ones first: recency at the granularity of a refresh cycle,
    without a lock or a reorder on the span path.

    ``span_properties`` chooses which segment properties become attributes (None: all of them), once, when
    a segment is put: the span path reads a finished dict.
    """

    def __init__(self, maxsize: int = 10_000, span_properties: Collection[str] | None = None) -> None:
        self.maxsize = maxsize
        self.span_properties = None if span_properties is None else frozenset(span_properties)
        self._data: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._missed: set[str] = set()
        self._used: set[str] = set()
        self._lock = threading.Lock()

    def get(self, user_id: str) -> Mapping[str, Any] | None:
        # Lock-free on purpose: a plain look-up and a set.add are atomic under the GIL,
        # and the span hot path must not wait for a writer.
        found = self._data.get(user_id)
        if found is None:
            if len(self._missed) < self.maxsize:
                self._missed.add(user_id)
        elif len(self._used) < self.maxsize:
            self._used.add(user_id)
        return found

    def wanted(self) -> list[str]:
        """The users to (re)load, least recently used first: cached but unused, cached and used, then missed.

        Putting them back in this order makes the idle ones the first evicted.
        """
        missed, self._missed = self._missed, set()
        used, self._used = self._used, set()
        with self._lock:
            cached = list(self._data)
        return (
            [user_id for user_id in cached if user_id not in used]
            + [user_id for user_id in cached if user_id in used]
            + [user_id for user_id in missed if user_id not in self._data]
        )

    def put(self, user_id: str, properties: Mapping[str, object]) -> None:
        attributes = segment_attributes(properties, self.span_properties)
        with self._lock:
            self._data[user_id] = attributes
            self._data.move_to_end(user_id)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
