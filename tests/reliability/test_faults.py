"""The host app keeps serving while the plugin's peers fail, and every segment change is delivered once after.

Each test runs ``tests/apps/fault_app.py`` under ``opentelemetry-instrument`` (the
plugin set up by ``configure()`` from environment variables alone, the refresh
job in the app's process every 300 ms) with real peers: the PostHog capture
endpoint, the OTLP receiver, PostgreSQL or SQLite. A :class:`FaultyPort` between
the app and each network peer breaks it on cue. A client thread sends requests
the whole time. Per fault:

- every request succeeds (no error, no 5xx) while the fault lasts and after;
- the plugin writes one log line per failed cycle that names the cause (never a
  traceback, never a secret), and says when it works again;
- once the fault clears, every user's latest segment reaches PostHog and the
  collector, and each (user, change) is accepted exactly once, compared on the
  properties without ``last_segment_update``. The one exception is the ambiguous
  timeout: when the peer took a batch but its answer never came back, that
  batch is sent again (at-least-once; README states the bound) and its users
  are accepted exactly twice;
- the app exits cleanly on SIGTERM.

Request latency (p50/p99) during each fault and outside it is printed at the end
of the module; it is measured, not asserted (speed is the benchmark's business:
``benchmarks/bench_faults.py``). The only time limits here are bounds on hangs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.resources import Resource
from sqlalchemy import create_engine, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import otel_segments
from otel_segments.job.reader import segments_meter_provider
from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.sinks.otlp import OtlpSegmentSink, user_resource_attributes
from otel_segments.sinks.posthog import PostHogSink
from tests.delivery import BUSY, add_entries, change, wait_until
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

from .conftest import API_KEY, TOKEN, make_pipeline
from .faults import (
    FORWARD,
    HANG,
    HOLD,
    REFUSE,
    FaultyPort,
    FullDisk,
    HostApp,
    Latency,
    Load,
    http_get,
    latency,
    plugin_env,
)

USERS = 40
USER_IDS = [str(i) for i in range(1, USERS + 1)]
CHANGED = ("5", "6", "7")  # users given new activity while the fault lasts
INTERVAL_MS = 300
SINKS = ("otlp", "posthog")
STAMP = "last_segment_update"
HANG_BOUND_S = 45  # a bound on waiting for the plugin to recover: hitting it means a hang, not slowness

_latencies: list[tuple[str, Latency, Latency]] = []


@pytest.fixture(scope="session", autouse=True)
def _latency_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print each fault's request latency against the same app's outside the fault, at the end of the run.

    Session-scoped, so the module's tests need not share one xdist worker (tests/scheduling.py).
    """
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not _latencies:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("host app request latency during each fault vs outside it (same app, same run; not asserted):")
        for name, fault, normal in _latencies:
            p50 = fault.p50_ms / normal.p50_ms if normal.p50_ms else math.nan
            p99 = fault.p99_ms / normal.p99_ms if normal.p99_ms else math.nan
            reporter.write_line(
                f"  {name:<40} fault p50 {fault.p50_ms:5.2f} ms p99 {fault.p99_ms:6.2f} ms (n={fault.count:<4}) | "
                f"normal p50 {normal.p50_ms:5.2f} ms p99 {normal.p99_ms:6.2f} ms (n={normal.count:<4}) | "
                f"ratio p50 {p50:4.2f}x p99 {p99:4.2f}x"
            )


# -- peers -------------------------------------------------------------------------------------------------------


@dataclass
class Peers:
    capture: Capture
    receiver: Receiver
    posthog: FaultyPort  # in front of the capture endpoint
    collector: FaultyPort  # in front of the OTLP receiver


def _peers(capture: Capture, receiver: Receiver) -> Iterator[Peers]:
    posthog = FaultyPort(("127.0.0.1", capture.server.port))
    collector = FaultyPort(("127.0.0.1", receiver.port))  # type: ignore[attr-defined]
    try:
        yield Peers(capture, receiver, posthog, collector)
    finally:
        posthog.close()
        collector.close()


@pytest.fixture
def peers(capture: Capture, http_receiver: Receiver) -> Iterator[Peers]:
    yield from _peers(capture, http_receiver)


