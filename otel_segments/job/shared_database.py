"""The job's manners on databases it shares with the app and with the rest of the fleet.

Every process of every server runs a job against the same databases: they race to
create the state tables when they start together, and a connection each would
hold for good adds up to more than a server allows. So a lost race is waited out,
and a process of ours holds no connection to a database server between cycles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

#: The job's own logger: its lines keep the name users already filter on.
_logger = logging.getLogger("otel_segments.job")
_T = TypeVar("_T")


def create_tables(make: Callable[[], _T]) -> _T:
    """Processes starting together race to create the state tables, one table at a time, so a process can
    lose once per table: each loss means another made progress, and a later look finds the tables there.
    Any other error (the database is away) is raised at once."""
    for pause in (0.05, 0.1, 0.15, 0.2):
        try:
            return make()
        except DBAPIError as error:
            # SQLite: "table ... already exists"; PostgreSQL: DuplicateTable, or a unique violation in its catalog
            if not (isinstance(error, IntegrityError) or "already exists" in str(error.orig)):
                raise
            time.sleep(pause)
    return make()


def release_connections(engines: Iterable[Engine]) -> None:
    """Close our pooled connections to a database server: between cycles a process of ours holds none.

    A fleet of processes each keeping a pooled connection would hold one per process for good
    (200 processes past PostgreSQL's default ``max_connections`` of 100) and the app's own would be
    refused. A cycle reconnects once per engine. SQLite's are files, cheap to keep, and an in-memory
    database lives only as long as its connection: those stay.
    """
    for engine in {id(e): e for e in engines}.values():
        if engine.dialect.name != "sqlite":
            try:
                engine.dispose()
            except Exception:
                _logger.debug("otel_segments: closing pooled connections failed", exc_info=True)
