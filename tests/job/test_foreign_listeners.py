"""Issue 20, item 3: listeners an app registers on SQLAlchemy's classes never see our queries nor fail our cycle.

The field report: a development-mode slow-query logger registered with
``event.listens_for(Engine, "after_cursor_execute")`` touches ``flask.g``, raises
"Working outside of application context" on any query of ours, fails the whole
refresh and logs our SQL as the app's. Here the app registers, on the ``Engine``,
``Connection`` and ``Pool`` classes, listeners that raise and one that logs every
statement; a cycle on engines of ours (SQLite and PostgreSQL) succeeds, delivers
every user, and logs nothing to the app. The same listeners do fire on an engine
the app makes from the same URL, so the test would fail if they reached ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool

from otel_segments.job.refresh_job import RefreshJob
from otel_segments.runtime.database import engine_for
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.sinks.posthog import PostHogSink
from tests.job.conftest import USERS
from tests.sinks.conftest import Capture


class OutsideAppContextError(RuntimeError):
    """What Flask raises when a listener touches ``flask.g`` in a thread with no app context."""


def _raise(*args: object, **kwargs: object) -> None:
    raise OutsideAppContextError("Working outside of application context.")


def _raise_later(*args: object, **kwargs: object) -> None:
    raise OutsideAppContextError("Working outside of application context (registered late).")


@pytest.fixture
def apps_listeners() -> Iterator[list[str]]:
    """The app's class-level listeners, removed after the test: three that raise, one that logs every statement."""
    logged: list[str] = []

    def log_query(conn, cursor, statement, parameters, context, executemany) -> None:
        logged.append(statement)

    registered = [
        (Engine, "after_cursor_execute", _raise),
        (Connection, "before_execute", _raise),
        (Pool, "checkout", _raise),
        (Engine, "before_cursor_execute", log_query),
    ]
    for target, name, fn in registered:
        event.listen(target, name, fn)
    try:
        yield logged
    finally:
        for target, name, fn in registered:
            event.remove(target, name, fn)


def test_the_apps_class_level_listeners_neither_see_nor_fail_our_cycle(
    app_engine: Engine, capture: Capture, apps_listeners: list[str]
) -> None:
    url = app_engine.url.render_as_string(hide_password=False)
    ours = engine_for(url)  # made after the app's listeners, as configure() does at start-up
    state = engine_for(url)
    job = RefreshJob(
        ours,
        TIMETRACKER,
        state_engine=state,
        sinks={"posthog": lambda: PostHogSink("phc_listeners", capture.host)},
        interval=timedelta(seconds=1),
    )
    later = engine_for(url)  # and listeners registered after our engine was made do not reach it either
    event.listen(Engine, "after_cursor_execute", _raise_later)
    try:
        result = job.run_cycle()
        with later.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        event.remove(Engine, "after_cursor_execute", _raise_later)
        job.shutdown(timeout_s=5)
        for engine in (ours, state, later):
            engine.dispose()

    assert result is not None and result.error is None and not result.failed, result
    assert result.delivered == {"posthog": USERS}
    assert {e["distinct_id"] for e in capture.events()} == {str(u) for u in range(1, USERS + 1)}
    assert apps_listeners == [], apps_listeners[:3]

    # the same listeners are live on the app's own engines: they log, and they raise
    apps = create_engine(url)
    try:
        with pytest.raises(OutsideAppContextError), apps.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        apps.dispose()


def test_a_listener_the_app_puts_on_our_engine_itself_still_runs(app_engine: Engine) -> None:
    """Only class-level listeners are kept out: one on the instance (as a URL's plugins add) still runs."""
    ours = engine_for(app_engine.url.render_as_string(hide_password=False))
    seen: list[str] = []
    event.listen(ours, "before_cursor_execute", lambda conn, cursor, statement, *rest: seen.append(statement))
    try:
        with ours.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        ours.dispose()
    assert seen == ["SELECT 1"]


INSTRUMENTORS = {
    "sqlite": "opentelemetry.instrumentation.sqlite3:SQLite3Instrumentor",
    "postgresql+psycopg": "opentelemetry.instrumentation.psycopg:PsycopgInstrumentor",
}  # psycopg2's is wrapped the same way (dbapi.wrap_connect), but no tracer it takes shows at the spy used here


@pytest.mark.parametrize("scheme", ["sqlite", pytest.param("postgresql+psycopg", marks=pytest.mark.postgres)])
def test_our_connections_are_the_drivers_own_not_an_instrumentations(
    scheme: str, tmp_path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, item 5: the DB-API instrumentations take a tracer, under the TracerProvider's lock, for every connection
    they wrap; under eventlet that lock is green and our job connects from an OS thread, so it must never be taken
    there. With the driver's instrumentation on, an engine of ours connects through the driver's own ``connect``
    (it asks for no tracer), while the app's engine on the same URL goes through the instrumentation's wrapper."""
    import importlib

    from opentelemetry.instrumentation import dbapi

    if scheme == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("postgres_database").replace("postgresql://", f"{scheme}://", 1)
    module, name = INSTRUMENTORS[scheme].split(":")
    instrumentor = getattr(importlib.import_module(module), name)()
    tracers: list[tuple[object, ...]] = []
    real_get_tracer = dbapi.get_tracer
    monkeypatch.setattr(dbapi, "get_tracer", lambda *a, **k: tracers.append(a) or real_get_tracer(*a, **k))
    instrumentor.instrument()
    ours, apps = engine_for(url), create_engine(url)
    try:
        with ours.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            own = conn.connection.dbapi_connection
        assert tracers == []
        assert type(own).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2"), type(own)
        with apps.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert tracers, "the instrumentation took no tracer for the app's connection: this test proves nothing"
    finally:
        ours.dispose()
        apps.dispose()
        instrumentor.uninstrument()