@pytest.fixture
def grpc_peers(capture: Capture, grpc_receiver: Receiver) -> Iterator[Peers]:
    yield from _peers(capture, grpc_receiver)


def _sqlite_app_database(tmp_path: Path) -> tuple[str, Engine]:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    create_demo_database(engine, users_count=USERS, seed=5)
    return url, engine


def _host_app(
    tmp_path: Path,
    peers: Peers,
    database_url: str,
    *,
    protocol: str = "http/protobuf",
    command_prefix: tuple[str, ...] = (),
    **extra: str,
) -> HostApp:
    """The app, its plugin configured by environment variables only; every peer behind its :class:`FaultyPort`."""
    env = plugin_env(
        collector=peers.collector.address,
        posthog=peers.posthog.address,
        database_url=database_url,
        token=TOKEN,
        api_key=API_KEY,
        protocol=protocol,
        interval_ms=INTERVAL_MS,
        OTEL_EXPORTER_OTLP_TIMEOUT="2",  # seconds (the SDK's unit); the default 10 s would only make this slower
        OTEL_BSP_SCHEDULE_DELAY="200",
        **extra,
    )
    return HostApp(tmp_path, command_prefix=command_prefix, **env)


# -- what the peers accepted -------------------------------------------------------------------------------------


def _otlp_update(resource: dict[str, Any]) -> tuple[str, str]:
    """(user id, its properties without the stamp) of a segment record's Resource."""
    user = {k: list(v) if isinstance(v, tuple) else v for k, v in resource.items() if k.startswith("app.user.")}
    user.pop(f"app.user.{STAMP}", None)
    return resource["user.id"], json.dumps(user, sort_keys=True, default=str)


def _accepted(peers: Peers) -> dict[str, list[tuple[str, str]]]:
    """Per sink, in arrival order, every update the peer accepted."""
    return {
        "posthog": [change(e) for e in peers.capture.events()],
        "otlp": [_otlp_update(r.resource) for r in peers.receiver.logs() if r.event_name == "app.user.segment"],
    }


def _stale(state: RefreshState, peers: Peers, *, changed: bool = False) -> list[str]:
    """Why the peers do not (yet) hold every user's latest stored segment (and, with ``changed``, the new activity)."""
    segments = {s.distinct_id: s for s in state.segments()}
    problems = [f"{len(segments)} of {USERS} users refreshed"] if len(segments) < USERS else []
    if changed:
        problems += [f"user {u}: activity not refreshed" for u in CHANGED if segments[u].set.get("entries_last_24h", 0) < BUSY]
    problems += [f"{sink}: users pending" for sink in SINKS if state.pending(sink, limit=1)]
    accepted = _accepted(peers)
    for user_id, segment in segments.items():
        expected = {
            "posthog": change({"distinct_id": user_id, "properties": {"$set": segment.set, "$set_once": segment.set_once}}),
            "otlp": _otlp_update(user_resource_attributes(segment)),
        }
        for sink in SINKS:
            last = [update for update in accepted[sink] if update[0] == user_id][-1:]
            if last != [expected[sink]]:
                problems.append(f"{sink}: user {user_id} last got {last or 'nothing'}, stored {expected[sink]}")
    return problems


def _assert_once(peers: Peers, resent: Iterable[tuple[str, str]] = ()) -> None:
    """Each (user, change) accepted exactly once per sink; the PostHog updates in ``resent`` exactly twice."""
    twice = set(resent)
    for sink, updates in _accepted(peers).items():
        counts = Counter(updates)
        wrong = {update: n for update, n in counts.items() if n != (2 if sink == "posthog" and update in twice else 1)}
        assert not wrong, f"{sink}: (user, change) accepted other than once: {wrong}"
        assert {user_id for user_id, _ in counts} >= set(USER_IDS), f"{sink}: some users never delivered"


# -- one fault, start to finish ----------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    start: Callable[[], None]
    clear: Callable[[], None]
    says: str  # what the plugin's warning names during the fault
    at_start: bool = False  # the peer is already broken when the app starts
    #: Warnings naming the fault to see before it clears: a sink says so each cycle it fails, a refresh once per cause
    #: (the same failure again is at DEBUG until a cycle works: README's failure table)
    failing_cycles: int = 2


