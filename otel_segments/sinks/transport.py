"""The HTTP session of every post we make to a peer (PostHog, the OTLP collector): bounded, never redirected.

``requests`` alone gets three things wrong for us, each seen against a real peer:

- it follows redirects: 301/302/303 turn our POST into a body-less GET whose 200 looks like an
  acceptance, and 307/308 re-post the body (PostHog's ``api_key`` in it) to whatever host the
  ``Location`` names. OTLP/HTTP exporters of SDK 1.27 post with ``session.post``, which follows them;
  1.45's transport passes ``allow_redirects=False`` and then counts the 3xx as success (any status
  below 400). :class:`PeerSession` never follows one: a 3xx is an answer, recorded with its
  ``Location``, and our sinks count it as a failure;
- its ``timeout`` bounds the connect and each socket read, not the request: a peer that sends its
  headers and then one byte every 2 s holds a request for as long as it likes. Here ``timeout`` is
  the request's total deadline (connect + send + read to the last byte): a watchdog shuts the
  request's socket down when it passes, and the request fails with :class:`requests.Timeout`;
- nothing can end a request in flight: :meth:`PeerSession.abort` does (``shutdown()`` of a sink
  must not wait for a peer that never answers).

Every answer is also recorded for the calling thread while :func:`watch_answers` is active, so a
sink learns the real status behind an SDK's verdict. All of it goes through public hooks: a
``requests.Session`` subclass (the OTLP exporters take one as ``session=``), an ``HTTPAdapter``
and urllib3's connection classes.
"""

from __future__ import annotations

import netrc  # noqa: F401 - requests imports it at a session's first request: here, at start-up, not in the job's thread
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..runtime import native
from ..settings.values import host_of, is_loopback, safe_url
from .watchdog import Request

#: The deadline of a request made without a timeout (the SDKs always give one; this is a floor of safety).
DEFAULT_DEADLINE_S = 10.0

_local = threading.local()


@dataclass
class Answer:
    """What the peer answered to the requests made while watching: the last HTTP status, a redirect's target."""

    status: int | None = None
    url: str | None = None  # safe_url of the URL that answered
    location: str | None = None  # safe_url of a redirect's Location (no userinfo, no query)
    requests: int = 0
    grpc: str | None = None  # a gRPC status name the exporter logged (see otel_segments.sinks.signal_support)
    error: str | None = None  # the class name of the last request's failure (no answer: refused, reset, timed out)

    @property
    def failed(self) -> bool:
        """The last attempt failed (no answer, or anything but 2xx / gRPC OK): the exporter is only retrying now."""
        status_failed = self.status is not None and not 200 <= self.status < 300
        return self.error is not None or status_failed or self.grpc not in (None, "OK")


@contextmanager
def watch_answers() -> Iterator[Answer]:
    """Record in the yielded :class:`Answer` what every :class:`PeerSession` request of this thread got back."""
    previous = getattr(_local, "answer", None)
    answer = _local.answer = Answer()
    try:
        yield answer
    finally:
        _local.answer = previous


class PeerAbortedError(requests.ConnectionError):
    """The request was ended by :meth:`PeerSession.abort` (the sink is shutting down)."""


class FencedError(requests.ConnectionError):
    """The request was not sent: the caller's fence (see :func:`fenced`) said this process may no longer send."""


@contextmanager
def fenced(may_send: Callable[[], bool]) -> Iterator[None]:
    """Ask ``may_send()`` right before each request of this thread leaves; when False, it fails with :class:`FencedError`.

    The job's delivery fences its sends with its lease: a holder frozen between taking the lease and
    sending (SIGSTOP, a debugger, a stalled VM) must not send, on resuming, an update older than the
    one its successor delivered meanwhile. Asked as late as a public hook allows: just before the
    request line is written to a connected socket.
    """
    previous = getattr(_local, "fence", None)
    _local.fence = may_send
    try:
        yield
    finally:
        _local.fence = previous


class DeadlineExceededError(requests.Timeout):
    """The peer did not answer, to the last byte, within the request's total deadline."""


def _track(sock: Any) -> None:
    request = getattr(_local, "request", None)
    if request is not None and sock is not None:
        request.track(sock)


