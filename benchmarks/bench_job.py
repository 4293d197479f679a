"""A whole refresh cycle with N changed users: database -> segments -> PostHog, through ``RefreshJob``.

    .venv/bin/python benchmarks/bench_job.py [--users 100000] [--entries 10]

Issue 4's "a refresh of 100k changed users delivers 100k updates". The same
users are then pushed through the plain SDK path (``client.set()`` x N + flush)
to the same endpoint, in the same run, as the baseline. The endpoint runs in its
own process and counts distinct ids; "dropped" = users that never reached it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_posthog_sink import API_KEY, SUPER, Result, _reset, _serve, _stats, run_sdk
from sqlalchemy import create_engine, insert

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.demo import metadata, time_entries, users
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.sinks.posthog import PostHogSink


def build(url: str, n: int, entries: int) -> None:
    engine = create_engine(url)
    metadata.create_all(engine)
    rng = random.Random(5)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    entry_id = 0
    with engine.begin() as conn:
        for start in range(1, n + 1, 10_000):
            ids = range(start, min(n, start + 9_999) + 1)
            conn.execute(
                insert(users),
                [
                    {
                        "id": i,
                        "username": f"u{i}",
                        "role": "user",
                        "created_at": now - timedelta(days=rng.uniform(1, 400)),
                        "last_login": now - timedelta(days=rng.uniform(0, 30)),
                        "auth_provider": "local",
                    }
                    for i in ids
                ],
            )
            rows = []
            for i in ids:
                for _ in range(rng.randint(0, 2 * entries)):
                    entry_id += 1
                    end = now - timedelta(days=rng.uniform(0, 60))
                    rows.append(
                        {
                            "id": entry_id,
                            "user_id": i,
                            "start_time": end - timedelta(hours=1),
                            "end_time": end,
                            "created_at": end,
                            "source": rng.choice(("timer", "manual")),
                            "duration_seconds": 3600,
                        }
                    )
            conn.execute(insert(time_entries), rows)
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--entries", type=int, default=10, help="mean time entries per user")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-job-"))
    url = f"sqlite:///{folder / 'app.db'}"
    started = time.perf_counter()
    build(url, args.users, args.entries)
    print(f"built {args.users} users in {time.perf_counter() - started:.1f} s")

    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    server = ctx.Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    host = f"http://127.0.0.1:{ports.get(timeout=30)}"
    try:
        _reset(host)
        engine = create_engine(url)
        job = RefreshJob(engine, TIMETRACKER, sinks={"posthog": lambda: PostHogSink(API_KEY, host, super_properties=SUPER)})
        start = time.perf_counter()
        cycle = job.run_cycle()
        seconds = time.perf_counter() - start
        job.shutdown(timeout_s=30)
        assert cycle is not None and cycle.error is None and cycle.refreshed is not None, cycle
        stats = _stats(host)
        ours = Result("RefreshJob cycle", seconds, stats["distinct"], stats["requests"], cycle.refreshed.changed)
        pending = len(RefreshState(engine).pending("posthog", limit=10))
        segments = list(RefreshState(engine).segments())
        sdk = run_sdk(host, segments, use_gzip=False)
    finally:
        server.terminate()
        server.join(5)

    print(f"{args.users} users, {os.cpu_count()} CPUs; refresh {cycle.refreshed.seconds:.1f} s of the cycle's {seconds:.1f} s")
    print(f"{'path':<26} {'seconds':>8} {'delivered/s':>12} {'delivered':>10} {'dropped':>8} {'requests':>9}")
    for r in (ours, sdk):
        print(f"{r.name:<26} {r.seconds:>8.2f} {r.delivered_rate:>12.0f} {r.delivered:>10} {r.dropped:>8} {r.requests:>9}")
    ratio = ours.delivered_rate / sdk.delivered_rate if sdk.delivered_rate else float("inf")
    print(
        f"job/SDK delivered-per-second ratio {ratio:.2f}x (the job's time includes the refresh); "
        f"dropped: job {ours.dropped}, SDK {sdk.dropped}; still pending after the cycle: {pending}"
    )
    return 0 if ours.dropped == 0 and pending == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
