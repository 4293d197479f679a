"""Fixtures for the reliability suite: an in-process span pipeline, a PostHog capture endpoint, databases.

The real OTLP receivers (``http_receiver``, ``grpc_receiver``) and the PostgreSQL
server (``postgres_url``, ``postgres_database``) come from tests/conftest.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from otel_segments.spans import context
from otel_segments.spans.privacy import set_privacy_policy
from otel_segments.spans.properties import ProcessProperties
from tests.pipeline import Pipeline
from tests.pipeline import make_pipeline as shared_make_pipeline
from tests.sinks.conftest import Capture

PROCESS = ProcessProperties(environment="reliability", deployment_method="pytest", timezone="UTC")
TOKEN = "otlp-token-0f9e8d7c6b5a"
API_KEY = "phc_apikey-1a2b3c4d5e6f"


def make_pipeline(*, trust_baggage: bool = False, cache_size: int = 1000) -> Pipeline:
    return shared_make_pipeline(PROCESS, trust_baggage=trust_baggage, cache_size=cache_size)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    p = make_pipeline()
    yield p
    p.provider.shutdown()


@pytest.fixture(autouse=True)
def _fresh_policy_and_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with the default privacy policy and sees its log-once warnings anew."""
    monkeypatch.setattr(context, "_warned_keys", set())
    set_privacy_policy()
    yield
    set_privacy_policy()
    assert context.current_user() is None, "a user leaked out of the test into its thread"


@pytest.fixture
def no_posthog_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PostHog SDK reads POSTHOG_* variables of its own: none may leak in from the shell."""
    for name in list(os.environ):
        if name.startswith("POSTHOG_"):
            monkeypatch.delenv(name)


@pytest.fixture
def capture(httpserver: HTTPServer, no_posthog_env: None) -> Iterator[Capture]:
    """A local PostHog ``/batch/`` endpoint that decodes the real request bodies."""
    endpoint = Capture(httpserver)
    httpserver.expect_request("/batch/", method="POST").respond_with_handler(endpoint.handle)
    yield endpoint


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'app.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_database")
    eng = create_engine(url)
    try:
        yield eng
    finally:
        eng.dispose()


def formatted(records: list[logging.LogRecord]) -> str:
    """Every record as a handler would write it, tracebacks included: what a leak check must search."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in records)