@dataclass
class Run:
    app: HostApp
    load: Load
    during: list[str]  # the plugin's log lines while the fault lasted
    seconds: float  # how long it lasted


def _through(fault: Fault, app: HostApp, app_engine: Engine, state: Callable[[], RefreshState], peers: Peers) -> Run:
    """Serve requests through the whole life of ``fault``; return once every change is delivered and the app exited."""
    began = time.monotonic()  # a fault at start is named at start (a refresh failure once, not once per cycle)
    if fault.at_start:
        fault.start()
    app.start()
    try:
        with Load(http_get(app.port), USER_IDS) as load:
            if not fault.at_start:
                load.phase = "normal"
                wait_until(
                    lambda: not _stale(state(), peers),
                    "first delivery of every user",
                    HANG_BOUND_S,
                    lambda: f"{_stale(state(), peers)[:5]}\n{app.stderr}",
                )
                time.sleep(0.5)  # a steady-state baseline as well
                fault.start()
                began = time.monotonic()
            load.phase = "fault"
            add_entries(app_engine, [int(u) for u in CHANGED])
            wait_until(  # and requests served meanwhile: a fault at start may be named before the first request
                lambda: sum(fault.says in line for line in app.ours(began)) >= fault.failing_cycles and load.of("fault"),
                f"{fault.failing_cycles} plugin warnings naming {fault.says!r}, and a request served during the fault",
                HANG_BOUND_S,
                lambda: app.stderr,
            )
            fault.clear()
            cleared = time.monotonic()
            load.phase = "after"
            # since the fault began: one that clears itself (a 429's wait, a single timeout) may recover before `cleared`
            app.wait_for_log("works again", since=began, timeout_s=HANG_BOUND_S)
            wait_until(
                lambda: not _stale(state(), peers, changed=True),
                "every change delivered after the fault",
                HANG_BOUND_S,
                lambda: f"{_stale(state(), peers, changed=True)[:5]}\n{app.stderr}",
            )
            time.sleep(0.5)
    finally:
        code = app.stop()
    assert code == 0, app.stderr
    _latencies.append((fault.name, latency(load.samples, "fault"), latency(load.samples, "normal", "after")))
    return Run(app, load, app.ours(began, cleared), cleared - began)


def _assert_served_and_reported(run: Run, fault: Fault) -> None:
    failures = run.load.failures()
    assert failures == [], f"{len(failures)} requests failed, e.g. {failures[:3]}"
    assert run.load.of("fault"), "no request was served during the fault"
    text = run.app.stderr
    assert "Traceback" not in text, text
    assert TOKEN not in text and API_KEY not in text
    warnings = [line for line in run.during if line.startswith("WARNING")]
    assert len(warnings) >= fault.failing_cycles and all(fault.says in w for w in warnings), run.during
    refresh = [w for w in warnings if "segment refresh failed" in w]
    assert len(refresh) == len(set(refresh)), run.during  # each refresh failure named once, not once per cycle
    # one line per failed cycle, no more: at most the cycles that fit in the fault, plus the one running at its start
    assert len(warnings) <= run.seconds * 1000 / INTERVAL_MS + 2, run.during
    assert "works again" in run.app.stderr


# -- the faults --------------------------------------------------------------------------------------------------


def test_collector_down_at_start_then_up(tmp_path: Path, grpc_peers: Peers) -> None:
    """gRPC, the default protocol: nothing listens on the collector's port until, later, it does."""
    url, engine = _sqlite_app_database(tmp_path)
    port = grpc_peers.collector
    fault = Fault(
        "collector down at start (grpc)",
        lambda: port.set_mode(REFUSE),
        lambda: port.set_mode(FORWARD),
        "otlp delivery failed",
        at_start=True,
    )
    run = _through(fault, _host_app(tmp_path, grpc_peers, url, protocol="grpc"), engine, lambda: RefreshState(engine), grpc_peers)
    _assert_served_and_reported(run, fault)
    _assert_once(grpc_peers)
    assert grpc_peers.receiver.spans(), "the app's spans go out once the collector is up"


