"""PostHog ``$set`` events built by the posthog SDK itself, and packed into requests the size PostHog takes.

A real ``posthog.Client`` builds each event (``send=False``, ``sync_mode=True``),
so it carries uuid, timestamp, ``$lib`` and the client's ``super_properties``
exactly as any event of the SDK; the finished event is taken in ``before_send``.
The client has no queue, no consumer thread, no atexit hook and no feature-flag
poller. What goes in is a user's person properties, minus values JSON cannot carry
and, unless the app opted in, properties that name a person.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..runtime import native
from ..segments import UserSegment
from ..settings.config import Secret
from ..spans.privacy import is_pii_key, pii_allowed
from . import DeliveryError, Refusal

#: The sink's own logger: its lines keep the name users already filter on.
_logger = logging.getLogger("otel_segments.sinks.posthog")


def _read_os_once() -> None:
    """Have the posthog SDK read the operating system now, in the importing thread (the app's, at start-up).

    ``capture()`` puts ``$os``/``$os_version`` on every event, read with ``distro``,
    which runs ``lsb_release`` in a subprocess and caches the answer only once it
    succeeded. Under gevent, ``subprocess`` can only wait for a child from the main
    thread's hub, and the job delivers from an OS thread of its own: there it
    raised (TypeError, "child watchers are only available on the default loop"),
    the SDK swallowed it, and ``capture()`` returned None for every event. Once
    read here, no event of ours starts a subprocess.
    """
    from posthog.utils import system_context

    try:
        system_context()
    except Exception:
        _logger.debug("otel_segments: the posthog SDK could not read the OS", exc_info=True)


_read_os_once()

EVENT = "$set"
#: The SDK's own limits (``posthog.consumer``): 900 KiB per event, 5 MiB per request body.
MAX_EVENT_BYTES = 900 * 1024
MAX_REQUEST_BYTES = 5 * 1024 * 1024
#: Events built between two hand-overs of the GIL to the app's threads (see otel_segments.runtime.native.let_others_run).
YIELD_EVERY = 8

#: (user id, event, its size in bytes)
Entry = tuple[str, dict[str, Any], int]


class EventBuilder:
    """The SDK client of one process, used only to build events; made by the sink on first use, again in a fork."""

    def __init__(self, api_key: Secret, host: str | None, super_properties: Mapping[str, Any]) -> None:
        from posthog import Posthog

        self._built: list[dict[str, Any]] = []
        self._client = Posthog(
            api_key.reveal(),
            host=host,
            send=False,  # the client only builds events; the sink's batch_post sends them
            sync_mode=True,  # no queue, no consumer thread, no atexit flush
            super_properties=super_properties,  # <- the process super properties, merged into each event
            before_send=self._take,
            capture_mode="v0",  # /batch/ whatever POSTHOG_CAPTURE_MODE says: we post the batch ourselves
            enable_exception_autocapture=False,
            enable_local_evaluation=False,
            disable_geoip=True,
            max_retries=0,
        )

    def _take(self, event: dict[str, Any]) -> dict[str, Any]:
        self._built.append(event)
        return event

    def shutdown(self) -> None:
        self._client.shutdown()

    def build(self, batch: Sequence[UserSegment], accepted: list[str], refused: list[Refusal]) -> list[Entry]:
        """An entry per user to send; a user with nothing to send counts as accepted, one whose event is over
        PostHog's limit as refused."""
        from posthog import new_context
        from posthog.request import DatetimeSerializer

        client = self._client
        events: list[Entry] = []
        self._built = []
        try:
            # A fresh PostHog context: tags or a session id of whatever context called us must not leak in.
            with new_context(fresh=True, capture_exceptions=False):
                for n, segment in enumerate(batch, 1):
                    if n % YIELD_EVERY == 0:
                        native.let_others_run()  # the SDK builds an event in ~0.1-0.2 ms of Python: the app's requests first
                    properties = _person_properties(segment)
                    if not properties:
                        accepted.append(segment.distinct_id)
                        continue
                    before = len(self._built)
                    uuid = client.capture(EVENT, distinct_id=str(segment.distinct_id), properties=properties)
                    if uuid is None or len(self._built) != before + 1:
                        raise DeliveryError(
                            f"the PostHog SDK did not build the event for one of {len(batch)} users; nothing was sent"
                        )
                    event = self._built[-1]
                    size = len(json.dumps(event, cls=DatetimeSerializer).encode())  # as posthog.consumer measures it
                    if size > MAX_EVENT_BYTES:
                        refused.append(
                            Refusal(
                                segment.distinct_id,
                                f"its update is {size} bytes, over PostHog's {MAX_EVENT_BYTES // 1024} KiB event limit",
                            )
                        )
                    else:
                        events.append((segment.distinct_id, event, size))
            return events
        finally:
            self._built = []


def chunks(events: list[Entry], batch_size: int) -> Iterator[list[Entry]]:
    """Requests of at most ``batch_size`` events and 5 MiB, in order."""
    chunk: list[Entry] = []
    size = 0
    for entry in events:
        if chunk and (len(chunk) == batch_size or size + entry[2] + 1 > MAX_REQUEST_BYTES - 1024):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += entry[2] + 1
    if chunk:
        yield chunk


def _person_properties(segment: UserSegment) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, values in (("$set", segment.set), ("$set_once", segment.set_once)):
        clean = {k: v for k, v in values.items() if _sendable(v) and _allowed(k)}
        if clean:
            properties[name] = clean
    return properties


def _sendable(value: object) -> bool:
    """None, NaN and infinity are left out: JSON has no NaN, and the SDK sends it as null, which erases the property."""
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


def _allowed(key: str) -> bool:
    """Person properties that name a person never leave the process unless the app opted in (``allow_pii``)."""
    return not is_pii_key(key) or pii_allowed()
