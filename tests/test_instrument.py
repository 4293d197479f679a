"""Auto-instrumentation end to end: a Flask app under ``opentelemetry-instrument``, and ``configure()`` in code.

Each app runs in a subprocess from a temporary folder, as a user would run it
(``opentelemetry-instrument`` puts the current folder first on ``PYTHONPATH``, so
package metadata found there decides which entry point comes first). Spans,
resources and headers are asserted as the real OTLP receivers decoded them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from importlib.metadata import distribution
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otel_segments
from otel_segments.spans.properties import detect_process_properties
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import Receiver

APP = Path(__file__).parent / "apps" / "flask_app.py"
TOKEN = "tok-5e3a9c71d2"
SERVICE = "billing-web"
APP_ENV = {"OTEL_SERVICE_NAME": SERVICE, "APP_ENV": "staging", "TZ": "Europe/Paris", "OTEL_EXPORTER_OTLP_TIMEOUT": "5"}
USERS = {
    "u-1": {
        "user.id": "u-1",
        "user.roles": ("admin",),
        "app.user.role": "admin",
        "app.user.is_admin": True,
        "app.user.auth_method": "oidc",
        "app.user.plan": "team",
        "app.user.team_id": 7,
    },
    "u-2": {
        "user.id": "u-2",
        "user.roles": ("member",),
        "app.user.role": "member",
        "app.user.is_admin": False,
        "app.user.auth_method": "password",
        "app.user.plan": "free",
        "app.user.team_id": 9,
    },
}
# span name -> the user the app served it for (server spans and the handlers' manual spans)
SPANS = {"GET /report": "u-1", "build-report": "u-1", "GET /settings/<user_id>": "u-2", "load-settings": "u-2"}
TOKEN_HINT = "OTEL_PYTHON_DISTRO=otel_segments"


def _env(receiver: Receiver, protocol: str, **extra: str) -> dict[str, str]:
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        **APP_ENV,
    )
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def _process_attributes(env: dict[str, str]) -> dict[str, str]:
    return dict(detect_process_properties(env).attributes)


def _fake_dist(folder: Path, name: str, version: str, entry_points: str | None) -> None:
    """Package metadata in the app's folder: found before site-packages, it decides entry-point order."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def _app_folder(tmp_path: Path, layout: str = "site-packages") -> Path:
    """The app alone in a folder; ``layout`` chooses which distro's metadata is found first."""
    folder = tmp_path / "app"
    folder.mkdir()
    shutil.copy(APP, folder / "flask_app.py")
    if layout == "ours-first":
        ours = distribution("otel-segments")
        _fake_dist(folder, "otel-segments", ours.version, ours.read_text("entry_points.txt"))
    elif layout == "theirs-absent":
        _fake_dist(folder, "opentelemetry-distro", distribution("opentelemetry-distro").version, None)
    return folder


