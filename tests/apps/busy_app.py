"""An app with SQL and HTTP calls of its own, for the test that the plugin's own I/O is never traced.

Run under ``opentelemetry-instrument`` with the database and HTTP instrumentations
installed and ``OTEL_SEGMENTS_DATABASE_URL`` set, so the refresh job runs beside
it. Each "request" is one root span ``app-request`` holding the app's work: a
query through its own SQLAlchemy engine (one connection each time, so a
``connect`` too), a GET with ``requests`` and one with ``httpx``, and every
fourth time a new time entry (fresh activity, so the job's next cycles have
updates to deliver). It runs for ``argv[1]`` seconds and at least :data:`MIN_REQUESTS` requests (a busy machine
may give it fewer in that time), prints ``served <n>`` and exits; the plugin's atexit shutdown and the SDK's flush
run as in any app.

The SQLAlchemy instrumentation is switched on here, in code: its 0.66b1 release
declares ``sqlalchemy<2.1``, so ``opentelemetry-instrument`` skips it beside
SQLAlchemy 2.1 (an app on 2.1 does exactly this to keep its query spans).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
import requests
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.pool import NullPool

from otel_segments.segments.demo import time_entries

SQLAlchemyInstrumentor().instrument(skip_dep_check=True)
engine = create_engine(os.environ["APP_DATABASE_URL"], poolclass=NullPool)
tracer = trace.get_tracer("tests.apps.busy_app")
MIN_REQUESTS = 8


def main() -> int:
    deadline = time.monotonic() + float(sys.argv[1])
    served = 0
    while time.monotonic() < deadline or served < MIN_REQUESTS:
        with tracer.start_as_current_span("app-request"):
            with engine.begin() as conn:
                conn.execute(text("SELECT count(*) FROM users"))
                if served % 4 == 0:
                    now = datetime.now(timezone.utc).replace(tzinfo=None)
                    next_id = (conn.execute(select(func.max(time_entries.c.id))).scalar() or 0) + 1
                    row = {"id": next_id, "user_id": served % 5 + 1, "start_time": now - timedelta(minutes=5)}
                    conn.execute(insert(time_entries).values(**row, end_time=now, created_at=now, source="timer"))
            requests.get(os.environ["APP_HTTP_URL"], timeout=5).raise_for_status()
            httpx.get(os.environ["APP_HTTP_URL"], timeout=5).raise_for_status()
        served += 1
        time.sleep(0.1)
    print(f"served {served}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