def test_collector_hanging(tmp_path: Path, peers: Peers) -> None:
    """The collector accepts connections and never answers (HTTP): exports time out; requests do not wait."""
    url, engine = _sqlite_app_database(tmp_path)
    port = peers.collector
    fault = Fault("collector hanging (http)", lambda: port.set_mode(HANG), lambda: port.set_mode(FORWARD), "otlp delivery failed")
    run = _through(fault, _host_app(tmp_path, peers, url), engine, lambda: RefreshState(engine), peers)
    _assert_served_and_reported(run, fault)
    _assert_once(peers)


def test_posthog_answering_500(tmp_path: Path, peers: Peers) -> None:
    url, engine = _sqlite_app_database(tmp_path)
    capture = peers.capture

    def start() -> None:
        capture.answers = [(500, {})] * 10_000

    def clear() -> None:
        capture.answers = []

    fault = Fault("PostHog answering 500", start, clear, "answered HTTP 500")
    run = _through(fault, _host_app(tmp_path, peers, url), engine, lambda: RefreshState(engine), peers)
    _assert_served_and_reported(run, fault)
    _assert_once(peers)
    assert any(r["status"] == 500 for r in capture.requests)


def test_posthog_429_retry_after_is_respected(tmp_path: Path, peers: Peers) -> None:
    """One 429 with ``Retry-After: 2``: no request to PostHog until then, then everything goes out once."""
    url, engine = _sqlite_app_database(tmp_path)
    capture = peers.capture
    arrivals: list[float] = []
    handle = capture.handle

    def timed(request: Any) -> Any:
        arrivals.append(time.monotonic())
        return handle(request)

    capture.server.clear_all_handlers()
    capture.server.expect_request("/batch/", method="POST").respond_with_handler(timed)

    def start() -> None:
        capture.answers = [(429, {"Retry-After": "2"})]

    fault = Fault("PostHog 429, Retry-After 2 s", start, lambda: None, "retry after")
    run = _through(fault, _host_app(tmp_path, peers, url), engine, lambda: RefreshState(engine), peers)
    _assert_served_and_reported(run, fault)
    _assert_once(peers)
    limited = next(i for i, r in enumerate(capture.requests) if r["status"] == 429)
    assert arrivals[limited + 1] - arrivals[limited] >= 1.9, "a request went to PostHog before the time it asked for"
    assert any("asked us to wait" in line for line in run.during), run.during  # cycles in between did not send


def test_posthog_timeout_resends_the_batch_it_took(tmp_path: Path, peers: Peers) -> None:
    """PostHog takes a batch and its answer never comes back: the sink gives up after its 10 s timeout.

    This is the ambiguous case of README's guarantee: the batch did arrive, the
    plugin cannot know, so it sends it again on the next cycle. Its users are
    accepted exactly twice (a repeated ``$set`` is the same person); every other
    update exactly once.
    """
    url, engine = _sqlite_app_database(tmp_path)
    port, capture = peers.posthog, peers.capture
    first: list[int] = []

    def start() -> None:
        first.append(len(capture.requests))
        port.hold_once()

    fault = Fault("PostHog answer never comes (timeout)", start, lambda: None, "did not answer within", failing_cycles=1)
    run = _through(fault, _host_app(tmp_path, peers, url), engine, lambda: RefreshState(engine), peers)
    _assert_served_and_reported(run, fault)
    assert port.held == 1
    resent = [change(e) for e in capture.requests[first[0]]["body"]["batch"]]
    assert set(CHANGED) <= {user_id for user_id, _ in resent}
    _assert_once(peers, resent)


def test_posthog_refusing_connections_at_start(tmp_path: Path, peers: Peers) -> None:
    url, engine = _sqlite_app_database(tmp_path)
    port = peers.posthog
    fault = Fault(
        "PostHog refusing connections",
        lambda: port.set_mode(REFUSE),
        lambda: port.set_mode(FORWARD),
        "connection refused",
        at_start=True,
    )
    run = _through(fault, _host_app(tmp_path, peers, url), engine, lambda: RefreshState(engine), peers)
    _assert_served_and_reported(run, fault)
    _assert_once(peers)


