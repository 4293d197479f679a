"""The transport under odd networks: the watchdog's descriptors, proxy tunnels under the deadline, loopback never proxied."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from pytest_httpserver import HTTPServer

from otel_segments.sinks import watchdog
from otel_segments.sinks.transport import DeadlineExceededError, PeerAbortedError, PeerSession
from tests.proxy import DRIP, Proxy

#: A host name outside this machine; through a proxy it is never resolved here.
REMOTE = "posthog.example"


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    running = Proxy()
    yield running
    running.close()


@pytest.fixture
def dripping_proxy() -> Iterator[Proxy]:
    running = Proxy(DRIP, interval_s=0.5)
    yield running
    running.close()


def _post_in_thread(session: PeerSession, url: str, timeout: float) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def post() -> None:
        try:
            outcome.append(session.post(url, data=b"{}", timeout=timeout))
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome.append(error)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


class _Reused(socket.socket):
    """A socket whose number is taken by another socket the moment a thread other than its owner asks for it.

    This plays out, deterministically, the interleaving the watchdog used to lose: it read ``fileno()``, the
    owner closed the socket, another thread's new socket got the same number, and the watchdog ``dup()``ed it.
    """

    bystander: tuple[socket.socket, socket.socket] | None = None

    def fileno(self) -> int:
        number = super().fileno()
        if number >= 0 and threading.current_thread() is not threading.main_thread():
            self.close()  # the owner ends its request ...
            first, second = socket.socketpair()  # ... and another thread's socket takes the lowest free number
            _Reused.bystander = (first, second) if first.fileno() == number else (second, first)
            assert _Reused.bystander[0].fileno() == number
        return number


def test_the_watchdog_never_shuts_down_a_descriptor_it_does_not_own() -> None:
    request = watchdog.Request(0.05)
    owned, peer = socket.socketpair()
    tracked = _Reused(fileno=owned.detach())
    try:
        request.track(tracked)  # in the owning thread, as the connection hands it over
        request.start()
        until = time.monotonic() + 30  # the watchdog ends the request at its 0.05 s deadline
        while request.ended is None and time.monotonic() < until:
            time.sleep(0.01)
        assert request.ended == "deadline"
        if _Reused.bystander is not None:  # the watchdog asked the owner's socket for its number from its thread
            reused, other_end = _Reused.bystander
            other_end.sendall(b"x")
            reused.settimeout(5)
            assert reused.recv(1) == b"x", "the watchdog shut down another thread's socket"
        else:  # it shut down its own duplicate: the owner's socket, and only it, is shut
            tracked.settimeout(5)
            assert tracked.recv(1) == b""
    finally:
        request.finish()
        tracked.close()
        peer.close()
        for sock in _Reused.bystander or ():
            sock.close()


def test_a_request_closes_every_duplicate_it_took(httpserver: HTTPServer) -> None:
    """The duplicates live exactly as long as the request: none is left open to keep a socket alive."""
    httpserver.expect_request("/v1/traces").respond_with_data("ok")
    session = PeerSession()
    taken: list[watchdog.Request] = []
    original = watchdog.Request.finish

    def finish(self: watchdog.Request) -> None:
        taken.append(self)
        assert self.duplicates, "the request's socket was never handed to the watchdog"
        kept = list(self.duplicates)
        original(self)
        assert all(duplicate.fileno() == -1 for duplicate in kept)

    watchdog.Request.finish = finish  # type: ignore[method-assign]
    try:
        assert session.post(httpserver.url_for("/v1/traces"), data=b"{}", timeout=5).status_code == 200
    finally:
        watchdog.Request.finish = original  # type: ignore[method-assign]
        session.close()
    assert len(taken) == 1


def test_a_proxy_dripping_its_connect_answer_meets_the_deadline(dripping_proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", dripping_proxy.url)
    session = PeerSession()
    thread, outcome = _post_in_thread(session, f"https://{REMOTE}/batch/", timeout=2.0)
    # The deadline is 2 s; the drip never ends. 30 s bounds the wait on a loaded machine.
    thread.join(30)
    session.close()
    assert not thread.is_alive(), "the post through the dripping proxy ran past its deadline"
    assert len(outcome) == 1 and isinstance(outcome[0], DeadlineExceededError), outcome
    assert dripping_proxy.seen().startswith(f"CONNECT {REMOTE}:443".encode())


def test_abort_ends_a_post_stuck_in_a_proxy_tunnel(dripping_proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", dripping_proxy.url)
    session = PeerSession()
    thread, outcome = _post_in_thread(session, f"https://{REMOTE}/batch/", timeout=120.0)
    assert dripping_proxy.received.wait(30)
    session.abort()
    thread.join(30)
    assert not thread.is_alive(), "abort() did not end the post waiting on the proxy's CONNECT answer"
    assert len(outcome) == 1 and isinstance(outcome[0], PeerAbortedError), outcome


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_loopback_endpoint_never_goes_through_a_proxy(
    proxy: Proxy, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    """The bearer token of a loopback ``http://`` endpoint would otherwise reach the proxy in plain text."""
    monkeypatch.setenv(variable, proxy.url)
    httpserver.expect_request("/v1/traces").respond_with_data("ok")
    session = PeerSession()
    try:
        for host in ("127.0.0.1", "localhost"):
            url = httpserver.url_for("/v1/traces").replace("localhost", host)
            answer = session.post(url, data=b"{}", headers={"Authorization": "Bearer s3cret"}, timeout=5)
            assert answer.status_code == 200
    finally:
        session.close()
    assert proxy.heads == []
    assert len(httpserver.log) == 2
    assert all(request.headers["Authorization"] == "Bearer s3cret" for request, _ in httpserver.log)


def test_a_remote_endpoint_still_goes_through_the_proxy(proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only loopback is exempt: an https endpoint elsewhere is tunnelled through the proxy the app set."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    session = PeerSession()
    try:
        with pytest.raises(requests.RequestException):
            session.post(f"https://{REMOTE}/batch/", data=b"{}", timeout=5)  # the proxy cannot resolve it
    finally:
        session.close()
    assert proxy.seen().startswith(f"CONNECT {REMOTE}:443".encode())
