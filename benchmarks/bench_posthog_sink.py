"""N changed users through PostHogSink vs the plain SDK path (``client.set()`` x N + flush), to a local endpoint.

    .venv/bin/python benchmarks/bench_posthog_sink.py [--users 100000] [--batch-size 1000] [--gzip]

The endpoint is a small threaded HTTP server in its own process (so it does not
compete with the client for the GIL) that decodes each ``/batch/`` body and
counts distinct ids. "dropped" = users whose update never reached it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otel_segments.segments import UserSegment
from otel_segments.sinks.posthog import PostHogSink

API_KEY = "phc_benchmark"
SUPER = {"deployment.environment.name": "bench"}


def _serve(port_out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    ids: set[str] = set()
    counts = {"events": 0, "requests": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/reset":
                with lock:
                    ids.clear()
                    counts.update(events=0, requests=0)
                return self._answer({})
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            batch = json.loads(body)["batch"]
            with lock:
                counts["requests"] += 1
                counts["events"] += len(batch)
                ids.update(event["distinct_id"] for event in batch)
            self._answer({"status": 1})

        def do_GET(self) -> None:
            with lock:
                self._answer({"distinct": len(ids), **counts})

        def _answer(self, payload: dict[str, object]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port_out.put(server.server_address[1])
    server.serve_forever()


def _stats(host: str) -> dict[str, int]:
    with urllib.request.urlopen(host + "/stats", timeout=10) as response:
        return json.loads(response.read())


def _reset(host: str) -> None:
    urllib.request.urlopen(urllib.request.Request(host + "/reset", data=b"{}", method="POST"), timeout=10).read()


def make_users(n: int) -> list[UserSegment]:
    levels = ("high", "medium", "low", "inactive")
    return [
        UserSegment(
            f"user-{i}",
            set={"engagement_level": levels[i % 4], "entries_7d": i % 50, "projects": i % 7, "is_admin": i % 97 == 0},
            set_once={"first_login": "2024-01-01T00:00:00+00:00", "signup_method": "local"},
        )
        for i in range(n)
    ]


@dataclass
class Result:
    name: str
    seconds: float
    delivered: int
    requests: int
    users: int

    @property
    def rate(self) -> float:
        return self.users / self.seconds if self.seconds else 0.0

    @property
    def delivered_rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    @property
    def dropped(self) -> int:
        return self.users - self.delivered


def run_sink(host: str, users: list[UserSegment], batch_size: int, use_gzip: bool, job_batch: int) -> Result:
    _reset(host)
    sink = PostHogSink(API_KEY, host, super_properties=SUPER, batch_size=batch_size, gzip=use_gzip)
    start = time.perf_counter()
    for i in range(0, len(users), job_batch):
        sink.deliver(users[i : i + job_batch])  # returns only once PostHog answered 200 to every event
    seconds = time.perf_counter() - start
    sink.shutdown(5.0)
    stats = _stats(host)
    return Result("PostHogSink.deliver", seconds, stats["distinct"], stats["requests"], len(users))


def run_sdk(host: str, users: list[UserSegment], use_gzip: bool) -> Result:
    from posthog import Posthog

    _reset(host)
    client = Posthog(API_KEY, host=host, gzip=use_gzip, super_properties=SUPER)
    client.log.setLevel(logging.ERROR)  # it warns once per dropped event
    refused = 0
    start = time.perf_counter()
    for user in users:
        if client.set(distinct_id=user.distinct_id, properties=user.set) is None:
            refused += 1
    client.flush()
    client.shutdown()  # drains whatever flush() left
    seconds = time.perf_counter() - start
    stats = _stats(host)
    print(f"SDK: set() returned None (queue full) for {refused} users; nothing else reported it")
    return Result("SDK client.set() + flush", seconds, stats["distinct"], stats["requests"], len(users))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000, help="events per HTTP request (sink)")
    parser.add_argument("--job-batch", type=int, default=10_000, help="users per deliver() call, as the job passes them")
    parser.add_argument("--gzip", action="store_true")
    args = parser.parse_args(argv)

    ports: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(ports,), daemon=True)
    server.start()
    host = f"http://127.0.0.1:{ports.get(timeout=30)}"
    try:
        users = make_users(args.users)
        sink = run_sink(host, users, args.batch_size, args.gzip, args.job_batch)
        sdk = run_sdk(host, users, args.gzip)
    finally:
        server.terminate()
        server.join(5)

    print(f"{args.users} changed users, gzip={args.gzip}, {os.cpu_count()} CPUs, endpoint in its own process")
    header = f"{'path':<26} {'seconds':>8} {'updates/s':>10} {'delivered/s':>12} {'delivered':>10} {'dropped':>8} {'requests':>9}"
    print(header)
    for r in (sink, sdk):
        print(
            f"{r.name:<26} {r.seconds:>8.2f} {r.rate:>10.0f} {r.delivered_rate:>12.0f} "
            f"{r.delivered:>10} {r.dropped:>8} {r.requests:>9}"
        )
    rate = sink.rate / sdk.rate if sdk.rate else float("inf")
    delivered = sink.delivered_rate / sdk.delivered_rate if sdk.delivered_rate else float("inf")
    print(f"sink/SDK ratio: {rate:.2f}x updates/s, {delivered:.2f}x delivered/s; dropped: sink {sink.dropped}, SDK {sdk.dropped}")
    return 0 if sink.dropped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