def _postgres_behind(port: FaultyPort, database_url: str) -> tuple[str, Engine]:
    """The app's database on the session's PostgreSQL, filled; the URL the app gets goes through ``port``."""
    engine = create_engine(database_url)
    create_demo_database(engine, users_count=USERS, seed=5)
    return make_url(database_url).set(port=port.port).render_as_string(hide_password=False), engine


@pytest.mark.postgres
def test_database_down_at_start(tmp_path: Path, peers: Peers, postgres_database: str, postgres_url: str) -> None:
    host, pg_port = make_url(postgres_url).host, make_url(postgres_url).port
    database = FaultyPort((host, pg_port), mode=REFUSE)
    url, engine = _postgres_behind(database, postgres_database)
    fault = Fault(
        "PostgreSQL down at start",
        lambda: database.set_mode(REFUSE),
        lambda: database.set_mode(FORWARD),
        "Connection refused",
        at_start=True,
        failing_cycles=1,  # a refresh failure is named once
    )
    try:
        run = _through(fault, _host_app(tmp_path, peers, url), engine, lambda: RefreshState(engine), peers)
    finally:
        database.close()
        engine.dispose()
    _assert_served_and_reported(run, fault)
    assert all("segment refresh failed" in line for line in run.during if line.startswith("WARNING")), run.during
    _assert_once(peers)


@pytest.mark.postgres
def test_database_disappears_mid_refresh(tmp_path: Path, peers: Peers, postgres_database: str, postgres_url: str) -> None:
    """The connections drop the moment the refresh queries the app's activity, and the server stays away a while."""
    host, pg_port = make_url(postgres_url).host, make_url(postgres_url).port
    database = FaultyPort((host, pg_port))
    url, engine = _postgres_behind(database, postgres_database)
    fault = Fault(
        "PostgreSQL gone mid-refresh",
        lambda: database.cut_on(b"time_entries", then=REFUSE),
        lambda: database.set_mode(FORWARD),
        "segment refresh failed",
        failing_cycles=2,  # two causes, each named once: the cut mid-query, then the refused connections
    )
    try:
        run = _through(fault, _host_app(tmp_path, peers, url), engine, lambda: RefreshState(engine), peers)
    finally:
        database.close()
        engine.dispose()
    assert database.tripped.is_set(), "the refresh never queried the activity table"
    _assert_served_and_reported(run, fault)
    failures = [line for line in run.during if "segment refresh failed" in line]
    assert "OperationalError" in failures[0] and "Connection refused" not in failures[0], failures  # cut mid-query
    assert "Connection refused" in failures[-1], failures  # then away
    _assert_once(peers)


def test_state_database_disk_full(tmp_path: Path, peers: Peers) -> None:
    """The state database (SQLite, a file of its own) sits on a disk that fills up, then gets space again."""
    url, engine = _sqlite_app_database(tmp_path)
    disk = FullDisk(tmp_path / "state")
    app = _host_app(
        tmp_path,
        peers,
        url,
        OTEL_SEGMENTS_STATE_URL=f"sqlite:///{disk.directory / 'state.db'}",
        command_prefix=disk.command_prefix,
    )
    copies = tmp_path / "copies"
    copies.mkdir()
    last: list[RefreshState] = [RefreshState(create_engine("sqlite://"))]  # before the app made its state: empty

    def state() -> RefreshState:
        """The app's state database now, or its last consistent copy while a write is under way."""
        copy = disk.snapshot(app.pid, "state.db", copies)
        if copy is not None:
            last[0] = RefreshState(create_engine(f"sqlite:///{copy}", poolclass=NullPool))
        return last[0]

    mechanism = "tmpfs" if disk.tmpfs else "RLIMIT_FSIZE"
    fault = Fault(
        f"state disk full ({mechanism})", lambda: disk.fill(app.pid), lambda: disk.free(app.pid), disk.error, failing_cycles=1
    )
    run = _through(fault, app, engine, state, peers)
    _assert_served_and_reported(run, fault)
    _assert_once(peers)


class _Discard(MetricExporter):
    """The gauge's exporter: this test is about the refresh the reader's collections kick, not the export."""

    def __init__(self) -> None:
        super().__init__()

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


