"""Issue 12, item 4: an app under ``opentelemetry-instrument`` against PostgreSQL, its refresh job every 2 s. Each kind
of change the app's users make reaches PostHog (``$set``) and the OTLP segment records within two refresh intervals,
and that user's spans carry the new values after the next cycle. Entries and tasks are written in the app's local
zone (``OTEL_SEGMENTS_DATABASE_TIMEZONE=Asia/Kolkata``), users and projects in UTC, as TimeTracker does."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine, delete, func, insert, select, update
from sqlalchemy.engine import Engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.binding import bind
from otel_segments.segments.demo import create_demo_database, projects, tasks, time_entries, user_roles, users
from otel_segments.segments.schema import TIMETRACKER
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver
from tests.sinks.conftest import Capture

APP = Path(__file__).parent / "live_app.py"
TOKEN = "tok-e2e-changes-5a1"
API_KEY = "phc_e2e_changes_key"
ZONE = "Asia/Kolkata"
INTERVAL_S = 2.0
USERS = 12
# Properties that move with the clock alone between two computations seconds apart: not what a write changed.
CLOCK_KEYS = {"last_segment_update"}

pytestmark = pytest.mark.postgres


@pytest.fixture
def capture(httpserver: HTTPServer) -> Iterator[Capture]:
    endpoint = Capture(httpserver)
    httpserver.expect_request("/batch/", method="POST").respond_with_handler(endpoint.handle)
    yield endpoint


def _local() -> datetime:
    return datetime.now(timezone.utc).astimezone(ZoneInfo(ZONE)).replace(tzinfo=None)


def _utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class App:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.bound = bind(TIMETRACKER, engine, app_timezone=ZONE)

    def segments(self) -> dict[str, Any]:
        return {s.distinct_id: s for s in compute_segments(self.engine, self.bound, now=datetime.now(timezone.utc))}

    def one(self, query) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def write(self, *statements) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)

    def next_id(self, table) -> int:
        return (self.one(select(func.max(table.c.id))) or 0) + 1

    def user_with_entries(self, exclude: set[int]) -> int:
        return self.one(
            select(time_entries.c.user_id)
            .where(time_entries.c.user_id.not_in(exclude))
            .group_by(time_entries.c.user_id)
            .order_by(func.count().desc())
            .limit(1)
        )

    def open_task(self, exclude: set[int]) -> tuple[int, int]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(tasks.c.id, tasks.c.assigned_to)
                .where(
                    tasks.c.status.in_(("todo", "in_progress")),
                    tasks.c.assigned_to.is_not(None),
                    tasks.c.assigned_to.not_in(exclude),
                )
                .order_by(tasks.c.id)
                .limit(1)
            ).one()
        return row[0], row[1]


def _kinds(app: App) -> list[tuple[str, Callable[[], None]]]:
    used: set[int] = set()

    def pick(uid: int) -> int:
        used.add(uid)
        return uid

    def new_entry() -> None:
        stamp = _local()
        app.write(
            insert(time_entries).values(
                id=app.next_id(time_entries),
                user_id=pick(app.user_with_entries(used)),
                start_time=stamp,
                created_at=stamp,
                source="timer",
                updated_at=stamp,
            )
        )

    def edit_entry() -> None:
        uid = pick(app.user_with_entries(used))
        eid = app.one(select(func.max(time_entries.c.id)).where(time_entries.c.user_id == uid))
        app.write(
            update(time_entries)
            .where(time_entries.c.id == eid)
            .values(created_at=_local() - timedelta(days=60), duration_seconds=36_000, updated_at=_local())
        )

    def delete_entry() -> None:
        uid = pick(app.user_with_entries(used))
        app.write(
            delete(time_entries).where(
                time_entries.c.id == app.one(select(func.max(time_entries.c.id)).where(time_entries.c.user_id == uid))
            )
        )

    def assign_task() -> None:
        uid = pick(app.user_with_entries(used))
        app.write(insert(tasks).values(id=app.next_id(tasks), project_id=1, assigned_to=uid, status="todo", updated_at=_local()))

    def complete_task() -> None:
        tid, uid = app.open_task(used)
        pick(uid)
        app.write(update(tasks).where(tasks.c.id == tid).values(status="done", updated_at=_local()))

    def reassign_task() -> None:
        tid, uid = app.open_task(used)
        pick(uid)
        app.write(
            update(tasks).where(tasks.c.id == tid).values(assigned_to=pick(app.user_with_entries(used)), updated_at=_local())
        )

    def change_role() -> None:
        uid = pick(app.user_with_entries(used))
        role = app.one(select(users.c.role).where(users.c.id == uid))
        app.write(update(users).where(users.c.id == uid).values(role="user" if role == "admin" else "admin"))

    def grant_admin() -> None:
        uid = pick(
            app.one(
                select(users.c.id)
                .where(users.c.role == "user", users.c.id.not_in(used), ~users.c.id.in_(select(user_roles.c.user_id)))
                .limit(1)
            )
        )
        app.write(insert(user_roles).values(user_id=uid, role_id=2))

    def login() -> None:
        app.write(update(users).where(users.c.id == pick(app.user_with_entries(used))).values(last_login=_utc()))

    def archive_project() -> None:
        pid = app.one(
            select(time_entries.c.project_id)
            .join(projects, projects.c.id == time_entries.c.project_id)
            .where(projects.c.status == "active")
            .limit(1)
        )
        app.write(update(projects).where(projects.c.id == pid).values(status="archived", updated_at=_utc()))

    def import_user() -> None:
        app.write(
            insert(users).values(
                id=0, username="imported", role="user", auth_provider="ldap", created_at=_utc() - timedelta(days=900)
            )
        )

    return [
        ("user imported with an old created_at and a low id", import_user),
        ("entry inserted", new_entry),
        ("entry edited", edit_entry),
        ("entry deleted", delete_entry),
        ("task assigned", assign_task),
        ("task completed", complete_task),
        ("task reassigned", reassign_task),
        ("role changed", change_role),
        ("admin granted through roles", grant_admin),
        ("login", login),
        ("project archived", archive_project),
    ]


def _arrived(capture: Capture, receiver: Receiver, user: str, want: dict[str, Any]) -> tuple[bool, bool]:
    posthog = any(
        e["distinct_id"] == user and all(e["properties"].get("$set", {}).get(k) == v for k, v in want.items())
        for e in capture.events()
    )
    records = [r for r in receiver.logs() if r.event_name == "app.user.segment" and r.resource.get("user.id") == user]
    otlp = any(all(r.resource.get(f"app.user.{k}") == v for k, v in want.items()) for r in records)
    return posthog, otlp


def test_each_kind_of_change_reaches_posthog_otlp_and_spans(
    tmp_path: Path, postgres_database: str, http_receiver: Receiver, capture: Capture
) -> None:
    engine = create_engine(postgres_database)
    create_demo_database(engine, users_count=USERS, seed=41)
    app = App(engine)
    (tmp_path / "users.txt").write_text(" ".join(["0", *map(str, range(1, USERS + 1))]))
    shutil.copy(APP, tmp_path / "live_app.py")
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="timetracker",
        OTEL_SEGMENTS_DATABASE_URL=postgres_database,
        OTEL_SEGMENTS_DATABASE_TIMEZONE=ZONE,
        OTEL_SEGMENTS_REFRESH_INTERVAL=str(int(INTERVAL_S * 1000)),
        OTEL_SEGMENTS_SPAN_PROPERTIES="all",  # every property on spans (the default carries the categorical ones)
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
        delays: dict[str, float] = {}
        for kind, write in _kinds(app):
            before = app.segments()
            write()
            written = time.monotonic()
            after = app.segments()
            changed = {
                uid: {
                    k: v for k, v in s.set.items() if k not in CLOCK_KEYS and (uid not in before or before[uid].set.get(k) != v)
                }
                for uid, s in after.items()
            }
            changed = {uid: want for uid, want in changed.items() if want}
            assert changed, f"{kind}: the write changed no user's segment"
            # Counted in the job's collections (each one kicks a cycle and exports the gauge), not in seconds: a busy
            # machine stretches both alike. The cycle the first or second collection after the write starts finds it
            # and delivers before a third one; a generous wall-clock deadline only keeps a broken job from hanging.
            collections_before = len(http_receiver.of("metrics"))
            pending = dict(changed)
            wall_deadline = written + 60
            while pending:
                for uid, want in list(pending.items()):
                    if all(_arrived(capture, http_receiver, uid, want)):
                        del pending[uid]
                if not pending:
                    break
                collections = len(http_receiver.of("metrics")) - collections_before
                assert collections <= 3 and time.monotonic() < wall_deadline, (
                    f"{kind}: not delivered within two refresh intervals ({collections} collections since): {sorted(pending)}"
                )
                time.sleep(0.05)
            delays[kind] = time.monotonic() - written
            # spans of those users carry the new values after the next cycle
            collections_before = len(http_receiver.of("metrics"))  # the next cycle, then the span batch's export
            span_deadline = time.monotonic() + 60
            while True:
                spans = {s.attributes.get("user.id"): s for s in http_receiver.spans() if s.name == "stop-timer"}
                stale = [
                    uid
                    for uid, want in changed.items()
                    if uid not in spans or any(spans[uid].attributes.get(f"app.user.{k}") != v for k, v in want.items())
                ]
                if not stale:
                    break
                last = {uid: spans[uid].attributes if uid in spans else None for uid in stale}
                collections = len(http_receiver.of("metrics")) - collections_before
                assert collections <= 3 and time.monotonic() < span_deadline, (
                    f"{kind}: spans of {stale} do not carry {changed} {collections} collections later: {last}"
                )
                time.sleep(0.1)
        print("seconds from write to PostHog and OTLP:", {k: round(v, 2) for k, v in delays.items()})
        assert len(delays) == 11
    finally:
        (tmp_path / "stop").touch()
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        engine.dispose()
    assert "Traceback" not in err, err
    assert TOKEN not in out + err and API_KEY not in out + err
