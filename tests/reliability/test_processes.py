"""gunicorn ``--preload``, 4 workers, under ``opentelemetry-instrument``: SIGTERM and ``kill -9`` mid-refresh (issue 6, item 4).

The app (``tests/apps/gunicorn_app.py``) has no set-up code; ``configure()`` builds
everything from the environment: the gate open (OTLP receiver + token), a SQLite
demo database shared by the five processes, PostHog at the local capture
endpoint, a refresh every 500 ms. A client thread keeps sending requests and
records their latency; a watcher samples the lease table to see which process
refreshes. Asserted: requests keep succeeding; the master never refreshes after
the fork, the workers do; every user reaches PostHog exactly once, and the OTLP
receiver gets their ``app.user.segment`` records and the ``app.segments.users``
gauge; SIGTERM mid-delivery exits within a bound with the in-flight batch
recorded; ``kill -9`` mid-delivery then a restart loses nothing and sends nothing
twice but the one batch PostHog had accepted when the process died.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from otel_segments.job.cohort_sizes import GAUGE, SEGMENT_NAME, SEGMENT_VALUE
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.state import RefreshState
from tests import delivery
from tests.conftest import VENV_BIN, _free_port, clean_env
from tests.delivery import add_entries, busy_arrived, changes, users_in
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

APP = Path(__file__).resolve().parent.parent / "apps" / "gunicorn_app.py"
USERS = 40
ALL = {str(i) for i in range(1, USERS + 1)}
WORKERS = 4
TOKEN = "tok-gunicorn-4f1e"
API_KEY = "phc_gunicorn_5d2c"
HANG_S = 10.0  # a request, a start-up or a delivery slower than this is a hang: the test fails
EXIT_BOUND_S = 20.0  # SIGTERM to exit: the job gets half the SDK's 30 s shutdown budget, minus what the SDK needs


# -- the peers ------------------------------------------------------------------------------------------------


@pytest.fixture
def posthog(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    for name in list(os.environ):
        if name.startswith("POSTHOG_"):
            monkeypatch.delenv(name)
    endpoint = Capture(httpserver)
    httpserver.expect_request("/batch/", method="POST").respond_with_handler(endpoint.handle)
    yield endpoint


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "app.db"
    engine = create_engine(f"sqlite:///{path}")
    create_demo_database(engine, users_count=USERS, seed=31, now=datetime.now(timezone.utc))
    engine.dispose()
    yield path


@pytest.fixture
def db(db_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{db_path}")
    yield engine
    engine.dispose()


# -- the server, its clients, the lease ---------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


class Gunicorn:
    """``opentelemetry-instrument gunicorn --preload -w 4`` in its own process group, restartable."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env, self.port = folder, env, _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = folder / "gunicorn.log"
        self.workers: set[int] = set()
        self.serving_since = 0.0  # monotonic: every worker forked and serving

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        command = [
            str(VENV_BIN / "opentelemetry-instrument"),
            str(VENV_BIN / "gunicorn"),
            "--preload",
            f"--workers={WORKERS}",
            f"--bind=127.0.0.1:{self.port}",
            "--no-control-socket",
            "--graceful-timeout=25",
            "gunicorn_app:app",
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        # opentelemetry-instrument execs gunicorn: the pid is the master's
        delivery.wait_until(
            lambda: len(_children(self.pid)) == WORKERS and _get(self.port, "1"), "4 workers serving", 30, self.text
        )
        self.workers = _children(self.pid)
        self.serving_since = time.monotonic()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> float:
        """SIGTERM to the master, as a deployment would; the seconds until it exited."""
        started = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)
        assert self.process is not None
        code = self.process.wait(timeout=EXIT_BOUND_S + 10)
        assert code == 0, self.text()[-4000:]
        return time.monotonic() - started

    def kill9(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=HANG_S)
        delivery.wait_until(lambda: not any(Path(f"/proc/{w}").exists() for w in self.workers), "workers gone", HANG_S)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()


def _get(port: int, user: str) -> dict | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_S)
    try:
        connection.request("GET", "/", headers={"X-User-Id": user})
        response = connection.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


@dataclass
class Sample:
    phase: str
    started: float
    seconds: float
    ok: bool
    error: str | None


