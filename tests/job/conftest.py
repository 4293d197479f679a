"""Fixtures for the refresh job: a demo database (SQLite or PostgreSQL) and the local PostHog capture endpoint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from otel_segments.segments.demo import create_demo_database
from tests.segments.data import NOW
from tests.sinks.conftest import Capture, _no_posthog_env, capture, hang_peer  # noqa: F401 - fixtures shared with the sink tests

USERS = 40


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def app_engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'app.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_database")
    engine = create_engine(url)
    create_demo_database(engine, users_count=USERS, seed=3, now=NOW)
    try:
        yield engine
    finally:
        engine.dispose()
