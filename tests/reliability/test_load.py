"""Load: 64 threads and asyncio tasks serve 10k distinct users while another thread refreshes the segment cache.

Every user's attributes derive from its id, so each finished span can be checked
on its own: it must carry its own user's attributes and nobody else's. The cache
must stay within its size, memory must stay bounded, and everything must finish
(a stuck thread fails the test at a generous bound; speed is for benchmarks/).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import tracemalloc
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_segments import SuperPropertiesSpanProcessor, clear_user, set_user, user_context
from otel_segments.spans.cache import SegmentCache

from .conftest import PROCESS

USERS = 10_000
THREADS = 64
TASKS = 100
CACHE_SIZE = 2_000  # smaller than the user count: evictions run while spans read
STALL_S = 120.0  # a liveness bound, not a speed target
MEMORY_BOUND = 24 * 1024 * 1024  # ~3 MiB measured; keeping the 20k spans alone would take more than this
LEVELS = ("inactive", "low", "medium", "high", "very_high")


def user_id(n: int) -> str:
    return f"u{n}"


def user_properties(n: int) -> dict[str, Any]:
    return {"role": f"role-{n % 5}", "is_admin": n % 3 == 0, "plan": f"plan-{user_id(n)}", "seat": n}


def segment_properties(n: int) -> dict[str, Any]:
    return {"segment_of": user_id(n), "engagement_level": LEVELS[n % 5], "entries_last_7_days": n % 50}


def expected_attributes(n: int) -> dict[str, Any]:
    p = user_properties(n)
    return {
        "user.id": user_id(n),
        "user.roles": (p["role"],),
        "app.user.role": p["role"],
        "app.user.is_admin": p["is_admin"],
        "app.user.plan": p["plan"],
        "app.user.seat": n,
    }


class Checker(SpanProcessor):
    """Checks each span as it ends, so 20k spans need not be kept to be verified."""

    def __init__(self) -> None:
        self.seen = 0
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        problem = self._check(span)
        with self._lock:
            self.seen += 1
            if problem is not None and len(self.problems) < 20:
                self.problems.append(problem)

    @staticmethod
    def _check(span: ReadableSpan) -> str | None:
        n = int(span.name.split("/")[0][1:])
        attributes = dict(span.attributes or {})
        for key, value in expected_attributes(n).items():
            if attributes.get(key) != value:
                return f"{span.name}: {key}={attributes.get(key)!r}, expected {value!r}"
        if "app.user.segment_of" in attributes:  # present once the refresher has reached this user
            for key, value in segment_properties(n).items():
                if attributes.get(f"app.user.{key}") != value:
                    return f"{span.name}: segment {key}={attributes.get(f'app.user.{key}')!r}, expected {value!r}"
        allowed = {*expected_attributes(n), *(f"app.user.{k}" for k in segment_properties(n)), *PROCESS.attributes}
        extra = set(attributes) - allowed
        return f"{span.name}: unexpected attributes {sorted(extra)}" if extra else None


def test_no_cross_user_leak_bounded_memory_no_deadlock() -> None:
    cache = SegmentCache(CACHE_SIZE)
    checker = Checker()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(PROCESS, cache))
    provider.add_span_processor(checker)
    tracer = provider.get_tracer("load")

    thread_users = [n for n in range(USERS) if n % 2 == 0]
    task_users = [n for n in range(USERS) if n % 2 == 1]
    start = threading.Barrier(THREADS + 2)  # the workers, the event loop's thread, the refresher
    stop_refreshing = threading.Event()
    cache_overflows: list[int] = []
    errors: list[BaseException] = []

    def serve(n: int) -> None:
        with tracer.start_as_current_span(user_id(n)), tracer.start_as_current_span(f"{user_id(n)}/query"):
            pass

    def worker(index: int) -> None:
        try:
            start.wait()
            for n in thread_users[index::THREADS]:
                if n % 4 == 0:  # a framework's request hooks
                    token = set_user(user_id(n), **user_properties(n))
                    try:
                        serve(n)
                    finally:
                        clear_user(token)
                else:
                    with user_context(user_id(n), **user_properties(n)):
                        serve(n)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    async def task(index: int) -> None:
        for n in task_users[index::TASKS]:
            with user_context(user_id(n), **user_properties(n)):
                with tracer.start_as_current_span(user_id(n)):
                    await asyncio.sleep(0)  # other tasks run in between, with their own users
                    with tracer.start_as_current_span(f"{user_id(n)}/query"):
                        await asyncio.sleep(0)

    def event_loop() -> None:
        try:
            start.wait()

            async def main() -> None:
                await asyncio.gather(*(task(i) for i in range(TASKS)))

            asyncio.run(main())
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    def refresher() -> None:
        rng = random.Random(6)
        start.wait()
        puts = 0
        while not stop_refreshing.is_set():
            n = rng.randrange(USERS)
            cache.put(user_id(n), segment_properties(n))
            puts += 1
            if puts % 256 == 0:
                if len(cache) > CACHE_SIZE:
                    cache_overflows.append(len(cache))
                time.sleep(0)  # let the serving threads run

    tracemalloc.start()
    try:
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
        threads.append(threading.Thread(target=event_loop, daemon=True))
        refresh_thread = threading.Thread(target=refresher, daemon=True)
        for t in [*threads, refresh_thread]:
            t.start()
        deadline = time.monotonic() + STALL_S
        for t in threads:
            t.join(timeout=max(deadline - time.monotonic(), 0.1))
        stuck = [t.name for t in threads if t.is_alive()]
        stop_refreshing.set()
        refresh_thread.join(timeout=10)
        if stuck or refresh_thread.is_alive():
            pytest.fail(f"deadlock or stall: {len(stuck)} serving threads (and refresher alive: {refresh_thread.is_alive()})")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        provider.shutdown()

    assert not errors, errors[:3]
    assert checker.problems == []
    assert checker.seen == 2 * USERS
    assert not cache_overflows and len(cache) == CACHE_SIZE
    assert peak < MEMORY_BOUND, f"peak traced memory {peak / 2**20:.1f} MiB"
