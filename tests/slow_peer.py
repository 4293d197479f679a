"""A loopback HTTP peer that takes the connection and then answers too slowly: never, or one byte at a time.

``hang``: reads the request and never answers. ``drip``: reads the request, sends
``200 OK`` headers at once, then one byte of the body every ``interval_s``, for as
long as the client stays (a requests/urllib3 read timeout never fires: each read gets
a byte in time). Each accepted connection is counted, with the moment it came.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

HANG = "hang"
DRIP = "drip"


class SlowPeer:
    def __init__(self, mode: str, interval_s: float = 2.0, *, closing: bool = False) -> None:
        """``closing``: drip an HTTP/1.0 answer that closes the connection (the client's connection object then
        lets go of its socket while the body is read from it), instead of a keep-alive HTTP/1.1 one."""
        if mode not in (HANG, DRIP):
            raise ValueError(mode)
        self.mode = mode
        self.closing = closing
        self.interval_s = interval_s
        self.accepted: list[float] = []  # time.monotonic() of each connection
        self.first_bytes: list[bytes] = []  # the first chunk each connection sent (the request line and headers)
        self._closed = threading.Event()
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.port: int = self._socket.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted.append(time.monotonic())
                self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(1.0)
            try:
                first = client.recv(65536)
            except TimeoutError:
                first = b""
            with self._lock:
                self.first_bytes.append(first)
            client.settimeout(None)
            if self.mode == DRIP:
                version = b"HTTP/1.0 200 OK\r\nConnection: close" if self.closing else b"HTTP/1.1 200 OK"
                client.sendall(version + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not self._closed.wait(self.interval_s):
                if self.mode == DRIP:
                    client.sendall(b" ")
        except OSError:
            pass  # the client gave up
        finally:
            client.close()

    def close(self) -> None:
        self._closed.set()
        self._socket.close()
        with self._lock:
            for client in self._clients:
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._acceptor.join(timeout=5)  # gone once closed: a later test counting threads must not see it stop


def shutdown_mid_delivery(sink: Any, batch: Any, peer: SlowPeer, timeout_s: float) -> tuple[float, list[BaseException], bool]:
    """Start ``sink.deliver(batch)`` in a thread, wait until it reaches ``peer`` (which never answers), then
    ``sink.shutdown(timeout_s)``: how long the shutdown and the delivery's end took, what the delivery raised,
    and whether its thread is still alive."""
    from tests.delivery import wait_until

    outcome: list[BaseException] = []

    def deliver() -> None:
        try:
            sink.deliver(batch)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            outcome.append(error)

    worker = threading.Thread(target=deliver)
    worker.start()
    wait_until(lambda: peer.first_bytes, "the delivery reaching the peer", 10)
    started = time.monotonic()
    sink.shutdown(timeout_s=timeout_s)
    worker.join(10)
    return time.monotonic() - started, outcome, worker.is_alive()
