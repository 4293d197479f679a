"""Helpers for the multi-process delivery tests: change the app's data, and count what PostHog received per change."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from otel_segments.segments.demo import time_entries

#: Entries added by :func:`add_entries`: enough to make any demo user's engagement "very_high".
BUSY = 25


def change(event: dict[str, Any]) -> tuple[str, str]:
    """One distinct change: the user and its properties, without the timestamp that every send refreshes."""
    properties = event["properties"]
    values = {k: v for k, v in properties.get("$set", {}).items() if k != "last_segment_update"}
    return event["distinct_id"], json.dumps([values, properties.get("$set_once", {})], sort_keys=True)


def changes(events: Iterable[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """How many times PostHog accepted each distinct change."""
    return Counter(change(e) for e in events)


def add_entries(engine: Engine, user_ids: Iterable[int], count: int = BUSY) -> None:
    """``count`` one-hour timer entries ending now for each user, as the app would record them."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with engine.begin() as conn:
        next_id = (conn.execute(select(func.max(time_entries.c.id))).scalar() or 0) + 1
        rows = []
        for user_id in user_ids:
            for _ in range(count):
                rows.append(
                    {
                        "id": next_id,
                        "user_id": user_id,
                        "start_time": now - timedelta(hours=1),
                        "end_time": now,
                        "created_at": now,
                        "source": "timer",
                        "duration_seconds": 3600,
                    }
                )
                next_id += 1
        conn.execute(insert(time_entries), rows)


def busy_arrived(events: Iterable[dict[str, Any]], user_ids: Iterable[int]) -> bool:
    """Every one of ``user_ids`` reached PostHog with the activity :func:`add_entries` gave it."""
    seen = {e["distinct_id"] for e in events if e["properties"].get("$set", {}).get("entries_last_24h", 0) >= BUSY}
    return {str(u) for u in user_ids} <= seen


def users_in(request: dict[str, Any]) -> set[str]:
    """The users of one ``/batch/`` request the capture endpoint recorded."""
    return {e["distinct_id"] for e in request["body"]["batch"]}


def wait_until(condition: Callable[[], Any], what: str, timeout: float, diagnostics: Callable[[], str] | None = None) -> Any:
    """Poll ``condition`` until it is truthy (and return it); fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    details = diagnostics()[-4000:] if diagnostics else ""
    raise AssertionError(f"{what}: not within {timeout}s\n{details}")
