"""Issue 20, item 4: the job's threads never import a module for the first time; configure() did it, in the app's thread.

Field report: under load the first cycle failed with ``AttributeError: partially
initialized module 'sqlalchemy.orm.exc' has no attribute 'UnmappedClassError'``:
the job's thread imported a module the app's main thread was still importing.
Python's import locks make a second importer wait, except where two threads
import each other's modules, where one of them gets the half-made module.
So nothing of the cycle imports anything new: an audit hook (``sys.addaudithook``,
event ``import``, raised only when a module is not yet in ``sys.modules``) records
every import made outside the main thread once ``configure()`` returned, through
cycles that refresh and deliver to real peers and through exit. And the race
itself: the job starts while another thread imports SQLAlchemy's ORM and Flask,
in many fresh processes; each first cycle succeeds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from otel_segments.segments.demo import create_demo_database
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

USERS = 30
TOKEN = "tok-imports-9e1"

AUDITED = textwrap.dedent(
    """
    import _thread, json, sys, time

    main = _thread.get_ident()
    late = []
    armed = False


    def record(event, args):
        if armed and event == "import" and _thread.get_ident() != main:
            late.append(args[0])


    sys.addaudithook(record)
    import otel_segments

    handle = otel_segments.configure()
    armed = True
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and handle.job._cycles < 3:
        time.sleep(0.05)
    handle.shutdown()
    print(json.dumps({"cycles": handle.job._cycles, "late": sorted(set(late))}))
    """
)

RACE = textwrap.dedent(
    """
    import sys, threading, time
    import otel_segments

    handle = otel_segments.configure()
    go = threading.Event()


    def app_imports():
        go.wait()
        import sqlalchemy.orm  # noqa: F401
        import flask_sqlalchemy  # noqa: F401


    importer = threading.Thread(target=app_imports)
    importer.start()
    go.set()
    handle.job.kick()
    importer.join()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (handle.job._cycles < 1 or handle.job._cycle_lock.locked()):
        time.sleep(0.01)
    handle.shutdown()
    print("cycles", handle.job._cycles, "orm" if "sqlalchemy.orm" in sys.modules else "")
    """
)


@pytest.fixture
def app_env(tmp_path: Path, http_receiver: Receiver, capture: Capture) -> dict[str, str]:
    database = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(database)
    create_demo_database(engine, users_count=USERS, seed=31)
    engine.dispose()
    return clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SEGMENTS_DATABASE_URL=database,
        OTEL_SEGMENTS_REFRESH_INTERVAL="200",
        POSTHOG_API_KEY="phc_imports",
        POSTHOG_HOST=capture.host,
    )


def test_no_thread_of_ours_imports_a_module_for_the_first_time(tmp_path: Path, app_env: dict[str, str], capture: Capture) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", AUDITED], cwd=tmp_path, env=app_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["cycles"] >= 3, result.stderr
    assert len({e["distinct_id"] for e in capture.events()}) == USERS  # the cycles delivered: the whole path ran
    assert found["late"] == [], found["late"]


def test_the_first_cycle_races_the_apps_imports_and_succeeds(tmp_path: Path, app_env: dict[str, str]) -> None:
    database = tmp_path / "app.db"

    def run(index: int) -> subprocess.CompletedProcess[str]:
        # Each process its own copy of the database: a lease or a lock shared between the runs is not what is tested.
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        shutil.copy(database, folder / "app.db")
        env = {**app_env, "OTEL_SEGMENTS_DATABASE_URL": f"sqlite:///{folder / 'app.db'}"}
        return subprocess.run(
            [str(VENV_BIN / "python"), "-c", RACE], cwd=folder, env=env, capture_output=True, text=True, timeout=120
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = list(pool.map(run, range(8)))
    for result in runs:
        assert result.returncode == 0, result.stderr
        words = result.stdout.split()
        # at least the first cycle ran (a busy machine may fit a second one in before the shutdown), and the app's
        # imports finished: every cycle succeeded, since a failed one logs an "otel_segments:" line
        assert words[0] == "cycles" and int(words[1]) >= 1 and words[2:] == ["orm"], result.stdout
        assert "otel_segments:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
