"""A local PostHog capture endpoint (pytest-httpserver) that decodes what the SDK really sends."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.slow_peer import DRIP, HANG, SlowPeer


@dataclass
class Capture:
    """Every request the endpoint got, decoded, with the answer it gave."""

    server: HTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Answers to give, in order; when empty, 200.
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0
    #: A body (as sent, before gzip) larger than this is answered 413, as a proxy with a body limit does.
    max_body: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return self.server.url_for("").rstrip("/")

    def handle(self, request: Request) -> Response:
        raw = request.get_data()
        wire_size = len(raw)
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        body = json.loads(raw)
        with self.lock:
            status, headers = self.answers.pop(0) if self.answers else (200, {})
            if self.max_body is not None and wire_size > self.max_body:
                status, headers = 413, {}
            self.requests.append(
                {
                    "path": request.path,
                    "headers": dict(request.headers),
                    "body": body,
                    "raw": raw.decode(),
                    "status": status,
                    "size": len(raw),
                }
            )
        if self.delay_s:
            threading.Event().wait(self.delay_s)
        return Response(json.dumps({"status": 1} if status == 200 else {"detail": "nope"}), status=status, headers=headers)

    def events(self, accepted_only: bool = True) -> list[dict[str, Any]]:
        """Events in requests the endpoint answered 200 to (what PostHog would have ingested)."""
        with self.lock:
            return [e for r in self.requests if r["status"] == 200 or not accepted_only for e in r["body"]["batch"]]

    def by_user(self) -> dict[str, dict[str, Any]]:
        return {e["distinct_id"]: e for e in self.events()}


class Bystander:
    """Another host (where a redirect would send a request, or a proxy a snippet names): it records whatever
    reaches it, any method, as (method, path, headers with lower-case names), and answers 200 as PostHog does."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        bystander = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                bystander.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                payload = b'{"status": 1}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._any()

            def do_POST(self) -> None:
                self._any()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bystander() -> Iterator[Bystander]:
    other = Bystander()
    yield other
    other.close()


@pytest.fixture
def drip_peer() -> Iterator[SlowPeer]:
    """Answers 200 headers at once, then one byte every 2 s."""
    peer = SlowPeer(DRIP, interval_s=2.0)
    yield peer
    peer.close()


@pytest.fixture
def hang_peer() -> Iterator[SlowPeer]:
    """Takes the connection and the request, never answers."""
    peer = SlowPeer(HANG)
    yield peer
    peer.close()


@pytest.fixture(autouse=True)
def _no_posthog_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads POSTHOG_CAPTURE_MODE / POSTHOG_CAPTURE_COMPRESSION / POSTHOG_RELEASE_ID: none may leak in."""
    import os

    for name in list(os.environ):
        if name.startswith("POSTHOG_"):
            monkeypatch.delenv(name)


@pytest.fixture
def capture(httpserver: HTTPServer) -> Iterator[Capture]:
    endpoint = Capture(httpserver)
    httpserver.expect_request("/batch/", method="POST").respond_with_handler(endpoint.handle)
    yield endpoint
