"""What the refresh job says when things go wrong: each failure once, a stuck cycle once, and when it works again.

The job's lines are WARNINGs a person reads in the app's log: a failure is worded
by :func:`cause_of` (never SQL, parameters or a URL), a user only by their
pseudonym, and a failure that repeats every cycle is named once, not every minute.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from sqlalchemy.exc import DBAPIError

from ..segments.refresh import RefreshResult
from ..spans.privacy import pseudonymize

#: The job's own logger: its lines keep the name users already filter on.
_logger = logging.getLogger("otel_segments.job")

#: How many (user, place, cause) the job remembers having named.
_NAMED_MAX = 100_000


class Reporter:
    """The job's failure state: the last failure (until a cycle works again) and what it has already named."""

    def __init__(self) -> None:
        #: (user id, table.column, cause) the refresh reported and a warning named; ``_set_aside_count`` of them skipped.
        self._problems: set[tuple[str, str, str]] = set()
        self._set_aside_count = 0
        self.last_error: str | None = None
        self._stuck_reported: float | None = None  # start of the last cycle reported as stuck

    def forget_failures(self) -> None:
        """In a forked child: the parent's failures are the parent's; the users already named stay named."""
        self.last_error = None
        self._stuck_reported = None

    def failed(self, cause: str, error: BaseException) -> None:
        """A cycle (or the lease's release) failed; the details go to DEBUG, and the same cause again only there."""
        if cause != self.last_error:
            _logger.warning("otel_segments: segment refresh failed, retrying next cycle: %s", cause)
        self.last_error = cause
        _logger.debug("otel_segments: refresh failure details", exc_info=error)

    def sink_failed(self, cause: str) -> None:
        """A sink's delivery failed (the delivery said so itself)."""
        self.last_error = cause

    def worked(self) -> None:
        """A cycle that failed nowhere: says so once after a failure."""
        if self.last_error is not None:
            _logger.info("otel_segments: segment refresh works again")
            self.last_error = None

    def stuck(self, started: float | None, lease_ttl: timedelta) -> None:
        """Once per cycle that outlives its lease: a peer that took the connection and never answers blocks it, silently.

        The database drivers have no timeout for an answer that never comes (a
        wait, a hung server, a half-open connection), so such a cycle waits until the
        connection breaks; meanwhile the kicks that find it running say so, once.
        """
        if started is None or started == self._stuck_reported:
            return
        running = time.monotonic() - started
        if running <= lease_ttl.total_seconds():
            return
        self._stuck_reported = started
        self.last_error = "stuck"  # the next cycle that succeeds says so
        _logger.warning(
            "otel_segments: the segment refresh has been running for %.0fs, longer than its %.0fs lease: "
            "a database or sink stopped answering? No other refresh starts in this process until it returns",
            running,
            lease_ttl.total_seconds(),
        )

    def problems(self, refreshed: RefreshResult) -> None:
        """One WARNING per user, place and cause the refresh could not read as it is (once per process);
        users it set aside are counted in the line, and retried by every refresh until they can be computed."""
        named = self._problems
        current = {(p.user_id, p.where, p.cause): p for p in refreshed.problems}
        set_aside = refreshed.quarantined
        for key, problem in current.items():
            if key in named:
                continue
            if problem.skipped:
                _logger.warning(
                    "otel_segments: user %s set aside, retried each cycle (%d set aside now): %s: %s",
                    pseudonymize(problem.user_id),
                    set_aside,
                    problem.where,
                    problem.cause,
                )
            else:
                _logger.warning("otel_segments: user %s: %s: %s", pseudonymize(problem.user_id), problem.where, problem.cause)
        if len(named) > _NAMED_MAX:  # bounded memory; a problem still there is named again, once
            named.clear()
        named.update(current)
        if not set_aside and self._set_aside_count:
            _logger.info("otel_segments: no user is set aside any more")
        self._set_aside_count = set_aside


def cause_of(error: BaseException) -> str:
    """The error's class and first line, from the driver's own error when SQLAlchemy wraps one (no SQL, no URL)."""
    inner = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = str(inner).strip().splitlines()[0][:300] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__
