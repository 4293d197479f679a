"""The rules as SQL (``sql_rules.py``) against the Python reference (``rules.derive``), on SQLite and PostgreSQL.

Hypothesis draws the inputs with their edges first: counts on and around every threshold and zero, timer shares
on rounding ties, duration totals that are NULL, negative, fractional, infinite or NaN, and dates on and
around every day edge (a microsecond either side), leap days, the future, the first and last years, in UTC,
in a zone with clock changes and (PostgreSQL) in timezone-aware columns. Every property must be equal, value
and type, or both left out.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, MetaData, Table, insert, literal, null, select
from sqlalchemy.engine import Engine

from otel_segments.segments import rules, sql_rules
from otel_segments.segments.driver_values import read_datetime
from otel_segments.segments.queries import in_range

NOW = datetime(2024, 3, 1, 9, 30, 15, 123456, tzinfo=timezone.utc)  # the day after a leap day
BERLIN = ZoneInfo("Europe/Berlin")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_edges = [0, 1, 2, 3, 4, 9, 10, 11, 19, 20, 21, 29, 30, 31, 120, 121, 150, 151]
counts = st.one_of(st.sampled_from(_edges), st.integers(0, 10_000))
seconds = st.one_of(
    st.none(),
    st.sampled_from([0, 179, 180, 181, 359, 360, 540, 3600, 5399.999, 5400.0, -1, -1e9]),
    st.integers(-(10**6), 10**12),
    st.floats(-1e6, 1e15, allow_nan=False),
    st.sampled_from([math.inf, -math.inf, math.nan]),
)


@given(e7=counts, e30=counts, total=counts, timer=st.one_of(st.none(), counts), manual=counts, secs=seconds)
@SETTINGS
def test_activity_properties_equal_the_reference(
    engine: Engine, e7: int, e30: int, total: int, timer: int | None, manual: int, secs: float | None
) -> None:
    mapped_source = timer is not None
    dialect = engine.dialect.name
    if dialect == "sqlite" and secs is not None and math.isnan(secs):
        secs = None  # SQLite stores NaN as NULL: the reference reads NULL too
    if secs is not None and secs < 0:
        secs = 0  # the query sums only positive durations: a total is never negative
    value = null() if secs is None else literal(secs, Float if isinstance(secs, float) else BigInteger)
    query = select(
        *sql_rules.activity_properties(
            literal(e7, BigInteger),
            literal(e30, BigInteger),
            literal(total, BigInteger),
            literal(timer, BigInteger) if mapped_source else None,
            literal(manual, BigInteger) if mapped_source else None,
            value,
            dialect,
        )
    )
    with engine.connect() as conn:
        row = conn.execute(query).one()
    got = {n: bool(v) if n in sql_rules.FLAGS else v for n, v in zip(sql_rules.ACTIVITY, row, strict=True) if v is not None}
    activity = rules.UserActivity(
        user_id="u",
        entries_7d=e7,
        entries_30d=e30,
        entries_all_time=total,
        timer_entries=timer,
        manual_entries=manual if mapped_source else None,
        total_seconds=secs,
    )
    want = {k: v for k, v in rules.derive(activity, now=NOW).items() if k in sql_rules.ACTIVITY}
    assert got == want
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}


def _day_edges() -> st.SearchStrategy[datetime]:
    """Instants on and around ``NOW - n days`` for the days the rules look at, and anywhere in years 1-9999."""
    around = st.builds(
        lambda n, d: NOW - timedelta(days=n) + d,
        st.sampled_from([0, 1, 6, 7, 8, 29, 30, 31, 179, 180, 181, 365, 366, 1461]),
        st.sampled_from([timedelta(0), timedelta(microseconds=1), -timedelta(microseconds=1), timedelta(milliseconds=1)]),
    )
    leap = st.sampled_from(
        [
            datetime(2024, 2, 29, 9, 30, 15, 123456, tzinfo=timezone.utc),
            datetime(2024, 2, 29, 9, 30, 15, 123457, tzinfo=timezone.utc),
            datetime(2023, 3, 1, 9, 30, 15, 123456, tzinfo=timezone.utc),
            datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=timezone.utc),
            datetime(2024, 3, 31, 1, 0, tzinfo=timezone.utc),  # Berlin's clock change that month
        ]
    )
    anywhere = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc))
    return st.one_of(around, leap, anywhere, st.builds(lambda d: NOW + d, st.timedeltas(timedelta(0), timedelta(days=400))))


@pytest.mark.parametrize("kind", ["utc", "berlin", "aware"])
@given(instants=st.lists(_day_edges(), min_size=1, max_size=20))
@SETTINGS
def test_whole_days_equal_the_reference(engine: Engine, kind: str, instants: list[datetime]) -> None:
    """``account_age_days`` / ``days_since_last_login`` and what they decide; NULL only where the reference
    is left to compute them (a zone SQLite cannot convert)."""
    dialect = engine.dialect.name
    if kind == "aware" and dialect != "postgresql":
        pytest.skip("SQLite has no timezone-aware column")
    zone = {"utc": timezone.utc, "berlin": BERLIN, "aware": None}[kind]
    table = Table("stamps", MetaData(), Column("id", Integer, primary_key=True), Column("at", DateTime(timezone=kind == "aware")))
    stored = []
    for at in instants:
        if zone is not None:
            try:
                at = at.astimezone(zone).replace(tzinfo=None)
            except (OverflowError, ValueError):
                continue
        stored.append(at)
    days = sql_rules.whole_days(table.c.at, zone, NOW, dialect, in_range)
    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
        if stored:
            conn.execute(insert(table), [{"id": i, "at": at} for i, at in enumerate(stored)])
        rows = conn.execute(select(table.c.at, *sql_rules.age_properties(days)).order_by(table.c.id)).all()
    left_to_reference = dialect == "sqlite" and kind == "berlin"
    for at, *got in rows:
        since = read_datetime(at, zone)
        assert since is not None
        if left_to_reference:
            assert got == [None, None, None, None]
            continue
        want = rules.age_properties(rules.age_days(since, NOW))
        assert dict(zip(sql_rules.AGE, [got[0], got[1], bool(got[2]), bool(got[3])], strict=True)) == want, at
