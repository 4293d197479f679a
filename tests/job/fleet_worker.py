"""One member of the fleet in test_fleet.py: its own RefreshJob, cycling until SIGTERM.

    python fleet_worker.py DATABASE_URL POSTHOG_HOST INTERVAL_S LEASE_TTL_S

Every cycle prints one JSON line (pid, wall-clock start and end, the
CycleResult) so the test can see who refreshed when. SIGTERM stops the loop and
calls ``job.shutdown()``, as the SDK's shutdown would; the last line is
``{"pid": ..., "exit": "shutdown"}``.

When the file ``FLEET_FREEZE_FILE`` names exists (user ids, comma-separated),
the next process about to send a batch to PostHog with one of those users in it
(the lease holder, mid-cycle) removes it, prints ``{"pid": ..., "frozen": [users]}``
and stops itself with SIGSTOP, the whole process at once, until the test sends SIGCONT.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments import UserSegment
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.sinks.posthog import PostHogSink


class FreezablePostHogSink(PostHogSink):
    """The real PostHog sink; the process stops itself just before a send when the test asks (see above)."""

    def deliver(self, batch: list[UserSegment]):
        freeze = Path(os.environ.get("FLEET_FREEZE_FILE", "/nonexistent"))
        try:
            wanted = set(freeze.read_text().split(","))
        except FileNotFoundError:
            wanted = set()
        if wanted & {s.distinct_id for s in batch}:
            try:
                freeze.unlink()
            except FileNotFoundError:  # another process took it
                pass
            else:
                print(json.dumps({"pid": os.getpid(), "frozen": [s.distinct_id for s in batch]}), flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
        return super().deliver(batch)


def main() -> int:
    url, host, interval_s, ttl_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    engine = create_engine(url)
    job = RefreshJob(
        engine,
        TIMETRACKER,
        sinks={"posthog": lambda: FreezablePostHogSink("phc_fleet_key", host, super_properties={"service.name": "fleet"})},
        interval=timedelta(seconds=interval_s),
        lease_ttl=timedelta(seconds=ttl_s),
    )
    while not stop.is_set():
        start = time.time()
        result = job.run_cycle()
        end = time.time()
        line = {"pid": os.getpid(), "start": start, "end": end}
        if result is not None:
            line.update(
                holder=result.holder,
                changed=result.refreshed.changed if result.refreshed else None,
                delivered=dict(result.delivered),
                failed=dict(result.failed),
                error=result.error,
            )
        print(json.dumps(line), flush=True)
        stop.wait(interval_s)
    job.shutdown(timeout_s=5)
    engine.dispose()
    print(json.dumps({"pid": os.getpid(), "exit": "shutdown"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
