"""Where computed segments go. A sink knows nothing of SQL: it gets :class:`~otel_segments.segments.UserSegment` batches.

``deliver(batch)`` returns only once every update in the batch was accepted by the peer, and raises
:class:`DeliveryError` otherwise, so the caller advances its delivery state only on success.
"""


class DeliveryError(Exception):
    """A batch was not accepted; nothing in it counts as delivered."""
