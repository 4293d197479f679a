"""End to end: the TimeTracker example under ``opentelemetry-instrument``, two users, spans at a real OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, VENV_BIN, _free_port, clean_env
from tests.receivers import ReceivedSpan, Receiver
from tests.serving import serving

APP = ROOT / "examples" / "timetracker" / "app.py"
ALICE = {"user.id": "1", "app.user.role": "admin", "app.user.is_admin": True, "app.user.auth_method": "oidc"}
BOB = {"user.id": "2", "app.user.role": "user", "app.user.is_admin": False, "app.user.auth_method": "local"}
USER_KEYS = set(ALICE)


@pytest.fixture
def example_app(http_receiver: Receiver, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_TOKEN="example-token",
        OTEL_SERVICE_NAME="timetracker-example",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="100",
        TIMETRACKER_DATABASE_URL=f"sqlite:///{tmp_path / 'tt.db'}",
    )
    argv = [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), str(APP), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with serving(
        argv, cwd=tmp_path, env=env, log=tmp_path / "app.log", health_url=base + "/health", what="example app"
    ) as served:
        yield base
    assert "Traceback" not in served.output, served.output[-3000:]


def _user_part(span: ReceivedSpan) -> dict[str, object]:
    return {k: v for k, v in span.attributes.items() if k in USER_KEYS}


def test_each_users_spans_carry_their_own_properties(example_app: str, http_receiver: Receiver) -> None:
    alice = httpx.Client(base_url=example_app, timeout=10)
    bob = httpx.Client(base_url=example_app, timeout=10)
    anonymous = httpx.Client(base_url=example_app, timeout=10)
    with alice, bob, anonymous:
        assert alice.post("/login", data={"username": "alice", "password": "alice"}).status_code == 200
        assert bob.post("/login", data={"username": "bob", "password": "bob"}).status_code == 200
        for _ in range(2):  # interleaved, on the dev server's threads
            assert alice.post("/timer/start", data={"project_id": "1"}).status_code in (201, 409)
            assert bob.get("/entries").status_code == 200
            assert alice.get("/entries").status_code == 200
            assert bob.post("/timer/start", data={"project_id": "1"}).status_code in (201, 409)
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/entries").status_code == 401

    def complete(r: Receiver) -> list[ReceivedSpan] | None:
        spans = r.spans()
        servers = [s for s in spans if s.attributes.get("http.route")]
        return spans if len(servers) >= 12 else None

    spans = http_receiver.wait_for(complete)
    assert {s.resource.get("service.name") for s in spans} == {"timetracker-example"}
    export = http_receiver.of("traces")[0]
    assert export.headers["authorization"] == "Bearer example-token"

    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)

    seen = {"1": 0, "2": 0}
    for trace_spans in by_trace.values():
        servers = [s for s in trace_spans if s.attributes.get("http.route")]
        if not servers:  # outside any request: the app's start-up queries when the sqlite3 instrumentation is installed
            assert all(_user_part(s) == {} for s in trace_spans), trace_spans
            continue
        [server] = servers
        route = server.attributes["http.route"]
        if (
            route == "/health"
            or server.attributes.get("http.response.status_code", server.attributes.get("http.status_code")) == 401
        ):
            assert _user_part(server) == {}, server
            continue
        assert server.attributes.get("user.id") in ("1", "2"), (route, server.attributes)
        expected = ALICE if server.attributes["user.id"] == "1" else BOB
        # the server span (started before login was known) and the app's spans carry one user, complete; database
        # spans (when a DB instrumentation is installed) carry it too, or nothing while the user is being looked up
        for span in trace_spans:
            own = span is server or span.name.startswith("timetracker.")
            assert _user_part(span) in ((expected,) if own else ({}, expected)), (route, span.name, span.attributes)
            assert "app.user.username" not in span.attributes and "app.user.email" not in span.attributes
            assert not any("example.com" in str(v) or "alice" == v or "bob" == v for v in span.attributes.values())
        seen[expected["user.id"]] += 1
    # each: 1 login + 2 timer starts + 2 list requests
    assert seen == {"1": 5, "2": 5}
    children = {s.name for s in spans if not s.attributes.get("http.route")}
    assert {"timetracker.login", "timetracker.start_timer", "timetracker.list_entries"} <= children
