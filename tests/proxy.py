"""A small HTTP proxy on loopback: ``CONNECT`` tunnels and plain-HTTP forwarding, or a ``CONNECT`` answer dripped.

``relay``: answers ``CONNECT host:port`` with ``200`` and relays bytes both ways; forwards a plain-HTTP
request (absolute URI) to its host and relays the answer back. ``drip``: answers ``CONNECT`` with a status
line and then one byte of a header line every ``interval_s``, for as long as the client stays (each
read gets a byte in time, so no read timeout ends it). Every request head it
received is kept in :attr:`heads`, as the proxy saw it (a plain-HTTP request's headers included).
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

RELAY = "relay"
DRIP = "drip"


class Proxy:
    def __init__(self, mode: str = RELAY, interval_s: float = 1.0) -> None:
        if mode not in (RELAY, DRIP):
            raise ValueError(mode)
        self.mode = mode
        self.interval_s = interval_s
        self.heads: list[bytes] = []  # every request head received (request line and headers)
        self.received = threading.Event()  # set once a head arrived
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.port: int = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> bytes:
        """Everything every request head carried, joined: what a proxy's operator could read."""
        with self._lock:
            return b"\n".join(self.heads)

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head, rest = _read_head(client)
            with self._lock:
                self.heads.append(head)
            self.received.set()
            method, target = head.split(b" ", 2)[:2]
            if method == b"CONNECT":
                self._connect(client, target.decode())
            else:
                self._forward(client, target.decode(), head, rest)
        except (OSError, ValueError):
            pass
        finally:
            client.close()

    def _connect(self, client: socket.socket, target: str) -> None:
        if self.mode == DRIP:
            client.sendall(b"HTTP/1.1 200 Connection established\r\nX-Drip: ")
            while not self._closed.wait(self.interval_s):
                client.sendall(b"a")
            return
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._relay(client, upstream, b"")

    def _forward(self, client: socket.socket, target: str, head: bytes, rest: bytes) -> None:
        parts = urlsplit(target)
        upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
        line, _, headers = head.partition(b"\r\n")
        method, _, version = line.split(b" ", 2)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._relay(client, upstream, b" ".join([method, path.encode(), version]) + b"\r\n" + headers + b"\r\n\r\n" + rest)

    def _relay(self, client: socket.socket, upstream: socket.socket, first: bytes) -> None:
        with self._lock:
            self._sockets.append(upstream)
        upstream.settimeout(None)
        if first:
            upstream.sendall(first)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _read_head(client: socket.socket) -> tuple[bytes, bytes]:
    client.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            raise ValueError("the client closed before a request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    client.settimeout(None)
    return head, rest
