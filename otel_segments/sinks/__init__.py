"""Where computed segments go. A sink knows nothing of SQL: it gets :class:`~otel_segments.segments.UserSegment` batches.

``deliver(batch)`` returns only once every update in the batch was accepted by the peer, and raises
:class:`DeliveryError` otherwise, so the caller advances its delivery state only on success.
"""


class DeliveryError(Exception):
    """A batch was not accepted; nothing in it counts as delivered."""


class SinkUnsupportedError(DeliveryError):
    """The peer will never take this sink's data (a traces-only backend): stop using the sink until restart.

    Nothing in the batch counts as delivered, so the updates stay pending for a process configured to reach a
    peer that takes them.
    """
