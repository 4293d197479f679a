"""PostHog sink: each user's segment as one ``$set`` event, posted synchronously through the posthog SDK.

Why not ``client.set()`` and ``flush()``: the SDK's queue drops events when it is
full (a warning, nothing else), and ``flush()`` waits for the queue without
saying whether the batches arrived. A segment update must never be lost, so:

1. events are *built* by a real ``posthog.Client`` (``capture("$set", ...)``) that
   has ``send=False`` and ``sync_mode=True``: it stamps uuid, timestamp, ``$lib``
   and the client's ``super_properties`` exactly as for any event, and hands the
   finished event to ``before_send``, where we take it. That client has no queue,
   no consumer thread, no atexit hook and no feature-flag poller;
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

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from .. import native
from ..config import Secret
from ..context import is_pii_key, pii_allowed
from ..properties import detect_process_properties
from ..segments import UserSegment
from . import DeliveryError, Refusal
from .transport import PeerAbortedError, PeerSession, watch_answers

_logger = logging.getLogger(__name__)


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
DEFAULT_BATCH_SIZE = 1000
DEFAULT_TIMEOUT_S = 10.0
#: Events built between two hand-overs of the GIL to the app's threads (see otel_segments.native.let_others_run).
YIELD_EVERY = 8
#: A Retry-After longer than this is capped: one bad header must not stop delivery for days.
MAX_RETRY_AFTER_S = 600.0


class RateLimitedError(DeliveryError):
    """PostHog answered 429 (or 503 with Retry-After); ``retry_after_s`` says when to come back."""

    def __init__(
        self, message: str, retry_after_s: float | None, *, accepted: Iterable[str] = (), refused: Iterable[Refusal] = ()
    ) -> None:
        super().__init__(message, accepted=accepted, refused=refused)
        self.retry_after_s = retry_after_s


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
        self._client: Any = None
        self._session: PeerSession | None = None
        self._built: list[dict[str, Any]] = []
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

    def _ensure(self) -> Any:
        """The SDK client and HTTP session of *this* process, made on first use."""
        pid = os.getpid()
        if self._client is not None and self._pid == pid:
            return self._client
        # In a forked child the parent's pooled sockets must not be reused; they are left, not closed,
        # so the parent's connections stay intact.
        from posthog import Posthog

        self._client = Posthog(
            self._api_key.reveal(),
            host=self._host,
            send=False,  # the client only builds events; batch_post below sends them
            sync_mode=True,  # no queue, no consumer thread, no atexit flush
            super_properties=self._super_properties,  # <- the process super properties, merged into each event
            before_send=self._take,
            capture_mode="v0",  # /batch/ whatever POSTHOG_CAPTURE_MODE says: we post the batch ourselves
            enable_exception_autocapture=False,
            enable_local_evaluation=False,
            disable_geoip=True,
            max_retries=0,
        )
        self._session = PeerSession()
        self._pid = pid
        return self._client

    def _take(self, event: dict[str, Any]) -> dict[str, Any]:
        self._built.append(event)
        return event

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Release the client and connections at once, ending a post in flight; never waits for a delivery.

        Nothing is ever pending here (``deliver`` is synchronous). A delivery stuck on a
        PostHog that does not answer holds the sink's lock, so shutdown does not take it:
        it marks the sink shut and aborts the session, whose request in flight then fails.
        """
        self._shut = True
        client, session, pid = self._client, self._session, self._pid
        self._client = self._session = None
        if pid != os.getpid():
            return  # a forked child leaves its parent's connections alone
        if session is not None:
            session.close()  # aborts the request in flight, if any
        if client is not None:
            try:
                client.shutdown()
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
                events = self._build(batch, accepted, refused)
                total = len(events)
                pending = list(self._chunks(events))
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

    def _build(
        self, batch: Sequence[UserSegment], accepted: list[str], refused: list[Refusal]
    ) -> list[tuple[str, dict[str, Any], int]]:
        """(user id, event, its size in bytes) per user to send; a user with nothing to send counts as accepted,
        one whose event is over PostHog's limit as refused."""
        from posthog import new_context
        from posthog.request import DatetimeSerializer

        client = self._ensure()
        events: list[tuple[str, dict[str, Any], int]] = []
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

    def _chunks(self, events: list[tuple[str, dict[str, Any], int]]) -> Iterator[list[tuple[str, dict[str, Any], int]]]:
        """Requests of at most ``batch_size`` events and 5 MiB, in order."""
        chunk: list[tuple[str, dict[str, Any], int]] = []
        size = 0
        for entry in events:
            if chunk and (len(chunk) == self.batch_size or size + entry[2] + 1 > MAX_REQUEST_BYTES - 1024):
                yield chunk
                chunk, size = [], 0
            chunk.append(entry)
            size += entry[2] + 1
        if chunk:
            yield chunk

    def _post(
        self, chunk: list[tuple[str, dict[str, Any], int]], accepted: list[str], refused: list[Refusal], total: int
    ) -> int | None:
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
