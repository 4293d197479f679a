"""A one-shot timer that fires on an OS thread whatever gevent or eventlet patched (see :mod:`otel_segments.runtime.native`)."""

from __future__ import annotations

from collections.abc import Callable

from ..runtime import native


class Alarm:
    """Calls ``action`` once after ``seconds`` on an OS thread of its own, unless cancelled first."""

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        self._cancelled = native.Event()
        self._seconds = seconds
        self._action = action
        native.Thread(self._run).start()

    def _run(self) -> None:
        if not self._cancelled.wait(self._seconds):
            self._action()

    def cancel(self) -> None:
        self._cancelled.set()
