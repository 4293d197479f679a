"""An in-process SDK pipeline (our processor + in-memory exporter) for the framework tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from otel_segments import current_user
from otel_segments.integrations import _reported
from otel_segments.spans.properties import ProcessProperties
from tests.pipeline import Pipeline
from tests.pipeline import make_pipeline as shared_make_pipeline

PROCESS = ProcessProperties(environment="test", deployment_method="pytest", timezone="UTC")
USER_KEYS = ("user.id", "user.roles", "app.user.role", "app.user.is_admin", "app.user.auth_method")


def user_part(span: ReadableSpan) -> dict[str, object]:
    return {k: v for k, v in (span.attributes or {}).items() if k in USER_KEYS}


def make_pipeline(trust_baggage: bool = False) -> Pipeline:
    return shared_make_pipeline(PROCESS, trust_baggage=trust_baggage)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    p = make_pipeline()
    yield p
    p.provider.shutdown()


@pytest.fixture(autouse=True)
def _fresh_reports_and_no_leaked_user(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Each test sees the log-once reports anew, and no test may leave a user set in this thread."""
    _reported.clear()
    caplog.set_level(logging.WARNING, logger="otel_segments")
    yield
    assert current_user() is None, "a user leaked out of the request into the test thread"
