"""The otel-segments command, run as a user runs it: a subprocess with a clean environment."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.schema import TIMETRACKER
from tests.conftest import clean_env

from .data import fill_other


def _run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_segments.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(**env),
        cwd=cwd,
    )


def test_demo_then_compute(tmp_path: Path) -> None:
    db = tmp_path / "demo.sqlite"
    demo = _run("demo", "--users", "40", "--seed", "3", "--database", str(db))
    assert demo.returncode == 0, demo.stderr
    assert "Cohort sizes" in demo.stdout and "very_high_engagement" in demo.stdout
    assert "@example" not in demo.stdout and "Demo User" not in demo.stdout

    out = _run("compute", "--format", "jsonl", OTEL_SEGMENTS_DATABASE_URL=f"sqlite:///{db}")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["distinct_id"] for line in lines] == [str(i) for i in range(1, 41)]
    # Same properties as the library computes (bar the update time, which differs between the two runs).
    engine = create_engine(f"sqlite:///{db}")
    now = lines[0]["$set"]["last_segment_update"]
    lib = {s.distinct_id: s for s in compute_segments(engine, TIMETRACKER, now=datetime.fromisoformat(now))}
    for line in lines:
        assert line["$set_once"] == lib[line["distinct_id"]].set_once
        assert set(line["$set"]) == set(lib[line["distinct_id"]].set)

    changed = _run("compute", "--changed", "--database-url", f"sqlite:///{db}")
    assert changed.returncode == 0 and "incremental" in changed.stderr  # the demo already refreshed this database

    table = _run("compute", "--database-url", f"sqlite:///{db}", "--format", "table")
    assert table.returncode == 0 and "Segments" in table.stdout and "long_term" in table.stdout

    again = _run("demo", "--database", str(db))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_other_schema_by_module_object(tmp_path: Path) -> None:
    db = tmp_path / "crm.sqlite"
    fill_other(create_engine(f"sqlite:///{db}"), users=12)
    root = Path(__file__).resolve().parents[2]
    out = _run("compute", "--database-url", f"sqlite:///{db}", "--schema", "tests.segments.data:OTHER", cwd=root)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 12


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    create_engine(f"sqlite:///{empty}").connect().close()
    cases = [
        (["compute"], "OTEL_SEGMENTS_DATABASE_URL"),
        (["compute", "--database-url", "nonsense"], "malformed database URL"),
        (["compute", "--database-url", "nosuchdb://x"], "SQLAlchemy does not know ('nosuchdb'"),
        (["compute", "--database-url", "postgresql://me:hunter2@db:notaport/x"], "malformed database URL"),
        (["compute", "--database-url", "postgresql+asyncpg://me:hunter2@db/x"], "asyncio driver asyncpg"),
        (["compute", "--database-url", f"sqlite:///{tmp_path / 'missing.sqlite'}"], "does not exist"),
        (["compute", "--database-url", f"sqlite:///{empty}"], "table 'users' does not exist"),
        (["compute", "--database-url", f"sqlite:///{empty}", "--schema", "nope"], "unknown schema"),
        (["compute", "--database-url", "postgresql+psycopg://me:hunter2@127.0.0.1:1/db"], "cannot connect"),
    ]
    for args, message in cases:
        result = _run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_cohorts_formats() -> None:
    posthog = json.loads(_run("cohorts", "--format", "posthog").stdout)
    assert posthog[0]["filters"]["properties"]["values"][0]["values"][0]["key"] == "engagement_level"
    traceql = _run("cohorts", "--format", "traceql").stdout.splitlines()
    assert 'very_high_engagement\t{ span.app.user.engagement_level = "very_high" }' in traceql
    assert len(json.loads(_run("cohorts", "--format", "json").stdout)) == 20


def test_a_newer_state_is_one_line_exit_2(tmp_path: Path) -> None:
    from sqlalchemy import update

    from otel_segments.segments.state import SCHEMA_VERSION, RefreshState

    db = tmp_path / "crm.sqlite"
    engine = create_engine(f"sqlite:///{db}")
    fill_other(engine, users=3)
    state = RefreshState(engine)
    with engine.begin() as conn:
        conn.execute(update(state.meta).where(state.meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    root = Path(__file__).resolve().parents[2]
    out = _run("compute", "--changed", "--database-url", f"sqlite:///{db}", "--schema", "tests.segments.data:OTHER", cwd=root)
    assert out.returncode == 2 and "newer otel_segments" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_triggers_print_apply_and_drop(tmp_path: Path) -> None:
    from sqlalchemy import text

    from otel_segments.segments.binding import bind
    from otel_segments.segments.captured import ChangeCapture
    from otel_segments.segments.triggers import CHANGE_TABLE, trigger_names

    db = tmp_path / "app.sqlite"
    assert _run("demo", "--users", "5", "--database", str(db)).returncode == 0
    url = f"sqlite:///{db}"
    engine = create_engine(url)
    bound = bind(TIMETRACKER, engine)
    printed = _run("triggers", "--database-url", url)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.count("CREATE TRIGGER") == len(trigger_names(bound)) == 18
    with engine.connect() as conn:  # printing changes nothing
        assert ChangeCapture().missing(conn, bound)[0] == CHANGE_TABLE
    applied = _run("triggers", "--apply", OTEL_SEGMENTS_DATABASE_URL=url)
    assert applied.returncode == 0 and "18 triggers" in applied.stderr and applied.stdout == ""
    assert _run("triggers", "--apply", OTEL_SEGMENTS_DATABASE_URL=url).returncode == 0  # again: replaces, no error
    with engine.begin() as conn:
        assert ChangeCapture().missing(conn, bound) == []
        conn.execute(text("UPDATE users SET role = 'admin' WHERE id = 2"))
        assert conn.execute(text(f"SELECT kind, ident FROM {CHANGE_TABLE}")).all() == [("user", "2")]
    dropping = _run("triggers", "--drop", "--database-url", url)
    assert dropping.returncode == 0 and dropping.stdout.count("DROP TRIGGER") == 18 and CHANGE_TABLE in dropping.stdout
    assert _run("triggers", "--drop", "--apply", "--database-url", url).returncode == 0
    with engine.connect() as conn:
        assert ChangeCapture().missing(conn, bound) == [CHANGE_TABLE, *sorted(trigger_names(bound))]
    engine.dispose()
    missing = _run("triggers", "--database-url", f"sqlite:///{tmp_path / 'none.sqlite'}")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_compute_changed_follows_the_jobs_change_capture(tmp_path: Path) -> None:
    """``compute --changed`` on the job's state refreshes it the job's way: in exact mode it reads the triggers' rows
    (a raw SQL edit that moves no timestamp is found), and never flips the state's mode back to windows."""
    db = tmp_path / "demo.sqlite"
    url = f"sqlite:///{db}"
    assert _run("demo", "--users", "40", "--seed", "3", "--database", str(db)).returncode == 0  # refreshed, windows
    applied = _run("triggers", "--apply", "--database-url", url)
    assert applied.returncode == 0, applied.stderr

    first = _run("compute", "--changed", "--database-url", url, OTEL_SEGMENTS_CHANGE_CAPTURE="triggers")
    assert first.returncode == 0 and "(full)" in first.stderr, first.stderr  # the mode changed: everyone, once

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE users SET role = 'admin' WHERE id = 7")
            pending = conn.exec_driver_sql("SELECT count(*) FROM otel_segments_changes").scalar()
        assert pending, "the triggers recorded nothing"
        second = _run("compute", "--changed", "--format", "jsonl", "--database-url", url, OTEL_SEGMENTS_CHANGE_CAPTURE="triggers")
        assert second.returncode == 0 and "(incremental)" in second.stderr, second.stderr
        assert [json.loads(line)["distinct_id"] for line in second.stdout.splitlines()] == ["7"]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM otel_segments_changes").scalar() == 0  # read and cleared
    finally:
        engine.dispose()

    third = _run("compute", "--changed", "--database-url", url, OTEL_SEGMENTS_CHANGE_CAPTURE="triggers")
    assert third.returncode == 0 and "0 changed (incremental)" in third.stderr, third.stderr

    bad = _run("compute", "--changed", "--database-url", url, OTEL_SEGMENTS_CHANGE_CAPTURE="trigger")
    assert bad.returncode == 2 and "OTEL_SEGMENTS_CHANGE_CAPTURE='trigger' is not one of windows, triggers" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
