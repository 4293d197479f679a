"""End to end against a real trace store: the TimeTracker example under ``opentelemetry-instrument`` sends to Arize
Phoenix (auth on), over OTLP/HTTP and gRPC; the REST query of each cohort, and the UI filtered by one (headless
Chromium, ``scripts/phoenix_screenshot.py``), list exactly that cohort's users' spans.

Phoenix runs from ``.venv-phoenix`` (scripts/setup builds it from constraints/phoenix.txt), once per session.
``OTEL_SEGMENTS_SCREENSHOT_DIR=docs`` (what ``scripts/screenshot`` sets) puts the pictures in docs/ instead of a
temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from sqlalchemy import create_engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.cohorts import COHORTS, Cohort
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.span_properties import DEFAULT_SPAN_PROPERTIES
from tests.conftest import ROOT, VENV_BIN, _free_port, clean_env
from tests.serving import serving

PHOENIX = ROOT / ".venv-phoenix" / "bin" / "phoenix"
APP = ROOT / "examples" / "timetracker" / "app.py"
SCREENSHOT = ROOT / "scripts" / "phoenix_screenshot.py"
USERS = {
    "1": {"user.id": "1", "app.user.role": "admin", "app.user.is_admin": True, "app.user.auth_method": "oidc"},
    "2": {"user.id": "2", "app.user.role": "user", "app.user.is_admin": False, "app.user.auth_method": "local"},
}
CREDENTIALS = {"1": "alice", "2": "bob"}


@dataclass
class Phoenix:
    base: str
    grpc_port: int
    admin_secret: str

    def get(self, path: str, **params: Any) -> httpx.Response:
        query = urllib.parse.urlencode(params, doseq=True)
        return httpx.get(f"{self.base}{path}?{query}", headers={"authorization": f"Bearer {self.admin_secret}"}, timeout=10)

    def spans(self, project: str, **params: Any) -> list[dict[str, Any]]:
        answer = self.get(f"/v1/projects/{project}/spans", limit=1000, **params)
        if answer.status_code == 404:  # the project exists once its first span is stored
            return []
        answer.raise_for_status()
        return answer.json()["data"]


def _secret() -> str:
    return secrets.token_hex(20) + "a1"  # Phoenix wants >= 32 characters with a digit and a lowercase letter


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    if not PHOENIX.exists():
        pytest.fail(f"{PHOENIX} is missing: run scripts/setup")
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc_port = _free_port(), _free_port()
    admin = _secret()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
        "PHOENIX_TELEMETRY_ENABLED": "false",
        "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
        "PHOENIX_LOG_MIGRATIONS": "false",
        "PHOENIX_ENABLE_AUTH": "true",
        "PHOENIX_SECRET": _secret(),
        "PHOENIX_ADMIN_SECRET": admin,
    }
    base = f"http://127.0.0.1:{port}"
    argv = [str(PHOENIX), "serve"]
    log = work / "phoenix.log"
    with serving(
        argv, cwd=work, env=env, log=log, health_url=base + "/healthz", what="Phoenix", stop=signal.SIGTERM, start_timeout_s=90
    ):
        yield Phoenix(base, grpc_port, admin)


def _endpoint(phoenix: Phoenix, protocol: str) -> str:
    return phoenix.base if protocol == "http/protobuf" else f"http://127.0.0.1:{phoenix.grpc_port}"


def _exporter(phoenix: Phoenix, protocol: str, headers: dict[str, str]) -> Any:
    if protocol == "http/protobuf":
        return HttpSpanExporter(endpoint=f"{phoenix.base}/v1/traces", headers=headers, timeout=5)
    return GrpcSpanExporter(endpoint=f"127.0.0.1:{phoenix.grpc_port}", insecure=True, headers=headers, timeout=5)


def _wait(what: str, check: Callable[[], Any], timeout: float = 45, step: Callable[[], None] | None = None) -> Any:
    """Phoenix stores spans asynchronously: poll with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        if step is not None:
            step()
        time.sleep(0.5)


