"""Host app request latency while each of the plugin's peers fails, against the same app without the fault, same run.

    .venv/bin/python benchmarks/bench_faults.py [--seconds 5] [--users 60] [--protocol grpc] [--only NAME,...]

For each fault: a fresh ``tests/apps/fault_app.py`` (Flask on werkzeug's threaded
server) under ``opentelemetry-instrument``, the plugin configured by environment
variables alone (refresh every 300 ms, the PostHog and OTLP sinks, every other
setting at its default), its peers real and local (the PostHog capture endpoint,
the OTLP receiver, PostgreSQL or SQLite) behind a ``FaultyPort`` that breaks them
on cue. Once every user is delivered, a client in a process of its own sends
requests one after another: ``--seconds`` without fault (the baseline), then
``--seconds`` with the fault on, while fresh activity gives the refresh job
updates to retry. ratio = fault / baseline, at p50 and p99. The row "none" has no
fault in either window: the run's noise floor. "recovered" is how long after the
fault cleared the plugin's state held the new activity, acknowledged by every
sink. Issue 6's goal: within 2x.

The fault is on from the middle of a running app here (the tests also start
with the collector, PostHog or the database already down).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.state import RefreshState
from tests.conftest import postgres_server
from tests.delivery import BUSY, add_entries
from tests.receivers import GrpcReceiver, HttpReceiver, Receiver
from tests.reliability.faults import (
    FORWARD,
    HANG,
    HOLD,
    REFUSE,
    FaultyPort,
    FullDisk,
    HostApp,
    Latency,
    Sample,
    http_get,
    latency,
    plugin_env,
)
from tests.sinks.conftest import Capture

TOKEN = "bench-token"
API_KEY = "phc_bench"
INTERVAL_MS = 300
CHANGED = (5, 6, 7)
PAUSE_S = 0.005
RECOVERY_BOUND_S = 60


@dataclass
class Peers:
    capture: Capture
    receiver: Receiver
    posthog: FaultyPort
    collector: FaultyPort
    database: FaultyPort | None  # in front of PostgreSQL, for the database faults
    disk: FullDisk | None  # under the state database, for the disk fault
    app: HostApp | None = None


@dataclass(frozen=True)
class Fault:
    name: str
    on: Callable[[Peers], None]
    off: Callable[[Peers], None]
    postgres: bool = False
    disk: bool = False


def _answer(status: int, headers: dict[str, str] | None = None) -> Callable[[Peers], None]:
    def on(peers: Peers) -> None:
        peers.capture.answers = [(status, headers or {})] * 100_000

    return on


def _no_answers(peers: Peers) -> None:
    peers.capture.answers = []


def _mode(port: str, mode: str) -> Callable[[Peers], None]:
    return lambda peers: getattr(peers, port).set_mode(mode)


def _cut(then: str) -> Callable[[Peers], None]:
    return lambda peers: peers.database.cut_on(b"time_entries", then=then)  # type: ignore[union-attr]


def _restart_database(peers: Peers) -> None:
    assert peers.database is not None
    peers.database.set_mode(REFUSE)  # drops the connection that waits for an answer
    peers.database.set_mode(FORWARD)


def _fill(peers: Peers) -> None:
    assert peers.disk is not None and peers.app is not None
    peers.disk.fill(peers.app.pid)


def _free(peers: Peers) -> None:
    assert peers.disk is not None and peers.app is not None
    peers.disk.free(peers.app.pid)


def _nothing(peers: Peers) -> None:
    pass


FAULTS = (
    Fault("none", _nothing, _nothing),
    Fault("collector down", _mode("collector", REFUSE), _mode("collector", FORWARD)),
    Fault("collector hanging", _mode("collector", HANG), _mode("collector", FORWARD)),
    Fault("posthog 500", _answer(500), _no_answers),
    Fault("posthog 429 retry-after 1s", _answer(429, {"Retry-After": "1"}), _no_answers),
    Fault("posthog timeout", _mode("posthog", HOLD), _mode("posthog", FORWARD)),
    Fault("posthog refused", _mode("posthog", REFUSE), _mode("posthog", FORWARD)),
    Fault("database down", _mode("database", REFUSE), _mode("database", FORWARD), postgres=True),
    Fault("database gone mid-refresh", _cut(REFUSE), _mode("database", FORWARD), postgres=True),
    Fault("database stops answering", _cut(HOLD), _restart_database, postgres=True),
    Fault("state disk full", _fill, _free, disk=True),
)


# -- the client, in a process of its own -----------------------------------------------------------------------


def _client(port: int, users: list[str], stop: Any, out: Any) -> None:
    get = http_get(port)
    samples: list[tuple[float, float, int | None]] = []
    i = 0
    while not stop.is_set():
        start = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
        try:
            status: int | None = get(users[i % len(users)])
        except OSError:
            status = None
        samples.append((start, time.monotonic() - start, status))
        i += 1
        stop.wait(PAUSE_S)
    out.put(samples)


@contextlib.contextmanager
def client(port: int, users: list[str]) -> Iterator[list[tuple[float, float, int | None]]]:
    """Requests to the app from another process while the block runs; the samples fill the yielded list at exit."""
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    process = context.Process(target=_client, args=(port, users, stop, out), daemon=True)
    process.start()
    samples: list[tuple[float, float, int | None]] = []
    try:
        yield samples
    finally:
        stop.set()
        samples.extend(out.get(timeout=60))
        process.join(10)


# -- one fault --------------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    baseline: Latency
    fault: Latency
    requests: int
    failed: int
    recovered_s: float | None


def run(
    fault: Fault, peers: Peers, database_url: str, app_engine: sqlalchemy.Engine, workdir: Path, args: argparse.Namespace
) -> Row:
    extra: dict[str, str] = {}
    prefix: tuple[str, ...] = ()
    if peers.disk is not None:
        extra["OTEL_SEGMENTS_STATE_URL"] = f"sqlite:///{peers.disk.directory / 'state.db'}"
        prefix = peers.disk.command_prefix
    env = plugin_env(
        collector=peers.collector.address,
        posthog=peers.posthog.address,
        database_url=database_url,
        token=TOKEN,
        api_key=API_KEY,
        protocol=args.protocol,
        interval_ms=INTERVAL_MS,
        **extra,
    )
    app = peers.app = HostApp(workdir, command_prefix=prefix, **env).start()
    users = [str(i) for i in range(1, args.users + 1)]
    recovered: float | None = None
    try:
        _wait(lambda: len({e["distinct_id"] for e in peers.capture.events()}) >= args.users, "first delivery", app)
        with client(app.port, users) as samples:
            time.sleep(1.0)  # warm-up
            baseline = (time.monotonic(), time.monotonic() + args.seconds)
            time.sleep(args.seconds)
            fault.on(peers)
            add_entries(app_engine, CHANGED)
            began = time.monotonic()
            time.sleep(args.seconds)
            fault.off(peers)
            during = (began, time.monotonic())
            cleared = time.monotonic()
            with contextlib.suppress(TimeoutError):
                _wait(lambda: _recovered(peers, app, app_engine, workdir), "recovery", app)
                recovered = time.monotonic() - cleared
    finally:
        app.stop()
    windows = {"baseline": baseline, "fault": during}
    labelled = [
        Sample(phase, seconds, status)
        for start, seconds, status in samples
        for phase, (t0, t1) in windows.items()
        if t0 <= start < t1
    ]
    return Row(
        fault.name,
        latency(labelled, "baseline"),
        latency(labelled, "fault"),
        len(samples),
        sum(status != 200 for _, _, status in samples),
        recovered,
    )


def _recovered(peers: Peers, app: HostApp, app_engine: sqlalchemy.Engine, workdir: Path) -> bool:
    """The new activity is in the plugin's state and every sink acknowledged it (not merely: PostHog got it)."""
    if peers.disk is None:
        state = RefreshState(app_engine)  # the state tables live in the app's database
    else:
        copy = peers.disk.snapshot(app.pid, "state.db", workdir)
        if copy is None:
            return False
        state = RefreshState(create_engine(f"sqlite:///{copy}", poolclass=NullPool))
    stored = {s.distinct_id: s for s in state.segments([str(u) for u in CHANGED])}
    busy = all(s.set.get("entries_last_24h", 0) >= BUSY for s in stored.values()) and len(stored) == len(CHANGED)
    return busy and not state.pending("posthog", limit=1) and not state.pending("otlp", limit=1)


