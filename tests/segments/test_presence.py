"""The users' presence digest: a quiet cycle reads its total alone, and the total is the buckets' own.

That a user deleted and another added in one cycle (another id or the same) is still found at the next cycle is
tests/segments/test_red_team.py's.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, update
from sqlalchemy.engine import Engine

from otel_segments.segments.aggregate import compute_segments
from otel_segments.segments.batch import Aggregator
from otel_segments.segments.binding import bind
from otel_segments.segments.presence import presence, presence_total, whole
from otel_segments.segments.refresh import refresh
from otel_segments.segments.schema import TIMETRACKER
from otel_segments.segments.state import RefreshState

from .data import NOW, OTHER, fill_other, fill_timetracker, naive, timetracker_metadata


def test_the_total_is_the_buckets_total_for_integer_and_text_ids(engine: Engine) -> None:
    fill_timetracker(engine, users=30)
    fill_other(engine, users=20)
    for mapping in (TIMETRACKER, OTHER):  # integer ids (SQLite: arithmetic), text ids (a hash function)
        reader = Aggregator(bind(mapping, engine), NOW, engine.dialect.name)
        with engine.connect() as conn:
            buckets = presence(conn, reader)
            assert buckets is not None and len(buckets) > 1
            assert presence_total(conn, reader) == whole(buckets)


def test_a_quiet_cycle_reads_the_total_alone_and_the_buckets_when_it_moved(engine: Engine) -> None:
    fill_timetracker(engine, users=30)
    bound = bind(TIMETRACKER, engine)
    state = RefreshState(engine)
    refresh(engine, state, bound, now=NOW)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, sql, *args: statements.append(sql))

    def grouped() -> int:  # the bucketed presence: grouped by the id's bucket
        return sum(1 for sql in statements if "FROM users" in sql and "GROUP BY" in sql and "& %" in sql.replace("?", "%"))

    refresh(engine, state, bound, now=NOW + timedelta(seconds=1))
    assert grouped() == 0
    users = timetracker_metadata.tables["users"]
    with engine.begin() as conn:  # an account replaced under the same id: the count stays, the total moves
        conn.execute(update(users).where(users.c.id == 4).values(created_at=naive(NOW - timedelta(days=1))))
    statements.clear()
    later = NOW + timedelta(seconds=2)
    refresh(engine, state, bound, now=later)
    assert grouped() == 1
    expected = next(compute_segments(engine, bound, now=later, user_ids=["4"]))
    assert next(state.segments(["4"])).set_once == expected.set_once  # the new account's first login, at once