@pytest.fixture
def app_under(phoenix: Phoenix, tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(protocol: str, project: str) -> str:
        port = _free_port()
        database = f"sqlite:///{tmp_path / 'tt.db'}"
        env = clean_env(
            OTEL_SERVICE_NAME="timetracker",
            OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project},deployment.environment.name=e2e",
            OTEL_EXPORTER_OTLP_ENDPOINT=_endpoint(phoenix, protocol),
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_EXPORTER_OTLP_TOKEN=phoenix.admin_secret,
            # Phoenix stores traces only: the segment records (logs) and the gauge (metrics) go nowhere here
            OTEL_LOGS_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_SEGMENTS_DATABASE_URL=database,
            OTEL_SEGMENTS_REFRESH_INTERVAL="1000",
            TIMETRACKER_DATABASE_URL=database,
        )
        log = (tmp_path / "app.log").open("w+")
        proc = subprocess.Popen(
            [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), str(APP), "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((proc, log))
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"example app stopped:\n{log.read()[-3000:]}")
            try:
                return httpx.get(base + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _wait("the example app", up, timeout=30)
        return base

    yield start
    for proc, log in procs:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.seek(0)
        output = log.read()
        log.close()
        assert "Traceback" not in output, output[-3000:]


def _rest_value(value: str | bool) -> str:
    return str(value).lower() if isinstance(value, bool) else value


def _matches(span: dict[str, Any], cohort: Cohort) -> bool:
    value = span["attributes"].get("app.user." + cohort.property)
    return value == cohort.value and type(value) is type(cohort.value)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_phoenix_with_auth_stores_segmented_spans_and_each_cohort_finds_its_users(
    phoenix: Phoenix, app_under: Callable[[str, str], str], protocol: str, tmp_path: Path
) -> None:
    short = "http" if protocol == "http/protobuf" else "grpc"

    # Without the token, or with a wrong one, Phoenix refuses and stores nothing.
    refused = f"refused-{short}"
    provider = TracerProvider(resource=Resource({"openinference.project.name": refused}))
    span = provider.get_tracer("e2e").start_span("refused")
    span.end()
    for headers in ({}, {"authorization": "Bearer wrong-" + _secret()}):
        exporter = _exporter(phoenix, protocol, headers)
        assert exporter.export([span]) == SpanExportResult.FAILURE
        exporter.shutdown()

    # With it: the example app, its refresh job on, two users.
    project = f"timetracker-{short}"
    base = app_under(protocol, project)
    clients = {uid: httpx.Client(base_url=base, timeout=10) for uid in USERS}
    requests: Counter[str] = Counter()
    for uid, client in clients.items():
        name = CREDENTIALS[uid]
        assert client.post("/login", data={"username": name, "password": name}).status_code == 200
        assert client.get("/entries").status_code == 200
        requests[uid] += 2

    def browse() -> None:
        for uid, client in clients.items():
            assert client.get("/entries").status_code == 200
            requests[uid] += 1

    # After a refresh cycle, each user's spans carry the segment (a miss is loaded the next cycle).
    def segmented() -> bool:
        spans = phoenix.spans(project, attribute="app.user.account_age_category:new")
        return {s["attributes"].get("user.id") for s in spans} >= set(USERS)

    _wait("spans carrying each user's segment", segmented, step=browse)
    cut = time.time_ns()
    for _ in range(2):
        browse()
    for client in clients.values():
        client.close()

    def all_stored() -> list[dict[str, Any]] | None:
        spans = phoenix.spans(project)
        servers = [s for s in spans if s["attributes"].get("http.route") not in (None, "/health")]
        return spans if len(servers) >= sum(requests.values()) else None

    spans = _wait("every request's spans", all_stored)
    assert phoenix.get(f"/v1/projects/{refused}/spans").status_code == 404  # nothing stored, not even the project

    app_engine = create_engine(f"sqlite:///{tmp_path / 'tt.db'}")
    expected = {
        s.distinct_id: {**s.set_once, **s.set} for s in compute_segments(app_engine, TIMETRACKER, now=datetime.now(timezone.utc))
    }
    app_engine.dispose()
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_trace.setdefault(s["context"]["trace_id"], []).append(s)
    seen: Counter[str] = Counter()
    for trace_spans in by_trace.values():
        servers = [s for s in trace_spans if s["attributes"].get("http.route")]
        if not servers or servers[0]["attributes"]["http.route"] == "/health":
            # the app's start-up queries, the test's anonymous "is it up?" requests: nobody's
            assert all("user.id" not in s["attributes"] for s in trace_spans), trace_spans
            continue
        [server] = servers
        uid = server["attributes"]["user.id"]
        seen[uid] += 1
        for s in trace_spans:
            attributes = s["attributes"]
            own = s is server or s["name"].startswith("timetracker.")
            if own:  # super properties: the user's and the process's
                assert {k: attributes.get(k) for k in USERS[uid]} == USERS[uid], (s["name"], attributes)
                assert attributes["deployment.environment.name"] == "e2e" or "app.deployment.method" in attributes
            segment = {k.removeprefix("app.user."): v for k, v in attributes.items() if k.startswith("app.user.")}
            assert set(segment) - {"role", "is_admin", "auth_method"} <= set(DEFAULT_SPAN_PROPERTIES), attributes
            if own and _start_ns(server) > cut:
                want = {p: expected[uid][p] for p in DEFAULT_SPAN_PROPERTIES if p in expected[uid]}
                want.update(role=USERS[uid]["app.user.role"], is_admin=USERS[uid]["app.user.is_admin"])
                want["auth_method"] = USERS[uid]["app.user.auth_method"]
                assert segment == want, (s["name"], attributes)
    assert seen == requests
    assert {"timetracker.login", "timetracker.list_entries"} <= {s["name"] for s in spans}

    # Each cohort's REST query returns exactly the spans carrying it, which are its members' only.
    members = {c.name: {uid for uid, props in expected.items() if c.matches(props)} for c in COHORTS}
    for cohort in COHORTS:
        found = phoenix.spans(project, attribute=f"app.user.{cohort.property}:{_rest_value(cohort.value)}")
        assert {s["context"]["span_id"] for s in found} == {s["context"]["span_id"] for s in spans if _matches(s, cohort)}
        assert {s["attributes"]["user.id"] for s in found} == members[cohort.name], cohort.name

    if protocol != "http/protobuf":
        return
    # The UI, filtered as `otel-segments cohorts --format phoenix` prints, lists those spans and no others.
    cohort = next(c for c in COHORTS if members[c.name] == {"2"} and c.property == "engagement_level")
    condition = dict(line.split("\t") for line in _cohort_lines("phoenix"))[cohort.name]
    out = Path(os.environ.get("OTEL_SEGMENTS_SCREENSHOT_DIR") or tmp_path / "screenshots")
    want = Counter(s["name"] for s in spans if _matches(s, cohort))
    subprocess.run(
        [
            str(VENV_BIN / "python"),
            str(SCREENSHOT),
            f"--url={phoenix.base}",
            f"--token={phoenix.admin_secret}",
            f"--project={project}",
            f"--filter={condition}",
            f"--expect-rows={sum(want.values())}",
            f"--out={out}",
            f"--rows={tmp_path / 'rows.json'}",
        ],
        check=True,
        timeout=120,
    )
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    names = Counter(name for row in rows for name in row if name in want or name in _all_names(spans))
    assert names == want, rows
    assert (out / "phoenix-filtered-spans.png").stat().st_size > 10_000
    assert (out / "phoenix-span-attributes.png").stat().st_size > 10_000


def _all_names(spans: list[dict[str, Any]]) -> set[str]:
    return {s["name"] for s in spans}


def _start_ns(span: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(span["start_time"]).timestamp() * 1e9)


def _cohort_lines(fmt: str) -> list[str]:
    out = subprocess.run(
        [str(VENV_BIN / "otel-segments"), "cohorts", "--format", fmt], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()
