"""A state database that refuses every write (a held lock, here): a failed cycle with one line, not N set-aside users.

Real PostgreSQL: an operator holds ``LOCK TABLE ... IN EXCLUSIVE MODE`` on the state table (reads go on,
writes wait); our sessions' ``lock_timeout`` (shortened here through the URL's ``options``) ends each write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.runtime.database import engine_for
from otel_segments.segments.demo import create_demo_database
from otel_segments.segments.refresh import QUARANTINE, StateWriteError, refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState
from tests.segments.data import NOW

pytestmark = pytest.mark.postgres

USERS = 60
T1 = NOW + timedelta(seconds=1)


@pytest.fixture
def state_engine(postgres_database: str) -> Iterator[Engine]:
    url = sqlalchemy.make_url(postgres_database).update_query_dict({"options": "-c lock_timeout=200"})
    engine = engine_for(url.render_as_string(hide_password=False))
    yield engine
    engine.dispose()


@pytest.fixture
def app_engine(tmp_path) -> Iterator[Engine]:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    create_demo_database(engine, users_count=USERS, seed=4, now=NOW)
    yield engine
    engine.dispose()


def _lock_state_table(postgres_database: str, table: str) -> tuple[Engine, sqlalchemy.Connection]:
    operator = sqlalchemy.create_engine(postgres_database)
    held = operator.connect()
    held.execute(sqlalchemy.text(f"LOCK TABLE {table} IN EXCLUSIVE MODE"))
    return operator, held


def test_a_locked_state_table_fails_the_refresh_and_keeps_the_cursors(
    app_engine: Engine, state_engine: Engine, postgres_database: str
) -> None:
    state = RefreshState(state_engine)
    state.migrate()
    operator, held = _lock_state_table(postgres_database, state.users.name)
    try:
        with pytest.raises(StateWriteError, match=f"the state table {state.users.name} could not be written"):
            refresh(app_engine, state, TIMETRACKER, now=T1)
    finally:
        held.rollback()
        held.close()
        operator.dispose()
    assert state.watermark() is None  # the cursors did not move past what was stored: nothing was
    assert not state.meta_values(QUARANTINE).get(QUARANTINE)  # and no user was blamed
    after = refresh(app_engine, state, TIMETRACKER, now=T1 + timedelta(seconds=1))
    assert after.problems == () and state.count() == USERS


def test_the_job_reports_one_line_and_no_user_set_aside(
    app_engine: Engine, state_engine: Engine, postgres_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    job = RefreshJob(app_engine, TIMETRACKER, state_engine=state_engine, sinks={})
    try:
        assert job.run_cycle(now=NOW).error is None  # the state exists and holds everyone
        with app_engine.begin() as conn:  # every user changes: every user's row is to be written
            conn.execute(sqlalchemy.text("UPDATE users SET role = 'admin'"))
        operator, held = _lock_state_table(postgres_database, RefreshState(state_engine).users.name)
        try:
            with caplog.at_level(logging.WARNING, logger="otel_segments"):
                result = job.run_cycle(now=T1 + timedelta(hours=25))
        finally:
            held.rollback()
            held.close()
            operator.dispose()
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, lines
        assert "segment refresh failed" in lines[0] and "lock timeout" in lines[0]
        assert result is not None and result.refreshed is None and "could not be written" in (result.error or "")
    finally:
        job.shutdown(timeout_s=2)