class Load:
    """The app's users: one request after another, each timed and labelled with the test's current phase."""

    def __init__(self, port: int) -> None:
        self.port, self.phase = port, "start-up"
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            phase, started = self.phase, time.monotonic()
            error = None
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HANG_S)
            try:
                connection.request("GET", "/", headers={"X-User-Id": str(n % USERS + 1)})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
                error = None if ok else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as failure:  # a worker killed mid-response
                ok, error = False, f"{type(failure).__name__}: {failure}"
            finally:
                connection.close()
            self.samples.append(Sample(phase, started, time.monotonic() - started, ok, error))
            time.sleep(0.005 if ok else 0.05)  # leave the two cores to the server; do not spin while it is down

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(HANG_S + 1)

    def of(self, *phases: str, before: float | None = None) -> list[Sample]:
        """Samples of ``phases``; with ``before``, only requests that had finished by then."""
        return [s for s in self.samples if s.phase in phases and (before is None or s.started + s.seconds < before)]

    def report(self) -> str:
        lines = ["  request latency by phase (ms):  count    ok     p50     p95     max"]
        for phase in dict.fromkeys(s.phase for s in self.samples):
            samples = self.of(phase)
            ms = sorted(s.seconds * 1000 for s in samples)
            p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
            ok = sum(s.ok for s in samples)
            lines.append(f"    {phase:<29} {len(ms):6d} {ok:5d} {statistics.median(ms):7.1f} {p95:7.1f} {ms[-1]:7.1f}")
        return "\n".join(lines)


class LeaseWatch:
    """Samples the lease row every 20 ms: (when, holder pid), while the lease is held (a released row keeps naming its
    last holder, with an expiry in 1970, until another process takes it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=0.5) as conn:
                    row = conn.execute("SELECT holder, expires_at FROM otel_segments_lease WHERE name = 'refresh'").fetchone()
            except sqlite3.Error:
                continue  # no table yet, or a writer holds the lock this instant
            if row is not None and not str(row[1]).startswith("1970-"):
                self.samples.append((time.monotonic(), int(row[0].split(":")[1])))

    def holders(self, since: float = 0.0) -> set[int]:
        return {pid for when, pid in self.samples if when >= since}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@dataclass
class Rig:
    server: Gunicorn
    load: Load
    lease: LeaseWatch
    posthog: Capture
    receiver: Receiver
    db: Engine
    notes: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        """A result worth reading in the run's output (printed with the latency table after the module)."""
        self.notes.append(line)

    def settled(self) -> bool:
        """Every user reached PostHog and nothing is pending for either sink."""
        if {e["distinct_id"] for e in self.posthog.events()} != ALL:
            return False
        state = RefreshState(self.db)
        return not state.pending("posthog") and not state.pending("otlp")

    def wait(self, condition: Callable[[], Any], what: str) -> Any:
        return delivery.wait_until(condition, what, 30, self.server.text)


def _rig_env(posthog: Capture, receiver: Receiver, db_path: Path, **extra: str) -> dict[str, str]:
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="timetracker",
        OTEL_SEGMENTS_DATABASE_URL=f"sqlite:///{db_path}",
        OTEL_SEGMENTS_REFRESH_INTERVAL="500",
        POSTHOG_API_KEY=API_KEY,
        POSTHOG_HOST=posthog.host,
        **extra,
    )
    env.pop("PYTHONPATH", None)
    return env


