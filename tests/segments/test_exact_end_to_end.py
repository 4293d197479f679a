"""Issue 21, "done when": exact mode end to end. An app under ``opentelemetry-instrument`` against PostgreSQL with
``OTEL_SEGMENTS_CHANGE_CAPTURE=triggers`` and the triggers applied by ``otel-segments triggers --apply``: a raw
``UPDATE`` that moves no timestamp (which the windows would leave to the maximum age) reaches PostHog within two
refresh intervals, counted in the job's collections."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from otel_segments.segments.demo import create_demo_database, time_entries
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

from .test_end_to_end import APP, App, _arrived, capture  # noqa: F401 - capture: the local PostHog endpoint

TOKEN = "tok-e2e-exact-7c2"
API_KEY = "phc_e2e_exact_key"
INTERVAL_S = 2.0
USERS = 8

pytestmark = pytest.mark.postgres


def test_a_raw_update_that_moves_no_timestamp_reaches_posthog_within_two_intervals(
    tmp_path: Path,
    postgres_database: str,
    http_receiver: Receiver,
    capture: Capture,  # noqa: F811
) -> None:
    engine = create_engine(postgres_database)
    create_demo_database(engine, users_count=USERS, seed=43)
    applied = subprocess.run(
        [sys.executable, "-m", "otel_segments.cli", "triggers", "--apply"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(OTEL_SEGMENTS_DATABASE_URL=postgres_database),
        cwd=tmp_path,
    )
    assert applied.returncode == 0, applied.stderr
    app = App(engine)
    (tmp_path / "users.txt").write_text(" ".join(map(str, range(1, USERS + 1))))
    shutil.copy(APP, tmp_path / "live_app.py")
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="timetracker",
        OTEL_SEGMENTS_DATABASE_URL=postgres_database,
        OTEL_SEGMENTS_CHANGE_CAPTURE="triggers",
        OTEL_SEGMENTS_REFRESH_INTERVAL=str(int(INTERVAL_S * 1000)),
        OTEL_BSP_SCHEDULE_DELAY="100",
        POSTHOG_API_KEY=API_KEY,
        POSTHOG_HOST=capture.host,
    )
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), "live_app.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len({e["distinct_id"] for e in capture.events()}) < USERS:
            assert process.poll() is None and time.monotonic() < deadline, "the first refresh never reached PostHog"
            time.sleep(0.1)
        # The user with the most entries gets every one re-filed as typed by hand: its tracking method changes.
        uid = app.one(select(time_entries.c.user_id).group_by(time_entries.c.user_id).order_by(func.count().desc()).limit(1))
        before = app.segments()[str(uid)].set
        stamps = app.one(select(func.max(time_entries.c.updated_at)))
        with engine.begin() as conn:
            conn.execute(text("UPDATE time_entries SET source = 'manual' WHERE user_id = :u"), {"u": uid})
        assert app.one(select(func.max(time_entries.c.updated_at))) == stamps  # no timestamp moved
        after = app.segments()[str(uid)].set
        want = {k: v for k, v in after.items() if k != "last_segment_update" and before.get(k) != v}
        assert want, "the update changed nothing the segment shows"
        collections_before = len(http_receiver.of("metrics"))
        wall_deadline = time.monotonic() + 60  # only keeps a broken job from hanging: the bound is in collections
        while not _arrived(capture, http_receiver, str(uid), want)[0]:
            collections = len(http_receiver.of("metrics")) - collections_before
            assert collections <= 3 and time.monotonic() < wall_deadline, (
                f"not delivered within two refresh intervals ({collections} collections since)"
            )
            time.sleep(0.05)
        with engine.connect() as conn:  # read and cleared under the lease
            deadline = time.monotonic() + 60
            while conn.execute(text("SELECT count(*) FROM otel_segments_changes")).scalar():
                assert time.monotonic() < deadline, "the change rows were never cleared"
                conn.rollback()
                time.sleep(0.1)
    finally:
        (tmp_path / "stop").touch()
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        engine.dispose()
    assert "Traceback" not in err, err
    assert "missing" not in err, err  # the triggers were found: no fallback to the windows
    assert TOKEN not in out + err and API_KEY not in out + err