class _Tracked:
    """Hands each socket a connection opens or reuses to the request's watchdog, the moment it exists.

    At ``_new_conn``, before anything is sent on it: through a proxy, ``connect()`` goes on to send
    ``CONNECT`` and wait for the proxy's answer (and a TLS handshake) on that socket, and a proxy that
    drips that answer must meet the deadline too.
    """

    def _new_conn(self) -> Any:
        sock = super()._new_conn()  # type: ignore[misc]
        _track(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _track(self.sock)  # type: ignore[attr-defined]
        fence = getattr(_local, "fence", None)
        request = getattr(_local, "request", None)
        if fence is not None and request is not None and not fence():
            request.ended = "fenced"
            raise OSError("the fence refused the request")  # urllib3 wraps it; PeerSession.request names it
        super().request(*args, **kwargs)  # type: ignore[misc]


class _Connection(_Tracked, HTTPConnection):
    pass


class _TLSConnection(_Tracked, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS = {"http": _Pool, "https": _TLSPool}


class _Adapter(HTTPAdapter):
    """An adapter whose connections (direct or through an HTTP proxy) can be shut down by a request's watchdog.

    A request to this machine never goes through a proxy, whatever ``HTTP_PROXY``/``HTTPS_PROXY`` say and
    ``NO_PROXY`` leaves out: a loopback ``http://`` endpoint is plain text only because nothing leaves the
    machine, and through a proxy the bearer token, PostHog's ``api_key`` and every person property would.
    """

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("proxies") and is_loopback(host_of(request.url or "")):
            kwargs["proxies"] = {}
        return super().send(request, *args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if hasattr(manager, "pool_classes_by_scheme"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


class PeerSession(requests.Session):
    """A ``requests.Session`` that never follows a redirect, bounds each request in total, and can be aborted.

    ``timeout`` (a number, or a ``(connect, read)`` pair, summed) is the request's total
    deadline; without one, :data:`DEFAULT_DEADLINE_S`. One connection per host is pooled,
    and no retry happens below us (the callers decide).
    """

    def __init__(self) -> None:
        super().__init__()
        adapter = _Adapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        self._in_flight: set[Request] = set()
        self._guard = native.Lock()
        self._aborted = False

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["allow_redirects"] = False  # whatever the caller asked: see the module's docstring
        seconds = _seconds(kwargs.get("timeout"))
        kwargs["timeout"] = seconds  # connect and each read within the deadline too
        in_flight = Request(seconds)
        with self._guard:
            if self._aborted:
                raise PeerAbortedError("the session was aborted: the sink is shut down")
            self._in_flight.add(in_flight)
        previous = getattr(_local, "request", None)
        _local.request = in_flight
        in_flight.start()
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as error:
            _record(error=error)
            if in_flight.ended == "deadline":
                raise DeadlineExceededError(f"no complete answer within {seconds:g}s") from error
            if in_flight.ended == "aborted":
                raise PeerAbortedError("the request was aborted: the sink is shutting down") from error
            if in_flight.ended == "fenced":
                raise FencedError("not sent: this process no longer holds the refresh lease") from error
            raise
        finally:
            in_flight.finish()
            _local.request = previous
            with self._guard:
                self._in_flight.discard(in_flight)
        _record(response)
        return response

    def abort(self) -> None:
        """End every request in flight now and refuse new ones; callable from any thread."""
        with self._guard:
            self._aborted = True
            in_flight = list(self._in_flight)
        for request in in_flight:
            request.end("aborted")

    def close(self) -> None:
        self.abort()
        super().close()


def _seconds(timeout: Any) -> float:
    if isinstance(timeout, tuple):
        parts = [t for t in timeout if t is not None]
        return float(sum(parts)) if parts else DEFAULT_DEADLINE_S
    return DEFAULT_DEADLINE_S if timeout is None else max(float(timeout), 0.001)


def _record(response: requests.Response | None = None, *, error: Exception | None = None) -> None:
    """What this request got, in the thread's :class:`Answer` if one is watching: a response, or no answer (``error``)."""
    answer: Answer | None = getattr(_local, "answer", None)
    if answer is None:
        return
    answer.requests += 1
    answer.error = type(error).__name__ if error is not None else None
    if response is None:
        return
    answer.status = response.status_code
    answer.url = safe_url(response.url)
    location = response.headers.get("Location") if 300 <= response.status_code < 400 else None
    answer.location = safe_url(urljoin(response.url, location)) if location else None
