"""One refresh per fleet: four OS processes share one PostgreSQL app + state database (issue 4, item 2).

Each process (``fleet_worker.py``) runs its own RefreshJob with a PostHog sink to
the local capture endpoint, cycling every 0.3 s, and prints each CycleResult. The
tests assert on what the endpoint decoded and on what each process reported:
every user arrives, each distinct change (a user with one ``$set``, not counting
``last_segment_update``) is accepted exactly once, and only the lease holder
refreshes. A holder killed with SIGKILL is replaced once its lease expires; a
holder stopped with SIGSTOP just before a send, and resumed after its successor
delivered newer values, sends nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine

from otel_segments.job.lease import lease_table
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.state import RefreshState
from tests import delivery
from tests.conftest import VENV_BIN
from tests.delivery import BUSY, add_entries, busy_arrived, changes, users_in
from tests.sinks.conftest import Capture

pytestmark = pytest.mark.postgres

WORKER = Path(__file__).with_name("fleet_worker.py")
PROCESSES = 4
USERS = 40
ALL = {str(i) for i in range(1, USERS + 1)}
INTERVAL_S = 0.3
# Short, so a takeover is quick, yet longer than a healthy cycle takes on a busy machine (2 s was not: beside a full
# test run a first cycle outlived it and overlapped its successor's, which the fence allows and these tests do not).
LEASE_TTL_S = 5.0
DEADLINE_S = 120.0  # for anything to happen; a fleet that hangs fails here, not at the suite's timeout


class Fleet:
    """The worker processes and every line they printed, read by one thread per process."""

    def __init__(self, url: str, host: str, log_dir: Path) -> None:
        self.url, self.host, self.log_dir = url, host, log_dir
        self.processes: dict[int, subprocess.Popen[str]] = {}
        self.freeze_file = log_dir / "freeze"  # written by a test: the holder stops itself before sending those users
        self._lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def start(self, count: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "POSTHOG_"))}
        env["FLEET_FREEZE_FILE"] = str(self.freeze_file)
        for index in range(count):
            process = subprocess.Popen(
                [str(VENV_BIN / "python"), str(WORKER), self.url, self.host, str(INTERVAL_S), str(LEASE_TTL_S)],
                stdout=subprocess.PIPE,
                stderr=(self.log_dir / f"worker{index}.err").open("w"),
                text=True,
                env=env,
            )
            self.processes[process.pid] = process
            threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._lock:
                self._lines.append(json.loads(line))

    def lines(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._lines)

    def cycles(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if "start" in line]

    def holder_cycles(self) -> list[dict[str, Any]]:
        return [line for line in self.cycles() if line.get("holder")]

    def stderr(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.log_dir.glob("worker*.err")))

    def stop(self, timeout: float = 15.0) -> dict[int, int | None]:
        """SIGTERM every live process; their exit codes (None: had to be killed)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[int, int | None] = {}
        for pid, process in self.processes.items():
            try:
                codes[pid] = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[pid] = None
        return codes


@pytest.fixture
def app_url(postgres_database: str) -> Iterator[str]:
    engine = create_engine(postgres_database)
    create_demo_database(engine, users_count=USERS, seed=23, now=datetime.now(timezone.utc))
    engine.dispose()
    yield postgres_database