def _wait(condition: Callable[[], object], what: str, app: HostApp) -> None:
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {RECOVERY_BOUND_S}s\n{app.stderr[-3000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def peers_for(fault: Fault, server: HTTPServer, protocol: str, workdir: Path) -> Iterator[Peers]:
    server.clear()
    capture = Capture(server)
    server.expect_request("/batch/", method="POST").respond_with_handler(capture.handle)
    receiver: HttpReceiver | GrpcReceiver = GrpcReceiver() if protocol == "grpc" else HttpReceiver()
    ports = [FaultyPort(("127.0.0.1", server.port)), FaultyPort(("127.0.0.1", receiver.port))]
    disk = FullDisk(workdir / "state") if fault.disk else None
    try:
        yield Peers(capture, receiver, ports[0], ports[1], None, disk)
    finally:
        for port in ports:
            port.close()
        receiver.close()


@contextlib.contextmanager
def app_database(
    fault: Fault, peers: Peers, postgres: str | None, workdir: Path, users: int
) -> Iterator[tuple[str, sqlalchemy.Engine]]:
    """The app's database, filled: SQLite, or for the database faults PostgreSQL, which the app reaches through a FaultyPort."""
    if not fault.postgres:
        url = f"sqlite:///{workdir / 'app.db'}"
        engine = create_engine(url)
        create_demo_database(engine, users_count=users, seed=5)
        yield url, engine
        engine.dispose()
        return
    assert postgres is not None
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    name = "bench_" + uuid.uuid4().hex[:10]
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    direct = make_url(postgres).set(database=name)
    engine = create_engine(direct)
    peers.database = FaultyPort((direct.host, direct.port))
    try:
        create_demo_database(engine, users_count=users, seed=5)
        yield direct.set(port=peers.database.port).render_as_string(hide_password=False), engine
    finally:
        peers.database.close()
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@contextlib.contextmanager
def postgres(needed: bool) -> Iterator[str | None]:
    given = os.environ.get("OTEL_SEGMENTS_TEST_POSTGRES_URL")
    if not needed or given:
        yield given
        return
    with postgres_server() as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the baseline and of the fault window")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="grpc")
    parser.add_argument("--only", default="", help="comma-separated fault names (default: all)")
    args = parser.parse_args(argv)
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    faults = [f for f in FAULTS if not wanted or f.name in wanted]

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the PostHog endpoint's line per request
    rows: list[Row] = []
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        with postgres(any(f.postgres for f in faults)) as postgres_url:
            for fault in faults:
                with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
                    workdir = Path(tmp)
                    with (
                        peers_for(fault, server, args.protocol, workdir) as peers,
                        app_database(fault, peers, postgres_url, workdir, args.users) as (url, engine),
                    ):
                        rows.append(run(fault, peers, url, engine, workdir, args))
                print(f"  measured: {fault.name}", file=sys.stderr, flush=True)
    finally:
        server.stop()

    print(
        f"host app request latency, {args.users} users, refresh every {INTERVAL_MS} ms, OTLP {args.protocol}, "
        f"{args.seconds:g} s per window, one client in its own process, {os.cpu_count()} CPUs"
    )
    print(
        f"{'fault':<28} {'baseline p50':>12} {'p99':>8} {'fault p50':>10} {'p99':>8} {'ratio p50':>10} {'p99':>7}"
        f" {'requests':>9} {'failed':>7} {'recovered':>10}"
    )
    for r in rows:
        p50 = r.fault.p50_ms / r.baseline.p50_ms
        p99 = r.fault.p99_ms / r.baseline.p99_ms
        back = f"{r.recovered_s:.1f} s" if r.recovered_s is not None else "NO"
        print(
            f"{r.name:<28} {r.baseline.p50_ms:9.2f} ms {r.baseline.p99_ms:5.1f} ms {r.fault.p50_ms:7.2f} ms"
            f" {r.fault.p99_ms:5.1f} ms {p50:9.2f}x {p99:6.2f}x {r.requests:>9} {r.failed:>7} {back:>10}"
        )
    over = [r.name for r in rows if r.fault.p50_ms > 2 * r.baseline.p50_ms]
    over99 = [r.name for r in rows if r.fault.p99_ms > 2 * r.baseline.p99_ms]
    print(
        f"goal (issue 6) fault latency <= 2x normal: p50 {'met' if not over else 'missed: ' + ', '.join(over)}; "
        f"p99 {'met' if not over99 else 'missed: ' + ', '.join(over99)}"
    )
    broken = [r.name for r in rows if r.failed or r.recovered_s is None]
    if broken:
        print(f"requests failed or updates not delivered after: {', '.join(broken)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
