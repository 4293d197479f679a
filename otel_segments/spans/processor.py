"""The span processor that stamps every span with the super properties."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from .baggage import user_from_baggage
from .cache import SegmentCache
from .context import UserProperties, current_user, enter_local_root
from .properties import ProcessProperties, detect_process_properties

_logger = logging.getLogger(__name__)


class SuperPropertiesSpanProcessor(SpanProcessor):
    """Writes the process's and the current user's properties onto each span, in one call.

    Everything is computed before ``on_start``: the process part here, the user
    part when the user is set, the segment part when the refresh job runs. On the
    hot path there is one context-variable read, one dict look-up and one
    ``set_attributes`` (of a dict merged once per user and segment, not per
    span). It never raises into the app: the SDK calls ``on_start`` inside the
    app's ``start_span`` with no guard of its own.

    Beware: these attributes identify users. Set ``OTEL_SEGMENTS_USER_ID_HASH_KEY``
    to send a keyed hash instead of the id where the backend must not hold ids.

    ``trust_baggage=True`` (``OTEL_SEGMENTS_TRUST_BAGGAGE``) reads the user id and
    role from incoming W3C baggage when no user is set here. Off by default:
    baggage is whatever the caller sent, see :mod:`otel_segments.spans.baggage`.
    """

    def __init__(
        self, process: ProcessProperties | None = None, segments: SegmentCache | None = None, trust_baggage: bool = False
    ) -> None:
        self._process: Mapping[str, Any] = dict((process or detect_process_properties()).attributes)
        self._segments = segments
        self._trust_baggage = trust_baggage
        self._failed = False
        # The attributes of the last (user, segment) pair: the spans of one request share both objects, so the
        # merge runs once per request and per refresh, not per span. One tuple, swapped whole: safe across threads.
        self._last: tuple[object, object, Mapping[str, Any]] = (None, None, {})

    @property
    def segments(self) -> SegmentCache | None:
        return self._segments

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            parent = span.parent
            if parent is None or parent.is_remote:
                enter_local_root(span, self._stamp)
            user = current_user()
            if user is None:
                if self._trust_baggage:
                    self._from_baggage(span, parent_context)
                else:
                    span.set_attributes(self._process)
                return
            segment = self._segments.get(user.user_id) if self._segments is not None else None
            memo = self._last
            if memo[0] is user and memo[1] is segment:
                span.set_attributes(memo[2])
                return
            attributes = {**self._process, **segment, **user.attributes} if segment else {**self._process, **user.attributes}
            self._last = (user, segment, attributes)
            span.set_attributes(attributes)
        except Exception:
            if not self._failed:
                self._failed = True
                _logger.exception("otel_segments: could not add super properties to a span; further failures are silent")

    def _stamp(self, span: Span, user: UserProperties) -> None:
        """A user set after ``span`` started (its request's server span): its attributes and segment, now."""
        segment = self._segments.get(user.user_id) if self._segments is not None else None
        span.set_attributes({**segment, **user.attributes} if segment else user.attributes)

    def _from_baggage(self, span: Span, parent_context: Context | None) -> None:
        found = user_from_baggage(parent_context)
        if found is None:
            span.set_attributes(self._process)
            return
        user_id, attributes = found
        segment = self._segments.get(user_id) if self._segments is not None and user_id is not None else None
        span.set_attributes({**self._process, **segment, **attributes} if segment else {**self._process, **attributes})

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