@pytest.fixture
def fleet(app_url: str, capture: Capture, tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(app_url, capture.host, tmp_path)
    running.start(PROCESSES)
    try:
        yield running
    finally:
        for process in running.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def db(app_url: str) -> Iterator[Engine]:
    engine = create_engine(app_url)
    yield engine
    engine.dispose()


def wait_until(condition: Callable[[], Any], what: str, fleet: Fleet) -> Any:
    return delivery.wait_until(condition, what, DEADLINE_S, fleet.stderr)


def settled(capture: Capture, db: Engine) -> bool:
    """Every user reached PostHog and nothing is pending for it."""
    return {e["distinct_id"] for e in capture.events()} == ALL and not RefreshState(db).pending("posthog")


def assert_one_refresher_at_a_time(fleet: Fleet) -> None:
    holder_cycles = fleet.holder_cycles()
    for a in holder_cycles:
        for b in holder_cycles:
            if a["pid"] < b["pid"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], f"two processes refreshed at once: {a} {b}"


def test_four_processes_deliver_each_change_exactly_once(fleet: Fleet, capture: Capture, db: Engine) -> None:
    wait_until(lambda: settled(capture, db), "every user delivered", fleet)
    time.sleep(5 * INTERVAL_S)  # more cycles from every process: none may send anything again
    initial = capture.events()
    first = changes(initial)
    assert {user for user, _ in first} == ALL
    assert set(first.values()) == {1}, [c for c, n in first.items() if n > 1]

    changed = [3, 7, 11, 19, 23]
    add_entries(db, changed)
    wait_until(lambda: busy_arrived(capture.events(), changed) and settled(capture, db), "the changes delivered", fleet)
    time.sleep(5 * INTERVAL_S)
    events = capture.events()
    counts = changes(events)
    assert set(counts.values()) == {1}, [c for c, n in counts.items() if n > 1]
    again = {e["distinct_id"] for e in events[len(initial) :]}
    assert set(changed) <= {int(u) for u in again}  # each changed user once more (others only if the clock moved them)

    # Only one process refreshed: the one that took the lease first kept renewing it; the others only read.
    cycles = fleet.cycles()
    assert {c["pid"] for c in cycles} == set(fleet.processes), "every process ran cycles"
    troubled = [(c["pid"], c.get("error"), c.get("failed")) for c in cycles if c.get("error") or c.get("failed")]
    assert not troubled, troubled
    holders = {c["pid"] for c in fleet.holder_cycles()}
    assert len(holders) == 1, holders
    assert_one_refresher_at_a_time(fleet)
    assert sum(c["delivered"].get("posthog", 0) for c in fleet.holder_cycles()) == len(events)
    followers = [c for c in cycles if not c["holder"]]
    assert len(followers) >= 3 * len(fleet.holder_cycles()) / 2, "the followers kept cycling without the lease"

    codes = fleet.stop()
    assert set(codes.values()) == {0}, fleet.stderr()
    with db.connect() as conn:
        lease = conn.execute(select(lease_table)).one()
    assert lease.expires_at < datetime(2000, 1, 1), "the holder released the lease at shutdown"


def test_killed_holder_is_replaced_after_the_lease_ttl_and_nothing_is_lost(fleet: Fleet, capture: Capture, db: Engine) -> None:
    """SIGKILL the lease holder while PostHog is answering its batch; another process takes over after the TTL.

    The at-least-once bound: only the batch the killed holder had in flight (PostHog accepted it, the holder
    died before recording that) is sent again, so those users' change arrives exactly twice; every other
    change arrives exactly once, and none is lost.
    """
    wait_until(lambda: settled(capture, db) and fleet.holder_cycles(), "every user delivered", fleet)
    before = len(capture.requests)

    capture.delay_s = 3.0  # PostHog takes its time answering: the holder sits in delivery, between accept and record
    changed = [2, 5, 13, 17, 29, 31]
    add_entries(db, changed)
    wanted = {str(u) for u in changed}
    in_flight = wait_until(
        lambda: [r for r in capture.requests[before:] if users_in(r) & wanted],
        "the holder's batch with the changes",
        fleet,
    )[0]
    # the process holding the lease now is the one sending (each post is fenced by the lease); on a busy machine
    # it need not be the first holder: a cycle longer than the TTL hands the lease on, as designed
    with db.connect() as conn:
        lease = conn.execute(select(lease_table)).one()
    host, pid, _ = lease.holder.split(":", 2)
    assert host == socket.gethostname()
    holder = int(pid)
    killed_at = time.time()
    fleet.processes[holder].kill()
    fleet.processes[holder].wait()
    capture.delay_s = 0.0
    killed_batch = users_in(in_flight)

    wait_until(lambda: busy_arrived(capture.events(), changed) and settled(capture, db), "the changes delivered again", fleet)
    time.sleep(5 * INTERVAL_S)
    successors = [c for c in fleet.holder_cycles() if c["pid"] != holder and c["start"] >= killed_at]
    assert successors, "nobody took over"
    expiry = lease.expires_at.replace(tzinfo=timezone.utc).timestamp()
    # a cycle's start is stamped before its lease attempt, which PostgreSQL judges by its own now(): a successor may
    # begin the cycle in which it takes over a little before the expiry, never a whole interval before it
    assert successors[0]["start"] >= expiry - INTERVAL_S, "taken over before the killed holder's lease expired"
    assert successors[0]["end"] >= expiry, "a whole holder cycle before the killed holder's lease expired"
    assert {c["pid"] for c in successors} == {successors[0]["pid"]}, "one successor, which keeps the lease"
    assert_one_refresher_at_a_time(fleet)

    counts = changes(capture.events())
    assert {user for user, _ in counts} == ALL
    twice = {user for (user, _), n in counts.items() if n == 2}
    assert set(counts.values()) <= {1, 2}
    assert twice <= killed_batch, "only the killed holder's in-flight batch may arrive twice"
    assert wanted <= twice  # here PostHog did accept it: each of those arrived exactly twice
    late = successors[0]["start"] - expiry
    print(f"killed batch: {len(killed_batch)} users, sent twice: {len(twice)}; taken over {late:.2f}s after the lease expired")

    codes = fleet.stop()
    assert codes[holder] == -signal.SIGKILL
    assert {code for pid, code in codes.items() if pid != holder} == {0}, fleet.stderr()


def _state_of(pid: int) -> str:
    """The process's state letter in /proc (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_sigstopped_holder_resumed_after_its_successor_delivered_sends_nothing(
    fleet: Fleet, capture: Capture, db: Engine
) -> None:
    """README's promise for a frozen holder (SIGSTOP, a debugger, a stalled VM), with real processes on PostgreSQL.

    The holder reads the changes of some users and stops itself (SIGSTOP, the whole process) just before it sends
    them. The users change again; after the lease TTL a successor takes over and delivers the newer values. Then
    the holder gets SIGCONT: it must send nothing (its older ``$set`` would overwrite the newer one in PostHog),
    nothing is lost, nothing arrives twice, and it lives on as a follower.
    """
    wait_until(lambda: settled(capture, db) and fleet.holder_cycles(), "every user delivered", fleet)
    changed = [4, 9, 15, 22, 36]
    fleet.freeze_file.write_text(",".join(str(u) for u in changed))  # whoever sends them next stops first
    add_entries(db, changed)  # the older change: BUSY entries each
    frozen = wait_until(lambda: [line for line in fleet.lines() if "frozen" in line], "the holder stopped before its send", fleet)
    holder = frozen[0]["pid"]
    assert {str(u) for u in changed} <= set(frozen[0]["frozen"])
    wait_until(lambda: _state_of(holder) == "T", "the holder stopped", fleet)
    add_entries(db, changed)  # the newer change: 2 x BUSY entries each, while the holder is stopped

    def newer_arrived() -> bool:
        return settled(capture, db) and busy_arrived(
            [e for e in capture.events() if e["properties"]["$set"].get("entries_last_24h", 0) >= 2 * BUSY], changed
        )

    wait_until(newer_arrived, "the successor delivered the newer values", fleet)
    wait_until(
        lambda: [c for c in fleet.holder_cycles() if c["pid"] != holder and c["delivered"].get("posthog")],
        "a successor's cycle that delivered",
        fleet,
    )
    requests_before = len(capture.requests)
    lines_before = len(fleet.lines())

    os.kill(holder, signal.SIGCONT)
    resumed = wait_until(
        lambda: [line for line in fleet.lines()[lines_before:] if line.get("pid") == holder and "start" in line],
        "the resumed holder finished its cycle",
        fleet,
    )
    wait_until(
        lambda: [line for line in fleet.lines()[lines_before:] if line.get("pid") == holder and "start" in line][1:],
        "the resumed holder cycled again, as a follower",
        fleet,
    )
    time.sleep(5 * INTERVAL_S)  # more cycles from everyone: none may send anything
    assert len(capture.requests) == requests_before, "a request arrived after the holder resumed"
    assert resumed[0]["delivered"].get("posthog", 0) == 0, resumed[0]

    events = capture.events()
    by_user = {e["distinct_id"]: e["properties"]["$set"] for e in events}  # PostHog keeps the last $set it got
    older = [
        e
        for e in events
        if e["distinct_id"] in {str(u) for u in changed} and e["properties"]["$set"].get("entries_last_24h", 0) == BUSY
    ]
    assert older == [], "the frozen holder's older values reached PostHog"
    assert all(by_user[str(u)]["entries_last_24h"] >= 2 * BUSY for u in changed)
    counts = changes(events)
    assert {user for user, _ in counts} == ALL  # nothing lost
    assert set(counts.values()) == {1}, [c for c, n in counts.items() if n > 1]  # nothing twice
    assert not RefreshState(db).pending("posthog")

    codes = fleet.stop()
    assert set(codes.values()) == {0}, fleet.stderr()
