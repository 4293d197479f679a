"""A local PostHog capture endpoint (pytest-httpserver) that decodes what the SDK really sends."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response


@dataclass
class Capture:
    """Every request the endpoint got, decoded, with the answer it gave."""

    server: HTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Answers to give, in order; when empty, 200.
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return self.server.url_for("").rstrip("/")

    def handle(self, request: Request) -> Response:
        raw = request.get_data()
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        body = json.loads(raw)
        with self.lock:
            status, headers = self.answers.pop(0) if self.answers else (200, {})
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
