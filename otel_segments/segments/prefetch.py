"""The next batch's rows fetched on a second connection while this one's users are computed.

A full pass is SQL (in the database server, or in SQLite's C code, the GIL released) followed by Python
(rules, digests, state writes) per batch. One batch ahead, the two overlap on two cores: the pass costs
about the slower of the two instead of their sum. The thread is an OS thread and the hand-over uses OS
locks (``native.py``), so it holds in a gevent or eventlet worker too; it runs in a copy of the caller's
context, so instrumentation stays suppressed for its reads as for the caller's.

Only reads run here. A batch whose rows cannot be read as they are is not bisected on this thread: it
hands over :class:`Resume` and stops, and the caller goes on from there on its own connection, where
bad rows are set aside one by one (``quarantine.py``). Not used where a second connection cannot read
concurrently: an in-memory SQLite database (a connection each: another database), or a SQLite file the
state is written to, unless in WAL mode (its writes would wait for each read).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import Connection, Engine

from ..runtime import native
from .driver_values import ROW_ERRORS, Problem, StageError


class BatchReader(Protocol):
    """What this thread reads through (``batch.Aggregator``; a protocol, as ``aggregate`` imports both)."""

    def fetch_batch(
        self, conn: Connection, *, after: Any, limit: int, problems: list[Problem]
    ) -> tuple[list[tuple[Any, ...]], bool]: ...

    def fetch(
        self, conn: Connection, users: Sequence[Any], ids: Sequence[Any] | None, *, whole: bool = False
    ) -> tuple[dict[Any, Any], dict[Any, Any] | None]: ...


@dataclass(frozen=True)
class Fetched:
    """One batch's rows: users (as ``fetch_users`` reads them), activity and tasks by user, what reading them found."""

    users: list[tuple[Any, ...]]
    activity: dict[Any, Any]
    tasks: dict[Any, Any] | None
    problems: list[Problem]


@dataclass(frozen=True)
class Resume:
    """The batch after ``after`` could not be read here: read it (and the rest) on the caller's connection."""

    after: Any


def concurrent_reads(app: Engine, writes_to: Engine | None = None) -> bool:
    """Whether a second connection to ``app`` reads the same data without waiting on ``writes_to``'s writes."""
    if app.dialect.name != "sqlite":
        return True
    database = app.url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or app.url.query.get("mode") == "memory":
        return False
    if writes_to is not None and writes_to.dialect.name == "sqlite" and _same_file(writes_to.url.database or "", database):
        with app.connect() as conn:  # in WAL mode readers and the writer do not wait for each other
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower() == "wal"
    return True


def _same_file(one: str, other: str) -> bool:
    return one == other or os.path.realpath(one) == os.path.realpath(other)  # ./app.db and app.db


def batches(engine: Engine, reader: BatchReader, batch_size: int) -> Iterator[Fetched | Resume]:
    """Every batch of users in id order, each fetched while the caller computes the previous one."""
    slot = _Slot()

    def fetch() -> None:
        last: Any = None
        try:
            with engine.connect() as conn:
                while True:
                    found: list[Problem] = []
                    try:
                        users, whole = reader.fetch_batch(conn, after=last, limit=batch_size, problems=found)
                        if not users:
                            break
                        activity, tasks = reader.fetch(conn, users, None, whole=whole)
                    except (*ROW_ERRORS, StageError):
                        slot.put(Resume(last))
                        return
                    if not slot.put(Fetched(users, activity, tasks, found)):
                        return  # the caller went away
                    last = users[-1][0]
                    if len(users) < batch_size:
                        break
            slot.put(None)
        except BaseException as error:  # noqa: BLE001 - handed over: the caller raises it
            slot.put(error)

    context = contextvars.copy_context()  # the caller's: its reads stay untraced (untraced.py), as the caller's are
    thread = native.Thread(lambda: context.run(fetch))
    thread.start()
    try:
        while True:
            item = slot.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Resume):
                return
    finally:
        slot.close()
        thread.join(timeout=30)


class _Slot:
    """One item at a time from the fetching thread to the caller, with OS primitives."""

    def __init__(self) -> None:
        self._item: Any = None
        self._full = native.Event()
        self._empty = native.Event()
        self._empty.set()
        self._closed = False

    def put(self, item: Any) -> bool:
        """Hand ``item`` over once the caller took the previous one; False when the caller went away."""
        while not self._empty.wait(0.1):
            if self._closed:
                return False
        if self._closed:
            return False
        self._empty.clear()
        self._item = item
        self._full.set()
        return True

    def get(self) -> Any:
        self._full.wait()
        item, self._item = self._item, None
        self._full.clear()
        self._empty.set()
        return item

    def close(self) -> None:
        self._closed = True
        self._empty.set()  # a fetch waiting to hand over sees it at once
