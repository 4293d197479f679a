"""Where computed segments go. A sink knows nothing of SQL: it gets :class:`~otel_segments.segments.UserSegment` batches.

The contract, which lets the caller advance its delivery state exactly as far as the peer accepted:

- ``deliver(batch)`` returns once every update in the batch was either accepted by the peer or
  *refused for good*; it returns the refused ones (:class:`Refusal`: a user whose update the peer
  will never take as it is, e.g. over PostHog's 900 KiB event limit). Everyone else was accepted.
- When delivery stops short (the peer is down, slow, rate-limits, redirects), it raises
  :class:`DeliveryError`, whose ``accepted`` names the users accepted before it stopped and whose
  ``refused`` names those refused for good so far. Nobody else counts as delivered.

A sink splits a batch the peer refuses as too large (HTTP 413, gRPC ``RESOURCE_EXHAUSTED``) and
retries the halves, down to one user, so one oversized user never holds back the others and no
accepted neighbour is sent twice.

May import: settings/, runtime/, spans/, segments/ (``UserSegment``). Never SQL or the job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """One user whose update the peer refused for good; ``cause`` never holds the user id (the caller names it)."""

    distinct_id: str
    cause: str


class DeliveryError(Exception):
    """Delivery stopped short; only ``accepted`` users count as delivered, ``refused`` ones were refused for good."""

    def __init__(self, message: str, *, accepted: Iterable[str] = (), refused: Iterable[Refusal] = ()) -> None:
        super().__init__(message)
        self.accepted: tuple[str, ...] = tuple(accepted)
        self.refused: tuple[Refusal, ...] = tuple(refused)


class SinkUnsupportedError(DeliveryError):
    """The peer will never take this sink's data (a traces-only backend): stop using the sink until restart.

    Nothing in the batch counts as delivered, so the updates stay pending for a process configured to reach a
    peer that takes them.
    """


class RateLimitedError(DeliveryError):
    """The peer (PostHog: 429, or 503 with Retry-After) asked us to wait; ``retry_after_s`` says how long.

    Here rather than beside the PostHog sink so the job can tell it apart without importing the posthog SDK
    into an app that has no PostHog key.
    """

    def __init__(
        self, message: str, retry_after_s: float | None, *, accepted: Iterable[str] = (), refused: Iterable[Refusal] = ()
    ) -> None:
        super().__init__(message, accepted=accepted, refused=refused)
        self.retry_after_s = retry_after_s
