"""The refresh job against real peers: SQLite and PostgreSQL, the local PostHog endpoint, the OTLP receiver.

Each test drives cycles with ``run_cycle`` (the worker thread calls the same
method) and asserts on what the peers decoded: every user delivered once, only
changes afterwards, and nothing lost when a peer fails and comes back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine, event, func, insert, select, text
from sqlalchemy.engine import Engine

import otel_segments
from otel_segments.job.cohort_sizes import GAUGE, SEGMENT_NAME, SEGMENT_VALUE
from otel_segments.job.lease import Lease
from otel_segments.job.refresh_job import RefreshJob
from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.demo import time_entries
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from otel_segments.sinks.otlp import OtlpSegmentSink
from otel_segments.sinks.posthog import PostHogSink
from otel_segments.sinks.transport import PeerSession
from otel_segments.spans.cache import SegmentCache
from otel_segments.spans.processor import SuperPropertiesSpanProcessor
from tests.conftest import _free_port
from tests.job.conftest import USERS
from tests.receivers import Receiver
from tests.segments.data import NOW, naive
from tests.sinks.conftest import Capture
from tests.slow_peer import SlowPeer

T1 = NOW + timedelta(seconds=1)
ALL = {str(i) for i in range(1, USERS + 1)}


def _posthog(host: str, **kwargs) -> PostHogSink:
    return PostHogSink("phc_test_key", host, super_properties={"deployment.environment.name": "test"}, **kwargs)


def _otlp(receiver: Receiver, timeout: float = 5) -> OtlpSegmentSink:
    exporter = OTLPLogExporter(endpoint=f"{receiver.endpoint}/v1/logs", headers={"authorization": "Bearer t0k"}, timeout=timeout)
    return OtlpSegmentSink(exporter, Resource({"service.name": "timetracker"}))


def _job(app_engine: Engine, sinks: dict, **kwargs) -> RefreshJob:
    return RefreshJob(app_engine, TIMETRACKER, sinks=sinks, interval=timedelta(seconds=1), **kwargs)


def _without_stamp(properties: dict) -> dict:
    return {k: v for k, v in properties.items() if k != "last_segment_update"}


def _add_entries(engine: Engine, user_id: int, count: int, at) -> None:
    with engine.begin() as conn:
        start = conn.execute(select(func.max(time_entries.c.id))).scalar() or 0
        conn.execute(
            insert(time_entries),
            [
                {
                    "id": start + i + 1,
                    "user_id": user_id,
                    "start_time": naive(at - timedelta(hours=1)),
                    "end_time": naive(at),
                    "created_at": naive(at),
                    "source": "timer",
                    "duration_seconds": 3600,
                }
                for i in range(count)
            ],
        )


def test_cycle_delivers_every_user_then_only_changes(app_engine, capture: Capture, http_receiver: Receiver) -> None:
    job = _job(app_engine, {"posthog": lambda: _posthog(capture.host), "otlp": lambda: _otlp(http_receiver)})
    first = job.run_cycle(now=T1)
    assert first is not None and first.error is None and not first.failed
    assert first.holder and first.refreshed is not None and first.refreshed.full
    assert first.delivered == {"posthog": USERS, "otlp": USERS}

    expected = {s.distinct_id: s for s in compute_segments(app_engine, TIMETRACKER, now=T1)}
    sent = capture.by_user()
    assert set(sent) == ALL
    for user_id, event_ in sent.items():
        assert event_["event"] == "$set"
        assert _without_stamp(event_["properties"]["$set"]) == _without_stamp(expected[user_id].set)
        assert event_["properties"]["$set_once"] == expected[user_id].set_once
        assert event_["properties"]["deployment.environment.name"] == "test"  # the client's super properties
        assert not {"username", "email", "full_name", "name"} & set(event_["properties"]["$set"])
    records = [r for r in http_receiver.logs() if r.event_name == "app.user.segment"]
    assert {r.resource["user.id"] for r in records} == ALL
    assert all(r.resource["service.name"] == "timetracker" for r in records)
    assert {e.headers["authorization"] for e in http_receiver.of("logs")} == {"Bearer t0k"}

    sizes = job.cohort_sizes()
    assert sum(n for (prop, _), n in sizes.items() if prop == "engagement_level") == USERS
    assert sum(n for (prop, _), n in sizes.items() if prop == "is_admin") == USERS

    again = job.run_cycle(now=T1 + timedelta(seconds=1))
    assert again is not None and again.delivered == {"posthog": 0, "otlp": 0}
    assert len(capture.events()) == USERS

    _add_entries(app_engine, 5, 25, T1 + timedelta(seconds=30))
    changed = job.run_cycle(now=T1 + timedelta(minutes=2))
    assert changed is not None and changed.refreshed is not None
    # user 5, plus any user whose window edge the two minutes crossed; each exactly once, to each sink
    assert changed.delivered == {"posthog": changed.refreshed.changed, "otlp": changed.refreshed.changed}
    resent = capture.events()[USERS:]
    assert "5" in {e["distinct_id"] for e in resent} and len(resent) == changed.refreshed.changed < 5
    latest = resent[[e["distinct_id"] for e in resent].index("5")]
    assert latest["properties"]["$set"]["entries_last_24h"] >= 25
    assert latest["properties"]["$set"]["engagement_level"] == "very_high"
    job.shutdown()


def test_cache_feeds_spans_with_the_users_segment(app_engine) -> None:
    cache = SegmentCache(100)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SuperPropertiesSpanProcessor(segments=cache))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    job = _job(app_engine, {}, cache=cache)

    with otel_segments.user_context("3", role="user"):
        tracer.start_span("before").end()  # a miss: remembered, never I/O on the span path
    with otel_segments.user_context("no-such-user"):
        tracer.start_span("before").end()
    job.run_cycle(now=T1)
    with otel_segments.user_context("3", role="user"):
        tracer.start_span("after").end()
    with otel_segments.user_context("no-such-user"):
        tracer.start_span("after").end()

    spans = {(s.name, s.attributes["user.id"]): dict(s.attributes) for s in exporter.get_finished_spans()}
    expected = next(s for s in compute_segments(app_engine, TIMETRACKER, now=T1, user_ids=["3"]))
    assert "app.user.engagement_level" not in spans[("before", "3")]
    after = spans[("after", "3")]
    assert after["app.user.engagement_level"] == expected.set["engagement_level"]
    assert after["app.user.entries_last_7_days"] == expected.set["entries_last_7_days"]
    assert after["app.user.role"] == "user"  # the request's own properties win over the stored segment
    assert not any(k.startswith("app.user.engagement") for k in spans[("after", "no-such-user")])
    assert cache.get("no-such-user") == {}  # known to have no segment: not looked up again
    job.shutdown()


def test_spans_get_the_stored_segment_while_its_delivery_is_still_in_flight(app_engine, hang_peer: SlowPeer) -> None:
    # a first cycle's delivery (a backlog, a slow peer) may take minutes: spans need the stored segment, not its delivery
    cache = SegmentCache(100)
    cache.get("3")  # a span asked for user 3
    job = _job(app_engine, {"posthog": lambda: _posthog(hang_peer.url, timeout_s=120)}, cache=cache)
    cycle = threading.Thread(target=job.run_cycle, kwargs={"now": T1}, daemon=True)
    cycle.start()
    deadline = time.monotonic() + 60
    while not (cache.get("3") and hang_peer.accepted) and time.monotonic() < deadline:
        time.sleep(0.05)
    expected = next(s for s in compute_segments(app_engine, TIMETRACKER, now=T1, user_ids=["3"]))
    assert (cache.get("3") or {}).get("app.user.engagement_level") == expected.set["engagement_level"]
    assert hang_peer.accepted and cycle.is_alive()  # PostHog has the batch and has not answered it
    job.shutdown(timeout_s=2)
    cycle.join(timeout=30)
    assert len(RefreshState(app_engine).pending("posthog", limit=1000)) == USERS  # unanswered: still pending


def test_posthog_500_then_recovers_without_loss_or_duplicates(app_engine, capture: Capture, caplog) -> None:
    capture.answers = [(500, {})]
    job = _job(app_engine, {"posthog": lambda: _posthog(capture.host)})
    with caplog.at_level(logging.WARNING, logger="otel_segments"):
        failed = job.run_cycle(now=T1)
    assert failed is not None and "posthog" in failed.failed and failed.delivered == {}
    warnings = [r for r in caplog.records if r.name.startswith("otel_segments") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "posthog" in warnings[0].getMessage() and "500" in warnings[0].getMessage()
    assert "phc_test_key" not in caplog.text
    assert capture.events() == []
    assert len(RefreshState(app_engine).pending("posthog", limit=1000)) == USERS

    with caplog.at_level(logging.INFO, logger="otel_segments"):
        recovered = job.run_cycle(now=T1 + timedelta(seconds=1))
    assert recovered is not None and recovered.delivered == {"posthog": USERS}
    assert "works again" in caplog.text
    assert Counter(e["distinct_id"] for e in capture.events()) == dict.fromkeys(ALL, 1)
    job.shutdown()


def test_posthog_rate_limit_is_respected(app_engine, capture: Capture) -> None:
    capture.answers = [(429, {"Retry-After": "30"})]
    job = _job(app_engine, {"posthog": lambda: _posthog(capture.host)})
    assert "posthog" in job.run_cycle(now=T1).failed
    requests_before = len(capture.requests)
    second = job.run_cycle(now=T1 + timedelta(seconds=1))
    assert "posthog" in second.failed and "wait" in second.failed["posthog"]
    assert len(capture.requests) == requests_before  # no request while PostHog asked us to wait
    assert len(RefreshState(app_engine).pending("posthog", limit=1000)) == USERS
    job.shutdown()


def test_posthog_unreachable_then_up(app_engine) -> None:
    port = _free_port()
    job = _job(app_engine, {"posthog": lambda: _posthog(f"http://127.0.0.1:{port}", timeout_s=2)})
    down = job.run_cycle(now=T1)
    assert "posthog" in down.failed and "127.0.0.1" in down.failed["posthog"]

    server = HTTPServer(host="127.0.0.1", port=port)
    server.start()
    try:
        capture = Capture(server)
        server.expect_request("/batch/", method="POST").respond_with_handler(capture.handle)
        up = job.run_cycle(now=T1 + timedelta(seconds=1))
        assert up.delivered == {"posthog": USERS}
        assert Counter(e["distinct_id"] for e in capture.events()) == dict.fromkeys(ALL, 1)
    finally:
        server.clear()
        server.stop()
    job.shutdown()


def test_posthog_timeout_keeps_updates_pending(app_engine, capture: Capture) -> None:
    capture.delay_s = 1.5
    job = _job(app_engine, {"posthog": lambda: _posthog(capture.host, timeout_s=0.5)})
    slow = job.run_cycle(now=T1)
    assert "posthog" in slow.failed and "did not answer" in slow.failed["posthog"]
    assert len(RefreshState(app_engine).pending("posthog", limit=1000)) == USERS
    capture.delay_s = 0
    time.sleep(1.5)  # the one-threaded test server is still answering the slow request
    fine = job.run_cycle(now=T1 + timedelta(seconds=1))
    assert fine.delivered == {"posthog": USERS}
    # A timeout is ambiguous: here PostHog did take the slow batch, so each update arrived twice (at-least-once;
    # a $set applied twice is the same person). Never zero times.
    assert Counter(e["distinct_id"] for e in capture.events()) == dict.fromkeys(ALL, 2)
    job.shutdown()


def test_collector_down_then_up(app_engine, http_receiver: Receiver) -> None:
    http_receiver.status = 503
    job = _job(app_engine, {"otlp": lambda: _otlp(http_receiver, timeout=1)})
    down = job.run_cycle(now=T1)
    assert "otlp" in down.failed
    http_receiver.status = 200
    up = job.run_cycle(now=T1 + timedelta(seconds=1))
    assert up.delivered == {"otlp": USERS}
    accepted = [r for r in http_receiver.logs() if r.event_name == "app.user.segment"]
    assert {r.resource["user.id"] for r in accepted} == ALL
    job.shutdown()


@pytest.mark.postgres
def test_database_connection_killed_mid_refresh(postgres_database: str, capture: Capture, caplog) -> None:
    from otel_segments.segments.demo import create_demo_database

    app = create_engine(postgres_database)
    create_demo_database(app, users_count=USERS, seed=3, now=NOW)
    admin = create_engine(postgres_database, isolation_level="AUTOCOMMIT")
    killed = []

    def kill_before_aggregation(conn, cursor, statement, parameters, context, executemany) -> None:
        if not killed and "time_entries" in statement and "GROUP BY" in statement.upper():
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed.append(pid)

    event.listen(app, "before_cursor_execute", kill_before_aggregation)
    job = _job(app, {"posthog": lambda: _posthog(capture.host)})
    with caplog.at_level(logging.WARNING, logger="otel_segments"):
        broken = job.run_cycle(now=T1)
    assert killed and broken.error is not None and "terminating connection" in broken.error
    assert len([r for r in caplog.records if r.name.startswith("otel_segments")]) == 1
    assert "postgres" not in broken.error.split(":", 1)[0]  # the cause, not the URL
    assert capture.events() == []

    event.remove(app, "before_cursor_execute", kill_before_aggregation)
    healed = job.run_cycle(now=T1 + timedelta(seconds=1))
    assert healed.error is None and healed.refreshed.full  # the failed refresh left no watermark behind
    assert Counter(e["distinct_id"] for e in capture.events()) == dict.fromkeys(ALL, 1)
    job.shutdown()
    app.dispose()
    admin.dispose()


def test_kick_runs_in_the_background_and_never_twice(app_engine) -> None:
    import threading

    entered, release = threading.Event(), threading.Event()

    def hold(*args) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(10)

    event.listen(app_engine, "before_cursor_execute", hold)
    job = _job(app_engine, {})
    try:
        assert job.kick() is True  # returns at once: the refresh runs in the job's thread
        assert entered.wait(10)
        assert job.kick() is False  # one is running: no second refresh
        assert job.run_cycle() is None
    finally:
        release.set()  # the listener stays (removing it while the worker runs it would race); it holds only once
    job.shutdown(timeout_s=10)
    assert RefreshState(app_engine).count() == USERS


def test_shutdown_releases_the_lease(app_engine) -> None:
    job = _job(app_engine, {})
    assert job.run_cycle(now=T1).holder
    other = Lease(app_engine, holder="another-process")
    assert not other.acquire(timedelta(seconds=30))
    job.shutdown(timeout_s=5)
    assert other.acquire(timedelta(seconds=30))  # a successor takes over at once, not after the TTL
    assert job.kick() is False


def test_second_process_does_not_refresh_but_fills_its_cache(app_engine, capture: Capture) -> None:
    holder = _job(app_engine, {"posthog": lambda: _posthog(capture.host)})
    cache = SegmentCache(10)
    follower = _job(app_engine, {"posthog": lambda: _posthog(capture.host)}, cache=cache)
    assert holder.run_cycle(now=T1).holder
    cache.get("7")
    result = follower.run_cycle(now=T1 + timedelta(seconds=1))
    assert result is not None and not result.holder and result.refreshed is None
    assert follower.cohort_sizes() == {} and list(follower.observe()) == []  # the fleet reports cohort sizes once
    assert "app.user.engagement_level" in cache.get("7")
    assert len(capture.events()) == USERS
    holder.shutdown()
    follower.shutdown()


def test_observe_reports_cohort_sizes(app_engine) -> None:
    job = _job(app_engine, {})
    job.run_cycle(now=T1)
    points = {(o.attributes[SEGMENT_NAME], o.attributes[SEGMENT_VALUE]): o.value for o in job.observe()}
    assert GAUGE == "app.segments.users"
    assert sum(v for (name, _), v in points.items() if name == "engagement_level") == USERS
    assert points[("is_admin", "true")] + points[("is_admin", "false")] == USERS
    assert ("engagement_level", "very_high") in points  # zero-size segments are reported too
    job.shutdown()


def test_forked_child_runs_the_job_and_the_pre_fork_parent_does_not(app_engine, tmp_path) -> None:
    job = _job(app_engine, {})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read)
        code = 1
        try:
            result = job.run_cycle(now=T1)
            code = 0 if result is not None and result.holder and result.error is None else 2
        finally:
            os.write(write, str(code).encode())
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.read(read, 10) == b"0" and os.waitstatus_to_exitcode(status) == 0
    assert job.kick() is False  # the pre-fork parent (a gunicorn --preload master) stays idle
    assert RefreshState(app_engine).count() == USERS
    job.shutdown()


def test_a_failure_repeating_every_cycle_is_named_once_until_a_cycle_works_again(app_engine, caplog) -> None:
    """README: one clear line per fault, not one per cycle; the same failure after a recovery is named again."""
    job = _job(app_engine, {})

    def move(table: str, to: str) -> None:
        with app_engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {to}")

    try:
        assert job.run_cycle(now=T1).error is None
        with caplog.at_level(logging.INFO, logger="otel_segments"):
            move("time_entries", "time_entries_away")  # the app's activity table gone: every cycle fails alike
            results = [job.run_cycle(now=T1 + timedelta(minutes=m)) for m in (1, 2, 3)]
            move("time_entries_away", "time_entries")
            recovered = job.run_cycle(now=T1 + timedelta(minutes=4))
            move("time_entries", "time_entries_away")
            again = job.run_cycle(now=T1 + timedelta(minutes=5))
            move("time_entries_away", "time_entries")
    finally:
        job.shutdown(timeout_s=2)
    assert all(r is not None and r.error for r in results) and again is not None and again.error, (results, again)
    assert recovered is not None and recovered.error is None
    ours = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("otel_segments")]
    failures = [m for level, m in ours if level == "WARNING" and "segment refresh failed" in m]
    assert len(failures) == 2, ours  # the first of the three, and the one after the recovery
    assert [m for _, m in ours if "works again" in m], ours


def test_the_flush_at_exit_ends_a_delivery_the_collector_fails_instead_of_retrying_until_the_bound(
    app_engine, http_receiver: Receiver
) -> None:
    """Pending updates are tried once more at exit; a collector answering 503 to that ends it at once (the exporter
    would retry for its 60 s timeout, the stop until 0.5 s before its bound), and they stay pending (issue 24)."""
    exporter = OTLPLogExporter(endpoint=f"{http_receiver.endpoint}/v1/logs", timeout=60, session=PeerSession())
    job = _job(app_engine, {"otlp": lambda: OtlpSegmentSink(exporter, Resource({"service.name": "timetracker"}))})
    http_receiver.status = 400  # refused at once, not retried: the cycle leaves every user pending
    first = job.run_cycle(now=T1)
    assert first is not None and first.holder and first.delivered.get("otlp", 0) == 0, first
    http_receiver.status = 503
    tried = len(http_receiver.of("logs"))
    started = time.monotonic()
    job.shutdown(timeout_s=30)
    took = time.monotonic() - started
    assert len(http_receiver.of("logs")) > tried, "the flush at exit did not try the pending updates"
    assert took < 15, f"the stop waited {took:.1f}s for a delivery the collector had failed (bound 30 s)"
    assert len(RefreshState(app_engine).pending("otlp", limit=USERS)) == USERS  # nothing marked delivered
