"""Request latency while the refresh job runs a full refresh, against the same server before it, for every server model.

    .venv/bin/python benchmarks/bench_servers.py [--users 10000] [--interval 8] [--only sync,gevent,...] [--hog]

For each model of ``tests/servers/test_server_models.py`` (gunicorn ``sync``,
``gthread``, ``eventlet``, ``gevent``, uvicorn, ``flask run``), one at a time: the
app under ``opentelemetry-instrument`` with a fresh copy of a SQLite database of
``--users`` users (a full refresh and its delivery to PostHog and OTLP take
seconds), the peers local. A client sends requests one after another from the
start. The first refresh cycle starts one ``--interval`` after start-up; every
answer says whether a cycle was running when it was made. baseline = requests
answered before the first cycle, during = requests answered while it ran. ratio =
during / baseline, at p50 and p99. Issue 11's goal: within 2x.

Delivery throughput: every user's update reaching PostHog, per second, counted from the first answer made during
the refresh to the last user's arrival. With ``--hog`` each model runs twice, the second time beside a process
burning one of the machine's cores: issue 20 asks that throughput degrade in proportion (about half on 2 cores),
not collapse.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_httpserver import HTTPServer
from sqlalchemy import create_engine

from otel_segments.segments.demo import create_demo_database
from tests.conftest import VENV_BIN, clean_env
from tests.receivers import HttpReceiver
from tests.servers.test_server_models import APP, MODELS, _free_port
from tests.sinks.conftest import Capture

TOKEN = "bench-token"
PAUSE_S = 0.005


@dataclass
class Answer:
    seconds: float
    refreshing: bool


def _request(port: int, user: int) -> Answer | None:
    import json

    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/work/{user}")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        return Answer(time.perf_counter() - started, bool(json.loads(body)["refreshing"]))
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _client(port: int, interval_s: float) -> tuple[list[float], list[float], int, float | None] | None:
    """Request after request, in a process of its own: the peers' handlers (decoding each PostHog batch and OTLP
    export) run in this benchmark's process, and a client sharing their GIL would time them, not the app.
    baseline, during, failed, and the wall-clock time of the first answer made during the refresh."""
    deadline = time.monotonic() + 30
    while _request(port, 1) is None:  # starting
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    baseline: list[float] = []
    during: list[float] = []
    failed = 0
    first_during: float | None = None
    n = 0
    deadline = time.monotonic() + interval_s + 120
    while time.monotonic() < deadline:
        n += 1
        answer = _request(port, n % 25 + 1)
        if answer is None:
            failed += 1
        elif answer.refreshing:
            first_during = first_during or time.time()
            during.append(answer.seconds)
        elif during:
            break  # the full refresh is over
        else:
            baseline.append(answer.seconds)
        time.sleep(PAUSE_S)
    return baseline, during, failed, first_during


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _delivered(capture: Capture, api_key: str) -> int:
    with capture.lock:
        batches = [r["body"]["batch"] for r in capture.requests if r["body"].get("api_key") == api_key and r["status"] == 200]
    return len({e["distinct_id"] for batch in batches for e in batch})


def run_model(
    model: str, database: Path, folder: Path, capture: Capture, receiver: HttpReceiver, interval_s: float, users: int
) -> tuple[str, float | None]:
    """The model's latency line, and its delivery throughput (users per second; None when not everyone arrived)."""
    shutil.copy(database, folder / "app.db")
    shutil.copy(APP, folder / "server_app.py")
    port = _free_port()
    api_key = f"phc_{folder.name.replace('-', '_')}"
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_TOKEN=TOKEN,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME=model,
        OTEL_SEGMENTS_DATABASE_URL=f"sqlite:///{folder / 'app.db'}",
        OTEL_SEGMENTS_REFRESH_INTERVAL=str(int(interval_s * 1000)),
        POSTHOG_API_KEY=api_key,
        POSTHOG_HOST=capture.host,
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    env.pop("PYTHONPATH", None)
    command = [str(VENV_BIN / "opentelemetry-instrument"), *(a.format(port=port) for a in MODELS[model])]
    with (folder / "server.log").open("ab") as log:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    throughput: float | None = None
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            timings = pool.apply(_client, (port, interval_s))
        if timings is None:
            return f"{model:<10} did not start", None
        baseline, during, failed, first_during = timings
        deadline = time.monotonic() + 600
        while first_during is not None and time.monotonic() < deadline:
            if _delivered(capture, api_key) >= users:
                throughput = users / (time.time() - first_during)
                break
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if not baseline or not during:
        return f"{model:<10} baseline {len(baseline)} / during {len(during)} requests: nothing to compare", throughput
    b50, b99, d50, d99 = (_pct(baseline, 0.5), _pct(baseline, 0.99), _pct(during, 0.5), _pct(during, 0.99))
    rate = f"{throughput:8.0f}" if throughput is not None else "  (none)"
    return (
        f"{folder.name:<15} {len(baseline):6d} {b50 * 1000:7.2f} {b99 * 1000:7.2f}   {len(during):6d} {d50 * 1000:7.2f} "
        f"{d99 * 1000:7.2f}   {d50 / b50:5.2f}x {d99 / b99:5.2f}x  {statistics.fmean(during) * 1000:7.2f}  {failed:6d}  {rate}"
    ), throughput


def _burn() -> subprocess.Popen[bytes]:
    """Another process keeping one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=8.0, help="seconds from start-up to the full refresh")
    parser.add_argument("--only", default="", help="comma-separated models")
    parser.add_argument("--hog", action="store_true", help="run each model again beside a process burning one core")
    args = parser.parse_args()
    models = [m for m in MODELS if not args.only or m in args.only.split(",")]
    for name in list(os.environ):
        if name.startswith("POSTHOG_"):
            os.environ.pop(name)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per PostHog batch
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as tmp:
        root = Path(tmp)
        database = root / "app.db"
        started = time.monotonic()
        engine = create_engine(f"sqlite:///{database}")
        counts = create_demo_database(engine, users_count=args.users, seed=23)
        engine.dispose()
        print(f"database: {counts['users']} users, {counts['time_entries']} entries ({time.monotonic() - started:.1f}s to build)")
        server = HTTPServer(threaded=True)
        server.start()
        capture = Capture(server)
        server.expect_request("/batch/", method="POST").respond_with_handler(capture.handle)
        receiver = HttpReceiver()
        print("request latency (ms) before the first refresh (baseline) and during the full refresh, one model at a time")
        header = "model           baseline:  n     p50     p99   during:  n     p50     p99   ratio p50 / p99   mean  failed"
        print(header + "  users/s")
        rates: dict[tuple[str, bool], float | None] = {}
        try:
            for model in models:
                for hog in (False, True) if args.hog else (False,):
                    folder = root / (f"{model}+hog" if hog else model)
                    folder.mkdir()
                    burner = _burn() if hog else None
                    try:
                        line, rates[model, hog] = run_model(
                            model, database, folder, capture, receiver, args.interval, counts["users"]
                        )
                    finally:
                        if burner is not None:
                            burner.kill()
                            burner.wait()
                    print(line, flush=True)
            if args.hog:
                print("delivery throughput beside a process burning one core, against the same model without it:")
                for model in models:
                    calm, hog = rates[model, False], rates[model, True]
                    ratio = f"{hog / calm:.2f}x" if calm and hog else "n/a"
                    print(f"  {model:<10} {calm or 0:8.0f} -> {hog or 0:8.0f} users/s ({ratio})")
        finally:
            receiver.close()
            server.clear()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
