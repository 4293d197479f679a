"""PostHog sink: each user's segment as one ``$set`` event, posted synchronously through the posthog SDK.

Why not ``client.set()`` and ``flush()``: the SDK's queue drops events when it is
full (a warning, nothing else), and ``flush()`` waits for the queue without
saying whether the batches arrived. A segment update must never be lost, so:

1. events are *built* by a real ``posthog.Client`` (``capture("$set", ...)``) that
   has ``send=False`` and ``sync_mode=True``: it stamps uuid, timestamp, ``$lib``
   and the client's ``super_properties`` exactly as for any event, and hands the
   finished event to ``before_send``, where we take it. That client has no queue,
   no consumer thread, no atexit hook and no feature-flag poller
   (:mod:`~otel_segments.sinks.posthog_events`);
2. each batch is *sent* with the SDK's own request function,
   ``posthog.request.batch_post`` (``POST {host}/batch/``, optionally gzip), in the
   calling thread, through our session
   (:class:`~otel_segments.sinks.transport.PeerSession`: a redirect is never
   followed, so the body and its ``api_key`` never go to another host and no GET
   stands in for the POST; each request has a total deadline), and only an HTTP
   200 counts.

An event over PostHog's 900 KiB limit is never sent (PostHog drops it): its user
is refused for good and named by the job, which retries it on later cycles. A 413
splits the request in halves, down to one user. ``deliver`` returns the refused
users once PostHog accepted every other event of the batch, and raises
:class:`~otel_segments.sinks.DeliveryError` (naming the users accepted before it
stopped) otherwise; the job keeps the rest pending for its next cycle.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from ..runtime import native
from ..segments import UserSegment
from ..settings.config import Secret
from ..spans.properties import detect_process_properties
from . import DeliveryError, Refusal
from . import RateLimitedError as RateLimitedError
from .posthog_events import EVENT as EVENT  # as itself: a moved name stays importable from here (likewise below)
from .posthog_events import MAX_EVENT_BYTES as MAX_EVENT_BYTES
from .posthog_events import MAX_REQUEST_BYTES as MAX_REQUEST_BYTES
from .posthog_events import YIELD_EVERY as YIELD_EVERY
from .posthog_events import Entry, EventBuilder, chunks
from .transport import PeerAbortedError, PeerSession, watch_answers

_logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
DEFAULT_TIMEOUT_S = 10.0
#: A Retry-After longer than this is capped: one bad header must not stop delivery for days.
MAX_RETRY_AFTER_S = 600.0


class PostHogSink:
    """Delivers :class:`UserSegment` batches to PostHog as person properties, losing none.

    ``super_properties`` (default: this process's properties, e.g.
    ``deployment.environment.name``) are given to the SDK client as its
    ``super_properties``, so every event it builds carries them, as event
    properties; they are not person properties. The distinct id is the user id
    as the app gives it, so the person matches the app's own PostHog events.

    Nothing runs at construction: the SDK client and the HTTP session are made on
    the first :meth:`deliver`, and made again in a forked child.
    """

    def __init__(
        self,
        api_key: str | Secret,
        host: str | None = None,
        *,
        super_properties: Mapping[str, Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        gzip: bool = False,
    ) -> None:
        key = api_key.reveal() if isinstance(api_key, Secret) else api_key
        if not key or not key.strip():
            raise ValueError("PostHogSink needs a project API key")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._api_key = Secret(key.strip())
        self._host = (host or "").strip() or None
        self._super_properties = dict(detect_process_properties().attributes if super_properties is None else super_properties)
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.gzip = gzip
        self._lock = native.Lock()
        self._pid: int | None = None
        self._builder: EventBuilder | None = None
        self._session: PeerSession | None = None
        self._not_before = 0.0
        self._shut = False

    def __repr__(self) -> str:
        return f"PostHogSink(host={self.host!r}, batch_size={self.batch_size}, gzip={self.gzip})"

    @property
    def host(self) -> str:
        """Where events go, without any credentials embedded in the URL (safe to log)."""
        from posthog.request import determine_server_host

        parts = urlsplit(determine_server_host(self._host))
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def super_properties(self) -> Mapping[str, Any]:
        return dict(self._super_properties)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _ensure(self) -> EventBuilder:
        """The event builder (the SDK client) and HTTP session of *this* process, made on first use."""
        pid = os.getpid()
        if self._builder is not None and self._pid == pid:
            return self._builder
        # In a forked child the parent's pooled sockets must not be reused; they are left, not closed,
        # so the parent's connections stay intact.
        self._builder = EventBuilder(self._api_key, self._host, self._super_properties)
        self._session = PeerSession()
        self._pid = pid
        return self._builder

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Release the client and connections at once, ending a post in flight; never waits for a delivery.

        Nothing is ever pending here (``deliver`` is synchronous). A delivery stuck on a
        PostHog that does not answer holds the sink's lock, so shutdown does not take it:
        it marks the sink shut and aborts the session, whose request in flight then fails.
        """
        self._shut = True
        builder, session, pid = self._builder, self._session, self._pid
        self._builder = self._session = None
        if pid != os.getpid():
            return  # a forked child leaves its parent's connections alone
        if session is not None:
            session.close()  # aborts the request in flight, if any
        if builder is not None:
            try:
                builder.shutdown()
            except Exception:
                _logger.warning("otel_segments: the PostHog client did not shut down cleanly", exc_info=True)

    # -- delivery ----------------------------------------------------------------------------------------------

    def deliver(self, batch: Sequence[UserSegment]) -> list[Refusal]:
        """Send every update in ``batch``; return the users refused for good once PostHog answered 200 to all others."""
        with self._lock:
            if self._shut:
                raise DeliveryError("the PostHog sink is shut down; nothing was sent")
            wait = self._not_before - time.monotonic()
            if wait > 0:
                raise RateLimitedError(
                    f"PostHog at {self.host} asked us to wait; {wait:.0f}s left, {len(batch)} updates not sent", wait
                )
            accepted: list[str] = []
            refused: list[Refusal] = []
            try:
                events = self._ensure().build(batch, accepted, refused)
                total = len(events)
                pending = list(chunks(events, self.batch_size))
                pending.reverse()
                while pending:
                    chunk = pending.pop()
                    status = self._post(chunk, accepted, refused, total)
                    if status is None:
                        accepted.extend(user for user, _, _ in chunk)
                    elif len(chunk) > 1:  # 413: each half on its own, in order
                        half = len(chunk) // 2
                        pending.extend((chunk[half:], chunk[:half]))
                    else:
                        refused.append(Refusal(chunk[0][0], f"PostHog answered HTTP {status} to its update alone"))
            except DeliveryError:
                raise
            except Exception as error:  # the contract: anything short of a 200 is a DeliveryError
                raise DeliveryError(
                    f"delivering to PostHog failed unexpectedly ({type(error).__name__})", accepted=accepted, refused=refused
                ) from error
            return refused

    def _post(self, chunk: list[Entry], accepted: list[str], refused: list[Refusal], total: int) -> int | None:
        """None once PostHog answered 200; 413 when it refused the request as too large; raises otherwise."""
        from posthog.request import APIError, batch_post

        sent = len(accepted)
        done = f"{sent} of {total} updates were accepted before this batch" if sent else "no update was accepted"

        def failed(message: str) -> DeliveryError:
            return DeliveryError(message, accepted=accepted, refused=refused)

        deadline = time.monotonic() + self.timeout_s
        # One immediate retry on a connection error, within the same deadline: a pooled keep-alive connection
        # that the server closed between cycles fails this way, and a fresh connection is then used.
        attempt = 0
        while True:
            attempt += 1
            session = self._session  # read once: with None, batch_post would use the SDK's own session
            if self._shut or session is None:
                raise failed(f"the PostHog sink was shut down mid-delivery; {done}")
            try:
                with watch_answers() as answer:
                    batch_post(
                        self._api_key.reveal(),
                        self._host,
                        gzip=self.gzip,
                        timeout=max(deadline - time.monotonic(), 0.001),
                        session=session,
                        batch=[event for _, event, _ in chunk],
                        historical_migration=False,
                    )
                return None
            except APIError as error:
                status = error.status
                if status == 413:
                    return 413
                if isinstance(status, int) and 300 <= status < 400:
                    raise failed(
                        f"PostHog at {self.host} answered HTTP {status} redirecting to "
                        f"{answer.location or '(no Location)'} for a batch of {len(chunk)} updates; redirects are never "
                        f"followed (nothing was sent there): set POSTHOG_HOST to the final address; {done}"
                    ) from None
                retry_after = getattr(error, "retry_after", None)
                if status == 429 or (retry_after is not None and status == 503):
                    wait = min(max(retry_after or 0.0, 0.0), MAX_RETRY_AFTER_S)
                    self._not_before = time.monotonic() + wait
                    raise RateLimitedError(
                        f"PostHog at {self.host} rate-limited a batch of {len(chunk)} updates (HTTP {status}, "
                        f"retry after {wait:.0f}s); {done}",
                        wait,
                        accepted=accepted,
                        refused=refused,
                    ) from None
                raise failed(
                    f"PostHog at {self.host} answered HTTP {status} to a batch of {len(chunk)} updates; {done}"
                ) from None
            except requests.Timeout:
                raise failed(
                    f"PostHog at {self.host} did not answer within {self.timeout_s:g}s (batch of {len(chunk)} updates); {done}"
                ) from None
            except PeerAbortedError:
                raise failed(f"the PostHog sink was shut down mid-delivery; {done}") from None
            except requests.ConnectionError as error:
                if attempt == 2 or deadline <= time.monotonic():
                    raise failed(f"could not reach PostHog at {self.host} ({_cause(error)}); {done}") from None
            except requests.RequestException as error:
                raise failed(f"the request to PostHog at {self.host} failed ({type(error).__name__}); {done}") from None


def _cause(error: BaseException) -> str:
    """The root cause's class name: the message may carry a URL, never needed to understand the failure."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        nxt = current.__cause__ or current.__context__
        if nxt is None and current.args and isinstance(current.args[0], BaseException):
            nxt = current.args[0]
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else nxt
    return type(error).__name__