_reports: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end of the run: each test's notes and request latency by phase (not asserted).

    Session-scoped, so the module's tests need not share one xdist worker (tests/scheduling.py).
    """
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not _reports:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("gunicorn --preload, 4 workers: what each test saw, and request latency by phase (not asserted):")
        for block in _reports:
            for line in block.splitlines():
                reporter.write_line(line)


@pytest.fixture
def rig_factory(
    request: pytest.FixtureRequest, tmp_path: Path, posthog: Capture, http_receiver: Receiver, db_path: Path, db: Engine
) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**extra: str) -> Rig:
        shutil.copy(APP, tmp_path / "gunicorn_app.py")
        server = Gunicorn(tmp_path, _rig_env(posthog, http_receiver, db_path, **extra))
        rig = Rig(server, Load(server.port), LeaseWatch(db_path), posthog, http_receiver, db)
        made.append(rig)
        server.start()
        rig.load.phase = "serving"
        return rig

    yield make
    for rig in made:
        rig.load.stop()
        rig.lease.stop()
        rig.server.stop()
        _reports.append("\n".join([f"{request.node.name}:", *(f"  {n}" for n in rig.notes), rig.load.report()]))
        log = rig.server.text()
        assert TOKEN not in log and API_KEY not in log
        # nothing went wrong on the way (a locked SQLite database, a failed delivery): no warning, no traceback
        assert "otel_segments:" not in log and "Traceback" not in log, log[-4000:]


def _in_flight(rig: Rig, since: int, users: list[int]) -> dict:
    wanted = {str(u) for u in users}
    return rig.wait(lambda: [r for r in rig.posthog.requests[since:] if users_in(r) & wanted], "the batch with the changes")[0]


def _gauges(receiver: Receiver, since: int = 0) -> list[dict[tuple[str, str], int]]:
    """The ``app.segments.users`` points of each metrics export from the ``since``-th on, one dict per export."""
    exports = []
    for export in receiver.of("metrics")[since:]:
        points = {}
        for rm in export.request.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == GAUGE:
                        for p in metric.gauge.data_points:
                            labels = {a.key: a.value.string_value for a in p.attributes}
                            points[(labels[SEGMENT_NAME], labels[SEGMENT_VALUE])] = p.as_int
        if points:
            exports.append(points)
    return exports


def _assert_served(load: Load, *phases: str, before: float | None = None) -> None:
    samples = load.of(*phases, before=before)
    failed = [s for s in samples if not s.ok]
    assert samples and not failed, f"{len(failed)} of {len(samples)} requests failed: {failed[:3]}"


# -- the tests -----------------------------------------------------------------------------------------------


def test_preload_workers_deliver_each_user_once_and_sigterm_mid_delivery_exits_cleanly(rig_factory) -> None:
    rig: Rig = rig_factory()
    rig.wait(rig.settled, "every user delivered by the workers")
    time.sleep(1.0)  # two more intervals: nothing is sent again
    first = rig.posthog.events()
    assert Counter(e["distinct_id"] for e in first) == dict.fromkeys(ALL, 1)

    # the master, forking while it starts up, gave the lease up at its fork (README: a pre-fork master "stays idle,
    # gives the lease up at once"; with a 500 ms interval its first cycle may come before gunicorn forks): once the
    # workers serve, one worker holds it, and keeps it
    holders = rig.lease.holders(since=rig.server.serving_since)
    assert rig.server.pid not in holders and len(holders) == 1 and holders <= rig.server.workers, (holders, rig.server.workers)

    records = [r for r in rig.receiver.logs() if r.event_name == "app.user.segment"]
    assert Counter(r.resource["user.id"] for r in records) == dict.fromkeys(ALL, 1)
    # the holder's gauge comes with the collection after its refresh: waited for, as a busy machine delays it
    points = rig.wait(lambda: [p for p in rig.receiver.points() if p.metric == GAUGE], "the holder's gauge exported")
    assert all(p.resource["service.name"] == "timetracker" for p in points)
    last = _gauges(rig.receiver)[-1]
    assert sum(n for (name, _), n in last.items() if name == "engagement_level") == USERS
    assert last[("is_admin", "true")] + last[("is_admin", "false")] == USERS
    for signal_ in ("logs", "metrics"):
        assert {e.headers.get("authorization") for e in rig.receiver.of(signal_)} == {f"Bearer {TOKEN}"}

    # SIGTERM while a worker waits for PostHog to answer a batch of changes
    rig.load.phase = "delivery held"
    since = len(rig.posthog.requests)
    rig.posthog.delay_s = 2.0
    changed = [4, 8, 15, 16]
    add_entries(rig.db, changed)
    _in_flight(rig, since, changed)
    signalled = time.monotonic()
    rig.load.phase = "after SIGTERM"  # gunicorn stops accepting: these may be refused or reset, by design
    took = rig.server.terminate()
    rig.posthog.delay_s = 0.0
    rig.note(f"SIGTERM mid-delivery: gunicorn exited in {took:.2f}s")
    assert took < EXIT_BOUND_S

    # the held batch was answered during the graceful shutdown and recorded: nothing pending, nothing twice
    state = RefreshState(rig.db)
    assert state.pending("posthog") == [] and state.pending("otlp") == []
    assert busy_arrived(rig.posthog.events(), changed)
    counts = changes(rig.posthog.events())
    assert set(counts.values()) == {1}, [c for c, n in counts.items() if n > 1]
    assert rig.server.pid not in rig.lease.holders(since=rig.server.serving_since)
    _assert_served(rig.load, "serving", "delivery held", before=signalled)


def test_kill_9_mid_delivery_then_restart_loses_nothing(rig_factory) -> None:
    """``kill -9`` the whole process group while PostHog holds a batch's answer, then start gunicorn again.

    The at-least-once bound: the one batch PostHog accepted but the dead worker never recorded is sent again
    after the restart (each of its users exactly twice); every other change exactly once; none lost.
    """
    rig: Rig = rig_factory(TEST_LEASE_TTL_S="2")
    rig.wait(rig.settled, "every user delivered")

    rig.load.phase = "delivery held"
    since = len(rig.posthog.requests)
    rig.posthog.delay_s = 3.0
    changed = [6, 12, 18, 24, 30]
    add_entries(rig.db, changed)
    in_flight = _in_flight(rig, since, changed)
    killed = rig.lease.samples[-1][1]
    killed_at = time.monotonic()
    rig.load.phase = "down (kill -9)"
    rig.server.kill9()
    rig.posthog.delay_s = 0.0
    killed_batch = users_in(in_flight)
    assert killed in rig.server.workers

    # consistent after the crash: the database is intact, every user has its segment, and exactly the
    # batch that was in flight is still pending for PostHog
    with rig.db.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    state = RefreshState(rig.db)
    assert state.count() == USERS
    assert {s.distinct_id for s in state.pending("posthog", limit=USERS)} == killed_batch

    rig.server.start()
    rig.load.phase = "restarted"
    rig.wait(lambda: rig.settled() and busy_arrived(rig.posthog.events(), changed), "the pending batch delivered")
    time.sleep(1.0)

    counts = changes(rig.posthog.events())
    twice = {user for (user, _), n in counts.items() if n == 2}
    assert {user for user, _ in counts} == ALL
    assert set(counts.values()) <= {1, 2}
    assert twice <= killed_batch, "only the batch in flight at the kill may arrive twice"
    assert {str(u) for u in changed} <= twice  # PostHog had accepted it: each of those users arrived exactly twice
    rig.note(f"kill -9 mid-delivery: {len(killed_batch)} updates in flight, {len(twice)} delivered twice after the restart")
    new_holders = rig.lease.holders(since=rig.server.serving_since) - {killed}  # the new master forks its workers first
    assert new_holders and new_holders <= rig.server.workers, (new_holders, rig.server.workers)

    rig.load.phase = "stopping"
    rig.note(f"SIGTERM: gunicorn exited in {rig.server.terminate():.2f}s")
    _assert_served(rig.load, "serving", "delivery held", before=killed_at)
    _assert_served(rig.load, "restarted")


def test_slow_preload_master_hands_the_refresh_to_the_workers(rig_factory) -> None:
    """An app whose import outlasts a few refresh intervals: the master refreshes before it forks, never after.

    After the fork the master gives the lease up at once, a worker refreshes from then on, and the master
    stops reporting the cohort-size gauge (its counts would go stale).
    """
    rig: Rig = rig_factory(TEST_IMPORT_DELAY_S="1.5")
    rig.wait(rig.settled, "every user delivered")
    handed = rig.wait(
        lambda: next((when for when, pid in rig.lease.samples if pid in rig.server.workers), None), "a worker holding the lease"
    )
    assert rig.server.pid in rig.lease.holders(), "the master did refresh before it forked (else this test shows nothing)"

    changed = [9, 10, 11]
    add_entries(rig.db, changed)
    rig.wait(lambda: rig.settled() and busy_arrived(rig.posthog.events(), changed), "the changes delivered")
    time.sleep(1.5)
    counts = changes(rig.posthog.events())
    assert set(counts.values()) == {1}, [c for c, n in counts.items() if n > 1]
    assert rig.server.pid not in rig.lease.holders(since=handed), "the master refreshed again after the fork"

    # every gauge export from now on agrees with the state: no process reports counts from before the change
    very_high = sum(s.set.get("engagement_level") == "very_high" for s in RefreshState(rig.db).segments())
    since = len(rig.receiver.of("metrics"))
    time.sleep(1.5)
    reported = [g[("engagement_level", "very_high")] for g in _gauges(rig.receiver, since)]
    assert reported and set(reported) == {very_high}, reported

    rig.load.phase = "stopping"
    rig.note(f"SIGTERM: gunicorn exited in {rig.server.terminate():.2f}s")
    _assert_served(rig.load, "serving")
