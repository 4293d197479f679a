"""The app's database connections stay the app's (issue 15, item 1).

Forty processes, each set up by ``configure()`` as an auto-instrumented worker is, share one PostgreSQL server
whose ``max_connections`` is 25, while the app's own code connects and queries in a loop. A process of ours holds
no connection between cycles and one during a cycle, and a fleet started together spreads its cycles (jitter), so:
the app is never refused, and every user still reaches PostHog. Our connections are found in
``pg_stat_activity`` by their ``application_name``.
"""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, make_url

from otel_segments.runtime.database import APPLICATION_NAME
from otel_segments.segments.demo import create_demo_database
from tests.conftest import VENV_BIN, clean_env, postgres_server
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

pytestmark = pytest.mark.postgres

PROCESSES = 40
MAX_CONNECTIONS = 25
USERS = 60
WORKER = """
import os, time
import otel_segments
handle = otel_segments.configure()
stop = os.environ["STOP_FILE"]
while not os.path.exists(stop):
    time.sleep(0.1)
handle.shutdown()
"""


class AppLoop(threading.Thread):
    """The app's own code: a fresh connection and a query every 20 ms; also counts our connections meanwhile."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.served = 0
        self.refused: list[str] = []
        self.ours: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, application_name="the-app", connect_timeout=5) as conn:
                    ours = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION_NAME,)
                    ).fetchone()
                    self.ours.append(ours[0] if ours else 0)
                    self.served += 1
            except psycopg.OperationalError as error:
                self.refused.append(str(error).strip().splitlines()[0])
            self.stop.wait(0.02)


def test_forty_processes_never_take_the_apps_connections(tmp_path: Path, http_receiver: Receiver, capture: Capture) -> None:
    with postgres_server(max_connections=MAX_CONNECTIONS) as admin_url:
        engine = create_engine(admin_url)
        create_demo_database(engine, users_count=USERS, seed=40)
        engine.dispose()
        app = AppLoop(make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False))
        app.start()
        stop_file = tmp_path / "stop"
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
            OTEL_EXPORTER_OTLP_TOKEN="tok-fleet-budget",
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_SEGMENTS_DATABASE_URL=admin_url,
            OTEL_SEGMENTS_REFRESH_INTERVAL="1000",
            POSTHOG_API_KEY="phc_fleet_budget",
            POSTHOG_HOST=capture.host,
            STOP_FILE=str(stop_file),
        )
        logs = [(tmp_path / f"worker-{i}.log").open("w+") for i in range(PROCESSES)]
        workers = [
            subprocess.Popen([str(VENV_BIN / "python"), "-c", WORKER], env=env, stdout=log, stderr=subprocess.STDOUT)
            for log in logs
        ]
        try:
            deadline = time.monotonic() + 300  # a hang, not slowness: forty interpreters start on two cores
            while len(capture.by_user()) < USERS and time.monotonic() < deadline:
                time.sleep(0.2)
            delivered_at = time.monotonic()
            time.sleep(3)  # the fleet keeps cycling: three more intervals of every process
        finally:
            stop_file.touch()  # the whole fleet stops at once, as in a deploy
            for worker in workers:
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    worker.kill()
            app.stop.set()
            app.join(10)

    assert len(capture.by_user()) == USERS, f"{len(capture.by_user())} of {USERS} users delivered"
    assert not app.refused, app.refused[:3]
    assert app.served > 50
    # Forty processes cycling every second for the whole run: connections held between cycles would be 40 at
    # every sample (and the app refused). Ours are open only while a cycle runs: most samples see none.
    print(f"connections of ours per sample: median {statistics.median(app.ours)}, max {max(app.ours)}, n={len(app.ours)}")
    assert statistics.median(app.ours) <= 2, sorted(app.ours)[-20:]
    assert max(app.ours) < MAX_CONNECTIONS - 3, max(app.ours)
    assert all(worker.returncode == 0 for worker in workers), [w.returncode for w in workers]
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert not any("Traceback" in output for output in outputs), next(o for o in outputs if "Traceback" in o)
    assert delivered_at < deadline, f"{len(capture.by_user())} of {USERS} users delivered within 300 s"