def _first_distro(folder: Path, env: dict[str, str]) -> str | None:
    code = "from importlib.metadata import entry_points as e; print(next(iter(e(group='opentelemetry_distro'))).name)"
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code],
        cwd=folder,
        env={**env, "PYTHONPATH": str(folder)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def _run_app(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "python"), "flask_app.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "served 2", result.stderr
    assert TOKEN not in result.stdout + result.stderr
    return result


def _assert_user_spans(receiver: Receiver, process: dict[str, str]) -> None:
    spans = receiver.wait_for(lambda r: (s := r.spans()) and {x.name for x in s} >= set(SPANS) and s)
    for span in spans:
        if span.name not in SPANS:
            continue
        expected = {**process, **USERS[SPANS[span.name]]}
        assert {k: span.attributes.get(k) for k in expected} == expected, span.name


def _stderr_lines(result: subprocess.CompletedProcess[str], needle: str) -> list[str]:
    return [line for line in result.stderr.splitlines() if needle in line]


@pytest.mark.parametrize("layout", ["site-packages", "ours-first", "theirs-absent"])
@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_instrumented_flask_app_exports_user_spans_with_bearer_token(request, tmp_path, kind, layout):
    receiver: Receiver = request.getfixturevalue(f"{kind}_receiver")
    env = _env(receiver, "http/protobuf" if kind == "http" else "grpc")
    folder = _app_folder(tmp_path, layout)
    first = _first_distro(folder, env)
    assert first == {"site-packages": "distro", "ours-first": "otel_segments", "theirs-absent": "otel_segments"}[layout]

    result = _run_app(folder, env)

    process = _process_attributes(env)
    assert process["deployment.environment.name"] == "staging" and process["app.timezone"] == "Europe/Paris"
    _assert_user_spans(receiver, process)
    for signal in ("traces", "metrics", "logs"):
        exports = receiver.wait_for(lambda r, s=signal: r.of(s))
        assert {e.headers.get("authorization") for e in exports} == {f"Bearer {TOKEN}"}, signal
    resource = receiver.spans()[0].resource
    assert resource["service.name"] == SERVICE
    assert {k: resource.get(k) for k in process} == process
    assert not _stderr_lines(result, TOKEN_HINT)


def test_user_authorization_header_wins(http_receiver, tmp_path):
    env = _env(http_receiver, "http/protobuf", OTEL_EXPORTER_OTLP_HEADERS="Authorization=Basic%20dXNlcjpwdw==,x-team=blue")
    _run_app(_app_folder(tmp_path), env)
    for signal in ("traces", "metrics", "logs"):
        exports = http_receiver.wait_for(lambda r, s=signal: r.of(s))
        assert {e.headers.get("authorization") for e in exports} == {"Basic dXNlcjpwdw=="}, signal
        assert {e.headers.get("x-team") for e in exports} == {"blue"}, signal


def test_opentelemetry_distro_chosen_explicitly_still_gets_our_attributes(grpc_receiver, tmp_path):
    env = _env(grpc_receiver, "grpc", OTEL_PYTHON_DISTRO="distro", OTEL_PYTHON_CONFIGURATOR="configurator")
    result = _run_app(_app_folder(tmp_path), env)

    _assert_user_spans(grpc_receiver, _process_attributes(env))
    assert all("authorization" not in e.headers for e in grpc_receiver.exports)  # their configurator knows no token
    warnings = _stderr_lines(result, TOKEN_HINT)
    assert len(warnings) == 1, result.stderr
    assert "OTEL_PYTHON_CONFIGURATOR=otel_segments" in warnings[0] and "OTEL_EXPORTER_OTLP_TOKEN" in warnings[0]


def test_sitecustomize_path_with_their_distro_first_attaches_and_warns(grpc_receiver, tmp_path):
    """Without the ``opentelemetry-instrument`` command (an operator injects only ``PYTHONPATH``), our
    environment-variables hook never runs, so the first distro found wins: here opentelemetry-distro's.
    Our post-instrument hook still adds the attributes, and one warning says how to get the token sent."""
    import opentelemetry.instrumentation.auto_instrumentation as auto

    env = _env(grpc_receiver, "grpc", PYTHONPATH=str(Path(auto.__file__).parent))
    folder = _app_folder(tmp_path)
    assert _first_distro(folder, env) == "distro"
    result = subprocess.run(
        [str(VENV_BIN / "python"), "flask_app.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "served 2", result.stderr
    assert TOKEN not in result.stdout + result.stderr
    _assert_user_spans(grpc_receiver, _process_attributes(env))
    assert all("authorization" not in e.headers for e in grpc_receiver.exports)
    (warning,) = _stderr_lines(result, TOKEN_HINT)
    assert "OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>" in warning
    assert "configure()" not in warning  # calling it before the app's own set-up would break that set-up


GATE_SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys, threading

    def sockets():
        links = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the descriptor listdir itself used
                pass
        return sum(link.startswith("socket:") for link in links)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    threads_before, sockets_before = [t.name for t in threading.enumerate()], sockets()
    import otel_segments
    from opentelemetry import trace

    handle = otel_segments.configure()
    same = otel_segments.configure() is handle
    tracer = trace.get_tracer("gate")
    with otel_segments.user_context("u-1", role="admin", is_admin=True):
        for _ in range(20):
            with tracer.start_as_current_span("work"):
                pass
    handle.shutdown()
    print(json.dumps({
        "threads_before": threads_before, "threads_after": [t.name for t in threading.enumerate()],
        "sockets_before": sockets_before, "sockets_after": sockets(), "enabled": handle.enabled, "same": same,
    }))
    """
)


@pytest.mark.parametrize(
    ("extra", "variable", "level"),
    [
        # the endpoint alone: meant on, so the line is a WARNING (seen before logging is configured)
        ({}, "OTEL_EXPORTER_OTLP_TOKEN", "WARNING"),
        ({"OTEL_EXPORTER_OTLP_TOKEN": TOKEN, "OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED", "INFO"),
    ],
    ids=["no-token", "sdk-disabled"],
)
def test_gate_closed_starts_nothing_and_sends_nothing(http_receiver, tmp_path, extra, variable, level):
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=http_receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", **extra)
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", GATE_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["enabled"] is False and report["same"] is True
    assert report["threads_after"] == report["threads_before"] == ["MainThread"]
    assert report["sockets_after"] == report["sockets_before"]
    assert http_receiver.exports == []  # the process has exited: anything it sent has arrived
    ours = [line for line in result.stderr.splitlines() if line.partition(" ")[2].startswith("otel_segments")]
    assert len(ours) == 1 and ours[0].startswith(f"{level} otel_segments") and variable in ours[0], result.stderr
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "kind"),
    [
        ("OTEL_SEGMENTS_REFRESH_INTERVAL", "abc", "http"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:{port}", "http"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-team=blue,garbage", "http"),
        ("OTEL_TRACES_EXPORTER", "otlpp", "http"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "bogus", "http"),  # falls back to the default, OTLP/HTTP
    ],
)
def test_malformed_value_warns_once_and_app_still_serves(request, tmp_path, variable, value, kind):
    receiver: Receiver = request.getfixturevalue(f"{kind}_receiver")
    env = _env(receiver, "http/protobuf" if kind == "http" else "grpc")
    env[variable] = value.format(port=receiver.port)

    result = _run_app(_app_folder(tmp_path), env)

    warnings = _stderr_lines(result, variable)
    assert len(warnings) == 1, result.stderr
    # each repair falls back to something that works: the spans still arrive, with the token
    _assert_user_spans(receiver, _process_attributes(env))
    assert {e.headers.get("authorization") for e in receiver.of("traces")} == {f"Bearer {TOKEN}"}


CODE_SCRIPT = textwrap.dedent(
    """
    import json
    import otel_segments
    from opentelemetry import metrics, trace
    from opentelemetry._logs import LogRecord, get_logger

    from opentelemetry.sdk.trace import SpanProcessor

    class Seen(SpanProcessor):
        names = []

        def on_end(self, span):
            self.names.append(span.name)

    handle = otel_segments.configure(span_processors=[Seen()], resource_attributes={"team": "billing"})
    again = otel_segments.configure()
    provider = trace.get_tracer_provider()
    ours = [p for p in provider._active_span_processor._span_processors
            if isinstance(p, otel_segments.SuperPropertiesSpanProcessor)]
    with otel_segments.user_context("u-9", role="viewer", auth_method="sso"):
        with trace.get_tracer("in-code").start_as_current_span("in-code"):
            metrics.get_meter("in-code").create_counter("in_code.calls").add(1)
            get_logger("in-code").emit(LogRecord(body="in-code"))
    handle.shutdown()
    handle.shutdown()
    print(json.dumps({"same": again is handle, "enabled": handle.enabled, "ours": len(ours), "seen": Seen.names}))
    """
)


def test_configure_in_code_exports_with_bearer_and_is_idempotent(http_receiver, tmp_path):
    env = _env(http_receiver, "http/protobuf")
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", CODE_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"same": True, "enabled": True, "ours": 1, "seen": ["in-code"]}
    assert TOKEN not in result.stdout + result.stderr
    spans = http_receiver.wait_for(lambda r: r.spans())
    assert [s.name for s in spans] == ["in-code"]  # once: a second configure() added no second pipeline
    expected = {**_process_attributes(env), "user.id": "u-9", "user.roles": ("viewer",), "app.user.auth_method": "sso"}
    assert {k: spans[0].attributes.get(k) for k in expected} == expected
    assert spans[0].resource["service.name"] == SERVICE
    assert spans[0].resource["team"] == "billing"  # the app's own options merge with ours
    for signal in ("traces", "metrics", "logs"):
        exports = http_receiver.wait_for(lambda r, s=signal: r.of(s))
        assert {e.headers.get("authorization") for e in exports} == {f"Bearer {TOKEN}"}, signal


def test_processor_added_to_apps_own_tracer_provider(http_receiver):
    provider = TracerProvider()
    provider.add_span_processor(otel_segments.SuperPropertiesSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{http_receiver.endpoint}/v1/traces")))
    tracer = provider.get_tracer("own")
    try:
        with otel_segments.user_context("u-3", role="owner", is_admin=False, plan="pro"):
            with tracer.start_as_current_span("handled"):
                pass
        with tracer.start_as_current_span("anonymous"):
            pass
    finally:
        provider.shutdown()
    spans = {s.name: s.attributes for s in http_receiver.wait_for(lambda r: len(r.spans()) >= 2 and r.spans())}
    process = dict(detect_process_properties().attributes)
    assert spans["handled"] == {
        **process,
        "user.id": "u-3",
        "user.roles": ("owner",),
        "app.user.role": "owner",
        "app.user.is_admin": False,
        "app.user.plan": "pro",
    }
    assert spans["anonymous"] == process
