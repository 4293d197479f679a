"""The watchdog of one request in flight: it shuts the request's sockets down when the deadline passes or on abort.

Split from :mod:`otel_segments.sinks.transport` (which hands it the sockets) because its one rule
needs room to be stated: it only ever touches descriptors it owns. The deadline is timed by the process's one
watchdog thread (:mod:`otel_segments.runtime.watchdog`), never a thread per request: Python 3.12 starts none at
exit, where the job's last delivery still needs its requests bounded.
"""

from __future__ import annotations

import _socket
import os
from dataclasses import dataclass, field
from typing import Any

from ..runtime import native
from ..runtime.watchdog import Timer, call_later


@dataclass(eq=False)
class Request:
    """One request in flight: its sockets, and a watchdog that shuts them down when time is up.

    Sockets, not connections: once a response says it closes the connection, http.client
    drops the connection's socket while the response goes on reading the body from it.

    The watchdog holds a duplicate descriptor of each socket, taken by the thread that owns the
    socket when it is handed over and closed when the request ends. Reading ``fileno()`` from the
    watchdog's thread instead would race the owner's ``close()``: the number, freed, may already
    name another thread's socket (an incoming request, a database connection), which the watchdog
    would then shut down. A duplicate we hold can name nothing else until we close it.
    """

    seconds: float
    duplicates: list[_socket.socket] = field(default_factory=list)
    ended: str | None = None  # "deadline" or "aborted" once the watchdog or abort() ended it
    _known: list[Any] = field(default_factory=list)
    _done: bool = False
    _lock: Any = field(default_factory=native.Lock)
    _timer: Timer | None = None

    def start(self) -> None:
        self._timer = call_later(self.seconds, lambda: self.end("deadline"))

    def finish(self) -> None:
        """End the watch (in the request's thread): no shutdown can happen after this, and the duplicates close."""
        with self._lock:
            self._done = True
            duplicates, self.duplicates = self.duplicates, []
        for duplicate in duplicates:
            duplicate.close()
        if self._timer is not None:
            self._timer.cancel()

    def end(self, why: str) -> None:
        with self._lock:
            if self._done or self.ended:
                return
            self.ended = why
            for duplicate in self.duplicates:
                _shut(duplicate)

    def track(self, sock: Any) -> None:
        """Take a duplicate of ``sock``'s descriptor; called by the thread that owns ``sock``, while it is open."""
        with self._lock:
            if self._done or any(known is sock for known in self._known):
                return
            duplicate = _duplicate(sock)
            if duplicate is None:
                return
            self._known.append(sock)
            self.duplicates.append(duplicate)
            if self.ended:
                _shut(duplicate)


def _duplicate(sock: Any) -> _socket.socket | None:
    """A socket object on a new descriptor of ``sock``'s socket (a shutdown acts on the socket, whichever names it).

    Through a duplicate, no wrapper's state is touched from the watchdog's thread: not an ``SSLSocket``'s TLS
    state, nor a gevent or eventlet socket's hub, which belongs to the thread that reads. The duplicate is
    the C module's own socket (``_socket``), which no green library patches: it has no hub to touch either.
    """
    try:
        fd = sock.fileno()
        if fd < 0:
            return None
        return _socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


def _shut(duplicate: _socket.socket) -> None:
    """Shut a socket down from another thread: a blocked read returns at once (closing it there would not be safe)."""
    try:
        duplicate.shutdown(_socket.SHUT_RDWR)
    except OSError:
        pass
