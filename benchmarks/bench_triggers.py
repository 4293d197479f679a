"""What exact mode's triggers cost the app's writes: rows/s of a bulk insert and of a bulk update, with and without
the triggers, on SQLite and PostgreSQL, measured in one run so the ratios compare like with like.

    .venv/bin/python benchmarks/bench_triggers.py [--rows 100000] [--users 1000] [--databases sqlite,postgresql]

The tables are the demo's TimeTracker tables (``segments/demo.py``). Each database gets two copies of them, one
bare and one with ``otel-segments triggers`` applied; the bulk insert is ``--rows`` entries for ``--users``
users through SQLAlchemy's executemany in batches of 5,000 (what an import does), the bulk update one
``UPDATE time_entries SET duration_seconds = ...`` of every row (what a data fix does). The two copies are
measured alternately, best of three each. PostgreSQL is a throwaway server started here.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

from sqlalchemy import Engine, create_engine, delete, insert, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from otel_segments.segments.binding import bind  # noqa: E402
from otel_segments.segments.demo import metadata, time_entries, users  # noqa: E402
from otel_segments.segments.schema import TIMETRACKER  # noqa: E402
from otel_segments.segments.triggers import CHANGE_TABLE, create_ddl  # noqa: E402

BATCH = 5_000
ROUNDS = 3


def _prepare(engine: Engine, user_count: int, triggers: bool) -> None:
    metadata.create_all(engine)
    start = datetime(2025, 1, 1)
    with engine.begin() as conn:
        conn.execute(insert(users), [{"id": i, "username": f"u{i}", "created_at": start} for i in range(1, user_count + 1)])
    if triggers:
        bound = bind(TIMETRACKER, engine)
        with engine.begin() as conn:
            for statement in create_ddl(conn, bound):
                conn.execute(statement)


def _rows(count: int, user_count: int) -> list[dict]:
    stamp = datetime(2025, 6, 1)
    return [
        {
            "id": i + 1,
            "user_id": i % user_count + 1,
            "start_time": stamp + timedelta(seconds=i),
            "created_at": stamp + timedelta(seconds=i),
            "source": "import",
            "duration_seconds": 60,
            "updated_at": stamp,
        }
        for i in range(count)
    ]


def _insert(engine: Engine, rows: list[dict]) -> float:
    with engine.begin() as conn:
        conn.execute(delete(time_entries))
        conn.execute(text(f"DELETE FROM {CHANGE_TABLE}")) if _has_changes(conn) else None
    started = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, len(rows), BATCH):
            conn.execute(insert(time_entries), rows[start : start + BATCH])
    return len(rows) / (time.perf_counter() - started)


def _update(engine: Engine, count: int, value: int) -> float:
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("UPDATE time_entries SET duration_seconds = :v"), {"v": value})
    return count / (time.perf_counter() - started)


def _has_changes(conn) -> bool:
    from sqlalchemy import inspect

    return inspect(conn).has_table(CHANGE_TABLE)


@contextlib.contextmanager
def _databases(kind: str, workdir: Path) -> Iterator[tuple[Engine, Engine]]:
    if kind == "sqlite":
        engines = tuple(create_engine(f"sqlite:///{workdir / name}.db") for name in ("bare", "triggers"))
        yield engines  # type: ignore[misc]
        for engine in engines:
            engine.dispose()
        return
    from tests.conftest import postgres_server

    with postgres_server() as url:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for name in ("bench_bare", "bench_triggers"):
                conn.exec_driver_sql(f"CREATE DATABASE {name}")
        base = url.rsplit("/", 1)[0]
        engines = (create_engine(f"{base}/bench_bare"), create_engine(f"{base}/bench_triggers"))
        try:
            yield engines
        finally:
            for engine in engines:
                engine.dispose()
            admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    rows = _rows(args.rows, args.users)
    print(f"{args.rows:,} entries of {args.users:,} users; best of {ROUNDS}, the two copies measured alternately")
    print(f"{'database':<11} {'write':<12} {'bare rows/s':>12} {'triggers rows/s':>16} {'ratio':>7}  change rows")
    with TemporaryDirectory() as tmp:
        for kind in [d.strip() for d in args.databases.split(",") if d.strip()]:
            with _databases(kind, Path(tmp)) as (bare, triggered):
                _prepare(bare, args.users, triggers=False)
                _prepare(triggered, args.users, triggers=True)
                best: dict[tuple[str, bool], float] = {}
                for _ in range(ROUNDS):
                    for engine, on in ((bare, False), (triggered, True)):
                        best[("insert", on)] = max(best.get(("insert", on), 0.0), _insert(engine, rows))
                with triggered.connect() as conn:
                    inserted = conn.execute(text(f"SELECT count(*) FROM {CHANGE_TABLE}")).scalar()
                for round_ in range(ROUNDS):
                    for engine, on in ((bare, False), (triggered, True)):
                        best[("update", on)] = max(best.get(("update", on), 0.0), _update(engine, args.rows, 100 + round_))
                with triggered.connect() as conn:
                    updated = conn.execute(text(f"SELECT count(*) FROM {CHANGE_TABLE}")).scalar() - inserted
                for write, changes in (("bulk insert", inserted), ("bulk update", updated // ROUNDS)):
                    key = write.split()[1]
                    plain, with_triggers = best[(key, False)], best[(key, True)]
                    print(
                        f"{kind:<11} {write:<12} {plain:>12,.0f} {with_triggers:>16,.0f} {with_triggers / plain:>6.2f}x"
                        f"  {changes:,} a statement"
                        if key == "update"
                        else f"{kind:<11} {write:<12} {plain:>12,.0f} {with_triggers:>16,.0f} {with_triggers / plain:>6.2f}x"
                        f"  {changes:,} for {args.rows:,} rows"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
