"""The ``app.segments.users`` gauge: users per cohort value, counted once per refresh, observed from the counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from opentelemetry.metrics import Observation

from ..segments import UserSegment
from ..segments.cohorts import COHORTS

GAUGE = "app.segments.users"
SEGMENT_NAME = "app.segment.name"
SEGMENT_VALUE = "app.segment.value"
#: The (property, value) pairs counted for the gauge: every value a cohort names, zeros included.
SEGMENT_VALUES: tuple[tuple[str, str | bool], ...] = tuple(dict.fromkeys((c.property, c.value) for c in COHORTS))


def count(segments: Iterable[UserSegment]) -> dict[tuple[str, str | bool], int]:
    counts: Counter[tuple[str, str | bool]] = Counter({key: 0 for key in SEGMENT_VALUES})
    wanted = set(SEGMENT_VALUES)
    for segment in segments:
        for prop, value in segment.set.items():
            if isinstance(value, str | bool) and (prop, value) in wanted:
                counts[(prop, value)] += 1
    return dict(counts)


def observations(counts: Mapping[tuple[str, str | bool], int]) -> Iterator[Observation]:
    for (prop, value), n in counts.items():
        text = str(value).lower() if isinstance(value, bool) else value
        yield Observation(n, {SEGMENT_NAME: prop, SEGMENT_VALUE: text})
