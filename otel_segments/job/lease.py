"""One refresher per fleet: a lease row in the state database.

Many processes (gunicorn workers, pods) share one database; per interval only
the lease holder refreshes. The lease is a row updated with a compare-and-set
``UPDATE``, which every SQL database runs atomically, so SQLite and PostgreSQL
behave the same. A holder that dies stops renewing and another takes over once
the lease expires.

Expiry is judged by one clock, the database's (``now()`` on PostgreSQL): judged by
each host's own, a host whose clock runs ahead by more than the TTL would take a
live lease, and two holders would deliver at once. SQLite lives on one machine, so
its clock is the host's.

A holder also knows how long its lease is surely its own: from just before the
statement that took it, ``ttl`` on this host's monotonic clock (which runs on while
the process is stopped). :meth:`Lease.held` answers from that alone, with no query,
so a delivery can ask it right before each request leaves: a holder frozen (SIGSTOP,
a debugger, a stalled VM) past its lease sends nothing when it resumes, instead of
an update older than the one its successor delivered meanwhile.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Column, DateTime, Interval, MetaData, String, Table, and_, func, insert, literal, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

metadata = MetaData()
lease_table = Table(
    "otel_segments_lease",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("expires_at", DateTime(), nullable=False),  # naive UTC
)


def _naive_utc(moment: datetime) -> datetime:
    # Stored naive-UTC: SQLite keeps no zone, and comparisons must agree on both databases.
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


class Lease:
    def __init__(self, engine: Engine, name: str = "refresh", holder: str | None = None) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._held_until = 0.0  # time.monotonic() until which the lease is surely ours
        metadata.create_all(engine, tables=[lease_table])

    def acquire(self, ttl: timedelta, now: datetime | None = None) -> bool:
        """Take or renew the lease for ``ttl``; False when another live holder has it.

        ``now`` (tests) stands for the database's clock.
        """
        now, expires = self._clock(ttl, now)
        asked = time.monotonic()  # before the statement: the database's expiry is no earlier than asked + ttl
        self._held_until = 0.0
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(lease_table)
                .where(
                    and_(
                        lease_table.c.name == self.name,
                        or_(lease_table.c.holder == self.holder, lease_table.c.expires_at < now),
                    )
                )
                .values(holder=self.holder, expires_at=expires)
            ).rowcount
        if not taken:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(lease_table).values(name=self.name, holder=self.holder, expires_at=expires))
            except IntegrityError:
                return False
        # To spare: a second, or a quarter of a short lease, for the request's trip to the peer.
        self._held_until = asked + ttl.total_seconds() - min(1.0, ttl.total_seconds() / 4)
        return True

    def held(self) -> bool:
        """Whether the lease taken by the last :meth:`acquire` is still surely ours, with time to spare; no query."""
        return time.monotonic() < self._held_until

    def _clock(self, ttl: timedelta, now: datetime | None) -> tuple[Any, Any]:
        """The moment to judge expiry by and the new expiry: values, or SQL that reads the database's clock."""
        if now is None and self.engine.dialect.name == "postgresql":
            database_now = func.timezone("UTC", func.now())
            return database_now, database_now + literal(ttl, Interval())
        moment = _naive_utc(now or datetime.now(timezone.utc))
        return moment, moment + ttl

    def release(self) -> None:
        self._held_until = 0.0
        with self.engine.begin() as conn:
            conn.execute(
                update(lease_table)
                .where(and_(lease_table.c.name == self.name, lease_table.c.holder == self.holder))
                .values(expires_at=datetime(1970, 1, 1))
            )

    def reset_holder(self) -> None:
        """A forked child is a new holder: it must not inherit its parent's lease."""
        self._held_until = 0.0
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