@pytest.mark.postgres
def test_database_stops_answering_mid_refresh(peers: Peers, postgres_database: str, postgres_url: str, caplog) -> None:
    """The server keeps the connection open and never answers the refresh's query (a lock wait, a hung backend).

    In process, on the real path: a MeterProvider from :func:`segments_meter_provider`
    kicks the job, a TracerProvider with our processor makes the app's spans. The
    driver has no timeout of its own for an answer that never comes, so the refresh
    waits; the job says so once (the refresh outlived its lease), spans go on, and
    when the connection resets (the server restarts) the next cycle delivers every
    change once. The lease is 5 s here (the default is at least 30 s): short, yet longer than a
    healthy cycle takes on a busy machine, so the one warning is the stuck cycle's.
    """
    url = make_url(postgres_url)
    database = FaultyPort((url.host, url.port))
    app_url, engine = _postgres_behind(database, postgres_database)
    app_engine = create_engine(app_url, pool_pre_ping=True, connect_args={"connect_timeout": 10})  # as configure() builds it
    resource = Resource({"service.name": "timetracker"})
    exporter = OTLPLogExporter(endpoint=f"http://{peers.collector.address}/v1/logs", timeout=2)
    pipeline = make_pipeline()
    job = RefreshJob(
        app_engine,
        TIMETRACKER,
        sinks={
            "otlp": lambda: OtlpSegmentSink(exporter, resource),
            "posthog": lambda: PostHogSink(API_KEY, f"http://{peers.posthog.address}", super_properties={}),
        },
        cache=pipeline.segments,
        interval=timedelta(milliseconds=INTERVAL_MS),
        lease_ttl=timedelta(seconds=5),
    )
    meter_provider = segments_meter_provider(job, _Discard())

    def span(user: str) -> int:
        with otel_segments.user_context(user), pipeline.tracer.start_as_current_span("work"):
            return 200

    try:
        with caplog.at_level(logging.INFO, logger="otel_segments"), Load(span, USER_IDS) as load:
            load.phase = "normal"
            wait_until(lambda: not _stale(RefreshState(engine), peers), "first delivery", HANG_BOUND_S)
            database.cut_on(b"time_entries", then=HOLD)
            add_entries(engine, [int(u) for u in CHANGED])
            wait_until(database.tripped.is_set, "the refresh querying the activity", HANG_BOUND_S)
            tripped_at = time.time()
            load.phase = "fault"
            wait_until(lambda: "has been running for" in caplog.text, "a warning that the refresh is stuck", HANG_BOUND_S)
            time.sleep(3 * INTERVAL_MS / 1000)  # more collections kick the job meanwhile
            reset_at = time.time()
            database.set_mode(REFUSE)  # the server restarts: the connection that waited drops
            database.set_mode(FORWARD)
            load.phase = "after"
            wait_until(
                lambda: not _stale(RefreshState(engine), peers, changed=True),
                "every change delivered after the fault",
                HANG_BOUND_S,
                lambda: caplog.text,
            )
            wait_until(lambda: "works again" in caplog.text, "the job saying it works again", HANG_BOUND_S)
    finally:
        meter_provider.shutdown()
        job.shutdown(timeout_s=5)
        pipeline.provider.shutdown()
        app_engine.dispose()
        engine.dispose()
        database.close()
    ours = [r for r in caplog.records if r.name.startswith("otel_segments")]
    # the stuck cycle says so once, not once per collection that kicks it (a cycle after the reset may say so too
    # on a busy machine: the one that delivers the changes can outlive a 5 s lease there, and is right to say so)
    stuck = [r.getMessage() for r in ours if "has been running for" in r.getMessage() and tripped_at <= r.created <= reset_at]
    assert len(stuck) == 1 and "lease" in stuck[0], stuck
    assert all(r.exc_info is None for r in ours if r.levelno >= logging.WARNING)
    assert load.failures() == [] and load.of("fault")
    assert any(s.attributes.get("app.user.engagement_level") for s in pipeline.spans())  # segments on spans all along
    outside = latency(load.samples, "normal", "after")
    _latencies.append(("PostgreSQL stops answering (in process)", latency(load.samples, "fault"), outside))
    _assert_once(peers)
