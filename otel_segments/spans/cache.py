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
from typing import Any

from .context import USER_PREFIX, attribute_value
from .privacy import is_pii_key, pii_allowed

_logger = logging.getLogger(__name__)

#: Segment properties sent on a span, at most (the built-in rules make about 30); see ``context.MAX_USER_PROPERTIES``.
MAX_SEGMENT_PROPERTIES = 64


def segment_attributes(properties: Mapping[str, object], only: Collection[str] | None = None) -> dict[str, Any]:
    """``app.user.<P>`` span attributes for segment properties; None, unsupported values and person keys left out.

    ``only``: the properties to keep (see :func:`.segments.span_properties.span_property_selection`); None keeps them
    all.
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
